//! The fault plan: which real faults chaos injects, how often and for how long.
//!
//! Why a file: a chaos run is only worth comparing with another one when both
//! used the same faults, so the plan is data (TOML, checked into the repo as
//! `plan.default.toml`) rather than constants scattered through the harness.
//! Unknown keys are rejected so that a typo (`probabilty = 0.3`) cannot
//! silently fall back to a default and make a run look healthier than it was.
//! Durations are humantime strings (`"600ms"`, `"30s"`) because that is how
//! people write them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything chaos may break, section by section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    /// A writer holding the SQLite write lock in bursts.
    pub sqlite_lock: SqliteLockPlan,
    /// Faults on calls to the upstream APIs (OpenAI- and Stripe-like).
    pub upstream: UpstreamPlan,
    /// The SMTP server going down and coming back.
    pub smtp: SmtpPlan,
    /// Users whose session cookie gets corrupted.
    pub sessions: SessionsPlan,
    /// Journey steps that hit the app's panic hook.
    pub panic: PanicPlan,
    /// Users who give up on a request before its answer.
    pub client: ClientPlan,
    /// The upstream storm: every upstream connection refused for a while.
    pub storm: StormPlan,
    /// Faults on the app's PostgreSQL connections (through the link proxy).
    pub database: LinkPlan,
    /// Faults on the app's Redis connections (sessions in Redis).
    pub redis: LinkPlan,
    /// A real restart of the PostgreSQL server, once per run (opt-in).
    pub postgres_restart: RestartPlan,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            sqlite_lock: SqliteLockPlan::default(),
            upstream: UpstreamPlan::default(),
            smtp: SmtpPlan::default(),
            sessions: SessionsPlan::default(),
            panic: PanicPlan::default(),
            client: ClientPlan::default(),
            storm: StormPlan::default(),
            database: LinkPlan::default(),
            redis: LinkPlan::redis_default(),
            postgres_restart: RestartPlan::default(),
        }
    }
}

/// `[sqlite_lock]`: bursts during which another connection holds the write lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteLockPlan {
    /// Whether the lock holder runs at all.
    pub enabled: bool,
    /// Fraction of wall-clock time the write lock is held (0..=1).
    pub held_fraction: f64,
    /// Length of one burst of holding the lock.
    pub burst: DurationRange,
}

/// `[upstream]`: per-call faults on the upstream APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamPlan {
    /// Probability that one upstream call gets a fault (0..=1).
    pub fault_probability: f64,
    /// Relative weights of the fault kinds, used once a call is faulted.
    pub weights: FaultWeights,
    /// Extra delay of a `latency` fault (then the normal answer).
    pub latency: DurationRange,
    /// How long a `stall` holds the connection without forwarding a byte;
    /// longer than any client timeout, so the client times out.
    #[serde(with = "humantime_serde_str")]
    pub stall: Duration,
}

/// Relative weights of the upstream fault kinds (they need not sum to 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultWeights {
    /// HTTP 429 with `Retry-After: 1` (answered by the upstream server).
    pub rate_limit: f64,
    /// HTTP 503 (answered by the upstream server).
    pub unavailable: f64,
    /// The proxy stops forwarding: the client times out.
    pub stall: f64,
    /// The proxy resets the TCP connection (RST).
    pub reset: f64,
    /// The proxy delays forwarding, then the answer is normal.
    pub latency: f64,
    /// The upstream acts on the request, then the proxy resets the
    /// connection instead of forwarding the answer.
    pub lost_response: f64,
    /// The upstream acts on the request, then the proxy holds the answer
    /// past the client's timeout (for `stall`).
    pub late_response: f64,
}

/// `[smtp]`: the mail server alternating between up and down periods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpPlan {
    /// Long-run fraction of time the server is down (0..=1): each period is
    /// down with this probability.
    pub down_fraction: f64,
    /// Length of one up or down period.
    pub period: DurationRange,
}

/// `[sessions]`: corrupted session cookies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsPlan {
    /// Fraction of virtual users whose session gets corrupted (0..=1).
    pub corrupt_fraction: f64,
}

