//! Three instances on one PostgreSQL.

use std::time::Duration;

use selfheal::health::AlertState;
use selfheal::health::ledger::Ledger;
use sqlx::postgres::PgConnectOptions;

use crate::support::{Alerts, eventually, monitor, pg_pool, postgres};

const FLUSH: Duration = Duration::from_millis(100);

/// An instance: its monitor, its ledger and its worker.
struct Instance {
    monitor: selfheal::health::Monitor,
    ledger: Ledger,
    worker: Option<selfheal::supervise::SupervisedHandle>,
}

async fn instance(id: &str, options: &PgConnectOptions, sink: &Alerts) -> Instance {
    let monitor = monitor(sink);
    let ledger = Ledger::builder(pg_pool(options).await, &monitor)
        .with_instance(id)
        .with_version("1.0.0")
        .with_flush_every(FLUSH)
        .build()
        .unwrap();
    ledger.install().await.unwrap();
    let worker = Some(ledger.start());
    Instance {
        monitor,
        ledger,
        worker,
    }
}

/// The guide's rule on the fleet's counts: 4 + 4 + 4 is one CRITICAL and one
/// resolved notice for the fleet; 11 on one instance, or on each, is one
/// alert, not one per instance. Then one instance is killed: the fleet view
/// marks it silent within two heartbeats, its history stays, the others
/// carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_alerts_once_and_sees_a_killed_instance_go_silent() {
    let Some(options) = postgres("fleet").await else {
        return;
    };
    let sink = Alerts::default();
    let a = instance("a", &options, &sink).await;
    let b = instance("b", &options, &sink).await;
    // Instance c runs on a runtime of its own, on its own thread: dropping
    // that runtime kills it mid-flight, like a killed process.
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let c_thread = {
        let options = options.clone();
        let sink = sink.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = instance("c", &options, &sink).await;
                ready_tx.send(c.monitor.clone()).unwrap();
                tokio::task::spawn_blocking(move || killed.recv())
                    .await
                    .unwrap()
                    .ok();
                std::mem::forget(c.worker);
            });
            // The runtime drops here with c's ledger task in it.
        })
    };
    let c_monitor = ready.await.unwrap();

    for m in [&a.monitor, &b.monitor, &c_monitor] {
        for _ in 0..4 {
            m.record_error(
                "Timeout",
                "send_email",
                &"smtp://mailer:hunter2@smtp.example.com timed out",
            );
        }
    }
    let fp = "Timeout@send_email";
    assert!(
        eventually(Duration::from_secs(5), async || sink
            .count(AlertState::Firing, fp)
            >= 1)
        .await,
        "4 + 4 + 4 = 12 > 10 across the fleet: the rule must fire"
    );
    // Every instance evaluates several times more: still one notice.
    tokio::time::sleep(FLUSH * 5).await;
    assert_eq!(
        sink.count(AlertState::Firing, fp),
        1,
        "one alert for the fleet"
    );
    for m in [&a.monitor, &b.monitor] {
        let report = m.report(Duration::from_secs(10));
        assert_eq!(report.total_errors, 4, "each instance saw only its 4");
        assert!(
            report
                .reasons
                .iter()
                .any(|r| r.contains("across the fleet")),
            "the fleet's alert moves each instance's status: {:?}",
            report.reasons
        );
    }

    // 11 on one instance; 11 on each of the three.
    for _ in 0..11 {
        a.monitor.record_error("KeyError", "dashboard", &"'xp'");
        for m in [&a.monitor, &b.monitor, &c_monitor] {
            m.record_error("Panic", "checkout", &"index out of bounds");
        }
    }
    for fp in ["KeyError@dashboard", "Panic@checkout"] {
        assert!(
            eventually(Duration::from_secs(5), async || sink
                .count(AlertState::Firing, fp)
                >= 1)
            .await,
            "{fp} fires"
        );
    }
    tokio::time::sleep(FLUSH * 5).await;
    assert_eq!(sink.count(AlertState::Firing, "KeyError@dashboard"), 1);
    assert_eq!(
        sink.count(AlertState::Firing, "Panic@checkout"),
        1,
        "each instance saw 11: still one alert, not three"
    );

    // The fleet view merges fingerprints with per-instance counts.
    let fleet = a.ledger.fleet().await.unwrap();
    let merged = fleet
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == "Panic@checkout")
        .unwrap();
    assert_eq!(merged.count, 33);
    assert_eq!(merged.per_instance.len(), 3);
    assert!(merged.per_instance.values().all(|&n| n == 11));
    let sample = &fleet
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == fp)
        .unwrap()
        .sample;
    assert!(
        sample.contains("mailer:***@") && !sample.contains("hunter2"),
        "samples are redacted: {sample}"
    );
    assert_eq!(fleet.instances.len(), 3);
    assert!(fleet.instances.iter().all(|i| !i.silent));

    // Kill c. Its last heartbeat is at most one flush old; two heartbeats
    // later the fleet view says it is silent.
    kill.send(()).unwrap();
    c_thread.join().unwrap();
    let killed_at = a.ledger.now_ms();
    let silent_c = async |at: i64| {
        let fleet = a.ledger.fleet_at(at).await.unwrap();
        let c = fleet
            .instances
            .iter()
            .find(|i| i.id == "c")
            .unwrap()
            .clone();
        (c.silent, fleet)
    };
    let heartbeat = FLUSH.as_millis() as i64;
    let (silent, fleet) = silent_c(killed_at + 2 * heartbeat + 20).await;
    assert!(
        silent,
        "silent within two heartbeats: {:?}",
        fleet.instances
    );
    assert!(
        fleet
            .reasons
            .iter()
            .any(|r| r.contains("instance c silent"))
    );
    // An hour later c is still listed as silent, but no longer degrades
    // the fleet.
    let later = a.ledger.fleet_at(killed_at + 3_700_000).await.unwrap();
    let c = later.instances.iter().find(|i| i.id == "c").unwrap();
    assert!(c.silent);
    assert!(
        !later
            .reasons
            .iter()
            .any(|r| r.contains("instance c silent"))
    );
    // The others carry on (they keep beating), and c's history stays.
    tokio::time::sleep(FLUSH * 3).await;
    let fleet = a.ledger.fleet().await.unwrap();
    for i in &fleet.instances {
        assert_eq!(i.silent, i.id == "c", "{i:?}");
    }
    let merged = fleet
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == "Panic@checkout")
        .unwrap();
    assert_eq!(merged.per_instance.get("c"), Some(&11), "c's counts stay");

    // Quiet for the rule's window (3 s): one resolved notice per fingerprint.
    for fp in [fp, "KeyError@dashboard", "Panic@checkout"] {
        assert!(
            eventually(Duration::from_secs(8), async || sink
                .count(AlertState::Resolved, fp)
                >= 1)
            .await,
            "{fp} resolves"
        );
    }
    tokio::time::sleep(FLUSH * 5).await;
    for fp in [fp, "KeyError@dashboard", "Panic@checkout"] {
        assert_eq!(
            sink.count(AlertState::Firing, fp),
            1,
            "{fp}: {:#?}",
            sink.0.lock().unwrap()
        );
        assert_eq!(
            sink.count(AlertState::Resolved, fp),
            1,
            "{fp}: one resolved notice"
        );
    }
    for i in [a, b] {
        let exit = i.worker.unwrap().shutdown().await;
        assert!(
            matches!(exit, selfheal::supervise::Exit::ShutDown),
            "{exit:?}"
        );
    }
}
