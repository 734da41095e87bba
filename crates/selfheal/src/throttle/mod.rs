//! Adaptive client-side throttling: send a dependency no more than it can
//! take, in proportion to what it takes.
//!
//! # Why not a breaker (alone)
//!
//! A circuit breaker is a switch: below its threshold it lets everything
//! through, above it nothing. Against a dependency that is *flaky* rather
//! than dead (60 % of calls failing at random, every one of them worth a
//! retry) a failure-ratio breaker opens again and again and refuses calls
//! that would have succeeded: measured in this project's chaos runs, a
//! tutor whose upstream failed 60 % of the time succeeded 10–65 % of the
//! time with the breaker on, 69–75 % with no healing at all. A switch
//! cannot be right for both "flaky" and "down".
//!
//! Google's SRE book ("Handling Overload") describes the alternative this
//! module implements: each client remembers, over a sliding window, how
//! many requests it made and how many the dependency *accepted*, and
//! rejects a new request locally with probability
//!
//! ```text
//! p = max(0, (requests − K·accepts) / (requests + 1))
//! ```
//!
//! While the dependency accepts more than one request in `K` (default 2),
//! `p` is zero and nothing changes. Beyond that, the client sends about `K`
//! times what the dependency accepts and refuses the excess locally, in
//! nanoseconds, without a network call: a dependency that accepts 40 % is
//! sent a little less (once the window holds enough calls to tell 40 from
//! 50 %: "Evidence" below), one that accepts nothing is sent a trickle
//! (about the square root of the demand: enough probes to notice the moment
//! it is back). Once refusing, the rejection probability follows the
//! dependency's answers smoothly, in both directions.
//!
//! Where this differs from the book, each measured (see
//! `docs/adaptive.md` in the repository):
//!
//! - **Locally rejected requests are not counted as requests.** The book
//!   counts them, which is right when the dependency's failures are
//!   capacity-bound (it accepts a fixed number whatever is sent). When they
//!   are random (a flaky network, a fault proxy), accepts shrink with what
//!   is sent, and counting the refusals feeds them back: the probability
//!   spirals to 1 as soon as more than one call in `K` fails. Measured with
//!   60 % random failures and retries: 2 % success counting them, 48–68 %
//!   without (no healing: 40 %).
//! - **Whatever is throttled is the caller's choice.** The closure API and
//!   the tower layer throttle every call through them. The retry engine
//!   ([`Policy::with_throttle`](crate::retry::Policy::with_throttle)) and
//!   the HTTP middleware throttle *retries only*: a first attempt is what
//!   the caller would have sent without any healing, so refusing it can
//!   only make a flaky dependency look worse, while retries are the load
//!   that healing adds, and the load that turns an overload into a
//!   self-sustaining retry storm. Throttled that way, healing never makes
//!   fewer of the caller's calls succeed than no healing, whatever the
//!   failure rate (what the retries cost the dependency is what the
//!   throttle and the budget bound).
//! - **A failure of the link is not a refusal.** What the throttle weighs
//!   is the dependency pushing back (a `429`, a `503`, a timeout). A reset
//!   connection or a refused connect says nothing about its capacity (a
//!   flaky network, a dead process: the breaker's business), so a
//!   classifier can leave it out ([`Classify::throttle_signal`],
//!   [`Signal::NoAnswer`]); the HTTP middleware's does. Counted as
//!   refusals, the resets of a flaky link cut the retries that heal it;
//!   counted as accepts, they would hide real refusals.
//! - **It acts on evidence, not on a window's point estimate** (next
//!   section).
//!
//! # Evidence
//!
//! The book's formula refuses as soon as a window holds fewer than one
//! accept in `K` requests. For a dependency that accepts about one call in
//! `K` *at random* (half of all calls refused, `K = 2`), that is a coin
//! toss per window: with a few dozen calls in the window, half of all
//! windows cross the line by chance, and the retries refused then would
//! have healed. Measured in this project's harsh chaos plan (each
//! dependency refusing about half of all attempts at random, ~50 payment
//! calls a run): the payment throttle flipped into refusing five times a
//! run at failure ratios of 0.51, and the share of faults no user saw moved
//! between 93.7 and 98.0 % from one run of the same seeds to the next.
//!
//! So the throttle starts refusing only once the window shows, `confidence`
//! standard deviations clear of chance, that the accept ratio is below
//! `1 / K` (the upper end of its Wilson score interval); then it refuses as
//! much as the book says, and goes on while the book's formula says so
//! (a window at the edge does not flip in and out). The default, 3, is a
//! control chart's limits: one window in about 1,000 crosses them by
//! chance at exactly one accept in `K`, against one in two for the book.
//! Measured on a dependency accepting half of its calls at random, 20 calls
//! in the window (`throttle::tests`): the book refused 190 of 2,000 calls,
//! confidence 2 refused 69, 3 refused 10. What that changes:
//!
//! - **Nothing for an outage.** A window without a single accept (and at
//!   least the [minimum of requests](Builder::with_min_requests)) needs no
//!   more evidence: an outage is throttled from the tenth call, as by the
//!   book, whatever `K`. (The Wilson bound alone would wait for more than
//!   `confidence² · (K − 1)` calls: 9 with `K = 2`, but 36 with `K = 5`,
//!   more than a quiet window ever holds.)
//! - **Little under a large overload**: its window holds hundreds of calls,
//!   where the interval is a few points wide.
//! - **What a dependency near the line is sent.** One accepting 45 % of
//!   its calls is throttled (by 10 %) once the window holds about 900
//!   calls, not at the tenth; one accepting 30 %, once it holds about 55;
//!   one accepting 20 %, about 26 (in smaller windows, when chance puts
//!   fewer accepts in them). Until
//!   then it is sent up to about `confidence · √((K − 1) · requests)` calls
//!   a window more than the book would send: in a window of 20 calls, most
//!   of them; in one of 1,000, a tenth. Where the throttle sees retries only
//!   (the retry engine, the HTTP middleware), the retry budget bounds them
//!   too. The closure API and [`ThrottleLayer`] throttle first attempts and
//!   have no budget: a low-rate caller of those whose dependency is
//!   overloaded rather than flaky may want the book's throttle
//!   ([`Builder::with_confidence`]`(0.0)`).
//! - **Fewer flips.** The rejection probability starts at the book's value
//!   once the evidence is there (20 calls with 4 accepts: nothing; with 3:
//!   0.67) rather than creeping up from 0, and ends where the book's does.
//!   Measured at 20 calls a window (`throttle::tests`), 2,000 calls: a
//!   dependency accepting 20 % at random starts the throttle 99 times,
//!   against 307 for the book (50 %: once, against 106).
//!
//! # Cost
//!
//! Asking is one atomic load while the dependency is healthy (`p = 0`).
//! Recording an accept while `p = 0` — the success path, paid by every
//! healthy call — is, in the common case, two atomic loads and one
//! compare-exchange on a bucket of the window (the breaker's lock-free
//! window), and **no clock read**; failures, and every outcome while
//! `p > 0`, read the clock and are placed exactly. No lock, no allocation.
//! While `p > 0` each admission reads the window and draws a random number.
//!
//! Why no clock: reading tokio's clock costs about 20 ns on a virtual
//! machine, more than everything else on the path put together, and it
//! only serves to pick the bucket an accept goes into. So accepts reuse a
//! *coarse clock*: the window's current slice as last read from the clock,
//! cached in an atomic with the bucket it maps to. The clock is read again
//! on every 32nd outcome a bucket receives, and the cache is used only
//! while the last 32 outcomes came within a quarter of a bucket (default:
//! at least ~43 calls a second); at a slower pace every outcome reads the
//! clock, as before. What that gives up, and what it does not:
//!
//! - An accept may be counted in an *earlier* slice than the one it
//!   happened in, never a later one: the cached slice was read from the
//!   clock before the accept. At a steady pace that is at most a quarter of
//!   a bucket early. When traffic slows or stops, at most 31 accepts are
//!   counted at the time of the last clock read (however long ago that
//!   was) before the next read notices and switches to a read per outcome.
//!   Counting an accept early can only make it leave the window early: the
//!   throttle may see up to 31 accepts fewer than there were, never more.
//!   After an idle period longer than the window, those up to 31 accepts
//!   land in a bucket that has already aged out: they are lost, not early.
//!   Found in review: a worker idle for a minute that then makes 24
//!   successful calls and 10 failing ones sees 10 requests and no accepts,
//!   and refuses 91 % of its calls where the exact clock refuses none. This
//!   only matters where first attempts are throttled (the closure API and
//!   [`ThrottleLayer`]); the retry engine and the HTTP middleware throttle
//!   retries only, so there it costs retries, never a call that would have
//!   been made without healing. Bursty, low-rate callers of the closure
//!   API should use [`Builder::with_exact_clock`]. Not fixed: detecting the
//!   idle period without reading the clock needs a ticker, which a
//!   throttle does not have.
//! - An accept only ever lands in a bucket that already holds the cached
//!   slice: a bucket holding another slice is reset only by an outcome
//!   placed from the clock, so a stale cache cannot wipe newer counts.
//! - Reading the window always uses the clock, so buckets that have aged
//!   out never count: after an idle period the window is as empty as it
//!   should be, and a dependency that recovered stops being throttled as
//!   its failures leave the window, exactly as with a clock per outcome.
//!
//! [`Builder::with_exact_clock`] reads the clock on every outcome instead.
//!
//! # Reporting
//!
//! A throttle reports through the [one channel](crate::observe): when it
//! starts and stops refusing ([`Event::ThrottleChanged`]), and each refusal
//! ([`Event::ThrottleRejected`]); the health monitor shows the throttles
//! that are refusing, with the share of failed calls that made them.
//!
//! ```
//! use selfheal::throttle::{AdaptiveThrottle, ThrottleError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), selfheal::ConfigError> {
//! let throttle = AdaptiveThrottle::builder("recommendations")
//!     .with_multiplier(2.0)
//!     .with_min_requests(10)
//!     .build()?;
//!
//! // The dependency refuses everything: after a few calls, most are
//! // refused locally, at once.
//! let mut local = 0;
//! for _ in 0..100 {
//!     let result = throttle.call(|| async { Err::<(), _>("503") }).await;
//!     if let Err(ThrottleError::Throttled(_)) = result {
//!         local += 1;
//!     }
//! }
//! assert!(local > 50, "{local}");
//! assert!(throttle.rejection_probability() > 0.5);
//! # Ok(())
//! # }
//! ```

