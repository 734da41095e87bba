//! How a [`Monitor`] is configured: the status rules and the builder.
//!
//! Kept apart from the monitor itself because every setting here is read
//! once, when the monitor is built; nothing on the record path looks at it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::alert::AlertBook;
use super::fingerprint::Fingerprint;
use super::table::Table;
use super::window::{ByClient, Ring};
use super::{AlertRule, AlertSink, HealKind, Inner, LogSink, Monitor, OTHER};
use crate::ConfigError;
use crate::observe;
use crate::retry::{Backoff, Policy};

/// The rules that turn counts into a [`Status`](super::Status). Evaluated on every read
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
/// Errors recorded with a [`ClientId`](super::ClientId) count here only once their
/// fingerprint was seen from [`min_clients`](MonitorBuilder::with_min_clients)
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
            rules: vec![AlertRule::repeated_error()],
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
    /// Errors recorded with a [`ClientId`](super::ClientId) (by [`HealLayer`](crate::web::HealLayer),
    /// from the request's address) move the status and fire alerts only once
    /// their fingerprint was seen from this many distinct clients within the
    /// rule's window. Default 3; 1 counts every error as before; at most 32.
    pub fn with_min_clients(mut self, clients: u32) -> Self {
        self.min_clients = clients.clamp(1, 32);
        self
    }

    /// Width of one time bucket. Default 1 minute.
    pub fn with_bucket_width(mut self, width: Duration) -> Self {
        self.bucket_width = width;
        self
    }

    /// Number of buckets kept; `bucket_width × buckets` is the horizon, the
    /// longest window a summary can cover. Default 60 (one hour).
    pub fn with_buckets(mut self, buckets: usize) -> Self {
        self.buckets = buckets;
        self
    }

    /// Most distinct fingerprints tracked (1 to 100,000); beyond, events
    /// count under [`OTHER`]. The table is allocated once for this many
    /// (about 32 bytes a slot, two slots per fingerprint, plus the
    /// fingerprint's buckets when it first occurs). Default 1,000.
    pub fn with_max_fingerprints(mut self, max: usize) -> Self {
        self.max_fingerprints = max;
        self
    }

    /// Replaces the alert rules. Default: [`AlertRule::repeated_error`].
    pub fn with_rules(mut self, rules: Vec<AlertRule>) -> Self {
        self.rules = rules;
        self
    }

    /// Adds an alert rule.
    pub fn with_rule(mut self, rule: AlertRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// After firing, the same rule and fingerprint does not fire again within
    /// this time. Default 15 minutes.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The status rules. Default: [`StatusRules::default`].
    pub fn with_status_rules(mut self, rules: StatusRules) -> Self {
        self.status = rules;
        self
    }

    /// How often the background task evaluates alert rules. Default 1 s.
    pub fn with_evaluation_interval(mut self, interval: Duration) -> Self {
        self.evaluation_interval = interval;
        self
    }

    /// Adds an alert sink. [`LogSink`] is always installed.
    pub fn with_sink(mut self, sink: Arc<dyn AlertSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Capacity of the channel from the evaluator to the sinks; notices beyond
    /// it are dropped and counted. Default 64.
    pub fn with_channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity;
        self
    }

    /// How many recent heal events and alerts are kept for the dashboard.
    /// Default 50.
    pub fn with_recent(mut self, recent: usize) -> Self {
        self.recent = recent;
        self
    }

    /// Whether [`MonitorBuilder::start`] installs the monitor as the global
    /// observer, so every selfheal component reports to it with no user code.
    /// Default `true`.
    pub fn with_global(mut self, global: bool) -> Self {
        self.global = global;
        self
    }

    /// The retry policy for alert deliveries. Default: 5 attempts, exponential
    /// 1 s × 2 up to 30 s, no budget.
    pub fn with_sink_policy(mut self, policy: Policy) -> Self {
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
            throttled: AtomicU64::new(0),
            breakers: Mutex::new(BTreeMap::new()),
            throttle_rejections: AtomicU64::new(0),
            throttles: Mutex::new(BTreeMap::new()),
            limiters: Mutex::new(BTreeMap::new()),
            steered: Mutex::new(BTreeMap::new()),
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
            global_generation: AtomicU64::new(0),
            fleet_alerts: AtomicBool::new(false),
            fleet_firing: Mutex::new(Vec::new()),
            keep_attempts: AtomicBool::new(false),
            attempts: Mutex::new(super::AttemptBook::default()),
            ledger: Mutex::new(None),
        };
        Ok(Monitor {
            inner: Arc::new(inner),
        })
    }

    /// Builds the monitor and starts its background tasks (alert evaluation
    /// and delivery; checks start as they are registered). Installs it as the
    /// global observer unless [`MonitorBuilder::with_global`] says otherwise.
    /// Needs a tokio runtime. The tasks stop when the last [`Monitor`] clone
    /// is dropped.
    pub fn start(self) -> Result<Monitor, ConfigError> {
        let global = self.global;
        let monitor = self.build()?;
        monitor.spawn_tasks();
        if global {
            let generation = observe::install_global(monitor.observer());
            monitor
                .inner
                .global_generation
                .store(generation, std::sync::atomic::Ordering::Release);
        }
        Ok(monitor)
    }
}
