//! The health monitor: what went wrong, what healed, and whether the service
//! is healthy, over sliding windows of time.
//!
//! Everything that heals reports here (through the [observer hook](crate::observe),
//! so retries, fallbacks and breaker transitions arrive with no user code), and
//! everything that shows health reads from here: the guide's
//! `get_error_summary()`, the admin dashboard, `/readyz`, the metrics and the
//! alert rules.
//!
//! Because it sits on every error path, it is built to never hurt the request
//! that reports:
//!
//! - **O(1), lock-free recording.** An error is a hash lookup in an immutable
//!   table (insert-only, so readers never wait) and one compare-exchange
//!   into a time bucket. No lock, no allocation for a known fingerprint.
//! - **Bounded memory.** Counts live in a ring of time buckets (60 one-minute
//!   buckets by default); at most `max_fingerprints` distinct fingerprints are
//!   tracked (1,000 by default) and anything beyond counts under `other`. An
//!   attacker who triggers a million distinct errors gets an `other` bucket,
//!   not an out-of-memory.
//! - **Grouping by fingerprint, never by message.** A fingerprint is the error's
//!   kind plus the operation (`Error@save_progress`, `503@http:api.openai.com`):
//!   stable and low-cardinality. Messages carry user data and unbounded
//!   variety; one sample (truncated to 200 characters) is kept per fingerprint
//!   for the operator.
//! - **Alerts off the request path.** Rules are evaluated by a background task
//!   (once a second by default); notices go through a bounded channel to the
//!   sinks (dropped and counted if it is full), and each sink delivery is
//!   retried with backoff by the retry engine.
//!
//! ## Sinks: alerts must leave the process
//!
//! An alert that only reaches the service's own log is read when someone
//! happens to look; one that matters at 3 a.m. has to reach a person. Every
//! monitor writes alerts to the log ([`LogSink`]); add sinks with
//! [`MonitorBuilder::sink`]:
//!
//! | sink | feature | for |
//! |---|---|---|
//! | [`LogSink`] | always | the log, `ERROR` with the `CRITICAL` marker |
//! | `WebhookSink` | `webhook` | a JSON `POST` to a chat channel, a pager, a relay |
//! | `EmailSink` | `email` | an email over SMTP: for small teams without a pager |
//! | your own | | anything implementing [`AlertSink`] |
//!
//! A failed delivery is retried with the monitor's
//! [`sink_policy`](MonitorBuilder::sink_policy), then counted
//! ([`Report::alert_delivery_failures`]) and recorded as an error under the
//! operation `alert_sink:<name>`. Secrets (webhook headers, SMTP passwords)
//! never appear in `Debug` output, logs or recorded errors.
//!
//! ```
//! use selfheal::health::Monitor;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let monitor = Monitor::builder().global(false).build().unwrap();
//! monitor.record_error("OperationalError", "save_progress", &"database is locked");
//! monitor.record_error("KeyError", "dashboard", &"'xp'");
//!
//! let summary = monitor.error_summary();
//! assert_eq!(summary.total_errors, 2);
//! assert_eq!(summary.errors_by_type["KeyError"], 1);
//! assert_eq!(summary.time_window, "Last 15 minutes");
//! # }
//! ```

mod alert;
mod check;
#[cfg(feature = "email")]
mod email;
mod observer;
mod report;
mod table;
#[cfg(feature = "webhook")]
mod webhook;
mod window;

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use alert::{Alert, AlertRule, AlertSink, AlertState, LogSink, Severity, SinkFuture};
pub use check::{CheckOptions, CheckResult};
#[cfg(feature = "email")]
pub use email::{EmailError, EmailSink};
pub use report::{
    BreakerReport, FingerprintReport, HealRecord, Report, RequestReport, Status, Summary,
};
#[cfg(feature = "webhook")]
pub use webhook::{WebhookError, WebhookPayload, WebhookSink};

use crate::ConfigError;
use crate::observe::{self, BreakerState, Event, Failure, Observer};
pub use crate::observe::{ClientId, HealKind};
use crate::retry::{Backoff, Policy};
use alert::{AlertBook, Transition};
use check::Check;
use table::Table;
use window::{ByClient, Ring};

/// The fingerprint every event beyond `max_fingerprints` is counted under.
pub const OTHER: &str = "other";

