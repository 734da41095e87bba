use std::sync::Mutex;

use super::*;

fn monitor() -> Monitor {
    Monitor::builder().with_global(false).build().unwrap()
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

fn firing(alerts: &[Alert]) -> Vec<&Alert> {
    alerts
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn eleven_errors_in_an_hour_fire_one_critical_alert_and_ten_fire_none() {
    let m = monitor();
    for i in 0..10 {
        m.record_error(
            "OperationalError",
            "save_progress",
            &format!("database is locked #{i}"),
        );
        tokio::time::advance(minutes(5)).await;
        assert!(m.evaluate().is_empty(), "10 errors must not alert");
    }
    // The first error is 50 minutes old: the 11th lands within the hour.
    m.record_error(
        "OperationalError",
        "save_progress",
        &"database is locked #10",
    );
    let notices = m.evaluate();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let alert = &notices[0];
    assert_eq!(alert.state, AlertState::Firing);
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(
        alert.fingerprint.as_deref(),
        Some("OperationalError@save_progress")
    );
    assert_eq!(alert.value, 11.0);
    assert!(
        !alert.summary.contains("locked"),
        "no message text in alerts: {}",
        alert.summary
    );
    assert_eq!(m.status(), Status::Critical);

    // More errors while it fires: no second notice.
    m.record_error("OperationalError", "save_progress", &"again");
    assert!(m.evaluate().is_empty());

    // As the errors age out of the hour, exactly one resolved notice follows.
    let mut resolved = 0;
    for _ in 0..30 {
        tokio::time::advance(minutes(5)).await;
        let notices = m.evaluate();
        assert!(firing(&notices).is_empty());
        resolved += notices.len();
    }
    assert_eq!(resolved, 1);
    assert_eq!(m.status(), Status::Healthy);
    let report = m.report(minutes(60));
    assert_eq!(report.recent_alerts.len(), 2);
    assert_eq!(report.recent_alerts[0].state, AlertState::Resolved);
}

#[tokio::test(start_paused = true)]
async fn events_older_than_the_window_vanish_from_the_summary() {
    let m = monitor();
    m.record_error("KeyError", "dashboard", &"'xp'");
    tokio::time::advance(minutes(10)).await;
    m.record_error("OperationalError", "save_progress", &"locked");
    m.record_error("OperationalError", "save_progress", &"locked");
    let s = m.error_summary();
    assert_eq!(s.total_errors, 3);
    assert_eq!(s.errors_by_type["KeyError"], 1);
    assert_eq!(s.errors_by_type["OperationalError"], 2);
    assert_eq!(s.time_window, "Last 15 minutes");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "status": "healthy",
            "total_errors": 3,
            "errors_by_type": {"KeyError": 1, "OperationalError": 2},
            "time_window": "Last 15 minutes"
        })
    );

    tokio::time::advance(minutes(6)).await;
    let s = m.error_summary();
    assert_eq!(s.total_errors, 2, "the KeyError is 16 minutes old");
    assert!(!s.errors_by_type.contains_key("KeyError"));
    assert_eq!(m.summary(minutes(60)).total_errors, 3);
    assert_eq!(m.summary(minutes(60)).time_window, "Last hour");

    tokio::time::advance(minutes(61)).await;
    assert_eq!(m.summary(minutes(60)).total_errors, 0);
}

