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
//! [`MonitorBuilder::with_sink`]:
//!
//! | sink | feature | for |
//! |---|---|---|
//! | [`LogSink`] | always | the log, `ERROR` with the `CRITICAL` marker |
//! | `WebhookSink` | `webhook` | a JSON `POST` to a chat channel, a pager, a relay |
//! | `EmailSink` | `email` | an email over SMTP: for small teams without a pager |
//! | your own | | anything implementing [`AlertSink`] |
//!
//! A failed delivery is retried with the monitor's
//! [`sink_policy`](MonitorBuilder::with_sink_policy), then counted
//! ([`Report::alert_delivery_failures`]) and recorded as an error under the
//! operation `alert_sink:<name>`. Secrets (webhook headers, SMTP passwords)
//! never appear in `Debug` output, logs or recorded errors.
//!
//! ```
//! use selfheal::health::Monitor;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let monitor = Monitor::builder().with_global(false).build().unwrap();
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
mod attempts;
mod builder;
mod check;
#[cfg(feature = "email")]
mod email;
mod evaluate;
mod fingerprint;
#[cfg(feature = "sqlx")]
pub mod ledger;
mod observer;
mod report;
mod table;
mod tasks;
#[cfg(feature = "webhook")]
mod webhook;
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use alert::{Alert, AlertRule, AlertSink, AlertState, LogSink, Severity, SinkFuture};
pub use builder::{MonitorBuilder, StatusRules};
pub use check::{CheckOptions, CheckResult, CheckWatch};
#[cfg(feature = "email")]
pub use email::{EmailError, EmailSink};
pub use report::{
    BreakerReport, FingerprintReport, HealRecord, LedgerStats, LimiterReport, Report,
    RequestReport, Status, Summary, ThrottleReport,
};
#[cfg(feature = "webhook")]
pub use webhook::{WebhookError, WebhookPayload, WebhookSink};

use crate::observe::{BreakerState, Event, Failure, Observer};
pub use crate::observe::{ClientId, HealKind};
use crate::retry::Policy;
use crate::sync::lock;
use alert::AlertBook;
use attempts::AttemptBook;
use check::Check;
use fingerprint::Fingerprint;
pub(crate) use fingerprint::truncate;
use table::Table;
use window::{ByClient, Ring};

/// The fingerprint every event beyond `max_fingerprints` is counted under.
pub const OTHER: &str = "other";

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
    /// Client attempts refused by a throttle (`Event::Throttled`).
    throttled: AtomicU64,
    breakers: Mutex<BTreeMap<String, (BreakerState, u64)>>,
    throttle_rejections: AtomicU64,
    /// Adaptive throttles that reported: name → (throttling, failure ratio, since ms).
    throttles: Mutex<BTreeMap<String, (bool, f64, u64)>>,
    /// Adaptive concurrency limits: name → their last window.
    limiters: Mutex<BTreeMap<String, LimiterReport>>,
    /// Dependencies steered by a health check: name → (check, failing
    /// fast, since ms).
    steered: Mutex<BTreeMap<String, (String, bool, u64)>>,
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
    /// Set while a health ledger evaluates the alert rules on the fleet's
    /// counts: the local evaluation keeps its book (for the status) but
    /// sends no notices, so that a fleet alerts once, not once per instance.
    fleet_alerts: AtomicBool,
    /// The fleet's alerts holding now (rule, fingerprint, severity), as
    /// last evaluated by the ledger.
    fleet_firing: Mutex<Vec<(String, Option<String>, Severity)>>,
    /// Whether retry outcomes are tallied per operation (a ledger asks).
    keep_attempts: AtomicBool,
    attempts: Mutex<AttemptBook>,
    /// The health ledger's state, when one is attached.
    ledger: Mutex<Option<LedgerStats>>,
    /// The global observer's generation when [`MonitorBuilder::start`]
    /// installed this monitor there (0: never).
    global_generation: AtomicU64,
}

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
    /// [`min_clients`](MonitorBuilder::with_min_clients) distinct clients within
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
    /// [`min_clients`](MonitorBuilder::with_min_clients) distinct clients within
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

    /// Whether this monitor is the process's global observer (installed by
    /// [`MonitorBuilder::start`] and not replaced since): then a component
    /// without an observer of its own reports to it anyway. One atomic load.
    #[inline]
    pub(crate) fn is_global(&self) -> bool {
        let installed = self.inner.global_generation.load(Ordering::Acquire);
        installed != 0 && installed == crate::observe::generation()
    }

    /// This monitor as a shared [`Observer`], to attach to a policy, a
    /// breaker or a runner (or to install globally; [`MonitorBuilder::start`]
    /// does). The monitor is an observer itself: `Some(&monitor)` can be
    /// passed to [`observe::emit`](crate::observe::emit) directly.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(self.clone())
    }
}

#[cfg(test)]
mod tests;