mod error;
#[cfg(feature = "tower")]
mod layer;
mod shedding;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use self::error::{ThrottleError, Throttled};
#[cfg(feature = "tower")]
pub use self::layer::{ResponseFuture, ThrottleLayer, ThrottleService};
#[cfg(test)]
pub(crate) use self::shedding::clear as clear_shedding;
pub use self::shedding::server_is_shedding;
#[cfg_attr(not(feature = "axum"), allow(unused_imports))]
pub(crate) use self::shedding::shed_for;
use crate::ConfigError;
use crate::breaker::window::Window;
use crate::observe::{self, Event, Observer};
use crate::retry::{Classify, Random, Signal, ThreadRandom};

/// Probabilities are kept in fixed point: `ONE` is certainty.
const ONE: u32 = 1 << 24;

/// The coarse clock is read again on every `REFRESH_EVERY`th outcome a
/// bucket receives (a power of two).
const REFRESH_EVERY: u64 = 32;

/// The coarse clock's word: `slice << SLICE_SHIFT | bucket << 1 | usable`.
/// Buckets are at most 1,000 (< 2^10); slices are at least 10 µs, so a
/// slice index fits the remaining 53 bits for 2,800 years.
const BUCKET_BITS: u32 = 10;
const SLICE_SHIFT: u32 = BUCKET_BITS + 1;
const USABLE: u64 = 1;