/// `[panic]`: journey steps that trigger the app's panic hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PanicPlan {
    /// Probability that one journey step hits the panic hook before its
    /// handler runs (0..=1).
    pub probability: f64,
    /// Probability that a form a user sends (sign-up, lesson, purchase)
    /// panics *after* its handler's write committed (0..=1).
    pub after_commit_probability: f64,
}

/// `[client]`: users who close the tab (or lose the network) while a form
/// is on its way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientPlan {
    /// Probability that a lesson completion is abandoned mid-request
    /// (0..=1); the user then sends the form again.
    pub disconnect_probability: f64,
    /// How long after sending the user gives up.
    pub disconnect_after: DurationRange,
}

/// `[storm]`: the open-loop storm, requests at a fixed offered rate while the
/// AI upstream goes down (every connection reset) for the middle of the run
/// and comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormPlan {
    /// How long one storm run lasts (the upstream is down from 20 % to 60 %
    /// of it).
    #[serde(with = "humantime_serde_str")]
    pub duration: Duration,
    /// Offered rate, requests per second (at most 200: the run is on the
    /// same machine as the app).
    pub rate: f64,
}

/// `[database]` and `[redis]`: faults on the TCP link between the app and
/// its PostgreSQL or Redis server, injected by the
/// [`link`](crate::link) proxy on a seeded schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkPlan {
    /// Whether the link is faulted at all (it only exists when the run uses
    /// that server: `--database-url postgres://…`, `--redis-url`).
    pub enabled: bool,
    /// The gap between the end of one fault and the start of the next.
    pub every: DurationRange,
    /// Relative weights of the fault kinds.
    pub weights: LinkWeights,
    /// How long a `stall` stops forwarding on every connection.
    pub stall: DurationRange,
    /// How long a `partition` lasts (open connections reset, new ones
    /// black-holed).
    pub partition: DurationRange,
}

/// Relative weights of the link fault kinds (they need not sum to 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkWeights {
    /// Every open connection is reset (RST).
    pub reset: f64,
    /// Every connection stops forwarding for `stall`, then resumes.
    pub stall: f64,
    /// For `partition`: open connections reset, new ones accepted but never
    /// answered; then the link comes back.
    pub partition: f64,
}

impl LinkWeights {
    /// Sum of all weights.
    pub fn total(&self) -> f64 {
        self.reset + self.stall + self.partition
    }
}

/// `[postgres_restart]`: a real restart of the PostgreSQL server the run's
/// database is on (`pg_ctlcluster … restart`, as root, on this machine).
/// Off by default: it disconnects every client of that server, other
/// tests' too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPlan {
    /// Whether to restart the server (once per heal run, on PostgreSQL only).
    pub enabled: bool,
    /// When, as a fraction of the run's duration (0..=1).
    pub at: f64,
}

/// An inclusive range of durations, written `{ min = "100ms", max = "600ms" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationRange {
    /// Shortest duration.
    #[serde(with = "humantime_serde_str")]
    pub min: Duration,
    /// Longest duration (inclusive).
    #[serde(with = "humantime_serde_str")]
    pub max: Duration,
}

impl DurationRange {
    /// A range from `min` to `max` inclusive.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// A duration drawn uniformly from the range (millisecond resolution).
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        let lo = self.min.as_millis() as u64;
        let hi = (self.max.as_millis() as u64).max(lo);
        Duration::from_millis(rng.u64(lo..=hi))
    }

    /// The midpoint of the range.
    pub fn mean(&self) -> Duration {
        (self.min + self.max) / 2
    }
}

impl Default for SqliteLockPlan {
    fn default() -> Self {
        Self {
            enabled: true,
            held_fraction: 0.10,
            burst: DurationRange::new(Duration::from_millis(100), Duration::from_millis(600)),
        }
    }
}

impl Default for UpstreamPlan {
    fn default() -> Self {
        Self {
            fault_probability: 0.30,
            weights: FaultWeights::default(),
            latency: DurationRange::new(Duration::from_millis(200), Duration::from_millis(800)),
            stall: Duration::from_secs(30),
        }
    }
}

impl Default for FaultWeights {
    fn default() -> Self {
        Self {
            rate_limit: 0.30,
            unavailable: 0.25,
            stall: 0.10,
            reset: 0.15,
            latency: 0.20,
            lost_response: 0.05,
            late_response: 0.05,
        }
    }
}