#[tokio::test(start_paused = true)]
async fn status_follows_the_rules() {
    let m = monitor();
    assert_eq!(m.status(), Status::Healthy);
    // 100 requests, 10 failed: 10% is degraded.
    for i in 0..100 {
        m.record_request(i % 10 == 0);
    }
    let (status, reasons) = m.status_with_reasons();
    assert_eq!(status, Status::Degraded);
    assert!(
        reasons[0].contains("10.0% of requests failed"),
        "{reasons:?}"
    );
    // 40 more failures: 50 / 140 = 36% is critical.
    for _ in 0..40 {
        m.record_request(true);
    }
    assert_eq!(m.status(), Status::Critical);
    // Five minutes later the rate window is clean again.
    tokio::time::advance(minutes(6)).await;
    assert_eq!(m.status(), Status::Healthy);

    // Below the minimum throughput, rates are not judged.
    m.record_request(true);
    assert_eq!(m.status(), Status::Healthy);

    // An absolute count.
    for _ in 0..50 {
        m.record_error("Error", "job", &"x");
    }
    assert_eq!(m.status(), Status::Degraded);
    // ... and the same error 50 times in an hour is the guide's alert.
    assert_eq!(firing(&m.evaluate()).len(), 1);
    assert_eq!(m.status(), Status::Critical);
    tokio::time::advance(minutes(16)).await;
    assert_eq!(m.status(), Status::Critical, "the alert holds for the hour");
    tokio::time::advance(minutes(45)).await;
    assert_eq!(m.evaluate()[0].state, AlertState::Resolved);
    assert_eq!(m.status(), Status::Healthy);

    // A supervisor that gave up.
    m.set_critical(
        "worker:email",
        "worker 'email' gave up after 5 restarts in 60s",
    );
    assert_eq!(m.status(), Status::Critical);
    m.clear_critical("worker:email");
    assert_eq!(m.status(), Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn checks_drive_status_and_readiness() {
    let m = monitor();
    let up = Arc::new(AtomicBool::new(true));
    let probe = up.clone();
    m.register_check("database", CheckOptions::default(), move || {
        let up = probe.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err("connection refused".to_owned())
            }
        }
    });
    m.register_check(
        "cache",
        CheckOptions {
            critical: false,
            ..CheckOptions::default()
        },
        || async { Err("redis down".to_owned()) },
    );
    assert!(!m.run_checks().await);
    assert_eq!(
        m.status(),
        Status::Degraded,
        "the failing check is not critical"
    );
    assert!(
        m.is_ready(),
        "checks without `readiness` move the status, not readiness"
    );

    up.store(false, Ordering::SeqCst);
    m.run_checks().await;
    assert_eq!(m.status(), Status::Critical);
    assert!(
        m.is_ready(),
        "a shared dependency down is not a reason to leave rotation"
    );
    let checks = m.checks();
    assert_eq!(checks[0].message.as_deref(), Some("connection refused"));
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_readiness_checks_in_the_present_and_never_latches() {
    let m = monitor();
    let up = Arc::new(AtomicBool::new(true));
    let probe = up.clone();
    m.register_check(
        "warm_cache",
        CheckOptions {
            readiness: true,
            ..CheckOptions::default()
        },
        move || {
            let up = probe.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("cold".to_owned()) } }
        },
    );
    assert!(!m.is_ready(), "a readiness check that has not run yet");
    assert!(m.run_check("warm_cache").await.unwrap());
    assert!(m.is_ready());
    assert_eq!(m.run_check("no such check").await, None);

    // A storm of errors, a firing critical alert and a critical condition:
    // the status says so, readiness does not.
    for _ in 0..50 {
        m.record_error("OperationalError", "save_progress", &"database is locked");
    }
    m.evaluate();
    m.set_critical("worker:outbox", "worker 'outbox' is failing");
    assert_eq!(m.status(), Status::Critical);
    assert!(
        m.is_ready(),
        "error history and conditions never fail readiness"
    );

    up.store(false, Ordering::SeqCst);
    m.run_checks().await;
    assert!(!m.is_ready(), "a failing readiness check does");
    up.store(true, Ordering::SeqCst);
    m.run_checks().await;
    assert!(
        m.is_ready(),
        "and readiness returns with it, at the next run"
    );

    m.set_draining();
    assert!(!m.is_ready(), "a draining instance is not ready");
}

#[tokio::test(start_paused = true)]
async fn a_slow_check_times_out() {
    let m = monitor();
    m.register_check(
        "slow",
        CheckOptions {
            timeout: Duration::from_secs(1),
            ..CheckOptions::default()
        },
        || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        },
    );
    assert!(!m.run_checks().await);
    assert!(
        m.checks()[0]
            .message
            .as_deref()
            .unwrap()
            .contains("timed out")
    );
}

#[test]
fn many_threads_recording_lose_no_counts() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let m = monitor();
    std::thread::scope(|s| {
        for t in 0..4 {
            let m = m.clone();
            s.spawn(move || {
                for i in 0..25_000 {
                    // Half on one shared fingerprint, half on per-thread ones.
                    if i % 2 == 0 {
                        m.record_error("Shared", "op", &"x");
                    } else {
                        m.record_error("Own", &format!("op{t}"), &"y");
                    }
                    m.record_request(i % 2 == 0);
                }
            });
        }
    });
    let report = m.report(minutes(60));
    assert_eq!(report.total_errors, 100_000);
    assert_eq!(report.errors_by_type["Shared"], 50_000);
    assert_eq!(report.errors_by_type["Own"], 50_000);
    assert_eq!(report.fingerprints.len(), 5);
    assert_eq!(report.requests.total, 100_000);
    assert_eq!(report.requests.failed, 50_000);
}

