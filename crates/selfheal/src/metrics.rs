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
//! | `selfheal_errors_total{kind, operation}` | counter | the `HealLayer`, session repairs, and the [observer hook](crate::observe) (gave up, fallback used) |
//! | `selfheal_heals_total{kind}` | counter | the same, plus retry recoveries and breaker transitions |
//! | `selfheal_retries_total{operation}` | counter | the observer hook |
//! | `selfheal_gave_up_total{operation, reason}` | counter | the observer hook |
//! | `selfheal_breaker_state{breaker}` | gauge, 0 closed, 1 half-open, 2 open | the observer hook and the monitor |
//! | `selfheal_status` | gauge, 0 healthy, 1 degraded, 2 critical | the monitor, at scrape time |
//! | `selfheal_ready` | gauge, 0 or 1 | the monitor, at scrape time |
//! | `selfheal_fingerprint_errors{fingerprint}` | gauge: errors within the monitor's horizon | the monitor, at scrape time |
//! | `selfheal_check_passing{check}` | gauge, 0 or 1 | the monitor, at scrape time |
//! | `selfheal_budget_refusals_total`, `selfheal_breaker_rejections_total` | counter | the monitor, at scrape time |
//!
//! **No lock on the hot path.** The request counters and the latency histogram
//! are handles registered once, when the layer is built: a request costs an
//! atomic add and a lock-free histogram push, never a registry lookup. Labelled
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
//! let monitor = Monitor::builder().global(false).build().unwrap();
//! let metrics = Metrics::install().unwrap(); // once per process; later calls share it
//! let app: Router = Router::new()
//!     .layer(HealLayer::new(monitor.clone()).with_metrics(&metrics))
//!     .merge(metrics.routes(monitor.clone()));
//! # let _ = app;
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ConfigError;
use crate::health::{HealKind, Monitor, Status};
use crate::observe::{BreakerState, Event, GiveUpReason, Observer};

const LATENCY: &str = "selfheal_http_request_duration_seconds";
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
    /// (once; later calls return the same `Metrics`), with histogram buckets
    /// for the request latency (0.5 ms to 10 s). When called inside a tokio
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
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(LATENCY.to_owned()), &LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            let handle = match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if let Err(error) = metrics::set_global_recorder(recorder) {
                        failure = Some(ConfigError::new(format!(
                            "cannot install the Prometheus recorder: {error}"
                        )));
                    }
                    handle
                }
                Err(error) => {
                    failure = Some(ConfigError::new(format!(
                        "cannot build the Prometheus recorder: {error}"
                    )));
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            metrics::describe_counter!(
                "selfheal_http_requests_total",
                "HTTP requests seen by the HealLayer, by outcome"
            );
            metrics::describe_histogram!(
                LATENCY,
                metrics::Unit::Seconds,
                "HTTP request latency seen by the HealLayer"
            );
            metrics::describe_counter!(
                "selfheal_errors_total",
                "errors recorded, by kind and operation"
            );
            metrics::describe_counter!("selfheal_heals_total", "heals, by kind");
            let http = HttpMetrics {
                ok: metrics::counter!("selfheal_http_requests_total", "outcome" => "ok"),
                client_error: metrics::counter!(
                    "selfheal_http_requests_total", "outcome" => "client_error"
                ),
                server_error: metrics::counter!(
                    "selfheal_http_requests_total", "outcome" => "server_error"
                ),
                latency: metrics::histogram!(LATENCY),
            };
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

    /// The exporter's handle (to render, or to run upkeep yourself).
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
        self.inner.handle.render()
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
        let mut now = BTreeSet::new();
        for fp in &report.fingerprints {
            metrics::gauge!("selfheal_fingerprint_errors", "fingerprint" => fp.fingerprint.clone())
                .set(fp.count as f64);
            now.insert(("selfheal_fingerprint_errors", fp.fingerprint.clone()));
        }
        for breaker in &report.breakers {
            let value = match breaker.state {
                "open" => 2.0,
                "half_open" => 1.0,
                _ => 0.0,
            };
            metrics::gauge!("selfheal_breaker_state", "breaker" => breaker.name.clone()).set(value);
        }
        for check in &report.checks {
            let passing = if check.passing == Some(true) {
                1.0
            } else {
                0.0
            };
            metrics::gauge!("selfheal_check_passing", "check" => check.name.clone()).set(passing);
        }
        let mut last = self
            .inner
            .last_gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (name, label) in last.difference(&now) {
            metrics::gauge!(*name, "fingerprint" => label.clone()).set(0.0);
        }
        *last = now;
    }

    /// A router with `GET /metrics` (Prometheus text format, version 0.0.4).
    ///
    /// Mount it where your scraper reaches it; it shows fingerprints
    /// (error kinds and route templates), no messages and no secrets, but it
    /// is still internal information: keep it off the public internet or
    /// behind your proxy's auth.
    pub fn routes<S>(&self, monitor: Monitor) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
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

    /// An observer that counts selfheal's events in metrics, then hands them
    /// to `next` (usually [`Monitor::observer`]).
    pub fn observer(&self, next: Arc<dyn Observer>) -> MetricsObserver {
        MetricsObserver { next }
    }

    /// Installs, as the process-wide observer, one that counts events in
    /// metrics and feeds `monitor` (use instead of the monitor's own
    /// `global(true)`).
    pub fn observe_globally(&self, monitor: &Monitor) {
        crate::observe::set_global(Arc::new(self.observer(Arc::new(monitor.observer()))));
    }
}