impl FaultWeights {
    /// Sum of all weights.
    pub fn total(&self) -> f64 {
        self.rate_limit
            + self.unavailable
            + self.stall
            + self.reset
            + self.latency
            + self.lost_response
            + self.late_response
    }
}

impl Default for SmtpPlan {
    fn default() -> Self {
        Self {
            down_fraction: 0.5,
            period: DurationRange::new(Duration::from_secs(1), Duration::from_secs(4)),
        }
    }
}

impl Default for ClientPlan {
    fn default() -> Self {
        Self {
            disconnect_probability: 0.02,
            disconnect_after: DurationRange::new(
                Duration::from_millis(1),
                Duration::from_millis(30),
            ),
        }
    }
}

impl Default for SessionsPlan {
    fn default() -> Self {
        Self {
            corrupt_fraction: 0.05,
        }
    }
}

impl Default for PanicPlan {
    fn default() -> Self {
        Self {
            probability: 0.01,
            after_commit_probability: 0.01,
        }
    }
}

impl Default for StormPlan {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(20),
            rate: 50.0,
        }
    }
}

impl Default for LinkPlan {
    /// The `[database]` defaults: a fault every 6–12 s, mostly resets, the
    /// odd stall of up to 2 s and partition of 3–5 s (longer than the app's
    /// 3 s pool acquire timeout).
    fn default() -> Self {
        Self {
            enabled: true,
            every: DurationRange::new(Duration::from_secs(6), Duration::from_secs(12)),
            weights: LinkWeights::default(),
            stall: DurationRange::new(Duration::from_millis(500), Duration::from_secs(2)),
            partition: DurationRange::new(Duration::from_secs(3), Duration::from_secs(5)),
        }
    }
}

impl LinkPlan {
    /// The `[redis]` defaults: rarer than the database's (every 8–15 s),
    /// partitions of 2–4 s (past the app's 2 s Redis command timeout).
    pub fn redis_default() -> Self {
        Self {
            every: DurationRange::new(Duration::from_secs(8), Duration::from_secs(15)),
            partition: DurationRange::new(Duration::from_secs(2), Duration::from_secs(4)),
            ..Self::default()
        }
    }
}

impl Default for LinkWeights {
    fn default() -> Self {
        Self {
            reset: 0.5,
            stall: 0.3,
            partition: 0.2,
        }
    }
}

impl Default for RestartPlan {
    fn default() -> Self {
        Self {
            enabled: false,
            at: 0.5,
        }
    }
}

/// Why a plan could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("cannot read plan {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key or a wrong type.
    #[error("invalid plan TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range (a probability outside 0..=1, min > max...).
    #[error("invalid plan: {0}")]
    Invalid(String),
}

impl Plan {
    /// Parses and validates a plan. Missing sections and keys take their
    /// default; unknown keys are an error.
    pub fn from_toml_str(text: &str) -> Result<Self, PlanError> {
        let plan: Plan = toml::from_str(text)?;
        plan.validate()?;
        Ok(plan)
    }