/// The rules that turn counts into a [`Status`]. Evaluated on every read
/// (status, summary, report, `/readyz`), never on the record path.
///
/// Defaults, and why:
///
/// | rule | degraded | critical |
/// |---|---|---|
/// | failed requests / requests over `rate_window` (5 min), with at least `min_requests` (20) | ≥ 5% | ≥ 25% |
/// | errors over `count_window` (15 min) | ≥ 50 | off |
/// | a circuit breaker open | yes | |
/// | a failing registered check | non-critical check | critical check |
/// | a condition ([`Monitor::set_condition`]: a worker waiting for a dependency or crashing past its intensity) | its status | its status |
/// | a firing `Critical` alert | | yes |
///
/// Errors recorded with a [`ClientId`] count here only once their
/// fingerprint was seen from [`min_clients`](MonitorBuilder::min_clients)
/// clients. None of this is readiness ([`Monitor::is_ready`]).
///
/// Rates are the primary signal (they scale with traffic); the absolute count
/// catches services that record no requests; the minimum request count keeps
/// one failure out of two requests at 3 a.m. from paging anyone.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRules {
    /// Window of the error-rate rules.
    pub rate_window: Duration,
    /// Below this many requests in `rate_window`, rates are not judged.
    pub min_requests: u64,
    /// Error ratio from which the status is degraded.
    pub degraded_error_ratio: f64,
    /// Error ratio from which the status is critical.
    pub critical_error_ratio: f64,
    /// Window of the absolute-count rules.
    pub count_window: Duration,
    /// Errors in `count_window` from which the status is degraded.
    pub degraded_errors: Option<u64>,
    /// Errors in `count_window` from which the status is critical.
    pub critical_errors: Option<u64>,
    /// Whether an open breaker makes the status degraded.
    pub open_breaker_degrades: bool,
}

impl Default for StatusRules {
    fn default() -> Self {
        Self {
            rate_window: Duration::from_secs(300),
            min_requests: 20,
            degraded_error_ratio: 0.05,
            critical_error_ratio: 0.25,
            count_window: Duration::from_secs(900),
            degraded_errors: Some(50),
            critical_errors: None,
            open_breaker_degrades: true,
        }
    }
}

/// Builds a [`Monitor`]. Defaults are listed on each method.
pub struct MonitorBuilder {
    bucket_width: Duration,
    buckets: usize,
    max_fingerprints: usize,
    rules: Vec<AlertRule>,
    cooldown: Duration,
    status: StatusRules,
    evaluation_interval: Duration,
    sinks: Vec<Arc<dyn AlertSink>>,
    channel_capacity: usize,
    recent: usize,
    global: bool,
    min_clients: u32,
    sink_policy: Policy,
}

impl fmt::Debug for MonitorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("bucket_width", &self.bucket_width)
            .field("buckets", &self.buckets)
            .field("max_fingerprints", &self.max_fingerprints)
            .field("rules", &self.rules)
            .field("cooldown", &self.cooldown)
            .field("status", &self.status)
            .field("evaluation_interval", &self.evaluation_interval)
            .field(
                "sinks",
                &self
                    .sinks
                    .iter()
                    .map(|s| s.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("channel_capacity", &self.channel_capacity)
            .field("global", &self.global)
            .finish()
    }
}

impl Default for MonitorBuilder {
    fn default() -> Self {
        let sink_policy = Policy::default()
            .with_name("alert_sink")
            .with_max_attempts(5)
            .expect("valid")
            .with_backoff(
                Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(30))
                    .expect("valid"),
            )
            .without_budget();
        Self {
            bucket_width: Duration::from_secs(60),
            buckets: 60,
            max_fingerprints: 1000,
            rules: vec![AlertRule::guide_default()],
            cooldown: Duration::from_secs(900),
            status: StatusRules::default(),
            evaluation_interval: Duration::from_secs(1),
            sinks: Vec::new(),
            channel_capacity: 64,
            recent: 50,
            global: true,
            min_clients: 3,
            sink_policy,
        }
    }
}

impl MonitorBuilder {
    /// Errors recorded with a [`ClientId`] (by [`HealLayer`](crate::web::HealLayer),
    /// from the request's address) move the status and fire alerts only once
    /// their fingerprint was seen from this many distinct clients within the
    /// rule's window. Default 3; 1 counts every error as before; at most 32.
    pub fn min_clients(mut self, clients: u32) -> Self {
        self.min_clients = clients.clamp(1, 32);
        self
    }

    /// Width of one time bucket. Default 1 minute.
    pub fn bucket_width(mut self, width: Duration) -> Self {
        self.bucket_width = width;
        self
    }

    /// Number of buckets kept; `bucket_width × buckets` is the horizon, the
    /// longest window a summary can cover. Default 60 (one hour).
    pub fn buckets(mut self, buckets: usize) -> Self {
        self.buckets = buckets;
        self
    }

