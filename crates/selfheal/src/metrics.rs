//! `/metrics` in Prometheus text format, through the `metrics` facade.
//!
//! Why both a dashboard and metrics? The dashboard answers "what is wrong
//! right now" for a person; Prometheus keeps the history, draws the graphs
//! across deploys and pages on rates. Both read the same facts: the
//! [`Monitor`] and the events selfheal components report.
//!
//! What is exported:
//!
//! | metric | type | fed by |
//! |---|---|---|
//! | `selfheal_http_requests_total{outcome="ok"\|"client_error"\|"server_error"}` | counter | [`HealLayer::with_metrics`](crate::web::HealLayer::with_metrics) |
//! | `selfheal_http_request_duration_seconds` | histogram | the same |
//! | `selfheal_errors_total{kind, operation}` | counter | every error the [`Monitor`] records, whoever reported it |
//! | `selfheal_heals_total{kind}` | counter | every heal the monitor records, of every [`HealKind`] |
//! | `selfheal_retries_total{operation}` | counter | retry events the monitor receives |
//! | `selfheal_gave_up_total{operation, reason}` | counter | give-up events the monitor receives |
//! | `selfheal_breaker_state{breaker}` | gauge, 0 closed, 1 half-open, 2 open | breaker events, and the monitor at scrape time |
//! | `selfheal_status` | gauge, 0 healthy, 1 degraded, 2 critical | the monitor, at scrape time |
//! | `selfheal_ready` | gauge, 0 or 1 | the monitor, at scrape time |
//! | `selfheal_fingerprint_errors{fingerprint}` | gauge: errors within the monitor's horizon | the monitor, at scrape time |
//! | `selfheal_check_passing{check}` | gauge, 0 or 1 | the monitor, at scrape time |
//! | `selfheal_budget_refusals_total`, `selfheal_breaker_rejections_total`, `selfheal_throttle_rejections_total`, `selfheal_throttled_total` | counter | the monitor, at scrape time |
//! | `selfheal_throttling{throttle}` | gauge, 0 or 1 | adaptive throttles' events, read at scrape time |
//! | `selfheal_concurrency_limit{limiter}`, `selfheal_concurrency_in_flight{limiter}` | gauge | the adaptive concurrency limit's last window, at scrape time |
//! | `selfheal_shed_total{limiter}` | counter | the same |
//!
//! **One channel.** The metrics do not collect on their own: they are the
//! monitor's [listener](Monitor::set_listener) ([`Metrics::routes`] and
//! [`Metrics::listen_to`] set it), so every error and heal is counted exactly
//! when, and only if, the monitor records it. `/metrics` and the dashboard
//! cannot disagree.
//!
//! **No lock on the hot path.** The request counters and the latency histogram
//! are plain atomics owned by [`Metrics`] and rendered next to the exporter's
//! output: a request costs three relaxed atomic adds, never a registry
//! lookup, a lock or an allocation. Labelled
//! counters (errors, heals) are looked up on the error path only. Everything
//! the monitor knows is read when Prometheus scrapes.
//!
//! ```
//! use axum::Router;
//! use selfheal::health::Monitor;
//! use selfheal::metrics::Metrics;
//! use selfheal::web::HealLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let monitor = Monitor::builder().with_global(false).build().unwrap();
//! let metrics = Metrics::install().unwrap(); // once per process; later calls share it
//! let app: Router = Router::new()
//!     .layer(HealLayer::new(monitor.clone()).with_metrics(&metrics))
//!     .merge(metrics.routes(monitor.clone()));
//! # let _ = app;
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::ConfigError;
use crate::health::{HealKind, Monitor, Status};
use crate::observe::{BreakerState, Event, Observer};

