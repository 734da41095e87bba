//! cozmic's health ledger, black-box: three instances on one PostgreSQL
//! (port 0 each) see one fleet on whichever admin page answers; the
//! monthly review from the command line.
//!
//! The fleet's alerting (4 + 4 + 4 is one alert, a killed instance goes
//! silent) is tested against selfheal's ledger with 100 ms buckets in
//! `crates/selfheal/tests/ledger`; cozmic's monitor uses 1-minute buckets,
//! so here the counts are written through the ledger's own API.

use std::net::SocketAddr;

use axum::http::StatusCode;
use cozmic::config::{Config, Secret};
use selfheal::health::HealKind;
use selfheal::health::ledger::BucketRecord;
use tempfile::TempDir;

mod support;

const TOKEN: &str = "test-admin-token-0123456789";

fn config(dir: &TempDir, database_url: Option<&str>) -> Config {
    let mut config = Config::new(dir.path());
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database_url = database_url.map(Secret::new);
    config.admin_token = Some(Secret::new(TOKEN));
    config
}

async fn health_json(base: &str, query: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{base}/admin/health.json{query}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

/// Three cozmic instances on one PostgreSQL: the admin JSON and page of any
/// of them list all three with their status, merge a fingerprint two of
/// them saw with per-instance counts, and show its history; `/readyz` stays
/// per instance; an instance shut down is shown stopped, not silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_show_one_fleet() {
    selfheal::tls::install_default_crypto_provider();
    let Some(url) = support::postgres_schema_url("cozmic_fleet").await else {
        return;
    };
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut apps = Vec::new();
    for dir in &dirs {
        apps.push(cozmic::start(config(dir, Some(&url))).await.unwrap());
    }
    let ids: Vec<String> = apps
        .iter()
        .map(|a| a.state().ledger().instance().to_owned())
        .collect();
    // Two instances saw the same error in the last minute.
    for (app, n) in apps.iter().take(2).zip([4, 5]) {
        let ledger = app.state().ledger();
        let now = ledger.now_ms();
        let bucket = BucketRecord::new(now - now.rem_euclid(60_000) - 60_000)
            .with_requests(20, n)
            .with_error("OperationalError", "save_progress", n, "database is locked")
            .with_heal(HealKind::TransactionRerun, 2);
        assert!(ledger.write_at(&bucket, now).await.unwrap());
    }
    let client = reqwest::Client::new();
    for app in &apps {
        let ready = client
            .get(format!("{}/readyz", app.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "/readyz is per instance");
    }

    for app in &apps {
        let json = health_json(&app.url(), "").await;
        let fleet = &json["fleet"];
        let instances = fleet["instances"].as_array().unwrap();
        let listed: Vec<&str> = instances
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        for id in &ids {
            assert!(listed.contains(&id.as_str()), "{id} in {listed:?}");
        }
        assert!(instances.iter().all(|i| i["silent"] == false), "{fleet}");
        let ledger = &json["checks"]["healthLedger:droppedBuckets"][0];
        assert_eq!(ledger["observedValue"], 0, "{ledger}");
        assert_eq!(ledger["status"], "pass", "{ledger}");
        let fp = &fleet["fingerprints"][0];
        assert_eq!(
            fp["fingerprint"], "OperationalError@save_progress",
            "{fleet}"
        );
        assert_eq!(fp["count"], 9);
        assert_eq!(fp["per_instance"][&ids[0]], 4);
        assert_eq!(fp["per_instance"][&ids[1]], 5);
        let history = &json["history"]["fingerprints"][0];
        assert_eq!(history["count"], 9, "{}", json["history"]);
        assert_eq!(history["marks"][0], "new");
    }
    let page = client
        .get(format!("{}/admin/health?history=7d", apps[2].url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "id=\"fleet-instances\"",
        ids[0].as_str(),
        ids[1].as_str(),
        "(this one)",
        "4 · ",
        "History: 7 days",
        "<span class=\"mark new\">new</span>",
    ] {
        assert!(page.contains(needle), "{needle:?} not on the page");
    }

    let last = apps.pop().unwrap();
    last.shutdown().await;
    let json = health_json(&apps[0].url(), "?history=30d").await;
    let stopped = json["fleet"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == ids[2])
        .unwrap()
        .clone();
    assert_eq!(stopped["stopped"], true, "{stopped}");
    assert_eq!(stopped["silent"], false);
    assert_eq!(json["history"]["days"], 30);
    for app in apps {
        app.shutdown().await;
    }
}

/// `cozmic review --days 30` prints the review of what the ledger holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_command_prints_the_monthly_review() {
    selfheal::tls::install_default_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    {
        let monitor = selfheal::health::Monitor::builder()
            .with_global(false)
            .build()
            .unwrap();
        let db = cozmic::db::Db::open(&config(&dir, None), &monitor)
            .await
            .unwrap();
        let ledger = selfheal::health::ledger::Ledger::builder(db.ledger_pool(), &monitor)
            .with_instance("earlier")
            .build()
            .unwrap();
        let now = ledger.now_ms();
        // Oldest first: an instance's buckets are written in order.
        for day in (0..4).rev() {
            let start = now - now.rem_euclid(60_000) - day * 86_400_000 - 60_000;
            let bucket = BucketRecord::new(start)
                .with_error("Timeout", "send_email", 3, "smtp timed out")
                .with_heal(HealKind::RetryRecovered, 3)
                .with_attempts("send_email", "recovered", "", 2, 3, 3_000);
            assert!(ledger.write_at(&bucket, now).await.unwrap());
        }
        db.close().await;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cozmic"))
        .args(["review", "--days", "30"])
        .env("COZMIC_DATA_DIR", dir.path())
        .env_remove("DATABASE_URL")
        .env("COZMIC_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "# Health review:",
        "(30 days)",
        "`Timeout@send_email`",
        "| retry_recovered |",
        "| send_email | 0, 12 |",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in:\n{stdout}");
    }
    let usage = std::process::Command::new(env!("CARGO_BIN_EXE_cozmic"))
        .args(["review", "--days", "zero"])
        .env("COZMIC_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
