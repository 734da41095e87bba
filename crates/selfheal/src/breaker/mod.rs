//! Circuit breaker: stop calling a dependency that is down, and find out when
//! it is back.
//!
//! Retries heal blips. When a dependency is really down, they make things
//! worse: every request still waits for its timeouts, then for the backoff,
//! then for more timeouts, and the struggling dependency receives several
//! times its normal load exactly when it can least take it. A breaker watches
//! the outcomes of calls and, once the dependency is clearly failing, *opens*:
//! calls fail at once with [`Open`], without being made. The caller gets its
//! answer in nanoseconds instead of seconds (and can fall back, or answer 503
//! with `Retry-After`); the dependency gets quiet time to recover. After a
//! break, the breaker turns *half-open* and lets a probe call through: if it
//! succeeds, the breaker closes and traffic resumes; if it fails, the breaker
//! opens for another break.
//!
//! **Why a failure ratio with a minimum throughput, not a count?** A count
//! such as "10 failures" means something different at 5 calls a minute and at
//! 5 000 a second: it trips on background noise for a busy service and takes
//! forever for a quiet one. The ratio of failures over a sliding window of
//! time scales with traffic. But a ratio over three calls is noise too (one
//! timeout is 33 %), so the breaker only judges once the window holds a
//! minimum number of calls. For dependencies called rarely, where no window
//! would fill, [`TripMode::ConsecutiveFailures`] trips after N failures in a
//! row instead.
//!
//! **Why are half-open probes limited?** A dependency that has just come back
//! (a restarted database, a scaled-up API) is at its most fragile: warming
//! caches, refilling pools. Letting all waiting traffic through at once is the
//! surest way to knock it down again. A few probes tell the breaker as much as
//! a flood would; everything else keeps failing fast until the probes agree
//! the dependency is healthy.
//!
//! The closed path, which every call pays, takes no lock and allocates
//! nothing: one atomic load to admit a call and, to record its outcome, one
//! clock read and one compare-exchange on a bucket of the window (in
//! consecutive mode: no clock read, and at most one store). Every state change is a compare-exchange on a single
//! word, so exactly one thread performs (and reports) each transition. Time is
//! read only through [`tokio::time::Instant`], so tests can run hours of
//! breaker time under `tokio::time::pause()`.
//!
//! ```
//! use selfheal::breaker::{Breaker, BreakerError};
//! use selfheal::observe::BreakerState;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), selfheal::ConfigError> {
//! let breaker = Breaker::builder("payments")
//!     .with_consecutive_failures(2)
//!     .build()?;
//!
//! for _ in 0..2 {
//!     let result = breaker.call(|| async { Err::<(), _>("connection refused") }).await;
//!     assert!(matches!(result, Err(BreakerError::Inner("connection refused"))));
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//!
//! // The next call is not made: it fails fast.
//! let refused = breaker.call(|| async { Ok::<_, &str>("never runs") }).await;
//! let Err(BreakerError::Open(open)) = refused else { panic!("expected a refusal") };
//! assert!(open.to_string().starts_with("circuit breaker 'payments' is open; next probe in"));
//! # Ok(())
//! # }
//! ```