    /// Most distinct fingerprints tracked (1 to 100,000); beyond, events
    /// count under [`OTHER`]. The table is allocated once for this many
    /// (about 32 bytes a slot, two slots per fingerprint, plus the
    /// fingerprint's buckets when it first occurs). Default 1,000.
    pub fn max_fingerprints(mut self, max: usize) -> Self {
        self.max_fingerprints = max;
        self
    }

    /// Replaces the alert rules. Default: [`AlertRule::guide_default`].
    pub fn rules(mut self, rules: Vec<AlertRule>) -> Self {
        self.rules = rules;
        self
    }

    /// Adds an alert rule.
    pub fn rule(mut self, rule: AlertRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// After firing, the same rule and fingerprint does not fire again within
    /// this time. Default 15 minutes.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The status rules. Default: [`StatusRules::default`].
    pub fn status_rules(mut self, rules: StatusRules) -> Self {
        self.status = rules;
        self
    }

    /// How often the background task evaluates alert rules. Default 1 s.
    pub fn evaluation_interval(mut self, interval: Duration) -> Self {
        self.evaluation_interval = interval;
        self
    }

    /// Adds an alert sink. [`LogSink`] is always installed.
    pub fn sink(mut self, sink: Arc<dyn AlertSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Capacity of the channel from the evaluator to the sinks; notices beyond
    /// it are dropped and counted. Default 64.
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity;
        self
    }

    /// How many recent heal events and alerts are kept for the dashboard.
    /// Default 50.
    pub fn recent(mut self, recent: usize) -> Self {
        self.recent = recent;
        self
    }

    /// Whether [`MonitorBuilder::start`] installs the monitor as the global
    /// observer, so every selfheal component reports to it with no user code.
    /// Default `true`.
    pub fn global(mut self, global: bool) -> Self {
        self.global = global;
        self
    }

    /// The retry policy for alert deliveries. Default: 5 attempts, exponential
    /// 1 s × 2 up to 30 s, no budget.
    pub fn sink_policy(mut self, policy: Policy) -> Self {
        self.sink_policy = policy;
        self
    }

    /// Builds the monitor without background tasks: rules are evaluated when
    /// you call [`Monitor::evaluate`], and checks run when you call
    /// [`Monitor::run_checks`]. For tests and benchmarks; services use
    /// [`MonitorBuilder::start`].
    pub fn build(self) -> Result<Monitor, ConfigError> {
        if self.bucket_width < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "health bucket width must be at least 1 ms",
            ));
        }
        if self.buckets == 0 || self.buckets > 100_000 {
            return Err(ConfigError::new(format!(
                "health buckets must be between 1 and 100000, got {}",
                self.buckets
            )));
        }
        if self.max_fingerprints == 0 || self.max_fingerprints > 100_000 {
            return Err(ConfigError::new(format!(
                "max_fingerprints must be between 1 and 100000, got {}",
                self.max_fingerprints
            )));
        }
        if self.channel_capacity == 0 {
            return Err(ConfigError::new(
                "alert channel capacity must be at least 1",
            ));
        }
        if self.evaluation_interval.is_zero() {
            return Err(ConfigError::new(
                "evaluation interval must be greater than zero",
            ));
        }
        let horizon = self.bucket_width.saturating_mul(self.buckets as u32);
        for rule in &self.rules {
            if rule.window() > horizon {
                return Err(ConfigError::new(format!(
                    "alert rule '{}' looks at {:?}, beyond the monitor's horizon of {horizon:?} \
                     (bucket width x buckets)",
                    rule.name(),
                    rule.window()
                )));
            }
        }
        let (tx, rx) = mpsc::channel(self.channel_capacity);
        let mut sinks: Vec<Arc<dyn AlertSink>> = vec![Arc::new(LogSink)];
        sinks.extend(self.sinks);
        let ring = || Ring::new(self.buckets);
        let inner = Inner {
            origin: Instant::now(),
            width_nanos: self.bucket_width.as_nanos().min(u128::from(u64::MAX)) as u64,
            buckets: self.buckets as u32,
            hasher: foldhash::fast::RandomState::default(),
            table: Table::new(self.max_fingerprints),
            other: Fingerprint::new(0, OTHER, "*", "", 0, self.buckets),
            requests: ring(),
            failed_requests: ring(),
            failed_by_client: ByClient::new(self.buckets),
            min_clients: self.min_clients,
            heals: HealKind::ALL.map(|_| ring()),
            recent_heals: Mutex::new(VecDeque::new()),
            recent: self.recent,
            retries: AtomicU64::new(0),
            budget_refusals: AtomicU64::new(0),
            breaker_rejections: AtomicU64::new(0),
            breakers: Mutex::new(BTreeMap::new()),
            checks: Mutex::new(Vec::new()),
            conditions: Mutex::new(BTreeMap::new()),
            draining: AtomicBool::new(false),
            listener: std::sync::OnceLock::new(),
            rules: self.rules,
            cooldown: self.cooldown,
            status: self.status,
            evaluation_interval: self.evaluation_interval,
            book: Mutex::new(AlertBook::default()),
            recent_alerts: Mutex::new(VecDeque::new()),
            alerts_dropped: AtomicU64::new(0),
            alerts_delivered: AtomicU64::new(0),
            delivery_failures: AtomicU64::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
            sinks,
            sink_policy: self.sink_policy,
            started: AtomicBool::new(false),
            coarse_on: AtomicBool::new(false),
            coarse_ms: AtomicU64::new(0),
            coarse_epoch: AtomicU64::new(0),
        };
        Ok(Monitor {
            inner: Arc::new(inner),
        })
    }

    /// Builds the monitor and starts its background tasks (alert evaluation
    /// and delivery; checks start as they are registered). Installs it as the
    /// global observer unless [`MonitorBuilder::global`] says otherwise.
    /// Needs a tokio runtime. The tasks stop when the last [`Monitor`] clone
    /// is dropped.
    pub fn start(self) -> Result<Monitor, ConfigError> {
        let global = self.global;
        let monitor = self.build()?;
        monitor.spawn_tasks();
        if global {
            observe::set_global(monitor.observer());
        }
        Ok(monitor)
    }
}