/// The coarse clock's word for `epoch`, in bucket `slot`.
#[inline]
const fn coarse(epoch: u64, slot: usize, usable: bool) -> u64 {
    (epoch << SLICE_SHIFT) | ((slot as u64) << 1) | (usable as u64)
}

/// An adaptive client-side throttle for one dependency; see the
/// [module docs](self).
///
/// Clones share their state: build one per dependency and hand clones to
/// every caller. Use it through [`AdaptiveThrottle::call`] or
/// [`AdaptiveThrottle::call_classified`], [`AdaptiveThrottle::admit`] and
/// [`AdaptiveThrottle::record`] for anything else,
/// [`ThrottleLayer`] on a tower service, or give it to a retry
/// [`Policy`](crate::retry::Policy::with_throttle) to throttle retries.
#[derive(Clone)]
pub struct AdaptiveThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    /// `K`, in thousandths.
    multiplier_milli: u64,
    min_requests: u64,
    /// How sure the window must be, in standard deviations, that the
    /// dependency accepts less than one call in `K` (see `evidence`).
    confidence: f64,
    window: Window,
    created: Instant,
    /// The coarse clock (see the module docs' "Cost"): a slice of the window
    /// last read from the clock, the bucket it maps to, and whether accepts
    /// may use it; see `coarse`.
    coarse: AtomicU64,
    /// When the pace of outcomes was last checked, in nanoseconds since
    /// `created`.
    paced_at: AtomicU64,
    /// The pace at which accepts may use the coarse clock: `REFRESH_EVERY`
    /// outcomes within this many nanoseconds (a quarter of a bucket).
    fast_span: u64,
    /// Never use the coarse clock.
    exact_clock: bool,
    /// The rejection probability last computed, in `1 / ONE`.
    reject: AtomicU32,
    observer: Option<Arc<dyn Observer>>,
    random: Option<Arc<dyn Random>>,
}