    /// Reads, parses and validates a plan file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PlanError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The plan as TOML (without comments; see `plan.default.toml` for those).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a plan always serialises to TOML")
    }

    /// This plan with every fault off: what a run that measures one fault
    /// alone (a kill -9) or a calm baseline runs with.
    pub fn calm(&self) -> Plan {
        let mut plan = self.clone();
        plan.sqlite_lock.enabled = false;
        plan.upstream.fault_probability = 0.0;
        plan.smtp.down_fraction = 0.0;
        plan.sessions.corrupt_fraction = 0.0;
        plan.panic.probability = 0.0;
        plan.panic.after_commit_probability = 0.0;
        plan.client.disconnect_probability = 0.0;
        plan.database.enabled = false;
        plan.redis.enabled = false;
        plan.postgres_restart.enabled = false;
        plan
    }

    /// Checks every probability is within 0..=1, every range has min <= max,
    /// weights are non-negative and not all zero when faults are enabled.
    pub fn validate(&self) -> Result<(), PlanError> {
        let probabilities = [
            ("sqlite_lock.held_fraction", self.sqlite_lock.held_fraction),
            (
                "upstream.fault_probability",
                self.upstream.fault_probability,
            ),
            ("smtp.down_fraction", self.smtp.down_fraction),
            ("sessions.corrupt_fraction", self.sessions.corrupt_fraction),
            ("panic.probability", self.panic.probability),
            (
                "panic.after_commit_probability",
                self.panic.after_commit_probability,
            ),
            (
                "client.disconnect_probability",
                self.client.disconnect_probability,
            ),
            ("postgres_restart.at", self.postgres_restart.at),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(PlanError::Invalid(format!(
                    "{name} = {p} is not a probability (expected 0..=1)"
                )));
            }
        }
        let w = &self.upstream.weights;
        let weights = [
            ("rate_limit", w.rate_limit),
            ("unavailable", w.unavailable),
            ("stall", w.stall),
            ("reset", w.reset),
            ("latency", w.latency),
            ("lost_response", w.lost_response),
            ("late_response", w.late_response),
        ];
        for (name, value) in weights {
            if !(value.is_finite() && value >= 0.0) {
                return Err(PlanError::Invalid(format!(
                    "upstream.weights.{name} = {value} must be a finite number >= 0"
                )));
            }
        }
        if self.upstream.fault_probability > 0.0 && w.total() <= 0.0 {
            return Err(PlanError::Invalid(
                "upstream.weights are all zero but upstream.fault_probability > 0".into(),
            ));
        }
        let ranges = [
            ("sqlite_lock.burst", self.sqlite_lock.burst),
            ("upstream.latency", self.upstream.latency),
            ("smtp.period", self.smtp.period),
            ("client.disconnect_after", self.client.disconnect_after),
        ];
        for (name, r) in ranges {
            if r.min > r.max {
                return Err(PlanError::Invalid(format!(
                    "{name}: min {} is greater than max {}",
                    humantime::format_duration(r.min),
                    humantime::format_duration(r.max)
                )));
            }
        }
        for (name, link) in [("database", &self.database), ("redis", &self.redis)] {
            link.validate(name)?;
        }
        if self.smtp.period.min.is_zero() {
            return Err(PlanError::Invalid(
                "smtp.period.min must be greater than zero".into(),
            ));
        }
        if self.sqlite_lock.enabled
            && self.sqlite_lock.held_fraction > 0.0
            && self.sqlite_lock.burst.max.is_zero()
        {
            return Err(PlanError::Invalid(
                "sqlite_lock.burst.max must be greater than zero when the lock is enabled".into(),
            ));
        }
        if !(self.storm.rate > 0.0 && self.storm.rate <= 200.0) {
            return Err(PlanError::Invalid(format!(
                "storm.rate = {} must be within 0 < rate <= 200 requests per second",
                self.storm.rate
            )));
        }
        Ok(())
    }
}