#[derive(Debug)]
pub(crate) struct Fingerprint {
    /// The table hash of `(kind, operation)`.
    hash: u64,
    kind: Box<str>,
    operation: Box<str>,
    /// `kind@operation`, or just `kind` for [`OTHER`].
    key: Box<str>,
    sample: Box<str>,
    ring: Ring,
    /// The part of `ring` recorded with a client (a request's), and which
    /// clients: see [`ClientId`].
    by_client: ByClient,
    /// Monitor time (ms) of the first and last event.
    first_seen_ms: u64,
    last_seen_ms: AtomicU64,
}

impl Fingerprint {
    fn new(
        hash: u64,
        kind: &str,
        operation: &str,
        sample: &str,
        now_ms: u64,
        buckets: usize,
    ) -> Self {
        let key = if operation == "*" {
            kind.into()
        } else {
            format!("{kind}@{operation}").into()
        };
        Self {
            hash,
            kind: kind.into(),
            operation: operation.into(),
            key,
            sample: sample.into(),
            ring: Ring::new(buckets),
            by_client: ByClient::new(buckets),
            first_seen_ms: now_ms,
            last_seen_ms: AtomicU64::new(now_ms),
        }
    }

    fn key(&self) -> &str {
        &self.key
    }

    #[inline]
    fn touch(&self, now_ms: u64) {
        // Store only when it moved by a second or more: a hot fingerprint does
        // not write this cache line on every event.
        if now_ms >= self.last_seen_ms.load(Ordering::Relaxed) + 1000 {
            self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        }
    }
}

struct Inner {
    origin: Instant,
    width_nanos: u64,
    buckets: u32,
    hasher: foldhash::fast::RandomState,
    table: Table,
    other: Fingerprint,
    requests: Ring,
    failed_requests: Ring,
    failed_by_client: ByClient,
    /// Distinct clients from which errors count: see [`ClientId`].
    min_clients: u32,
    heals: [Ring; HealKind::ALL.len()],
    recent_heals: Mutex<VecDeque<HealRecord>>,
    recent: usize,
    retries: AtomicU64,
    budget_refusals: AtomicU64,
    breaker_rejections: AtomicU64,
    breakers: Mutex<BTreeMap<String, (BreakerState, u64)>>,
    checks: Mutex<Vec<Arc<Check>>>,
    /// Conditions set by components (a supervised worker waiting for a
    /// dependency, say): key → (status, reason).
    conditions: Mutex<BTreeMap<String, (Status, String)>>,
    /// Set when the process is shutting down: `/readyz` fails so that load
    /// balancers stop sending new requests.
    draining: AtomicBool,
    /// Hears every error and heal recorded, and every observer event
    /// received: the metrics, a store (see [`Monitor::set_listener`]).
    listener: std::sync::OnceLock<Arc<dyn Observer>>,
    rules: Vec<AlertRule>,
    cooldown: Duration,
    status: StatusRules,
    evaluation_interval: Duration,
    book: Mutex<AlertBook>,
    recent_alerts: Mutex<VecDeque<Alert>>,
    alerts_dropped: AtomicU64,
    alerts_delivered: AtomicU64,
    delivery_failures: AtomicU64,
    tx: mpsc::Sender<Alert>,
    rx: Mutex<Option<mpsc::Receiver<Alert>>>,
    sinks: Vec<Arc<dyn AlertSink>>,
    sink_policy: Policy,
    started: AtomicBool,
    coarse_on: AtomicBool,
    coarse_ms: AtomicU64,
    coarse_epoch: AtomicU64,
}

