//! The retry engine: run an operation, decide whether a failure is transient,
//! wait, try again, and give up honestly.
//!
//! Every retrying piece of selfheal drives this one engine: the closure API here
//! ([`Policy::retry`], [`Policy::retry_blocking`]), the tower [`RetryLayer`], the
//! database transaction runner and the HTTP middleware. A [`Policy`] says
//!
//! - **when to stop**: a maximum number of attempts and/or a deadline on the
//!   total time; the engine never sleeps past the deadline (a wait that would
//!   cross it gives up now);
//! - **what is worth retrying**: a [`Classify`] implementation says, for each
//!   failure, [`Verdict::Transient`], [`Verdict::Permanent`] (tried exactly once)
//!   or [`Verdict::RetryAfter`] (the server named the delay; honoured up to
//!   [`Policy::with_max_delay`], and a hint past the deadline gives up at once
//!   with the hint in the error);
//! - **how long to wait**: a [`Backoff`] with jitter;
//! - **whether retrying is still a good idea at all**: a [`Budget`] shared by
//!   every call to the same dependency, so an outage does not become a retry
//!   storm.
//!
//! Each retry, recovery and give-up is reported through the
//! [observer hook](crate::observe): a `tracing` event and an [`Event`](crate::observe::Event) for the
//! health monitor. A call that succeeds at once reports nothing, reads no
//! clock (unless a deadline is set), takes no lock and allocates nothing: it
//! costs an atomic load (the budget) on top of the operation.
//!
//! ```
//! use std::time::Duration;
//! use selfheal::retry::{Backoff, Policy, Verdict};
//!
//! # #[derive(Debug)] enum MailError { Timeout, BadAddress }
//! # impl std::fmt::Display for MailError {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
//! # }
//! # impl std::error::Error for MailError {}
//! # async fn send_email(_to: &str) -> Result<(), MailError> { Ok(()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::default()
//!     .with_max_attempts(3)?
//!     .with_deadline(Duration::from_secs(10))?
//!     .with_backoff(Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(2))?)
//!     .with_classifier(|e: &MailError| match e {
//!         MailError::Timeout => Verdict::Transient,
//!         MailError::BadAddress => Verdict::Permanent,
//!     });
//!
//! // The guide's `@auto_retry(max_attempts=3)`, named for the logs.
//! policy
//!     .retry_named("send_welcome_email", || send_email("student@example.com"))
//!     .await
//!     .map_err(|e| e.into_inner())?;
//! # Ok(()) }
//! ```

pub mod backoff;
pub mod budget;
mod classify;
mod drive;
mod engine;
mod error;
#[cfg(feature = "tower")]
mod layer;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use backoff::{Backoff, Jitter, Random, SeededRandom, ThreadRandom};
pub use budget::Budget;
pub(crate) use classify::verdict_of;
pub use classify::{AlwaysTransient, ByTrait, Classify, Signal, Transient, Verdict};
pub(crate) use engine::{Run, Step};
pub use error::RetryError;
#[cfg(feature = "tower")]
pub use layer::{ResponseFuture, RetryLayer, RetryService};

use crate::ConfigError;
use crate::observe::Observer;
use crate::throttle::AdaptiveThrottle;