const LATENCY: &str = "selfheal_http_request_duration_seconds";
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LATENCY_BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The process's Prometheus recorder and the handles selfheal records through.
/// Cheap to clone. See the [module docs](self).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    handle: PrometheusHandle,
    http: HttpMetrics,
    /// Label values of the scrape-time gauges set last time, to zero the ones
    /// that disappeared (a fingerprint that left the window).
    last_gauges: Mutex<BTreeSet<(&'static str, String)>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static INSTALLED: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    /// Installs the Prometheus recorder as the process's `metrics` recorder
    /// (once; later calls return the same `Metrics`). The request latency
    /// histogram has buckets from 0.5 ms to 10 s. When called inside a tokio
    /// runtime, a background task runs the recorder's upkeep every 5 s (it
    /// drains histogram samples even when nobody scrapes).
    ///
    /// Fails when another `metrics` recorder is already installed.
    pub fn install() -> Result<Self, ConfigError> {
        if let Some(metrics) = INSTALLED.get() {
            return Ok(metrics.clone());
        }
        let mut failure = None;
        let metrics = INSTALLED.get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                failure = Some(ConfigError::new(format!(
                    "cannot install the Prometheus recorder: {error}"
                )));
            }
            metrics::describe_counter!(
                "selfheal_errors_total",
                "errors recorded, by kind and operation"
            );
            metrics::describe_counter!("selfheal_heals_total", "heals, by kind");
            let http = HttpMetrics::default();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let handle = handle.clone();
                runtime.spawn(async move {
                    let mut ticker = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        ticker.tick().await;
                        handle.run_upkeep();
                    }
                });
            }
            Metrics {
                inner: Arc::new(Inner {
                    handle,
                    http,
                    last_gauges: Mutex::new(BTreeSet::new()),
                }),
            }
        });
        match failure {
            Some(error) => Err(error),
            None => Ok(metrics.clone()),
        }
    }

    /// The exporter's handle (to run upkeep yourself). Its `render` lacks the
    /// per-request HTTP metrics: use [`Metrics::render`].
    pub fn handle(&self) -> &PrometheusHandle {
        &self.inner.handle
    }

    pub(crate) fn http(&self) -> HttpMetrics {
        self.inner.http.clone()
    }

    /// The Prometheus text exposition of every metric, after refreshing the
    /// gauges read from `monitor`.
    pub fn render(&self, monitor: &Monitor) -> String {
        self.refresh(monitor);
        let mut text = self.inner.handle.render();
        self.inner.http.render(&mut text);
        text
    }

    /// Sets the scrape-time gauges from `monitor`.
    fn refresh(&self, monitor: &Monitor) {
        let report = monitor.report(monitor.horizon());
        metrics::gauge!("selfheal_status").set(match report.status {
            Status::Healthy => 0.0,
            Status::Degraded => 1.0,
            Status::Critical => 2.0,
        });
        metrics::gauge!("selfheal_ready").set(if monitor.is_ready() { 1.0 } else { 0.0 });
        metrics::counter!("selfheal_budget_refusals_total").absolute(report.budget_refusals);
        metrics::counter!("selfheal_breaker_rejections_total").absolute(report.breaker_rejections);
        metrics::counter!("selfheal_throttled_total").absolute(report.throttled);
        let mut now = BTreeSet::new();
        for fp in &report.fingerprints {
            metrics::gauge!("selfheal_fingerprint_errors", "fingerprint" => fp.fingerprint.clone())
                .set(fp.count as f64);
            now.insert(("selfheal_fingerprint_errors", fp.fingerprint.clone()));
        }
        for breaker in &report.breakers {
            metrics::gauge!("selfheal_breaker_state", "breaker" => breaker.name.clone())
                .set(breaker_gauge(breaker.state));
        }
        metrics::counter!("selfheal_throttle_rejections_total")
            .absolute(report.throttle_rejections);
        for throttle in &report.throttles {
            metrics::gauge!("selfheal_throttling", "throttle" => throttle.name.clone())
                .set(if throttle.throttling { 1.0 } else { 0.0 });
        }
        for limiter in &report.limiters {
            let name = limiter.name.clone();
            metrics::gauge!("selfheal_concurrency_limit", "limiter" => name.clone())
                .set(f64::from(limiter.limit));
            metrics::gauge!("selfheal_concurrency_in_flight", "limiter" => name.clone())
                .set(f64::from(limiter.in_flight));
            metrics::counter!("selfheal_shed_total", "limiter" => name).absolute(limiter.shed);
        }
        for check in &report.checks {
            let passing = if check.passing == Some(true) {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("selfheal_check_passing", "check" => check.name.clone()).set(passing);
        }
        let mut last = crate::sync::lock(&self.inner.last_gauges);
        for (name, label) in last.difference(&now) {
            metrics::gauge!(*name, "fingerprint" => label.clone()).set(0.0);
        }
        *last = now;
    }

    /// A router with `GET /metrics` (Prometheus text format, version 0.0.4),
    /// listening to `monitor` (see [`Metrics::listen_to`]) unless it has a
    /// listener already.
    ///
    /// Mount it where your scraper reaches it; it shows fingerprints
    /// (error kinds and route templates), no messages and no secrets, but it
    /// is still internal information: keep it off the public internet or
    /// behind your proxy's auth.
    pub fn routes<S>(&self, monitor: Monitor) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        if !monitor.has_listener() {
            self.listen_to(&monitor);
        }
        let metrics = self.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let monitor = monitor.clone();
                async move {
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(&monitor),
                    )
                        .into_response()
                }
            }),
        )
    }

    /// Makes these metrics `monitor`'s [listener](Monitor::set_listener):
    /// every error and heal it records, and the retry, give-up and breaker
    /// events it receives, are counted. `false` when the monitor already has
    /// another listener (combine them with [`Fanout`](crate::observe::Fanout)
    /// and [`Metrics::listener`]). [`Metrics::routes`] calls this.
    pub fn listen_to(&self, monitor: &Monitor) -> bool {
        monitor.set_listener(Arc::new(self.listener()))
    }

    /// The listener [`Metrics::listen_to`] installs, to combine with others.
    pub fn listener(&self) -> MetricsListener {
        MetricsListener { _private: () }
    }
}