/// Configures an [`AdaptiveThrottle`]; see [`AdaptiveThrottle::builder`].
///
/// Defaults, and why:
///
/// | setting | default | why |
/// |---|---|---|
/// | [multiplier](Self::with_multiplier) `K` | `2.0` | the SRE book's value: up to twice what the dependency accepts is sent, so a dependency that recovers is noticed at once, while one accepting less than half is relieved of the excess |
/// | [window](Self::with_window) | 30 s in 10 buckets | long enough to hold a few dozen calls on modest traffic, short enough that throttling ends within half a minute of a recovery (sooner in practice: accepts bring `p` down as they come) |
/// | [minimum requests](Self::with_min_requests) | `10` | below that, a ratio is noise: three failures in a row must not refuse 75 % of the next calls |
/// | [confidence](Self::with_confidence) | `3.0` | refuse nothing until the window shows, three standard deviations clear of chance (a control chart's limits), that the dependency accepts less than one call in `K`: a dependency that accepts half its calls *at random* crosses the line in half of all small windows otherwise, and its retries are refused by noise (module docs, "Evidence") |
/// | [exact clock](Self::with_exact_clock) | off | the coarse clock saves a clock read (~20 ns) on most successes, at the price of counting at most 31 accepts early when traffic slows (module docs, "Cost") |
#[derive(Clone)]
pub struct Builder {
    name: Cow<'static, str>,
    multiplier: f64,
    window: Duration,
    buckets: u32,
    min_requests: u32,
    confidence: f64,
    exact_clock: bool,
    observer: Option<Arc<dyn Observer>>,
    random: Option<Arc<dyn Random>>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("multiplier", &self.multiplier)
            .field("window", &self.window)
            .field("buckets", &self.buckets)
            .field("min_requests", &self.min_requests)
            .field("confidence", &self.confidence)
            .field("exact_clock", &self.exact_clock)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// The default multiplier `K`: `2.0`.
    pub const DEFAULT_MULTIPLIER: f64 = 2.0;
    /// The default window: 30 seconds.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
    /// The default number of buckets in the window: `10`.
    pub const DEFAULT_BUCKETS: u32 = 10;
    /// The default minimum of requests in the window before throttling: `10`.
    pub const DEFAULT_MIN_REQUESTS: u32 = 10;
    /// The default confidence: `3.0` standard deviations.
    pub const DEFAULT_CONFIDENCE: f64 = 3.0;

