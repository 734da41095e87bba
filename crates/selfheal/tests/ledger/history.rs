//! History across restarts, and 40 simulated days.

use std::time::Duration;

use selfheal::db::schema::Startup;
use selfheal::health::ledger::{
    BucketRecord, DAY_MS, HOUR_MS, Ledger, LedgerPool, Mark, Retention, Trend,
};
use selfheal::health::{HealKind, Monitor};

use crate::support::{Alerts, BUCKET, monitor, pg_pool, postgres, sqlite, sqlite_url};

/// Records on one instance, stops it, starts another on the same
/// database: the 24 h view still holds what the first recorded.
async fn a_restart_keeps_the_history(first: LedgerPool, second: impl AsyncFnOnce() -> LedgerPool) {
    let sink = Alerts::default();
    let m1 = monitor(&sink);
    let l1 = Ledger::builder(first.clone(), &m1)
        .with_instance("before")
        .build()
        .unwrap();
    l1.install().await.unwrap();
    for _ in 0..3 {
        m1.record_error("OperationalError", "save_progress", &"database is locked");
    }
    m1.record_heal(HealKind::TransactionRerun, "save_progress");
    tokio::time::sleep(BUCKET * 2).await;
    assert!(l1.flush().await);
    l1.stop_at(l1.now_ms()).await;
    drop((l1, m1));
    match first {
        LedgerPool::Sqlite(p) => p.close().await,
        LedgerPool::Postgres(p) => p.close().await,
        _ => unreachable!(),
    }

    let m2 = monitor(&sink);
    let l2 = Ledger::builder(second().await, &m2)
        .with_instance("after")
        .build()
        .unwrap();
    l2.install().await.unwrap();
    let day = l2.history(Duration::from_secs(86_400)).await.unwrap();
    let fp = day
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == "OperationalError@save_progress")
        .expect("recorded before the restart");
    assert_eq!(fp.count, 3);
    assert_eq!(fp.sample, "database is locked");
    assert_eq!(fp.marks, vec![Mark::New]);
    assert_eq!(day.heals.get("transaction_rerun"), Some(&1));
    let fleet = l2.fleet().await.unwrap();
    let before = fleet.instances.iter().find(|i| i.id == "before").unwrap();
    assert!(before.stopped && !before.silent, "{before:?}");
}

#[tokio::test]
async fn a_restart_keeps_the_history_on_sqlite() {
    let url = sqlite_url("restart");
    let first = LedgerPool::from(sqlite(&url).await);
    a_restart_keeps_the_history(first, async || sqlite(&url).await.into()).await;
}

#[tokio::test]
async fn a_restart_keeps_the_history_on_postgres() {
    let Some(options) = postgres("restart").await else {
        return;
    };
    let first = LedgerPool::from(pg_pool(&options).await);
    a_restart_keeps_the_history(first, async || pg_pool(&options).await.into()).await;
}

/// The schema healer installs the ledger's tables and finds them as it
/// declares them, on both databases (a single-column `TEXT PRIMARY KEY` is
/// nullable in SQLite unless said otherwise).
#[tokio::test]
async fn the_schema_healer_installs_the_ledger_tables_without_drift() {
    let pool = sqlite(&sqlite_url("startup")).await;
    let report = Startup::new(&pool)
        .with_health_ledger(true)
        .run()
        .await
        .unwrap();
    assert!(report.is_healthy(), "{report}");
    if let Some(options) = postgres("startup").await {
        let pool = pg_pool(&options).await;
        let report = Startup::new(&pool)
            .with_health_ledger(true)
            .run()
            .await
            .unwrap();
        assert!(report.is_healthy(), "{report}");
        // Twice: idempotent.
        let report = Startup::new(&pool)
            .with_health_ledger(true)
            .run()
            .await
            .unwrap();
        assert!(
            report.is_healthy() && report.repaired.is_empty(),
            "{report}"
        );
    }
}

/// 2026-01-01T00:00Z.
const START: i64 = 1_767_225_600_000;
const MINUTE_MS: i64 = 60_000;

fn at(day: i64, hour: i64) -> i64 {
    START + day * DAY_MS + hour * HOUR_MS
}

