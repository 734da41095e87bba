//! Registered health checks: async probes run on an interval, results cached.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub(crate) type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
pub(crate) type Probe = Box<dyn Fn() -> ProbeFuture + Send + Sync>;

/// How a check is run and what its failure means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// How often the probe runs. Default 15 s.
    pub interval: Duration,
    /// A probe running longer than this fails. Default 5 s.
    pub timeout: Duration,
    /// A failing critical check makes the status critical; a non-critical
    /// one makes it degraded. Default `true`.
    pub critical: bool,
    /// Whether `/readyz` waits for this check to pass. Default `false`.
    ///
    /// Set it for what taking this instance out of rotation can fix: a local
    /// resource (a warm-up, a local disk, a sidecar). Leave it off for a
    /// dependency that every instance shares (the database, an upstream
    /// API): when it blinks, every instance would fail readiness at once and
    /// the load balancer would have nowhere to send anyone, where the app
    /// itself could have answered a friendly 503 and healed when it came
    /// back. See [`Monitor::is_ready`](super::Monitor::is_ready).
    pub readiness: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            critical: true,
            readiness: false,
        }
    }
}

/// The last result of a check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether the failure of this check is critical.
    pub critical: bool,
    /// `None` until the probe has run once.
    pub passing: Option<bool>,
    /// The failure's message (the probe's own words), when failing.
    pub message: Option<String>,
    /// How long the last run took, in milliseconds.
    pub took_ms: Option<u64>,
    /// When it last ran (wall clock, seconds since the Unix epoch).
    pub checked_at: Option<u64>,
}

pub(crate) struct Check {
    pub(crate) name: Cow<'static, str>,
    pub(crate) options: CheckOptions,
    pub(crate) probe: Probe,
    last: Mutex<CheckResult>,
    /// The last verdict and when it was made, as one word for
    /// [`CheckWatch`] (read on request paths, so an atomic rather than the
    /// result's lock): `ms since origin << 2 | state`.
    verdict: Arc<AtomicU64>,
    origin: tokio::time::Instant,
}

const UNKNOWN: u64 = 0;
const PASSING: u64 = 1;
const FAILING: u64 = 2;

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Check {
    pub(crate) fn new(name: Cow<'static, str>, options: CheckOptions, probe: Probe) -> Self {
        let last = CheckResult {
            name: name.to_string(),
            critical: options.critical,
            passing: None,
            message: None,
            took_ms: None,
            checked_at: None,
        };
        Self {
            name,
            options,
            probe,
            last: Mutex::new(last),
            verdict: Arc::new(AtomicU64::new(UNKNOWN)),
            origin: tokio::time::Instant::now(),
        }
    }

    /// A watch on this check's verdict.
    pub(crate) fn watch(&self) -> CheckWatch {
        CheckWatch {
            name: Arc::from(&*self.name),
            verdict: self.verdict.clone(),
            origin: self.origin,
            interval: self.options.interval,
            // Two runs missed: the probe's task is gone (its runtime
            // stopped, the monitor dropped) or hangs past its timeout.
            fresh_ms: (2 * self.options.interval + self.options.timeout).as_millis() as u64,
        }
    }

    /// Runs the probe once (bounded by its timeout) and caches the result.
    pub(crate) async fn run(&self) -> bool {
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(self.options.timeout, (self.probe)()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("timed out after {:?}", self.options.timeout)),
        };
        let passing = outcome.is_ok();
        let at = self.origin.elapsed().as_millis() as u64;
        self.verdict.store(
            (at << 2) | if passing { PASSING } else { FAILING },
            Ordering::Relaxed,
        );
        let mut last = crate::sync::lock(&self.last);
        last.passing = Some(passing);
        last.message = outcome
            .err()
            .map(|m| super::truncate(&crate::redact::redact(&m), 200));
        last.took_ms = Some(started.elapsed().as_millis() as u64);
        last.checked_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        passing
    }

    pub(crate) fn result(&self) -> CheckResult {
        crate::sync::lock(&self.last).clone()
    }
}

/// A registered check's last verdict, readable in one atomic load: for
/// policies that should act on what a check reports (from
/// [`Monitor::watch_check`](super::Monitor::watch_check)).
///
/// Why: a check probes a dependency on its own schedule (a login to the
/// payment provider's API, a `SELECT 1`, a model listing), and while it
/// fails every call to that dependency would wait out a connect or attempt
/// timeout and then fail anyway. The HTTP middleware
/// ([`Builder::with_check`](crate::http::Builder::with_check)) uses a watch
/// to fail such calls at once, so that the caller's fallback answers in
/// microseconds; the check keeps probing, and calls resume the moment it
/// passes again. Nothing stops for good.
///
/// Cheap to clone; clones watch the same check.
#[derive(Clone)]
pub struct CheckWatch {
    name: Arc<str>,
    verdict: Arc<AtomicU64>,
    origin: tokio::time::Instant,
    interval: Duration,
    fresh_ms: u64,
}

impl CheckWatch {
    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the check's last run failed, and recently: `false` before
    /// its first run (no verdict is not a failure), and `false` once the
    /// failing verdict is older than two intervals and a timeout (the
    /// probe stopped running: a stale "down" must not refuse calls for
    /// good). One atomic load while passing; a clock read while failing.
    #[inline]
    pub fn is_failing(&self) -> bool {
        let word = self.verdict.load(Ordering::Relaxed);
        word & 3 == FAILING && self.is_fresh(word >> 2)
    }

    #[cold]
    fn is_fresh(&self, at_ms: u64) -> bool {
        let now = self.origin.elapsed().as_millis() as u64;
        now.saturating_sub(at_ms) <= self.fresh_ms
    }

    /// How often the check runs: the longest a failing verdict can be
    /// stale, so a fair `Retry-After` for calls refused on its word.
    pub const fn interval(&self) -> Duration {
        self.interval
    }
}

impl fmt::Debug for CheckWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckWatch")
            .field("name", &self.name)
            .field("failing", &self.is_failing())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_verdict_that_is_not_renewed_expires() {
        let options = CheckOptions {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            ..CheckOptions::default()
        };
        let check = Check::new(
            "dep".into(),
            options,
            Box::new(|| Box::pin(async { Err("down".to_owned()) })),
        );
        let watch = check.watch();
        assert!(!watch.is_failing(), "no verdict yet");
        assert!(!check.run().await);
        assert!(watch.is_failing());
        // Renewed in time: still failing.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(watch.is_failing());
        // Two intervals and a timeout without a run: the probe is gone.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!watch.is_failing(), "a stale verdict refused calls");
        assert!(!check.run().await);
        assert!(watch.is_failing());
    }
}