    fn new(name: Cow<'static, str>) -> Self {
        Self {
            name,
            multiplier: Self::DEFAULT_MULTIPLIER,
            window: Self::DEFAULT_WINDOW,
            buckets: Self::DEFAULT_BUCKETS,
            min_requests: Self::DEFAULT_MIN_REQUESTS,
            confidence: Self::DEFAULT_CONFIDENCE,
            exact_clock: false,
            observer: None,
            random: None,
        }
    }

    /// `K`: send up to `K` times what the dependency accepts; at least 1
    /// (1 throttles as soon as anything fails; 1.1 is the book's
    /// "aggressive"). Default `2.0`.
    pub const fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The sliding window the counts are kept over (at least 10 ms), in
    /// `buckets` steps (1 to 1,000). Default 30 s in 10 buckets.
    pub const fn with_window(mut self, window: Duration, buckets: u32) -> Self {
        self.window = window;
        self.buckets = buckets;
        self
    }

    /// Never throttles while the window holds fewer requests. Default `10`.
    pub const fn with_min_requests(mut self, requests: u32) -> Self {
        self.min_requests = requests;
        self
    }

    /// How sure the throttle must be, in standard deviations, that the
    /// dependency accepts less than one call in `K` before it refuses
    /// anything: it refuses only while the upper end of the accept ratio's
    /// confidence interval (Wilson score, `z = confidence`) lies below
    /// `1 / K`, and then as much as the book's formula says. `0` is the
    /// book's throttle, acting on every window's point estimate. A window
    /// without a single accept is evidence at any confidence (an outage).
    /// Once refusing, it goes on while the book's formula says so. At most
    /// 10. Default `3.0`; see the [module docs](self), "Evidence".
    pub const fn with_confidence(mut self, confidence: f64) -> Self {
        self.confidence = confidence;
        self
    }

    /// With `true`, every outcome reads the clock and is placed in the bucket
    /// of the moment it is recorded; by default most accepts use the coarse
    /// clock instead (see the [module docs](self), "Cost": about 20 ns less
    /// per successful call, and up to 31 accepts counted early when traffic
    /// slows down). Default `false`.
    pub const fn with_exact_clock(mut self, exact: bool) -> Self {
        self.exact_clock = exact;
        self
    }

    /// Reports to `observer` instead of the global observer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Draws from `random` (deterministic tests); default `fastrand`'s
    /// thread-local generator.
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = Some(random);
        self
    }

    /// The throttle.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a multiplier below 1 (or not finite), a
    /// confidence outside 0 to 10, a window under 10 ms, or a bucket count
    /// outside 1 to 1,000.
    pub fn build(self) -> Result<AdaptiveThrottle, ConfigError> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::new(format!(
                "throttle multiplier must be at least 1, got {}",
                self.multiplier
            )));
        }
        if !(0.0..=10.0).contains(&self.confidence) {
            return Err(ConfigError::new(format!(
                "throttle confidence must be between 0 and 10 standard deviations, got {}",
                self.confidence
            )));
        }
        if self.window < Duration::from_millis(10) {
            return Err(ConfigError::new("throttle window must be at least 10 ms"));
        }
        if !(1..=1000).contains(&self.buckets) {
            return Err(ConfigError::new(format!(
                "throttle buckets must be between 1 and 1000, got {}",
                self.buckets
            )));
        }
        let width = (self.window.as_nanos() / u128::from(self.buckets)).max(1) as u64;
        Ok(AdaptiveThrottle {
            inner: Arc::new(Inner {
                name: Arc::from(&*self.name),
                multiplier_milli: (self.multiplier * 1000.0).round() as u64,
                min_requests: u64::from(self.min_requests),
                confidence: self.confidence,
                window: Window::new(self.buckets, width),
                created: Instant::now(),
                coarse: AtomicU64::new(coarse(0, 0, false)),
                paced_at: AtomicU64::new(0),
                fast_span: width / 4,
                exact_clock: self.exact_clock,
                reject: AtomicU32::new(0),
                observer: self.observer,
                random: self.random,
            }),
        })
    }
}

