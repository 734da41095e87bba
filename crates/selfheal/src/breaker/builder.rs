//! The breaker's settings: [`TripMode`] and the [`Builder`] that checks them
//! and builds a closed [`Breaker`].
//!
//! Kept apart from the state machine because it is the part users read (the
//! defaults table, the reasons) and the state machine is the part they should
//! not need to: every setting is validated here, once, so the hot path in
//! [`state`](super::state) can trust them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::Breaker;
use super::state::{CachePadded, Inner, Trip};
use super::window::{BUCKET_CAPACITY, Window};
use crate::ConfigError;
use crate::observe::Observer;

/// How a closed breaker decides to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TripMode {
    /// Open when, within the sampling window, at least the minimum throughput
    /// of calls completed and the share of failures reached the failure ratio.
    /// The default: it adapts to traffic.
    FailureRatio,
    /// Open after N failures in a row (any success resets the streak). For
    /// dependencies called too rarely to fill a window; no clock read on the
    /// success path.
    ConsecutiveFailures,
}

/// Configures and builds a [`Breaker`]; see [`Breaker::builder`].
///
/// Defaults, and why:
///
/// | setting | default | why |
/// |---|---|---|
/// | [trip mode](Self::with_trip_mode) | failure ratio | adapts to traffic, unlike a raw count |
/// | [failure ratio](Self::with_failure_ratio) | `0.5` | half the calls failing is an outage, not the background error rate of a flaky-but-working API; lower values trip on noise |
/// | [minimum throughput](Self::with_minimum_throughput) | `20` | below that a ratio is noise (1 failure in 2 calls is 50 %); 20 calls fill a 30 s window at under one call a second |
/// | [sampling duration](Self::with_sampling_duration) | 30 s | long enough to gather the minimum throughput on modest traffic, short enough that an incident stops counting half a minute after it ended |
/// | [buckets](Self::with_buckets) | `10` | the window slides in 3 s steps, so old outcomes age out gradually rather than all at once, for ten atomics of memory |
/// | [break duration](Self::with_break_duration) | 5 s | room for a dependency to recover (a restart, a failover) while an outage that has ended is noticed within seconds; a probe every 5 s costs nothing |
/// | [half-open probes](Self::with_half_open_probes) | `1` | one call is enough to learn whether the dependency is back, and a dependency that just recovered should not get a burst |
/// | [consecutive failures](Self::with_consecutive_failures) (in that mode) | `5` | one or two failures in a row happen to healthy dependencies; five in a row rarely do |
///
/// [`Builder::build`] rejects settings the breaker cannot work with.
#[derive(Clone)]
pub struct Builder {
    name: Cow<'static, str>,
    mode: TripMode,
    failure_ratio: f64,
    minimum_throughput: u32,
    sampling_duration: Duration,
    buckets: u32,
    consecutive_failures: u32,
    break_duration: Duration,
    half_open_probes: u32,
    observer: Option<Arc<dyn Observer>>,
}

impl Builder {
    /// The default failure ratio: `0.5`.
    pub const DEFAULT_FAILURE_RATIO: f64 = 0.5;
    /// The default minimum throughput: `20` calls.
    pub const DEFAULT_MINIMUM_THROUGHPUT: u32 = 20;
    /// The default sampling duration: 30 seconds.
    pub const DEFAULT_SAMPLING_DURATION: Duration = Duration::from_secs(30);
    /// The default number of buckets in the sampling window: `10`.
    pub const DEFAULT_BUCKETS: u32 = 10;
    /// The default streak that trips a breaker in consecutive mode: `5`.
    pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
    /// The default break duration: 5 seconds.
    pub const DEFAULT_BREAK_DURATION: Duration = Duration::from_secs(5);
    /// The default number of half-open probes: `1`.
    pub const DEFAULT_HALF_OPEN_PROBES: u32 = 1;

    /// Largest number of buckets accepted: a bound on the window's memory.
    pub const MAX_BUCKETS: u32 = 1_000;

    pub(super) fn new(name: Cow<'static, str>) -> Self {
        Self {
            name,
            mode: TripMode::FailureRatio,
            failure_ratio: Self::DEFAULT_FAILURE_RATIO,
            minimum_throughput: Self::DEFAULT_MINIMUM_THROUGHPUT,
            sampling_duration: Self::DEFAULT_SAMPLING_DURATION,
            buckets: Self::DEFAULT_BUCKETS,
            consecutive_failures: Self::DEFAULT_CONSECUTIVE_FAILURES,
            break_duration: Self::DEFAULT_BREAK_DURATION,
            half_open_probes: Self::DEFAULT_HALF_OPEN_PROBES,
            observer: None,
        }
    }

    /// Chooses how the breaker trips. Default: [`TripMode::FailureRatio`].
    pub const fn with_trip_mode(mut self, mode: TripMode) -> Self {
        self.mode = mode;
        self
    }