mod error;
#[cfg(feature = "tower")]
mod layer;
mod window;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use self::error::{BreakerError, Open};
#[cfg(feature = "tower")]
pub use self::layer::{BreakerLayer, BreakerService, ResponseFuture};
use self::window::{BUCKET_CAPACITY, Window};
use crate::ConfigError;
use crate::observe::{self, BreakerState, Event, Observer};
use crate::retry::{Classify, Verdict};

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

    fn new(name: Cow<'static, str>) -> Self {
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

    /// Reports every state change ([`Event::BreakerTransition`]) and every
    /// refused call ([`Event::BreakerRejected`]) to `observer` instead of the
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
            inner: Arc::new(Inner {
                state: CachePadded(AtomicU64::new(word::closed(0))),
                trip,
                episodes: AtomicU32::new(0),
                name: Arc::from(self.name.as_ref()),
                created: Instant::now(),
                break_nanos: u64::try_from(self.break_duration.as_nanos()).unwrap_or(u64::MAX),
                probes: self.half_open_probes,
                observer: self.observer,
            }),
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

/// A circuit breaker guarding one dependency.
///
/// Clones share their state: build one per dependency (per host, per
/// database) and hand clones to every task that calls it.
///
/// Use it through [`Breaker::call`] or [`Breaker::call_classified`] for async
/// closures, [`Breaker::try_acquire`] and a [`Permit`] for anything else, or
/// [`BreakerLayer`] on a tower service.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

impl Breaker {
    /// A builder for a breaker named `name`, usually the dependency it guards
    /// (`"api.openai.com"`, `"postgres"`). The name appears in errors, events
    /// and logs. See [`Builder`] for the defaults.
    pub fn builder(name: impl Into<Cow<'static, str>>) -> Builder {
        Builder::new(name.into())
    }

    /// A breaker named `name` with the default settings of [`Builder`].
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self::builder(name)
            .build()
            .expect("the default breaker settings are valid")
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state.
    ///
    /// An open breaker reports [`BreakerState::Open`] until a caller arrives
    /// after the break duration: that caller moves it to half-open and becomes
    /// the first probe.
    pub fn state(&self) -> BreakerState {
        word::state(self.inner.state.load(Ordering::Acquire))
    }

    /// Asks to make one call.
    ///
    /// On `Ok`, make the call and report its outcome with
    /// [`Permit::success`] or [`Permit::failure`]; dropping the permit
    /// without reporting (a cancelled call) records nothing and, for a
    /// half-open probe, frees its slot.
    ///
    /// # Errors
    ///
    /// [`Open`] if the breaker is open, or half-open with every probe slot
    /// taken. Each refusal is reported as [`Event::BreakerRejected`].
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, Open> {
        let ticket = self.inner.acquire()?;
        Ok(Permit {
            held: Held {
                inner: Arc::clone(&self.inner),
                ticket,
            },
        })
    }

    /// Runs `op` if the breaker admits it, and records the outcome: every `Ok`
    /// is a success, every `Err` a failure.
    ///
    /// If the returned future is dropped before `op` completes, nothing is
    /// recorded (see [`Breaker::try_acquire`]).
    ///
    /// # Errors
    ///
    /// [`BreakerError::Open`] without running `op` if the breaker refuses the
    /// call, [`BreakerError::Inner`] with `op`'s error otherwise.
    pub async fn call<F, Fut, T, E>(&self, op: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let held = Held {
            inner: &*self.inner,
            ticket: self.inner.acquire()?,
        };
        let result = op().await;
        held.finish(result.is_err());
        result.map_err(BreakerError::Inner)
    }

    /// Like [`Breaker::call`], but asks `classifier` what each outcome says
    /// about the dependency's health.
    ///
    /// - A [`Verdict::Transient`] or [`Verdict::RetryAfter`] error, or an `Ok`
    ///   that [`Classify::classify_ok`] rejects as transient, is a **failure**:
    ///   the dependency is struggling.
    /// - A [`Verdict::Permanent`] error (or rejected `Ok`) is a **success** for
    ///   the breaker: the dependency answered, and a `400 Bad Request` or a
    ///   constraint violation says nothing about its health. Counting those
    ///   would let one client's bad input cut everyone off.
    ///
    /// The result is returned as it is, whatever the verdict.
    ///
    /// # Errors
    ///
    /// As [`Breaker::call`].
    pub async fn call_classified<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        op: F,
    ) -> Result<T, BreakerError<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let held = Held {
            inner: &*self.inner,
            ticket: self.inner.acquire()?,
        };
        let result = op().await;
        held.finish(is_failure(classifier, &result));
        result.map_err(BreakerError::Inner)
    }

    /// A point-in-time view of the breaker, for dashboards and probes.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.snapshot()
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Whether `classifier` counts `result` as a failure of the dependency.
pub(crate) fn is_failure<C, T, E>(classifier: &C, result: &Result<T, E>) -> bool
where
    C: Classify<T, E>,
{
    let verdict = match result {
        Ok(value) => classifier.classify_ok(value),
        Err(error) => Some(classifier.classify_error(error)),
    };
    matches!(verdict, Some(Verdict::Transient | Verdict::RetryAfter(_)))
}