impl AdaptiveThrottle {
    /// A builder for a throttle named `name` (the dependency; it appears in
    /// errors, events and the dashboard). See [`Builder`] for the defaults.
    pub fn builder(name: impl Into<Cow<'static, str>>) -> Builder {
        Builder::new(name.into())
    }

    /// A throttle named `name` with the defaults of [`Builder`].
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self::builder(name)
            .build()
            .expect("the default throttle settings are valid")
    }

    /// The throttle's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The probability that the next call is refused, as last computed
    /// (after the last failure, or the last call while throttling).
    pub fn rejection_probability(&self) -> f64 {
        f64::from(self.inner.reject.load(Ordering::Relaxed)) / f64::from(ONE)
    }

    /// Asks whether to make one call: `false` means refuse it locally (and
    /// the refusal is reported as [`Event::ThrottleRejected`]). A call that
    /// is made must have its outcome [recorded](Self::record).
    ///
    /// One atomic load while nothing is being throttled.
    #[inline]
    pub fn admit(&self) -> bool {
        if self.inner.reject.load(Ordering::Relaxed) == 0 {
            return true;
        }
        self.inner.admit_slow()
    }

    /// Records the outcome of a call that was made: `accepted` unless the
    /// dependency refused it in a way that says it is struggling (a
    /// timeout, a `429` or `503`). A `400` or a `404` is an accept: the
    /// dependency answered. A failure that says nothing about its capacity
    /// (a reset connection) is best not recorded at all
    /// ([`observe`](Self::observe)).
    #[inline]
    pub fn record(&self, accepted: bool) {
        self.inner.record(accepted);
    }

    /// Records what a classifier made of an outcome
    /// ([`Classify::throttle_signal`]): an accept, a refusal, or nothing.
    #[inline]
    pub fn observe(&self, signal: Signal) {
        match signal {
            Signal::Accepted => self.record(true),
            Signal::Refused => self.record(false),
            Signal::NoAnswer => {}
        }
    }

    /// Runs `op` unless the throttle refuses it, and records the outcome:
    /// every `Ok` is an accept, every `Err` a refusal.
    ///
    /// # Errors
    ///
    /// [`ThrottleError::Throttled`] without running `op` when refused
    /// locally, [`ThrottleError::Inner`] with `op`'s error otherwise.
    pub async fn call<F, Fut, T, E>(&self, op: F) -> Result<T, ThrottleError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if !self.admit() {
            return Err(ThrottleError::Throttled(self.throttled()));
        }
        let result = op().await;
        self.record(result.is_ok());
        result.map_err(ThrottleError::Inner)
    }

    /// Like [`AdaptiveThrottle::call`], but `classifier` says which
    /// outcomes are refusals ([`Classify::throttle_signal`]: by default the
    /// transient ones,
    /// [`Transient`](crate::retry::Verdict::Transient) and
    /// [`RetryAfter`](crate::retry::Verdict::RetryAfter));
    /// a permanent error is the dependency's answer, an accept.
    ///
    /// # Errors
    ///
    /// As [`AdaptiveThrottle::call`].
    pub async fn call_classified<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        op: F,
    ) -> Result<T, ThrottleError<E>>
    where
        C: Classify<T, E>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if !self.admit() {
            return Err(ThrottleError::Throttled(self.throttled()));
        }
        let result = op().await;
        self.observe(signal(classifier, &result));
        result.map_err(ThrottleError::Inner)
    }

    /// The error of a refused call.
    pub(crate) fn throttled(&self) -> Throttled {
        Throttled::new(Arc::clone(&self.inner.name), self.rejection_probability())
    }

    /// A point-in-time view, for dashboards and tests.
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.inner.window.counts(self.inner.epoch());
        Snapshot {
            name: Arc::clone(&self.inner.name),
            requests: counts.total,
            accepts: counts.total - counts.failures,
            rejection_probability: self.rejection_probability(),
        }
    }
}