    /// Share of failed calls, in `(0, 1]`, at which the breaker opens
    /// (failure-ratio mode). Default: `0.5`.
    pub const fn with_failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self
    }

    /// Calls that must have completed within the sampling window before the
    /// ratio is judged (failure-ratio mode). Default: `20`.
    pub const fn with_minimum_throughput(mut self, calls: u32) -> Self {
        self.minimum_throughput = calls;
        self
    }

    /// Length of the sliding window the ratio is computed over, at least one
    /// millisecond (failure-ratio mode). Default: 30 seconds.
    pub const fn with_sampling_duration(mut self, duration: Duration) -> Self {
        self.sampling_duration = duration;
        self
    }

    /// Number of buckets the sampling window is split into, from 1 to
    /// [`Builder::MAX_BUCKETS`]: the window slides by `sampling_duration /
    /// buckets` at a time (failure-ratio mode). Default: `10`.
    pub const fn with_buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }

    /// Trips after `failures` failed calls in a row, and selects
    /// [`TripMode::ConsecutiveFailures`]. The ratio settings are then unused.
    /// Default streak in that mode: `5`.
    pub const fn with_consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures;
        self.mode = TripMode::ConsecutiveFailures;
        self
    }

    /// How long the breaker stays open before letting a probe through; not
    /// zero. Default: 5 seconds.
    pub const fn with_break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// Probe calls allowed in flight at once while half-open, and successful
    /// probes needed to close (at least 1, at most 65 535). Default: `1`.
    pub const fn with_half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// Reports every state change ([`Event::BreakerTransition`](crate::observe::Event::BreakerTransition)) and every
    /// refused call ([`Event::BreakerRejected`](crate::observe::Event::BreakerRejected)) to `observer` instead of the
    /// global observer.
    ///
    /// Each transition is reported exactly once, synchronously, by the thread
    /// that made it, right after making it. No lock is held while reporting,
    /// so two transitions made by different threads a moment apart (a probe
    /// closes the breaker, then a burst of failures opens it again) can reach
    /// the observer in the opposite order; the event's `from` says which state
    /// each one left, and [`Breaker::state`] is always current.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Builds the breaker, closed.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the breaker and the setting if the failure
    /// ratio is not in `(0, 1]`, the bucket count is zero or above
    /// [`Builder::MAX_BUCKETS`], the sampling duration is under one
    /// millisecond, the minimum throughput cannot be reached with the window's
    /// buckets, the break duration is zero, the probe count is zero or above
    /// 65 535, or the consecutive-failures streak is zero.
    pub fn build(self) -> Result<Breaker, ConfigError> {
        let fail = |what: String| {
            Err(ConfigError::new(format!(
                "circuit breaker '{}': {what}",
                self.name
            )))
        };
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return fail(format!(
                "failure_ratio must be in (0, 1], got {}",
                self.failure_ratio
            ));
        }
        if self.buckets == 0 || self.buckets > Self::MAX_BUCKETS {
            return fail(format!(
                "buckets must be between 1 and {}, got {}",
                Self::MAX_BUCKETS,
                self.buckets
            ));
        }
        if self.sampling_duration < Duration::from_millis(1) {
            return fail(format!(
                "sampling_duration must be at least 1ms, got {:?}",
                self.sampling_duration
            ));
        }
        let Ok(sampling_nanos) = u64::try_from(self.sampling_duration.as_nanos()) else {
            return fail(format!(
                "sampling_duration is too long: {:?}",
                self.sampling_duration
            ));
        };
        // A saturated bucket is halved, so each holds at least half its
        // capacity: more than that per bucket may never be reached.
        let reachable = u64::from(self.buckets) * (BUCKET_CAPACITY / 2);
        if u64::from(self.minimum_throughput) > reachable {
            return fail(format!(
                "minimum_throughput {} can never be reached with {} buckets (at most {reachable})",
                self.minimum_throughput, self.buckets
            ));
        }
        if self.break_duration.is_zero() {
            return fail("break_duration must not be zero".to_owned());
        }
        if self.half_open_probes == 0 || self.half_open_probes > u32::from(u16::MAX) {
            return fail(format!(
                "half_open_probes must be between 1 and {}, got {}",
                u16::MAX,
                self.half_open_probes
            ));
        }
        if self.consecutive_failures == 0 {
            return fail("consecutive_failures must be at least 1".to_owned());
        }

        let trip = match self.mode {
            TripMode::FailureRatio => Trip::Ratio {
                // At least 1µs: the sampling duration is at least 1ms and
                // there are at most 1000 buckets.
                window: Window::new(self.buckets, sampling_nanos / u64::from(self.buckets)),
                ratio: self.failure_ratio,
                minimum_throughput: u64::from(self.minimum_throughput),
            },
            TripMode::ConsecutiveFailures => Trip::Consecutive {
                streak: CachePadded(AtomicU32::new(0)),
                threshold: self.consecutive_failures,
            },
        };
        Ok(Breaker {
            inner: Arc::new(Inner::closed(
                Arc::from(self.name.as_ref()),
                trip,
                u64::try_from(self.break_duration.as_nanos()).unwrap_or(u64::MAX),
                self.half_open_probes,
                self.observer,
            )),
        })
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("failure_ratio", &self.failure_ratio)
            .field("minimum_throughput", &self.minimum_throughput)
            .field("sampling_duration", &self.sampling_duration)
            .field("buckets", &self.buckets)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("break_duration", &self.break_duration)
            .field("half_open_probes", &self.half_open_probes)
            .field("observer", &self.observer.as_ref().map(|_| "..."))
            .finish()
    }
}