impl LinkPlan {
    /// Checks the `[name]` section: finite non-negative weights, not all
    /// zero, ranges with min <= max, and (when enabled) a gap and fault
    /// lengths greater than zero.
    fn validate(&self, name: &str) -> Result<(), PlanError> {
        let w = &self.weights;
        for (kind, value) in [
            ("reset", w.reset),
            ("stall", w.stall),
            ("partition", w.partition),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(PlanError::Invalid(format!(
                    "{name}.weights.{kind} = {value} must be a finite number >= 0"
                )));
            }
        }
        for (field, r) in [
            ("every", self.every),
            ("stall", self.stall),
            ("partition", self.partition),
        ] {
            if r.min > r.max {
                return Err(PlanError::Invalid(format!(
                    "{name}.{field}: min {} is greater than max {}",
                    humantime::format_duration(r.min),
                    humantime::format_duration(r.max)
                )));
            }
        }
        if self.enabled {
            if w.total() <= 0.0 {
                return Err(PlanError::Invalid(format!(
                    "{name}.weights are all zero but {name}.enabled = true"
                )));
            }
            for (field, r) in [
                ("every", self.every),
                ("stall", self.stall),
                ("partition", self.partition),
            ] {
                if r.min.is_zero() {
                    return Err(PlanError::Invalid(format!(
                        "{name}.{field}.min must be greater than zero when {name}.enabled = true"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml_string())
    }
}

/// Serde helpers for a `Duration` written as a humantime string.
mod humantime_serde_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| D::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_equals_default_plan() {
        let text = include_str!("../plan.default.toml");
        assert_eq!(Plan::from_toml_str(text).unwrap(), Plan::default());
    }

    #[test]
    fn the_harsh_plan_is_valid_and_harsher_everywhere() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plan.harsh.toml");
        let harsh = Plan::load(&path).unwrap();
        let default = Plan::default();
        assert!(harsh.upstream.fault_probability > 0.5);
        assert!(harsh.sqlite_lock.burst.max > Duration::from_secs(5));
        assert!(harsh.smtp.down_fraction > 0.5);
        assert!(harsh.panic.probability > default.panic.probability);
        assert!(harsh.panic.after_commit_probability > default.panic.after_commit_probability);
        assert!(harsh.sessions.corrupt_fraction > default.sessions.corrupt_fraction);
        assert!(harsh.client.disconnect_probability > default.client.disconnect_probability);
        assert!(harsh.database.every.max <= default.database.every.min);
        assert!(harsh.redis.every.max < default.redis.every.max);
        assert_eq!(harsh.storm.duration, default.storm.duration);
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Plan::from_toml_str("").unwrap(), Plan::default());
    }

    #[test]
    fn round_trips_through_toml() {
        let plan = Plan::default();
        assert_eq!(Plan::from_toml_str(&plan.to_toml_string()).unwrap(), plan);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Plan::from_toml_str("[upstream]\nprobabilty = 0.3\n").unwrap_err();
        assert!(err.to_string().contains("probabilty"), "{err}");
        let err = Plan::from_toml_str("[upstrem]\n").unwrap_err();
        assert!(err.to_string().contains("upstrem"), "{err}");
    }

    #[test]
    fn probabilities_are_validated() {
        let err = Plan::from_toml_str("[upstream]\nfault_probability = 1.5\n").unwrap_err();
        assert!(
            err.to_string().contains("upstream.fault_probability"),
            "{err}"
        );
        let err = Plan::from_toml_str("[panic]\nprobability = -0.1\n").unwrap_err();
        assert!(err.to_string().contains("panic.probability"), "{err}");
        assert!(Plan::from_toml_str("[smtp]\ndown_fraction = 1.0\n").is_ok());
    }

    #[test]
    fn durations_are_humantime_and_ranges_checked() {
        let plan =
            Plan::from_toml_str("[storm]\nduration = \"1m 5s\"\n[upstream]\nstall = \"250ms\"\n")
                .unwrap();
        assert_eq!(plan.storm.duration, Duration::from_secs(65));
        assert_eq!(plan.upstream.stall, Duration::from_millis(250));
        let err = Plan::from_toml_str("[storm]\nduration = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        let err =
            Plan::from_toml_str("[smtp]\nperiod = { min = \"5s\", max = \"1s\" }\n").unwrap_err();
        assert!(err.to_string().contains("smtp.period"), "{err}");
    }

    #[test]
    fn link_sections_are_validated() {
        let plan = Plan::from_toml_str(
            "[redis]\nenabled = false\n[database]\npartition = { min = \"1s\", max = \"2s\" }\n",
        )
        .unwrap();
        assert!(!plan.redis.enabled);
        assert_eq!(plan.database.partition.max, Duration::from_secs(2));
        let err = Plan::from_toml_str("[database.weights]\nreset = 0\nstall = 0\npartition = 0\n")
            .unwrap_err();
        assert!(err.to_string().contains("database.weights"), "{err}");
        let err =
            Plan::from_toml_str("[redis]\nevery = { min = \"0s\", max = \"1s\" }\n").unwrap_err();
        assert!(err.to_string().contains("redis.every"), "{err}");
        let err = Plan::from_toml_str("[database.weights]\nstall = -1\n").unwrap_err();
        assert!(err.to_string().contains("database.weights.stall"), "{err}");
        let err = Plan::from_toml_str("[postgres_restart]\nat = 2\n").unwrap_err();
        assert!(err.to_string().contains("postgres_restart.at"), "{err}");
        let err = Plan::from_toml_str("[database]\nrestart = true\n").unwrap_err();
        assert!(err.to_string().contains("restart"), "{err}");
    }

    #[test]
    fn sample_stays_in_range() {
        let r = DurationRange::new(Duration::from_millis(100), Duration::from_millis(600));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let d = r.sample(&mut rng);
            assert!(d >= r.min && d <= r.max);
        }
    }
}