impl Inner {
    /// Nanoseconds since the throttle was built, from tokio's clock (so
    /// that a paused clock drives the window in tests).
    #[inline]
    fn nanos(&self) -> u64 {
        self.created.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }

    #[inline]
    fn epoch(&self) -> u64 {
        self.window.epoch(self.nanos())
    }

    #[inline]
    fn record(&self, accepted: bool) {
        if accepted && self.reject.load(Ordering::Relaxed) == 0 && self.record_coarse() {
            return;
        }
        self.record_exact(accepted);
    }

    /// The success path: records an accept in the bucket of the coarse
    /// clock, without reading the clock, if the coarse clock is usable and
    /// its bucket still holds its slice. `false`: nothing was recorded.
    #[inline]
    fn record_coarse(&self) -> bool {
        let word = self.coarse.load(Ordering::Relaxed);
        if word & USABLE == 0 {
            return false;
        }
        let epoch = word >> SLICE_SHIFT;
        let slot = ((word >> 1) & ((1 << BUCKET_BITS) - 1)) as usize;
        match self.window.add_success_if_current(slot, epoch) {
            Some(total) => {
                if total.is_multiple_of(REFRESH_EVERY) {
                    self.reread_clock();
                }
                true
            }
            None => false,
        }
    }

    /// Every `REFRESH_EVERY`th outcome of a bucket recorded by the coarse
    /// clock: reads the clock.
    #[cold]
    #[inline(never)]
    fn reread_clock(&self) {
        let now = self.nanos();
        self.pace(now, self.window.epoch(now));
    }

    /// Outcomes placed from the clock: failures, anything while throttling,
    /// accepts while the coarse clock is not usable. Never inlined: the
    /// success path that calls it stays small enough to inline.
    #[inline(never)]
    fn record_exact(&self, accepted: bool) {
        let now = self.nanos();
        let epoch = self.window.epoch(now);
        let total = self.window.record(epoch, !accepted);
        if !self.exact_clock {
            if total.is_multiple_of(REFRESH_EVERY) {
                self.pace(now, epoch);
            } else {
                self.distrust_if_behind(epoch);
            }
        }
        if !accepted || self.reject.load(Ordering::Relaxed) != 0 {
            self.update(epoch);
        }
    }

    /// Given `epoch` just read from the clock: if the coarse clock is usable
    /// but behind, traffic may have slowed down; every outcome reads the
    /// clock again until the pace says otherwise.
    #[inline]
    fn distrust_if_behind(&self, epoch: u64) {
        let word = self.coarse.load(Ordering::Relaxed);
        if word & USABLE != 0 && word >> SLICE_SHIFT != epoch {
            self.coarse.store(
                coarse(epoch, self.window.slot(epoch), false),
                Ordering::Relaxed,
            );
        }
    }

    /// Sets the coarse clock to `epoch` (read at `now`), usable if the last
    /// `REFRESH_EVERY` outcomes came within `fast_span`.
    fn pace(&self, now: u64, epoch: u64) {
        let last = self.paced_at.swap(now, Ordering::Relaxed);
        let usable = now.saturating_sub(last) <= self.fast_span;
        self.coarse.store(
            coarse(epoch, self.window.slot(epoch), usable),
            Ordering::Relaxed,
        );
    }