/// Truncates `s` to at most `max` characters, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

use crate::sync::lock;

/// The health monitor. Cheap to clone; clones share everything. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("fingerprints", &self.fingerprint_count())
            .field("buckets", &self.inner.buckets)
            .finish_non_exhaustive()
    }
}

/// Clock readings in the monitor's units.
#[derive(Clone, Copy, Debug)]
struct Now {
    epoch: u32,
    ms: u64,
}

impl Monitor {
    /// A builder with the defaults.
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder::default()
    }

    /// The time for recording: the coarse clock kept by the background task
    /// when the monitor was started (two atomic loads), else a clock read.
    ///
    /// Recording is the hot path and a clock read is most of its cost (about
    /// 25-40 ns for tokio's clock, more than everything else together); a
    /// bucket is a minute wide, so a timestamp up to one tick old (at most
    /// 250 ms) changes nothing. Reads (summaries, alert rules) use the exact
    /// clock.
    #[inline]
    fn record_now(&self) -> Now {
        if self.inner.coarse_on.load(Ordering::Relaxed) {
            Now {
                epoch: self.inner.coarse_epoch.load(Ordering::Relaxed) as u32,
                ms: self.inner.coarse_ms.load(Ordering::Relaxed),
            }
        } else {
            self.now()
        }
    }

    fn tick_coarse_clock(&self) {
        let now = self.now();
        self.inner.coarse_ms.store(now.ms, Ordering::Relaxed);
        self.inner
            .coarse_epoch
            .store(u64::from(now.epoch), Ordering::Relaxed);
        self.inner.coarse_on.store(true, Ordering::Relaxed);
    }

    #[inline]
    fn now(&self) -> Now {
        let nanos = self
            .inner
            .origin
            .elapsed()
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        Now {
            epoch: (nanos / self.inner.width_nanos) as u32,
            ms: nanos / 1_000_000,
        }
    }

    fn span(&self, window: Duration) -> u32 {
        let width = u128::from(self.inner.width_nanos);
        (window.as_nanos().div_ceil(width)).clamp(1, u128::from(self.inner.buckets)) as u32
    }

    /// The longest window a summary can cover (bucket width × buckets).
    pub fn horizon(&self) -> Duration {
        Duration::from_nanos(self.inner.width_nanos).saturating_mul(self.inner.buckets)
    }

    #[inline]
    fn hash(&self, kind: &str, operation: &str) -> u64 {
        self.inner.hasher.hash_one((kind, operation))
    }

    /// Records an error: `kind` is a short stable name (an error type, a
    /// status code), `operation` where it happened (a route template, a
    /// dependency), `message` one human-readable sample (kept, truncated and
    /// [redacted](crate::redact), for the first occurrence of the
    /// fingerprint only).
    ///
    /// For a known fingerprint this is a hash, a lock-free map lookup and one
    /// compare-exchange (plus a clock read when the monitor was built without
    /// its background task): no lock, no allocation.
    #[inline]
    pub fn record_error(&self, kind: &str, operation: &str, message: &dyn fmt::Display) {
        self.record_error_from(kind, operation, message, None);
    }

    /// Records an error caused while serving `client` (see [`ClientId`]):
    /// counted and shown like any other, but it moves the status and fires
    /// alerts only once the fingerprint has been seen from
    /// [`min_clients`](MonitorBuilder::min_clients) distinct clients within
    /// the rule's window. `None` is [`Monitor::record_error`]: the server's
    /// own work (a worker, a check), which always counts.
    #[inline]
    pub fn record_error_from(
        &self,
        kind: &str,
        operation: &str,
        message: &dyn fmt::Display,
        client: Option<ClientId>,
    ) {
        let now = self.record_now();
        let hash = self.hash(kind, operation);
        let fp = match self.inner.table.get(hash, kind, operation) {
            Some(fp) => fp,
            None => self.insert_fingerprint(hash, kind, operation, message, now),
        };
        fp.ring.add(now.epoch, 1);
        if let Some(client) = client {
            fp.by_client.add(now.epoch, client.0);
        }
        fp.touch(now.ms);
        if let Some(listener) = self.inner.listener.get() {
            listener.on_event(&Event::Error {
                operation,
                failure: Failure { kind, message },
                client,
            });
        }
    }

    /// Sets the monitor's listener: it hears every error and heal the
    /// monitor records (whoever reported it: a component calling
    /// [`Monitor::record_error`], an [`Event`] through the observer hook)
    /// and every other observer event the monitor receives, so that what it
    /// counts (Prometheus, a store) is exactly what the dashboard shows.
    /// [`Metrics::routes`](crate::metrics::Metrics::routes) sets itself.
    ///
    /// One listener per monitor (combine several with
    /// [`Fanout`](crate::observe::Fanout)); `false` if one was set already.
    pub fn set_listener(&self, listener: Arc<dyn Observer>) -> bool {
        self.inner.listener.set(listener).is_ok()
    }

    /// Whether a listener is set.
    pub fn has_listener(&self) -> bool {
        self.inner.listener.get().is_some()
    }

    /// The slow path of [`Monitor::record_error`]: a new fingerprint, or
    /// [`OTHER`] when the table is full (no lock then: the path an attacker
    /// triggering distinct errors would hammer).
    #[cold]
    fn insert_fingerprint(
        &self,
        hash: u64,
        kind: &str,
        operation: &str,
        message: &dyn fmt::Display,
        now: Now,
    ) -> &Fingerprint {
        let make = || {
            Fingerprint::new(
                hash,
                &truncate(kind, 100),
                &truncate(operation, 200),
                &truncate(&crate::redact::redact(&message.to_string()), 200),
                now.ms,
                self.inner.buckets as usize,
            )
        };
        self.inner
            .table
            .get_or_insert(hash, kind, operation, make)
            .unwrap_or(&self.inner.other)
    }

    /// Records a heal.
    pub fn record_heal(&self, kind: HealKind, operation: &str) {
        let now = self.record_now();
        self.inner.heals[kind.index()].add(now.epoch, 1);
        if let Some(listener) = self.inner.listener.get() {
            listener.on_event(&Event::Heal { kind, operation });
        }
        let mut recent = lock(&self.inner.recent_heals);
        if recent.len() >= self.inner.recent {
            recent.pop_front();
        }
        if self.inner.recent > 0 {
            recent.push_back(HealRecord {
                kind,
                operation: truncate(&crate::redact::redact(operation), 200),
                at_ms: now.ms,
                ago_secs: 0,
            });
        }
    }

    /// Records the outcome of one request (for error rates).
    #[inline]
    pub fn record_request(&self, failed: bool) {
        self.record_request_from(failed, None);
    }

    /// Records the outcome of one request from `client`: a failure counts
    /// in the error rate once failures come from
    /// [`min_clients`](MonitorBuilder::min_clients) distinct clients within
    /// the rate's window (see [`ClientId`]).
    #[inline]
    pub fn record_request_from(&self, failed: bool, client: Option<ClientId>) {
        let now = self.record_now();
        self.inner.requests.add(now.epoch, 1);
        if failed {
            self.inner.failed_requests.add(now.epoch, 1);
            if let Some(client) = client {
                self.inner.failed_by_client.add(now.epoch, client.0);
            }
        }
    }

    /// The errors of `fp` over the `span` most recent buckets that count for
    /// status and alerts (see [`ClientId`]).
    fn counted(&self, fp: &Fingerprint, epoch: u32, span: u32) -> u64 {
        let all = fp.ring.sum(epoch, span);
        fp.by_client
            .counted(all, epoch, span, self.inner.min_clients)
    }

    /// Failed requests over the `span` most recent buckets that count for
    /// status and alerts.
    fn counted_failures(&self, epoch: u32, span: u32) -> u64 {
        let all = self.inner.failed_requests.sum(epoch, span);
        self.inner
            .failed_by_client
            .counted(all, epoch, span, self.inner.min_clients)
    }

    /// Marks the service critical for `reason` until [`Monitor::clear_critical`]
    /// is called with the same `key`. Shorthand for
    /// [`Monitor::set_condition`] with [`Status::Critical`].
    pub fn set_critical(&self, key: impl Into<String>, reason: impl Into<String>) {
        self.set_condition(key, Status::Critical, reason);
    }

    /// Clears a mark set by [`Monitor::set_critical`] (or any condition of
    /// that `key`).
    pub fn clear_critical(&self, key: &str) {
        self.clear_condition(key);
    }

    /// Sets a present condition under `key`: the status is at least `status`
    /// with `reason` among its reasons until [`Monitor::clear_condition`] is
    /// called with the same key (setting it again replaces it). A supervised
    /// worker uses this to say "waiting for the database" while it is, and
    /// clears it when it runs again.
    ///
    /// Conditions move the status on the dashboard, in `health.json` and in
    /// the metrics, never `/readyz` (see [`Monitor::is_ready`]).
    pub fn set_condition(&self, key: impl Into<String>, status: Status, reason: impl Into<String>) {
        let reason = crate::redact::redact(&reason.into());
        lock(&self.inner.conditions).insert(key.into(), (status, reason));
    }

    /// Clears the condition `key`, if set.
    pub fn clear_condition(&self, key: &str) {
        lock(&self.inner.conditions).remove(key);
    }

    /// Marks this instance as draining (shutting down): [`Monitor::is_ready`]
    /// answers `false` from now on, so that load balancers stop routing new
    /// requests here while the ones in flight finish.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// The number of fingerprints tracked (not counting [`OTHER`]).
    pub fn fingerprint_count(&self) -> usize {
        self.inner.table.len()
    }

    /// This monitor as a shared [`Observer`], to attach to a policy, a
    /// breaker or a runner (or to install globally; [`MonitorBuilder::start`]
    /// does). The monitor is an observer itself: `Some(&monitor)` can be
    /// passed to [`observe::emit`] directly.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(self.clone())
    }

    /// Registers a check: `probe` runs every `options.interval` (bounded by
    /// `options.timeout`), and its cached result feeds the status and
    /// `/readyz`. When the monitor was started, the probe's task starts now
    /// and runs once at once.
    pub fn register_check<F, Fut>(
        &self,
        name: impl Into<Cow<'static, str>>,
        options: CheckOptions,
        probe: F,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check = Arc::new(Check::new(
            name.into(),
            options,
            Box::new(move || Box::pin(probe())),
        ));
        lock(&self.inner.checks).push(check.clone());
        if self.inner.started.load(Ordering::Acquire) {
            spawn_check(Arc::downgrade(&self.inner), check);
        }
    }

    /// Runs every registered check once, now. Returns whether all passed.
    pub async fn run_checks(&self) -> bool {
        let checks: Vec<_> = lock(&self.inner.checks).clone();
        let mut all = true;
        for check in checks {
            all &= check.run().await;
        }
        all
    }

    /// Runs the registered check `name` once, now (its cached result is
    /// updated). `None` if no check has that name.
    ///
    /// A supervisor uses this to ask whether a worker failed because a
    /// dependency it [`depends_on`](crate::supervise::Supervisor::depends_on)
    /// is down, rather than because of a bug in the worker.
    pub async fn run_check(&self, name: &str) -> Option<bool> {
        let check = lock(&self.inner.checks)
            .iter()
            .find(|c| c.name == name)
            .cloned()?;
        Some(check.run().await)
    }

    fn spawn_tasks(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        for check in lock(&self.inner.checks).iter() {
            spawn_check(weak.clone(), check.clone());
        }
        let interval = self.inner.evaluation_interval;
        let tick = interval
            .min(Duration::from_millis(250))
            .min(Duration::from_nanos(self.inner.width_nanos / 4))
            .max(Duration::from_millis(1));
        let evaluator = weak.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_evaluation: Option<Instant> = None;
            loop {
                ticker.tick().await;
                let Some(inner) = evaluator.upgrade() else {
                    return;
                };
                let monitor = Monitor { inner };
                monitor.tick_coarse_clock();
                if last_evaluation.is_none_or(|t| t.elapsed() >= interval) {
                    last_evaluation = Some(Instant::now());
                    monitor.evaluate();
                }
            }
        });
        if let Some(rx) = lock(&self.inner.rx).take() {
            tokio::spawn(deliver_alerts(weak, rx));
        }
    }

    /// Evaluates the alert rules now and queues the resulting notices for the
    /// sinks; returns them too. The background task calls this every
    /// evaluation interval.
    pub fn evaluate(&self) -> Vec<Alert> {
        let now = self.now();
        let now_secs = now.ms / 1000;
        let mut notices = Vec::new();
        let mut book = lock(&self.inner.book);
        for (index, rule) in self.inner.rules.iter().enumerate() {
            let span = self.span(rule.window());
            match rule {
                AlertRule::RepeatedError { threshold, .. } => {
                    let mut changes = Vec::new();
                    self.for_each_fingerprint(|fp| {
                        let count = self.counted(fp, now.epoch, span);
                        let transition = book.observe(
                            index,
                            Some(fp.key()),
                            count > *threshold,
                            now_secs,
                            self.inner.cooldown,
                        );
                        if transition != Transition::Nothing {
                            changes.push((fp.key().to_owned(), count, transition));
                        }
                    });
                    for (key, count, transition) in changes {
                        {
                            let summary = format!(
                                "{key} occurred {count} times in the last {} (threshold {threshold})",
                                describe_window(rule.window())
                            );
                            notices.push(self.notice(
                                rule,
                                transition,
                                Some(key),
                                count as f64,
                                *threshold as f64,
                                summary,
                            ));
                        }
                    }
                }
                AlertRule::ErrorRate {
                    max_ratio,
                    min_requests,
                    ..
                } => {
                    let total = self.inner.requests.sum(now.epoch, span);
                    let failed = self.counted_failures(now.epoch, span);
                    let ratio = if total == 0 {
                        0.0
                    } else {
                        failed as f64 / total as f64
                    };
                    let holds = total >= *min_requests && ratio >= *max_ratio;
                    let transition =
                        book.observe(index, None, holds, now_secs, self.inner.cooldown);
                    if transition != Transition::Nothing {
                        let summary = format!(
                            "{failed} of {total} requests failed in the last {} ({:.1}%, threshold {:.1}%)",
                            describe_window(rule.window()),
                            ratio * 100.0,
                            max_ratio * 100.0
                        );
                        notices
                            .push(self.notice(rule, transition, None, ratio, *max_ratio, summary));
                    }
                }
            }
        }
        book.prune(now_secs, self.inner.cooldown);
        drop(book);
        for notice in &notices {
            {
                let mut recent = lock(&self.inner.recent_alerts);
                if recent.len() >= self.inner.recent.max(1) {
                    recent.pop_front();
                }
                recent.push_back(notice.clone());
            }
            if self.inner.tx.try_send(notice.clone()).is_err() {
                self.inner.alerts_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        notices
    }

    fn notice(
        &self,
        rule: &AlertRule,
        transition: Transition,
        fingerprint: Option<String>,
        value: f64,
        threshold: f64,
        summary: String,
    ) -> Alert {
        Alert {
            rule: rule.name().to_owned(),
            severity: rule.severity(),
            state: match transition {
                Transition::Resolve => AlertState::Resolved,
                _ => AlertState::Firing,
            },
            fingerprint,
            value,
            threshold,
            window_secs: rule.window().as_secs(),
            at: SystemTime::now(),
            summary,
        }
    }

    /// Calls `f` on every fingerprint, `other` last, without cloning.
    fn for_each_fingerprint(&self, mut f: impl FnMut(&Fingerprint)) {
        for fp in self.inner.table.iter() {
            f(fp);
        }
        f(&self.inner.other);
    }

    /// Alert notices dropped because the channel to the sinks was full.
    pub fn alerts_dropped(&self) -> u64 {
        self.inner.alerts_dropped.load(Ordering::Relaxed)
    }
}

fn describe_window(window: Duration) -> String {
    let secs = window.as_secs();
    match secs {
        3600 => "hour".to_owned(),
        60 => "minute".to_owned(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

fn spawn_check(inner: Weak<Inner>, check: Arc<Check>) {
    tokio::spawn(async move {
        loop {
            if inner.strong_count() == 0 {
                return;
            }
            check.run().await;
            tokio::time::sleep(check.options.interval).await;
        }
    });
}

async fn deliver_alerts(inner: Weak<Inner>, mut rx: mpsc::Receiver<Alert>) {
    while let Some(alert) = rx.recv().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let monitor = Monitor { inner: strong };
        let sinks = monitor.inner.sinks.clone();
        let mut deliveries = tokio::task::JoinSet::new();
        for sink in sinks {
            let alert = alert.clone();
            let monitor = monitor.clone();
            deliveries.spawn(async move {
                let operation = format!("alert_sink:{}", sink.name());
                let outcome = monitor
                    .inner
                    .sink_policy
                    .retry_named(&operation, || sink.deliver(&alert))
                    .await;
                match outcome {
                    Ok(()) => {
                        monitor
                            .inner
                            .alerts_delivered
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        monitor
                            .inner
                            .delivery_failures
                            .fetch_add(1, Ordering::Relaxed);
                        monitor.record_error("AlertSinkError", &operation, &error);
                    }
                }
            });
        }
        drop(monitor);
        while deliveries.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests;
