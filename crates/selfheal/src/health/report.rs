//! What the monitor tells: the guide's summary, and a richer report.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::evaluate::describe_window;
use super::{Alert, CheckResult, HealKind, Monitor, OTHER, Severity};
use crate::observe::BreakerState;
use crate::sync::lock;

/// The service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to report.
    Healthy,
    /// Working, with problems worth a look (some errors, an open breaker, a
    /// failing non-critical check).
    Degraded,
    /// Something systemic is wrong.
    Critical,
}

impl Status {
    /// `"healthy"`, `"degraded"` or `"critical"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The guide's `health_monitor.get_error_summary()`, field for field:
///
/// ```json
/// {"status": "healthy", "total_errors": 3,
///  "errors_by_type": {"KeyError": 1, "OperationalError": 2},
///  "time_window": "Last 15 minutes"}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `healthy`, `degraded` or `critical`.
    pub status: Status,
    /// Errors within the window.
    pub total_errors: u64,
    /// Errors within the window by error kind.
    pub errors_by_type: BTreeMap<String, u64>,
    /// The window, in words ("Last 15 minutes").
    pub time_window: String,
}

/// One fingerprint in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FingerprintReport {
    /// `kind@operation` (or `other`).
    pub fingerprint: String,
    /// The error kind.
    pub kind: String,
    /// The operation.
    pub operation: String,
    /// Occurrences within the window.
    pub count: u64,
    /// Seconds since first seen.
    pub first_seen_secs_ago: u64,
    /// Seconds since last seen.
    pub last_seen_secs_ago: u64,
    /// One sample message, truncated. May contain user data: escape it.
    pub sample: String,
}

/// A recent heal, in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealRecord {
    /// What kind of healing.
    pub kind: HealKind,
    /// The operation (route, dependency, breaker name).
    pub operation: String,
    #[serde(skip)]
    pub(crate) at_ms: u64,
    /// Seconds ago.
    pub ago_secs: u64,
}

/// Request counts within the window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RequestReport {
    /// Requests recorded.
    pub total: u64,
    /// Failed requests.
    pub failed: u64,
    /// `failed / total`, 0 without requests.
    pub error_rate: f64,
}

/// A circuit breaker as last reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerReport {
    /// The breaker's name.
    pub name: String,
    /// Its state; serialized as `closed`, `open` or `half_open`.
    pub state: BreakerState,
    /// Seconds since it entered that state.
    pub since_secs: u64,
}

/// An adaptive client throttle, as last reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThrottleReport {
    /// The throttle's name (the dependency).
    pub name: String,
    /// Whether it refuses a share of the retries (or calls) now.
    pub throttling: bool,
    /// The share of calls the dependency refused or failed, when it changed.
    pub failure_ratio: f64,
    /// Seconds since it changed.
    pub since_secs: u64,
}

/// An adaptive concurrency limit, as of its last window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimiterReport {
    /// The limiter's name.
    pub name: String,
    /// The concurrency limit.
    pub limit: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests shed since it started.
    pub shed: u64,
}

/// Everything the monitor knows, for dashboards and `application/health+json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The overall status.
    pub status: Status,
    /// Why the status is not healthy (empty when healthy).
    pub reasons: Vec<String>,
    /// The window, in words.
    pub time_window: String,
    /// The window, in seconds.
    pub window_secs: u64,
    /// Errors within the window.
    pub total_errors: u64,
    /// Errors within the window by kind.
    pub errors_by_type: BTreeMap<String, u64>,
    /// Fingerprints with errors in the window, most frequent first.
    pub fingerprints: Vec<FingerprintReport>,
    /// Errors per bucket over the window, oldest first (a sparkline).
    pub errors_per_bucket: Vec<u64>,
    /// The width of one bucket, in seconds.
    pub bucket_secs: u64,
    /// Heals within the window by kind.
    pub heals: BTreeMap<HealKind, u64>,
    /// The most recent heals, newest first.
    pub recent_heals: Vec<HealRecord>,
    /// Requests within the window.
    pub requests: RequestReport,
    /// Retries scheduled since start.
    pub retries: u64,
    /// Retries refused by a budget since start.
    pub budget_refusals: u64,
    /// Calls refused by an open breaker since start.
    pub breaker_rejections: u64,
    /// Client attempts refused by a throttle since start (too many failed
    /// sign-ins): counted, never a cause of the status.
    pub throttled: u64,
    /// Breakers, by name.
    pub breakers: Vec<BreakerReport>,
    /// Calls and retries refused by an adaptive throttle since start.
    pub throttle_rejections: u64,
    /// Adaptive throttles, by name.
    pub throttles: Vec<ThrottleReport>,
    /// Adaptive concurrency limits, by name.
    pub limiters: Vec<LimiterReport>,
    /// What healing is doing that moves no status, in words: throttled
    /// dependencies ("retries to api.openai.com throttled: 62 % of calls
    /// failed"), a server shedding load.
    pub notes: Vec<String>,
    /// Registered checks.
    pub checks: Vec<CheckResult>,
    /// Alerts currently firing (rule, fingerprint).
    pub active_alerts: Vec<(String, Option<String>)>,
    /// Recent alert notices, newest first.
    pub recent_alerts: Vec<Alert>,
    /// Alert notices dropped because the channel was full.
    pub alerts_dropped: u64,
    /// Alert deliveries that failed after retrying.
    pub alert_delivery_failures: u64,
    /// The health ledger's state, when one is attached (feature `sqlx`).
    pub ledger: Option<LedgerStats>,
}