    /// Recomputes the probability from the window and reports a change of
    /// regime (throttling or not). Returns the new probability.
    #[cold]
    #[inline(never)]
    fn update(&self, epoch: u64) -> u32 {
        // Start on evidence (or on a window without a single accept: an
        // outage must never wait for it); once refusing, go on while the book
        // says so, so that a window at the gate's edge does not flip in and
        // out. Compare-and-swap: whether this is a start or a continuation is
        // decided against the value replaced, on the window as read after
        // the last racing update, so that a race can neither turn a
        // continuation into a start without evidence nor restart on a stale
        // window.
        let mut before = self.reject.load(Ordering::Relaxed);
        let (p, counts) = loop {
            let counts = self.window.counts(epoch);
            let requests = counts.total;
            let accepts = requests - counts.failures;
            let excess = (requests * 1000).saturating_sub(self.multiplier_milli * accepts);
            let book =
                ((excess as u128 * u128::from(ONE)) / ((requests as u128 + 1) * 1000)) as u32;
            let p = if requests < self.min_requests {
                0
            } else if before != 0
                || accepts == 0
                || evidence(requests, accepts, self.multiplier_milli, self.confidence)
            {
                book.min(ONE)
            } else {
                0
            };
            match self
                .reject
                .compare_exchange_weak(before, p, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break (p, counts),
                Err(actual) => before = actual,
            }
        };
        let requests = counts.total;
        if (before == 0) != (p == 0) {
            let failure_ratio = if requests == 0 {
                0.0
            } else {
                counts.failures as f64 / requests as f64
            };
            observe::emit(
                self.observer.as_deref(),
                &Event::ThrottleChanged {
                    throttle: &self.name,
                    throttling: p != 0,
                    failure_ratio,
                },
            );
        }
        p
    }

    /// While throttling: recomputes the probability (the window slides even
    /// when nothing is recorded) and draws.
    #[cold]
    #[inline(never)]
    fn admit_slow(&self) -> bool {
        let epoch = self.epoch();
        if !self.exact_clock {
            self.distrust_if_behind(epoch);
        }
        let p = self.update(epoch);
        if p == 0 {
            return true;
        }
        let draw = match &self.random {
            Some(random) => random.next_f64(),
            None => ThreadRandom.next_f64(),
        };
        if draw * f64::from(ONE) >= f64::from(p) {
            return true;
        }
        observe::emit(
            self.observer.as_deref(),
            &Event::ThrottleRejected {
                throttle: &self.name,
                probability: f64::from(p) / f64::from(ONE),
            },
        );
        false
    }
}

impl fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveThrottle")
            .field("name", &self.inner.name)
            .field("rejection_probability", &self.rejection_probability())
            .finish_non_exhaustive()
    }
}

/// A point-in-time view of an [`AdaptiveThrottle`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The throttle's name.
    pub name: Arc<str>,
    /// Calls made (and recorded) within the window.
    pub requests: u64,
    /// Of which the dependency accepted.
    pub accepts: u64,
    /// The probability that the next call is refused.
    pub rejection_probability: f64,
}

/// Whether `accepts` of `requests` show, `confidence` standard deviations
/// clear of chance, that the dependency accepts less than one call in `K`
/// (`multiplier_milli / 1000`): the upper end of the Wilson score interval
/// of the accept ratio lies below `1 / K`. Wilson rather than the normal
/// approximation: it stays honest at the extremes (no accepts at all in a
/// small window is evidence; the normal interval of `0 / 10` is `[0, 0]`,
/// too sure, and that of `5 / 10` too wide to act on ever).
fn evidence(requests: u64, accepts: u64, multiplier_milli: u64, confidence: f64) -> bool {
    if requests == 0 {
        return false;
    }
    let n = requests as f64;
    let ratio = accepts as f64 / n;
    let z2 = confidence * confidence;
    let upper = (ratio
        + z2 / (2.0 * n)
        + confidence * (ratio * (1.0 - ratio) / n + z2 / (4.0 * n * n)).sqrt())
        / (1.0 + z2 / n);
    upper * (multiplier_milli as f64) < 1000.0
}

/// What `result` tells the throttle, as `classifier` sees it: an accept for
/// an accepted success, else [`Classify::throttle_signal`].
pub(crate) fn signal<C, T, E>(classifier: &C, result: &Result<T, E>) -> Signal
where
    C: Classify<T, E>,
{
    crate::retry::verdict_of(classifier, result).map_or(Signal::Accepted, |verdict| {
        classifier.throttle_signal(result.as_ref(), verdict)
    })
}

#[cfg(test)]
mod tests;