/// A retry policy: stop conditions, classification, backoff, budget and
/// observer. Cheap to clone (the budget and observer are shared).
///
/// Defaults ([`Policy::default`]):
///
/// | setting | default |
/// |---|---|
/// | max attempts | 3 (the first try and 2 retries) |
/// | deadline | none |
/// | backoff | exponential 100 ms × 2 up to 10 s, full jitter |
/// | max delay (cap on server hints) | 30 s |
/// | classifier | [`AlwaysTransient`] |
/// | budget | a fresh [`Budget::default`] for this policy and its clones |
/// | throttle | none ([`Policy::with_throttle`]) |
/// | observer | the global one ([`observe::set_global`](crate::observe::set_global)) |
/// | name | `"operation"` |
#[derive(Clone)]
pub struct Policy<C = AlwaysTransient> {
    max_attempts: u32,
    deadline: Option<Duration>,
    backoff: Backoff,
    max_delay: Duration,
    budget: Option<Arc<Budget>>,
    throttle: Option<AdaptiveThrottle>,
    observer: Option<Arc<dyn Observer>>,
    random: Option<Arc<dyn Random>>,
    name: Cow<'static, str>,
    classifier: C,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            deadline: None,
            backoff: Backoff::default(),
            max_delay: Duration::from_secs(30),
            budget: Some(Arc::new(Budget::default())),
            throttle: None,
            observer: None,
            random: None,
            name: Cow::Borrowed("operation"),
            classifier: AlwaysTransient,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Policy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("backoff", &self.backoff)
            .field("max_delay", &self.max_delay)
            .field("budget", &self.budget)
            .field("throttle", &self.throttle)
            .field("observer", &self.observer.as_ref().map(|_| "custom"))
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<C> Policy<C> {
    /// At most `attempts` attempts in total (the first try included). Zero is
    /// rejected; `1` means "never retry".
    pub fn with_max_attempts(mut self, attempts: u32) -> Result<Self, ConfigError> {
        if attempts == 0 {
            return Err(ConfigError::new(
                "max attempts must be at least 1 (1 means: try once, never retry)",
            ));
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// Gives up rather than wait past `deadline` after the call started. Zero is
    /// rejected. The deadline bounds the engine's waits; bound each attempt
    /// with its own timeout (the HTTP middleware has one).
    pub fn with_deadline(mut self, deadline: Duration) -> Result<Self, ConfigError> {
        if deadline.is_zero() {
            return Err(ConfigError::new("retry deadline must be greater than zero"));
        }
        self.deadline = Some(deadline);
        Ok(self)
    }

    /// The backoff between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest the engine will wait on a server's hint
    /// ([`Verdict::RetryAfter`]); a longer hint is shortened to this.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Shares `budget` with every other policy calling the same dependency.
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: every call may retry up to its maximum attempts, even
    /// during an outage. Rarely what you want; see [`Budget`].
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Asks `throttle` (shared with every other caller of the same
    /// dependency) before each **retry**, and records every attempt's
    /// outcome on it: a transient failure is a refusal by the dependency,
    /// a success or a permanent failure an accept. A retry the throttle
    /// refuses gives up with [`GiveUpReason::Throttled`](crate::observe::GiveUpReason::Throttled),
    /// returning the last failure. First attempts are never refused: they
    /// are what the caller would send without any healing (see the
    /// [throttle's docs](crate::throttle) for why).
    ///
    /// A policy with a throttle also stops retrying while this server sheds
    /// its own load ([`server_is_shedding`](crate::throttle::server_is_shedding);
    /// [`GiveUpReason::Overloaded`](crate::observe::GiveUpReason::Overloaded)).
    ///
    /// With a throttle, the budget can be generous (the HTTP middleware
    /// uses `Budget::new(20, 2.0)`): the throttle is what sheds the retries
    /// an overloaded dependency refuses, in proportion, and the budget only
    /// stops retries at once in a full outage.
    pub fn with_throttle(mut self, throttle: AdaptiveThrottle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// The adaptive throttle, if any.
    pub fn throttle(&self) -> Option<&AdaptiveThrottle> {
        self.throttle.as_ref()
    }

    /// Reports events to `observer` instead of the global observer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Draws jitter from `random` (for deterministic tests).
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = Some(random);
        self
    }

    /// Names the operation in events and logs (see also [`Policy::retry_named`]).
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Uses `classifier` to decide what is worth retrying.
    pub fn with_classifier<C2>(self, classifier: C2) -> Policy<C2> {
        Policy {
            max_attempts: self.max_attempts,
            deadline: self.deadline,
            backoff: self.backoff,
            max_delay: self.max_delay,
            budget: self.budget,
            throttle: self.throttle,
            observer: self.observer,
            random: self.random,
            name: self.name,
            classifier,
        }
    }

    /// The operation name used by [`Policy::retry`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The maximum number of attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The retry budget, if any.
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.budget.as_ref()
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// The observer this policy reports to (`None`: the global one).
    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.as_ref()
    }
}

#[cfg(test)]
mod tests;