/// What the health ledger did (feature `sqlx`, `health::ledger`): how many
/// closed buckets reached the database, how many wait in memory, how many
/// were dropped because the database stayed away longer than the buffer
/// lasts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LedgerStats {
    /// This instance's id in the fleet.
    pub instance: String,
    /// Buckets written to the database since start.
    pub flushed_buckets: u64,
    /// Closed buckets waiting in memory for the database.
    pub pending_buckets: u64,
    /// Closed buckets dropped (the buffer was full, or the ledger fell
    /// further behind than the monitor's ring reaches).
    pub dropped_buckets: u64,
    /// Flushes that failed.
    pub failed_flushes: u64,
    /// The last flush's error, while flushes fail (redacted).
    pub last_error: Option<String>,
    /// Whether alert rules run on the fleet's counts now (`false`: on this
    /// instance's own view, because the database is unreachable).
    pub fleet_alerts: bool,
}

/// "Last 15 minutes", "Last hour".
fn time_window(window: Duration) -> String {
    format!("Last {}", describe_window(window))
}

impl Monitor {
    /// The guide's summary over the last 15 minutes.
    pub fn error_summary(&self) -> Summary {
        self.summary(Duration::from_secs(900))
    }

    /// The guide's summary over `window` (at most the [horizon](Monitor::horizon)).
    pub fn summary(&self, window: Duration) -> Summary {
        let window = window.min(self.horizon());
        let (total_errors, errors_by_type) = self.errors_by_type(window);
        Summary {
            status: self.status(),
            total_errors,
            errors_by_type,
            time_window: time_window(window),
        }
    }

    /// Total errors and errors by kind within `window`.
    fn errors_by_type(&self, window: Duration) -> (u64, BTreeMap<String, u64>) {
        let now = self.now();
        let span = self.span(window);
        let mut total = 0;
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        self.for_each_fingerprint(|fp| {
            let count = fp.ring.sum(now.epoch, span);
            if count == 0 {
                return;
            }
            total += count;
            match by_type.get_mut(&*fp.kind) {
                Some(n) => *n += count,
                None => {
                    by_type.insert(fp.kind.to_string(), count);
                }
            }
        });
        (total, by_type)
    }

    /// Errors within `window` that count for the status (see
    /// [`ClientId`](super::ClientId)).
    fn errors_counted(&self, window: Duration) -> u64 {
        let now = self.now();
        let span = self.span(window);
        let mut total = 0;
        self.for_each_fingerprint(|fp| total += self.counted(fp, now.epoch, span));
        total
    }

    /// Fingerprints with errors within `window`, most frequent first.
    fn fingerprint_reports(&self, window: Duration) -> Vec<FingerprintReport> {
        let now = self.now();
        let span = self.span(window);
        let mut fingerprints = Vec::new();
        self.for_each_fingerprint(|fp| {
            let count = fp.ring.sum(now.epoch, span);
            if count == 0 {
                return;
            }
            fingerprints.push(FingerprintReport {
                fingerprint: fp.key().to_owned(),
                kind: fp.kind.to_string(),
                operation: if &*fp.kind == OTHER {
                    String::new()
                } else {
                    fp.operation.to_string()
                },
                count,
                first_seen_secs_ago: now.ms.saturating_sub(fp.first_seen_ms) / 1000,
                last_seen_secs_ago: now
                    .ms
                    .saturating_sub(fp.last_seen_ms.load(Ordering::Relaxed))
                    / 1000,
                sample: fp.sample.to_string(),
            });
        });
        fingerprints.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        fingerprints
    }