/// Permission to make one call through a [`Breaker`].
///
/// Report the outcome with [`Permit::success`] or [`Permit::failure`].
/// Dropping a permit without reporting means the call was cancelled: nothing
/// is recorded, and a half-open probe slot is freed for another caller.
///
/// The permit owns a handle to the breaker, so it can be moved into a future
/// or another task.
pub struct Permit {
    held: Held<Arc<Inner>>,
}

impl Permit {
    /// Records that the call succeeded.
    #[inline]
    pub fn success(self) {
        self.held.finish(false);
    }

    /// Records that the call failed.
    #[inline]
    pub fn failure(self) {
        self.held.finish(true);
    }

    /// `true` if this call is a half-open probe: its outcome decides whether
    /// the breaker closes or opens again.
    pub fn is_probe(&self) -> bool {
        matches!(self.held.ticket, Ticket::Probe(_))
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.held.inner.name)
            .field("probe", &self.is_probe())
            .finish()
    }
}

/// A point-in-time view of a [`Breaker`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The state.
    pub state: BreakerState,
    /// Failure-ratio mode: failed calls in the sampling window.
    /// Consecutive mode: the current streak of failures.
    pub failures: u64,
    /// Failure-ratio mode: completed calls in the sampling window.
    /// Consecutive mode, which keeps no window: equal to `failures`.
    pub total: u64,
    /// When open: how long until the next probe is let through (zero once the
    /// break is over and no caller has come yet).
    pub retry_in: Option<Duration>,
    /// When half-open: probe calls in flight.
    pub probes_in_flight: u32,
}

/// One admission: which state the call was admitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ticket {
    /// Admitted while closed; holds the state word at admission, so that a
    /// failure can only trip the closed period it belongs to.
    Closed(u64),
    /// A half-open probe of this episode.
    Probe(u32),
    /// The outcome was recorded.
    Done,
}

/// A ticket together with the breaker it came from: records nothing on drop
/// unless finished, but frees a probe slot. Borrowed in `call`, owned (an
/// `Arc`) in a [`Permit`].
struct Held<P: Deref<Target = Inner>> {
    inner: P,
    ticket: Ticket,
}

impl<P: Deref<Target = Inner>> Held<P> {
    #[inline]
    fn finish(mut self, failed: bool) {
        let ticket = std::mem::replace(&mut self.ticket, Ticket::Done);
        self.inner.record(ticket, failed);
    }
}

impl<P: Deref<Target = Inner>> Drop for Held<P> {
    #[inline]
    fn drop(&mut self) {
        if let Ticket::Probe(episode) = self.ticket {
            self.inner.release_probe(episode);
        }
    }
}

