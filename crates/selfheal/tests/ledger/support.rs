//! Per-test databases, a recording alert sink, and a monitor made for
//! fast real-time tests (100 ms buckets).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use selfheal::health::{Alert, AlertRule, AlertSink, AlertState, Monitor, Severity, SinkFuture};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;

/// The monitor's bucket width in these tests.
pub(crate) const BUCKET: Duration = Duration::from_millis(100);

/// A fresh SQLite file's URL.
pub(crate) fn sqlite_url(test: &str) -> String {
    let dir =
        std::env::temp_dir().join(format!("selfheal-ledger-{test}-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join("app.db").display())
}

pub(crate) async fn sqlite(url: &str) -> SqlitePool {
    selfheal::db::sqlite::open_pool(url).await.unwrap()
}

/// A fresh PostgreSQL schema's connect options; `None` (with a note) when
/// `SELFHEAL_TEST_POSTGRES_URL` is not set outside CI, a panic in CI.
pub(crate) async fn postgres(test: &str) -> Option<PgConnectOptions> {
    let url = match std::env::var("SELFHEAL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but SELFHEAL_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI"
            );
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: SELFHEAL_TEST_POSTGRES_URL is not set, skipping PostgreSQL test {test}"
            );
            return None;
        }
    };
    let base = PgConnectOptions::from_str(&url).unwrap();
    let bootstrap = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(base.clone())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at SELFHEAL_TEST_POSTGRES_URL is unreachable: {e}"));
    let schema = format!("ledger_{test}_{:08x}", fastrand::u32(..));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&bootstrap)
        .await
        .unwrap();
    bootstrap.close().await;
    Some(base.options([("search_path", schema.as_str())]))
}

pub(crate) async fn pg_pool(options: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.clone())
        .await
        .unwrap()
}

/// Keeps every alert delivered to it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Alerts(pub(crate) Arc<Mutex<Vec<Alert>>>);

impl AlertSink for Alerts {
    fn name(&self) -> &str {
        "test"
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a> {
        self.0.lock().unwrap().push(alert.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Alerts {
    /// The notices in `state` for `fingerprint`.
    pub(crate) fn count(&self, state: AlertState, fingerprint: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.state == state && a.fingerprint.as_deref() == Some(fingerprint))
            .count()
    }
}

/// A started monitor with 100 ms buckets (10 s horizon) and the guide's
/// rule shrunk to a 3 s window: more than 10 of one error → CRITICAL.
pub(crate) fn monitor(sink: &Alerts) -> Monitor {
    Monitor::builder()
        .with_global(false)
        .with_bucket_width(BUCKET)
        .with_buckets(100)
        .with_rules(vec![AlertRule::RepeatedError {
            name: "repeated_error".into(),
            threshold: 10,
            window: Duration::from_secs(3),
            severity: Severity::Critical,
        }])
        .with_cooldown(Duration::from_secs(1))
        .with_evaluation_interval(Duration::from_millis(50))
        .with_sink(Arc::new(sink.clone()))
        .start()
        .unwrap()
}

/// Polls `check` every 20 ms for up to `within`; whether it held.
pub(crate) async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