    /// Requests over `window`.
    pub fn requests(&self, window: Duration) -> RequestReport {
        let now = self.now();
        let span = self.span(window);
        let total = self.inner.requests.sum(now.epoch, span);
        let failed = self.inner.failed_requests.sum(now.epoch, span);
        RequestReport {
            total,
            failed,
            error_rate: if total == 0 {
                0.0
            } else {
                failed as f64 / total as f64
            },
        }
    }

    /// The status, per the [status rules](super::StatusRules).
    pub fn status(&self) -> Status {
        self.status_with_reasons().0
    }

    /// The status and the reasons for it.
    pub fn status_with_reasons(&self) -> (Status, Vec<String>) {
        let rules = &self.inner.status;
        let mut status = Status::Healthy;
        let mut reasons = Vec::new();
        let mut raise = |to: Status, why: String| {
            status = status.max(to);
            reasons.push(why);
        };

        let requests = self.requests(rules.rate_window);
        if requests.total >= rules.min_requests {
            let now = self.now();
            let failed = self.counted_failures(now.epoch, self.span(rules.rate_window));
            let rate = failed as f64 / requests.total as f64;
            let window = describe_window(rules.rate_window);
            if rate >= rules.critical_error_ratio {
                raise(
                    Status::Critical,
                    format!(
                        "{:.1}% of requests failed in the last {window}",
                        rate * 100.0
                    ),
                );
            } else if rate >= rules.degraded_error_ratio {
                raise(
                    Status::Degraded,
                    format!(
                        "{:.1}% of requests failed in the last {window}",
                        rate * 100.0
                    ),
                );
            }
        }

        let errors = self.errors_counted(rules.count_window);
        let window = describe_window(rules.count_window);
        if rules.critical_errors.is_some_and(|n| errors >= n) {
            raise(
                Status::Critical,
                format!("{errors} errors in the last {window}"),
            );
        } else if rules.degraded_errors.is_some_and(|n| errors >= n) {
            raise(
                Status::Degraded,
                format!("{errors} errors in the last {window}"),
            );
        }

        if rules.open_breaker_degrades {
            for (name, (state, _)) in lock(&self.inner.breakers).iter() {
                if *state == BreakerState::Open {
                    raise(
                        Status::Degraded,
                        format!("circuit breaker '{name}' is open"),
                    );
                }
            }
        }

        for check in lock(&self.inner.checks).iter() {
            let result = check.result();
            if result.passing == Some(false) {
                let to = if result.critical {
                    Status::Critical
                } else {
                    Status::Degraded
                };
                raise(to, format!("check '{}' is failing", result.name));
            }
        }

        {
            let book = lock(&self.inner.book);
            for (rule, fingerprint) in book.active() {
                let Some(rule) = self.inner.rules.get(rule) else {
                    continue;
                };
                if rule.severity() == Severity::Critical {
                    let what = fingerprint.map_or_else(String::new, |fp| format!(" for {fp}"));
                    raise(
                        Status::Critical,
                        format!("alert '{}' is firing{what}", rule.name()),
                    );
                }
            }
        }

        if self.inner.fleet_alerts.load(Ordering::Acquire) {
            for (rule, fingerprint, severity) in lock(&self.inner.fleet_firing).iter() {
                if *severity == Severity::Critical {
                    let what = fingerprint
                        .as_deref()
                        .map_or_else(String::new, |fp| format!(" for {fp}"));
                    raise(
                        Status::Critical,
                        format!("alert '{rule}' is firing{what} across the fleet"),
                    );
                }
            }
        }

        for (status, reason) in lock(&self.inner.conditions).values() {
            raise(*status, reason.clone());
        }
        (status, reasons)
    }