/// Keeps a hot atomic on its own cache lines, so that writes to neighbouring
/// data do not slow down the readers of the state word.
#[repr(align(128))]
struct CachePadded<T>(T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

enum Trip {
    Ratio {
        window: Window,
        ratio: f64,
        minimum_throughput: u64,
    },
    Consecutive {
        streak: CachePadded<AtomicU32>,
        threshold: u32,
    },
}

/// The state word: every transition is one compare-exchange on it.
///
/// ```text
/// closed:    [ closed_at: 62 bits                                 | 00 ]
/// open:      [ opened_at: 62 bits                                 | 01 ]
/// half-open: [ episode: 30 | probes in flight: 16 | successes: 16 | 10 ]
/// ```
///
/// Times are nanoseconds since the breaker was created. Every closed and open
/// word is unique (a breaker must stay open for a non-zero break before it
/// can close again), so a compare-exchange from a word read earlier fails if
/// the breaker has been through any transition since: no ABA.
mod word {
    use crate::observe::BreakerState;

    const TAG_MASK: u64 = 0b11;
    const CLOSED: u64 = 0b00;
    const OPEN: u64 = 0b01;
    const HALF_OPEN: u64 = 0b10;
    const TIME_MASK: u64 = u64::MAX >> 2;
    pub(super) const EPISODE_MASK: u32 = (1 << 30) - 1;

    pub(super) const fn closed(at: u64) -> u64 {
        ((at & TIME_MASK) << 2) | CLOSED
    }

    pub(super) const fn open(at: u64) -> u64 {
        ((at & TIME_MASK) << 2) | OPEN
    }

    pub(super) const fn half_open(episode: u32, in_flight: u32, successes: u32) -> u64 {
        let payload = ((episode & EPISODE_MASK) as u64) << 32
            | ((in_flight & 0xffff) as u64) << 16
            | (successes & 0xffff) as u64;
        (payload << 2) | HALF_OPEN
    }

    pub(super) const fn state(word: u64) -> BreakerState {
        match word & TAG_MASK {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// `closed_at` or `opened_at`.
    pub(super) const fn time(word: u64) -> u64 {
        word >> 2
    }

    /// `(episode, in_flight, successes)` of a half-open word.
    pub(super) const fn probes(word: u64) -> (u32, u32, u32) {
        let payload = word >> 2;
        (
            (payload >> 32) as u32,
            ((payload >> 16) & 0xffff) as u32,
            (payload & 0xffff) as u32,
        )
    }
}

struct Inner {
    state: CachePadded<AtomicU64>,
    trip: Trip,
    /// Source of half-open episode numbers.
    episodes: AtomicU32,
    name: Arc<str>,
    created: Instant,
    break_nanos: u64,
    probes: u32,
    observer: Option<Arc<dyn Observer>>,
}

impl Inner {
    /// Nanoseconds since the breaker was created.
    #[inline]
    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.created)
            .as_nanos() as u64
    }

    /// Admits a call: inline for the closed path, out of line otherwise.
    #[inline]
    fn acquire(&self) -> Result<Ticket, Open> {
        let current = self.state.load(Ordering::Acquire);
        if word::state(current) == BreakerState::Closed {
            return Ok(Ticket::Closed(current));
        }
        self.acquire_slow(current)
    }

    #[inline(never)]
    fn acquire_slow(&self, mut current: u64) -> Result<Ticket, Open> {
        loop {
            match word::state(current) {
                BreakerState::Closed => return Ok(Ticket::Closed(current)),
                BreakerState::Open => {
                    let now = self.now();
                    let until = word::time(current).saturating_add(self.break_nanos);
                    if now < until {
                        let retry_in = Duration::from_nanos(until - now);
                        return Err(self.reject(BreakerState::Open, retry_in));
                    }
                    // The break is over: this caller becomes the first probe.
                    let episode =
                        self.episodes.fetch_add(1, Ordering::Relaxed) & word::EPISODE_MASK;
                    let next = word::half_open(episode, 1, 0);
                    match self.transition(current, next) {
                        Ok(()) => return Ok(Ticket::Probe(episode)),
                        Err(actual) => current = actual,
                    }
                }
                BreakerState::HalfOpen => {
                    let (episode, in_flight, successes) = word::probes(current);
                    // Admit only the probes still needed to close.
                    if in_flight + successes >= self.probes {
                        return Err(self.reject(BreakerState::HalfOpen, Duration::ZERO));
                    }
                    let next = word::half_open(episode, in_flight + 1, successes);
                    match self.state.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(Ticket::Probe(episode)),
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }

    #[inline]
    fn record(&self, ticket: Ticket, failed: bool) {
        match (ticket, failed) {
            (Ticket::Closed(_), false) => self.closed_success(),
            (Ticket::Closed(admitted), true) => self.closed_failure(admitted),
            (Ticket::Probe(episode), false) => self.probe_success(episode),
            (Ticket::Probe(episode), true) => self.probe_failure(episode),
            (Ticket::Done, _) => {}
        }
    }

    #[inline]
    fn closed_success(&self) {
        match &self.trip {
            Trip::Ratio { window, .. } => window.record(window.epoch(self.now()), false),
            Trip::Consecutive { streak, .. } => {
                // Only write when there is a streak to break: a shared cache
                // line is not dirtied by every success.
                if streak.load(Ordering::Relaxed) != 0 {
                    streak.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    fn closed_failure(&self, admitted: u64) {
        // A call admitted before the breaker opened (and perhaps closed again)
        // says nothing about the current closed period.
        if self.state.load(Ordering::Acquire) != admitted {
            return;
        }
        match &self.trip {
            Trip::Ratio {
                window,
                ratio,
                minimum_throughput,
            } => {
                let now = self.now();
                let epoch = window.epoch(now);
                window.record(epoch, true);
                // Only a failure can push the ratio over the threshold.
                let counts = window.counts(epoch);
                if counts.total >= *minimum_throughput
                    && counts.failures as f64 >= ratio * counts.total as f64
                {
                    let _ = self.transition(admitted, word::open(now));
                }
            }
            Trip::Consecutive { streak, threshold } => {
                let streak = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                if streak >= *threshold {
                    let _ = self.transition(admitted, word::open(self.now()));
                }
            }
        }
    }

    fn probe_success(&self, episode: u32) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if !self.is_episode(current, episode) {
                return;
            }
            let (_, in_flight, successes) = word::probes(current);
            if successes + 1 >= self.probes {
                // Forget the outcomes that opened the breaker before any
                // caller can see it closed.
                let now = self.now();
                self.reset_counts(now);
                match self.transition(current, word::closed(now)) {
                    Ok(()) => return,
                    Err(actual) => current = actual,
                }
            } else {
                let next = word::half_open(episode, in_flight.saturating_sub(1), successes + 1);
                match self.state.compare_exchange_weak(
                    current,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    fn probe_failure(&self, episode: u32) {
        let now = self.now();
        let mut current = self.state.load(Ordering::Acquire);
        while self.is_episode(current, episode) {
            match self.transition(current, word::open(now)) {
                Ok(()) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// A probe was dropped without an outcome: free its slot.
    fn release_probe(&self, episode: u32) {
        let mut current = self.state.load(Ordering::Acquire);
        while self.is_episode(current, episode) {
            let (_, in_flight, successes) = word::probes(current);
            let next = word::half_open(episode, in_flight.saturating_sub(1), successes);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn is_episode(&self, current: u64, episode: u32) -> bool {
        word::state(current) == BreakerState::HalfOpen && word::probes(current).0 == episode
    }

    fn reset_counts(&self, now: u64) {
        match &self.trip {
            Trip::Ratio { window, .. } => window.reset(window.epoch(now)),
            Trip::Consecutive { streak, .. } => streak.store(0, Ordering::Relaxed),
        }
    }

    /// Moves from `from` to `to` if the state is still `from`, and reports
    /// the transition. Only the thread whose compare-exchange succeeds
    /// reports, so each transition is reported exactly once.
    fn transition(&self, from: u64, to: u64) -> Result<(), u64> {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)?;
        observe::emit(
            self.observer.as_deref(),
            &Event::BreakerTransition {
                breaker: &self.name,
                from: word::state(from),
                to: word::state(to),
            },
        );
        Ok(())
    }

    fn reject(&self, state: BreakerState, retry_in: Duration) -> Open {
        observe::emit(
            self.observer.as_deref(),
            &Event::BreakerRejected {
                breaker: &self.name,
                retry_in,
            },
        );
        Open::new(Arc::clone(&self.name), state, retry_in)
    }

    fn snapshot(&self) -> Snapshot {
        let current = self.state.load(Ordering::Acquire);
        let now = self.now();
        let state = word::state(current);
        let (failures, total) = match &self.trip {
            Trip::Ratio { window, .. } => {
                let counts = window.counts(window.epoch(now));
                (counts.failures, counts.total)
            }
            Trip::Consecutive { streak, .. } => {
                let streak = u64::from(streak.load(Ordering::Relaxed));
                (streak, streak)
            }
        };
        let retry_in = (state == BreakerState::Open).then(|| {
            let until = word::time(current).saturating_add(self.break_nanos);
            Duration::from_nanos(until.saturating_sub(now))
        });
        let probes_in_flight = if state == BreakerState::HalfOpen {
            word::probes(current).1
        } else {
            0
        };
        Snapshot {
            name: Arc::clone(&self.name),
            state,
            failures,
            total,
            retry_in,
            probes_in_flight,
        }
    }
}