async fn rows(pool: &LedgerPool, scale: i64, before: Option<i64>) -> i64 {
    let LedgerPool::Sqlite(pool) = pool else {
        unreachable!()
    };
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM selfheal_health_errors WHERE scale = $1 AND bucket_ms < $2",
    )
    .bind(scale)
    .bind(before.unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn total(pool: &LedgerPool, scale: i64, fingerprint: &str, from: i64) -> i64 {
    let LedgerPool::Sqlite(pool) = pool else {
        unreachable!()
    };
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM selfheal_health_errors \
         WHERE scale = $1 AND fingerprint = $2 AND bucket_ms >= $3",
    )
    .bind(scale)
    .bind(fingerprint)
    .bind(from)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// 40 days on a timeline of the test's own (every time is passed in):
/// minutes rolled up into hours and days as written, each resolution
/// pruned at its retention, and the marks of the 30-day view.
#[tokio::test]
async fn forty_days_of_rollups_retention_and_marks() {
    let pool = LedgerPool::from(sqlite(&sqlite_url("forty")).await);
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let ledger = Ledger::builder(pool.clone(), &monitor)
        .with_instance("one")
        .with_version("2.0")
        .with_retention(Retention {
            minutes: Duration::from_secs(48 * 3600),
            hours: Duration::from_secs(7 * 86_400),
            days: Duration::from_secs(730 * 86_400),
        })
        .build()
        .unwrap();
    ledger.install().await.unwrap();

    for day in 0..40 {
        for minute in 0..3 {
            let start = at(day, 10) + minute * MINUTE_MS;
            let mut bucket = BucketRecord::new(start)
                .with_requests(100, 2)
                .with_error("Timeout", "send_email", 5, "smtp timed out")
                .with_heal(HealKind::RetryRecovered, 1);
            if matches!(day, 0..=2 | 35) {
                bucket = bucket.with_error("KeyError", "dashboard", 1, "'xp'");
            }
            if (5..=20).contains(&day) {
                bucket = bucket.with_error("OperationalError", "save_progress", 2, "locked");
            }
            if day >= 38 {
                bucket = bucket.with_error("Panic", "checkout", 1, "index out of bounds");
            }
            if minute == 0 {
                bucket = bucket
                    .with_attempts("send_email", "retry", "", 1, 25, 25_000)
                    .with_attempts("send_email", "recovered", "", 2, 24, 24_000)
                    .with_attempts("send_email", "retry", "", 2, 1, 400)
                    .with_attempts("send_email", "retry", "", 3, 1, 400)
                    .with_attempts("send_email", "gave_up", "max_attempts", 4, 1, 0);
            }
            assert!(ledger.write_at(&bucket, start + MINUTE_MS).await.unwrap());
            // Written once: the same bucket again is refused.
            assert!(!ledger.write_at(&bucket, start + MINUTE_MS).await.unwrap());
        }
        ledger.prune_at(at(day, 23)).await.unwrap();
    }
    let now = at(39, 23);

    // Rollups: every resolution holds the same counts.
    assert_eq!(total(&pool, DAY_MS, "Timeout@send_email", 0).await, 40 * 15);
    assert_eq!(
        total(&pool, HOUR_MS, "Timeout@send_email", at(33, 0)).await,
        total(&pool, DAY_MS, "Timeout@send_email", at(33, 0)).await,
    );
    assert_eq!(
        total(&pool, MINUTE_MS, "Timeout@send_email", 0).await,
        2 * 15
    );
    // Retention: minutes for 48 h, hours for 7 days, days for 2 years.
    assert_eq!(rows(&pool, MINUTE_MS, Some(now - 48 * HOUR_MS)).await, 0);
    assert!(rows(&pool, MINUTE_MS, None).await > 0);
    assert_eq!(rows(&pool, HOUR_MS, Some(now - 7 * DAY_MS)).await, 0);
    assert!(rows(&pool, HOUR_MS, None).await > 0);
    assert!(
        rows(&pool, DAY_MS, Some(at(1, 0))).await > 0,
        "day 0 is kept"
    );

    let month = ledger
        .history_at(Duration::from_secs(30 * 86_400), now)
        .await
        .unwrap();
    assert_eq!(month.point_secs, 86_400);
    let marks = |fp: &str| {
        month
            .fingerprints
            .iter()
            .find(|f| f.fingerprint == fp)
            .map(|f| f.marks.clone())
            .unwrap_or_else(|| panic!("{fp} missing: {:?}", month.fingerprints))
    };
    assert_eq!(marks("Timeout@send_email"), vec![Mark::Recurring]);
    assert_eq!(
        marks("KeyError@dashboard"),
        vec![Mark::Regressed, Mark::Resolved],
        "back on day 35 after 32 quiet days, quiet again since"
    );
    assert_eq!(marks("Panic@checkout"), vec![Mark::New]);
    assert_eq!(
        marks("OperationalError@save_progress"),
        vec![Mark::Recurring, Mark::Resolved]
    );
    let timeout = &month.fingerprints[0];
    assert_eq!(timeout.fingerprint, "Timeout@send_email");
    assert_eq!(timeout.days_seen, 30);
    assert_eq!(timeout.trend, Trend::Steady);
    assert_eq!(month.requests, 30 * 300);
    assert_eq!(month.heals.get("retry_recovered"), Some(&90));

    let day = ledger
        .history_at(Duration::from_secs(86_400), now)
        .await
        .unwrap();
    assert_eq!(day.point_secs, 3600);
    assert!(
        day.fingerprints
            .iter()
            .all(|f| f.fingerprint != "KeyError@dashboard")
    );

    let review = ledger.review_at(30, now).await.unwrap();
    let md = &review.markdown;
    for needle in [
        "# Health review: 2026-01-11 to 2026-02-09 (30 days)",
        "## Top recurring errors",
        "| `Timeout@send_email` | 450 | 30 |",
        "## New errors",
        "`Panic@checkout`",
        "| retry_recovered | 90 |",
        "| send_email | 0, 720 | 30 (max_attempts) |",
        "send_email: 96.0 % recover by attempt 2, attempts 3–4 never did in 30 days: \
         max_attempts 2 would save 0.8 s per give-up",
    ] {
        assert!(md.contains(needle), "{needle:?} not in:\n{md}");
    }
}