    /// Whether this instance can serve now, for `/readyz`: it is not
    /// [draining](Monitor::set_draining), and every check registered with
    /// [`CheckOptions::readiness`](super::CheckOptions::readiness) has run
    /// and passes.
    ///
    /// Readiness answers from the present only. Error history, firing alerts
    /// and conditions (a worker waiting for a dependency) move the
    /// [status](Monitor::status), shown on the dashboard and in
    /// `health.json`, never readiness: a load balancer that pulls instances
    /// for their error history pulls *every* instance when a shared
    /// dependency blinks, and keeps them out after it is back. The same goes
    /// for a shared dependency itself (the database every instance uses):
    /// register its check without `readiness`, and let the app answer its
    /// own friendly 503 while it is down. An instance is ready again as soon
    /// as its readiness checks pass again (within one check interval).
    pub fn is_ready(&self) -> bool {
        if self.inner.draining.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.inner.checks)
            .iter()
            .filter(|c| c.options.readiness)
            .all(|c| c.result().passing == Some(true))
    }

    /// The results of the registered checks.
    pub fn checks(&self) -> Vec<CheckResult> {
        lock(&self.inner.checks)
            .iter()
            .map(|c| c.result())
            .collect()
    }

    /// Everything, over `window` (at most the [horizon](Monitor::horizon)).
    pub fn report(&self, window: Duration) -> Report {
        let window = window.min(self.horizon());
        let now = self.now();
        let span = self.span(window);
        let (status, reasons) = self.status_with_reasons();
        let (total_errors, errors_by_type) = self.errors_by_type(window);
        let fingerprints = self.fingerprint_reports(window);

        let mut errors_per_bucket = vec![0u64; span as usize];
        self.for_each_fingerprint(|fp| fp.ring.add_series(now.epoch, &mut errors_per_bucket));
        let heals = HealKind::ALL
            .iter()
            .map(|k| (*k, self.inner.heals[k.index()].sum(now.epoch, span)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let recent_heals = lock(&self.inner.recent_heals)
            .iter()
            .rev()
            .map(|h| HealRecord {
                ago_secs: now.ms.saturating_sub(h.at_ms) / 1000,
                ..h.clone()
            })
            .collect();
        let breakers = lock(&self.inner.breakers)
            .iter()
            .map(|(name, (state, since))| BreakerReport {
                name: name.clone(),
                state: *state,
                since_secs: now.ms.saturating_sub(*since) / 1000,
            })
            .collect();
        let throttles: Vec<ThrottleReport> = lock(&self.inner.throttles)
            .iter()
            .map(
                |(name, (throttling, failure_ratio, since))| ThrottleReport {
                    name: name.clone(),
                    throttling: *throttling,
                    failure_ratio: *failure_ratio,
                    since_secs: now.ms.saturating_sub(*since) / 1000,
                },
            )
            .collect();
        let limiters: Vec<LimiterReport> = lock(&self.inner.limiters).values().cloned().collect();
        let mut notes = Vec::new();
        for t in throttles.iter().filter(|t| t.throttling) {
            notes.push(format!(
                "retries to {} throttled: {:.0} % of calls failed ({}s ago)",
                t.name,
                t.failure_ratio * 100.0,
                t.since_secs
            ));
        }
        let checks = self.checks();
        for (dependency, (check, failing_fast, since)) in lock(&self.inner.steered).iter() {
            let failing = checks
                .iter()
                .any(|c| c.name == *check && c.passing == Some(false));
            if *failing_fast && failing {
                notes.push(format!(
                    "calls to {dependency} fail fast (the fallback answers): health check \
                     '{check}' failing ({}s ago)",
                    now.ms.saturating_sub(*since) / 1000
                ));
            }
        }
        for l in limiters.iter().filter(|l| l.shed > 0) {
            notes.push(format!(
                "{} sheds load: limit {}, {} in flight, {} requests shed since start",
                l.name, l.limit, l.in_flight, l.shed
            ));
        }
        let active_alerts = {
            let book = lock(&self.inner.book);
            let mut active: Vec<_> = book
                .active()
                .filter_map(|(rule, fp)| {
                    Some((
                        self.inner.rules.get(rule)?.name().to_owned(),
                        fp.map(str::to_owned),
                    ))
                })
                .collect();
            active.sort();
            active
        };
        Report {
            status,
            reasons,
            time_window: time_window(window),
            window_secs: window.as_secs(),
            total_errors,
            errors_by_type,
            fingerprints,
            errors_per_bucket,
            bucket_secs: self.inner.width_nanos / 1_000_000_000,
            heals,
            recent_heals,
            requests: self.requests(window),
            retries: self.inner.retries.load(Ordering::Relaxed),
            budget_refusals: self.inner.budget_refusals.load(Ordering::Relaxed),
            breaker_rejections: self.inner.breaker_rejections.load(Ordering::Relaxed),
            throttled: self.inner.throttled.load(Ordering::Relaxed),
            breakers,
            throttle_rejections: self.inner.throttle_rejections.load(Ordering::Relaxed),
            throttles,
            limiters,
            notes,
            checks,
            active_alerts,
            recent_alerts: lock(&self.inner.recent_alerts)
                .iter()
                .rev()
                .cloned()
                .collect(),
            alerts_dropped: self.alerts_dropped(),
            alert_delivery_failures: self.inner.delivery_failures.load(Ordering::Relaxed),
            ledger: lock(&self.inner.ledger).clone(),
        }
    }
}