#[tokio::test(start_paused = true)]
async fn beyond_the_cap_errors_count_as_other() {
    let m = Monitor::builder()
        .with_global(false)
        .with_max_fingerprints(3)
        .build()
        .unwrap();
    for i in 0..10 {
        m.record_error("Error", &format!("route{i}"), &"boom");
    }
    assert_eq!(m.fingerprint_count(), 3);
    let s = m.report(minutes(15));
    assert_eq!(s.total_errors, 10);
    let other = s
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == OTHER)
        .unwrap();
    assert_eq!(other.count, 7);
}

#[tokio::test(start_paused = true)]
async fn samples_are_truncated_and_kept_from_the_first_event() {
    let m = monitor();
    let long = "é".repeat(500);
    m.record_error("Error", "op", &long);
    m.record_error("Error", "op", &"second");
    let fp = &m.report(minutes(15)).fingerprints[0];
    assert_eq!(
        fp.sample.chars().count(),
        201,
        "200 characters and an ellipsis"
    );
    assert!(fp.sample.starts_with('é'));
}

#[tokio::test(start_paused = true)]
async fn the_observer_hook_feeds_the_monitor() {
    use crate::retry::{Backoff, Policy};
    let m = monitor();
    let policy = Policy::default()
        .with_backoff(Backoff::immediate())
        .with_observer(m.observer());
    let mut n = 0;
    policy
        .retry_named("send_email", || {
            n += 1;
            std::future::ready(if n < 2 { Err("smtp busy") } else { Ok(()) })
        })
        .await
        .unwrap();
    let _ = policy
        .retry_named("charge_card", || {
            std::future::ready(Err::<(), _>("stripe down"))
        })
        .await;
    crate::fallback::Fallback::new("courses")
        .with_observer(m.observer())
        .or_default(async { Err::<Vec<u8>, _>("db gone") })
        .await;

    let r = m.report(minutes(15));
    assert_eq!(r.heals[&HealKind::RetryRecovered], 1);
    assert_eq!(r.heals[&HealKind::FallbackUsed], 1);
    assert_eq!(r.retries, 3, "one for send_email, two for charge_card");
    let fps: Vec<_> = r
        .fingerprints
        .iter()
        .map(|f| f.fingerprint.as_str())
        .collect();
    assert_eq!(fps, ["str@charge_card", "str@courses"]);
    assert_eq!(r.recent_heals[0].kind, HealKind::FallbackUsed);
}

/// A sink that records what it is given.
#[derive(Default)]
struct Collect(Mutex<Vec<Alert>>);