/// The per-request metrics: plain atomics, rendered with the exporter's
/// output. A request costs three relaxed atomic adds (its outcome, its
/// latency bucket, the latency sum): no registry, no lock, no allocation.
/// (The exporter's own histogram allocates sample blocks and pins an epoch
/// on every record; per request that was most of the layer's cost.)
#[derive(Clone, Default)]
pub(crate) struct HttpMetrics {
    inner: Arc<HttpCounters>,
}

#[derive(Default)]
struct HttpCounters {
    /// ok, client_error, server_error.
    outcomes: [AtomicU64; 3],
    /// Requests with latency ≤ each bound, not cumulative (the last slot is
    /// beyond the largest bound).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

const OUTCOMES: [&str; 3] = ["ok", "client_error", "server_error"];

impl HttpMetrics {
    #[inline]
    pub(crate) fn observe(&self, status: StatusCode, elapsed: Duration) {
        let c = &*self.inner;
        let outcome = if status.is_server_error() {
            2
        } else if status.is_client_error() {
            1
        } else {
            0
        };
        c.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        let nanos = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(LATENCY_BOUNDS_NANOS.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        c.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of these metrics to `out`.
    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let c = &*self.inner;
        let _ = writeln!(
            out,
            "# HELP selfheal_http_requests_total HTTP requests seen by the HealLayer, by outcome"
        );
        let _ = writeln!(out, "# TYPE selfheal_http_requests_total counter");
        for (name, count) in OUTCOMES.iter().zip(&c.outcomes) {
            let _ = writeln!(
                out,
                "selfheal_http_requests_total{{outcome=\"{name}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {LATENCY} HTTP request latency seen by the HealLayer"
        );
        let _ = writeln!(out, "# TYPE {LATENCY} histogram");
        let mut cumulative = 0;
        for (i, count) in c.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match LATENCY_BUCKETS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{LATENCY}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{LATENCY}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = c.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{LATENCY}_sum {sum}");
        let _ = writeln!(out, "{LATENCY}_count {cumulative}");
    }
}

/// Counts an error in `selfheal_errors_total`.
fn count_error(kind: &str, operation: &str) {
    metrics::counter!(
        "selfheal_errors_total",
        "kind" => kind.to_owned(),
        "operation" => operation.to_owned()
    )
    .increment(1);
}

/// Counts a heal in `selfheal_heals_total`.
fn count_heal(kind: HealKind) {
    metrics::counter!("selfheal_heals_total", "kind" => kind.as_str()).increment(1);
}

/// Counts what a [`Monitor`] records and receives in metrics: its
/// [listener](Monitor::set_listener), made by [`Metrics::listener`].
pub struct MetricsListener {
    _private: (),
}

impl fmt::Debug for MetricsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsListener").finish_non_exhaustive()
    }
}

/// The value of `selfheal_breaker_state`: 0 closed, 1 half-open, 2 open.
fn breaker_gauge(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

impl Observer for MetricsListener {
    fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Error {
                operation, failure, ..
            } => count_error(failure.kind, operation),
            Event::Heal { kind, .. } => count_heal(kind),
            Event::Retry { operation, .. } => {
                metrics::counter!("selfheal_retries_total", "operation" => operation.to_owned())
                    .increment(1);
            }
            Event::GaveUp {
                operation, reason, ..
            } => {
                metrics::counter!(
                    "selfheal_gave_up_total",
                    "operation" => operation.to_owned(),
                    "reason" => reason.as_str()
                )
                .increment(1);
            }
            Event::BreakerTransition { breaker, to, .. } => {
                metrics::gauge!("selfheal_breaker_state", "breaker" => breaker.to_owned())
                    .set(breaker_gauge(to));
            }
            // Recoveries and fallbacks reach the listener as the heals and
            // errors the monitor records for them; rejections are read at
            // scrape time.
            _ => {}
        }
    }
}