/// Handles registered once, used on every request.
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    ok: Counter,
    client_error: Counter,
    server_error: Counter,
    latency: Histogram,
}

impl HttpMetrics {
    #[inline]
    pub(crate) fn observe(&self, status: StatusCode, elapsed: Duration) {
        let counter = if status.is_server_error() {
            &self.server_error
        } else if status.is_client_error() {
            &self.client_error
        } else {
            &self.ok
        };
        counter.increment(1);
        self.latency.record(elapsed.as_secs_f64());
    }
}

/// Counts an error in `selfheal_errors_total`.
pub(crate) fn count_error(kind: &str, operation: &str) {
    metrics::counter!(
        "selfheal_errors_total",
        "kind" => kind.to_owned(),
        "operation" => operation.to_owned()
    )
    .increment(1);
}

/// Counts a heal in `selfheal_heals_total`.
pub(crate) fn count_heal(kind: HealKind) {
    metrics::counter!("selfheal_heals_total", "kind" => kind.as_str()).increment(1);
}

/// Counts selfheal's [events](Event) in metrics, then passes them on.
/// Made by [`Metrics::observer`].
pub struct MetricsObserver {
    next: Arc<dyn Observer>,
}

impl fmt::Debug for MetricsObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsObserver").finish_non_exhaustive()
    }
}

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Retry { operation, .. } => {
                metrics::counter!("selfheal_retries_total", "operation" => operation.to_owned())
                    .increment(1);
            }
            Event::Recovered { .. } => count_heal(HealKind::RetryRecovered),
            Event::GaveUp {
                operation,
                reason,
                failure,
                ..
            } => {
                metrics::counter!(
                    "selfheal_gave_up_total",
                    "operation" => operation.to_owned(),
                    "reason" => reason.as_str()
                )
                .increment(1);
                if reason != GiveUpReason::Permanent {
                    count_error(failure.kind, operation);
                }
            }
            Event::FallbackUsed { operation, failure } => {
                count_error(failure.kind, operation);
                count_heal(HealKind::FallbackUsed);
            }
            Event::BreakerTransition { breaker, to, .. } => {
                let value = match to {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 1.0,
                    BreakerState::Open => 2.0,
                };
                metrics::gauge!("selfheal_breaker_state", "breaker" => breaker.to_owned())
                    .set(value);
                match to {
                    BreakerState::Open => count_heal(HealKind::BreakerOpened),
                    BreakerState::Closed => count_heal(HealKind::BreakerClosed),
                    BreakerState::HalfOpen => {}
                }
            }
            _ => {}
        }
        self.next.on_event(event);
    }
}