impl AlertSink for Arc<Collect> {
    fn name(&self) -> &str {
        "collect"
    }
    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a> {
        self.0.lock().unwrap().push(alert.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A sink that fails its first `n` deliveries.
struct Flaky(AtomicU64, Arc<Collect>);

impl AlertSink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a> {
        let left = self.0.load(Ordering::SeqCst);
        if left > 0 {
            self.0.store(left - 1, Ordering::SeqCst);
            return Box::pin(std::future::ready(Err("sink down".into())));
        }
        self.1.0.lock().unwrap().push(alert.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test(start_paused = true)]
async fn the_background_task_evaluates_and_delivers_with_retries() {
    let collected = Arc::new(Collect::default());
    let flaky_seen = Arc::new(Collect::default());
    let m = Monitor::builder()
        .with_global(false)
        .with_sink(Arc::new(collected.clone()))
        .with_sink(Arc::new(Flaky(AtomicU64::new(2), flaky_seen.clone())))
        .start()
        .unwrap();
    for _ in 0..11 {
        m.record_error("TimeoutError", "ask_question", &"openai timed out");
    }
    // The evaluator runs within a second; the flaky sink needs two backoffs.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let got = collected.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].severity, Severity::Critical);
    assert_eq!(
        flaky_seen.0.lock().unwrap().len(),
        1,
        "delivered on the third try"
    );
    assert_eq!(m.report(minutes(1)).alert_delivery_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_channel_drops_and_counts() {
    let m = Monitor::builder()
        .with_global(false)
        .with_channel_capacity(1)
        .build()
        .unwrap();
    for i in 0..3 {
        for _ in 0..11 {
            m.record_error("Error", &format!("op{i}"), &"x");
        }
    }
    assert_eq!(m.evaluate().len(), 3);
    assert_eq!(
        m.alerts_dropped(),
        2,
        "nobody drains the channel in build() mode"
    );
}

#[test]
fn misconfiguration_is_rejected() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    assert!(Monitor::builder().with_buckets(0).build().is_err());
    assert!(Monitor::builder().with_max_fingerprints(0).build().is_err());
    let err = Monitor::builder().with_buckets(10).build().unwrap_err();
    assert!(err.message().contains("horizon"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_started_monitor_records_on_its_coarse_clock() {
    let m = Monitor::builder().with_global(false).start().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..5 {
        m.record_error("Error", "early", &"x");
    }
    tokio::time::sleep(minutes(20)).await;
    m.record_error("Error", "late", &"y");
    m.record_request(true);
    let last_minute = m.summary(minutes(1));
    assert_eq!(
        last_minute.total_errors, 1,
        "the late error is in the current minute"
    );
    assert_eq!(m.summary(minutes(15)).total_errors, 1);
    assert_eq!(m.summary(minutes(60)).total_errors, 6);
    assert_eq!(m.requests(minutes(1)).failed, 1);
    let early = m
        .report(minutes(60))
        .fingerprints
        .into_iter()
        .find(|f| f.operation == "early")
        .unwrap();
    assert_eq!(early.last_seen_secs_ago / 60, 20);
}

/// A client's input is not the server's health: one client's errors are
/// shown but move nothing; the same errors from three clients are an
/// outage; the server's own errors (no client) always count.
#[tokio::test(start_paused = true)]
async fn one_clients_errors_are_shown_but_move_neither_status_nor_alerts() {
    let m = monitor();
    let attacker = ClientId::of("203.0.113.9");
    for _ in 0..50 {
        m.record_error_from("500", "/login", &"invalid byte 0x00", Some(attacker));
        m.record_request_from(true, Some(attacker));
    }
    assert!(firing(&m.evaluate()).is_empty(), "no alert for one client");
    assert_eq!(m.status(), Status::Healthy, "{:?}", m.status_with_reasons());
    let report = m.report(minutes(15));
    assert_eq!(report.fingerprints[0].count, 50, "shown in full");
    assert_eq!(report.requests.failed, 50);

    // Two more clients: the same fingerprint is now an outage.
    for client in ["198.51.100.1", "198.51.100.2"] {
        m.record_error_from(
            "500",
            "/login",
            &"invalid byte 0x00",
            Some(ClientId::of(client)),
        );
        m.record_request_from(true, Some(ClientId::of(client)));
    }
    let alerts = m.evaluate();
    assert_eq!(firing(&alerts).len(), 1, "{alerts:?}");
    assert_eq!(
        m.status(),
        Status::Critical,
        "{:?}",
        m.status_with_reasons()
    );
}

#[tokio::test(start_paused = true)]
async fn errors_without_a_client_always_count_and_min_clients_is_configurable() {
    let m = monitor();
    for _ in 0..11 {
        m.record_error("EmailError", "worker:outbox", &"connection refused");
    }
    assert_eq!(
        firing(&m.evaluate()).len(),
        1,
        "the server's own errors count"
    );

    let strict = Monitor::builder()
        .with_global(false)
        .with_min_clients(1)
        .build()
        .unwrap();
    let client = Some(ClientId::of("203.0.113.9"));
    for _ in 0..11 {
        strict.record_error_from("500", "/signup", &"boom", client);
    }
    assert_eq!(
        firing(&strict.evaluate()).len(),
        1,
        "min_clients(1): every error counts"
    );
}

/// Secrets are redacted where text enters the monitor, so the public,
/// serializable report never carries one, whoever reads it.
#[tokio::test(start_paused = true)]
async fn the_report_never_carries_a_password_quoted_by_an_error() {
    let m = monitor();
    m.record_error(
        "PoolTimedOut",
        "db",
        &"cannot connect to postgres://app:s3cret@db:5432/main",
    );
    m.set_condition(
        "worker:outbox",
        Status::Degraded,
        "waiting for smtp://mailer:hunter2@smtp.example.com (token=abc123)",
    );
    m.register_check("database", CheckOptions::default(), || async {
        Err("postgres://app:s3cret@db refused; password=s3cret".to_owned())
    });
    m.run_checks().await;
    m.record_heal(HealKind::RetryRecovered, "http:api key=abc123");
    let json = serde_json::to_string(&m.report(minutes(15))).unwrap();
    for secret in ["s3cret", "hunter2", "abc123"] {
        assert!(!json.contains(secret), "{secret} in {json}");
    }
    assert!(json.contains("postgres://app:***@db:5432/main"), "{json}");
}
