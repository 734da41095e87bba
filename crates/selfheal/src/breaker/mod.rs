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

mod builder;
mod error;
#[cfg(feature = "tower")]
mod layer;
mod state;
pub(crate) mod window;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use self::builder::{Builder, TripMode};
pub use self::error::{BreakerError, Open};
#[cfg(feature = "tower")]
pub use self::layer::{BreakerLayer, BreakerService, ResponseFuture};
use self::state::{Held, Inner, Ticket, word};
/// The state of a breaker, defined with the [events](crate::observe) that
/// report its changes; named here too, beside the [`Breaker`] it describes.
pub use crate::observe::BreakerState;
use crate::retry::{Classify, Verdict};

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
    /// taken. Each refusal is reported as [`Event::BreakerRejected`](crate::observe::Event::BreakerRejected).
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
    pub fn call<F, Fut, T, E>(&self, op: F) -> impl Future<Output = Result<T, BreakerError<E>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // The shared body's future itself, not one awaiting it: a future
        // nested in another costs ~10 ns per call here (measured).
        self.run(op, Result::is_err)
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
    pub fn call_classified<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        op: F,
    ) -> impl Future<Output = Result<T, BreakerError<E>>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(op, |result| is_failure(classifier, result))
    }

    /// Runs `op` if the breaker allows it, and records the outcome as a
    /// failure when `failed` says so.
    async fn run<F, Fut, T, E>(
        &self,
        op: F,
        failed: impl FnOnce(&Result<T, E>) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let held = Held {
            inner: &*self.inner,
            ticket: self.inner.acquire()?,
        };
        let result = op().await;
        held.finish(failed(&result));
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
    crate::retry::verdict_of(classifier, result).is_some_and(Verdict::is_retryable)
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
