//! Deciding whether a failure is worth retrying.
//!
//! Retrying a permanent failure wastes time and load and can do harm (a
//! constraint violation will fail the same way; a `400 Bad Request` will not
//! become valid). Not retrying a transient one turns a blip into a user-visible
//! error. The [`Classify`] trait makes that decision explicit, per error and,
//! optionally, per successful-but-bad result (an HTTP `503` response is an `Ok`
//! for the HTTP client, yet worth retrying).
//!
//! A server can also say *when* to retry (`Retry-After`): that is
//! [`Verdict::RetryAfter`], honoured by the engine up to its maximum delay.

use std::borrow::Cow;
use std::time::Duration;

use crate::observe::short_type_name;

/// What to do about one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The failure may go away on its own: retry after the policy's backoff.
    Transient,
    /// Retrying cannot help: return the failure now.
    Permanent,
    /// Transient, and the other side said when to come back: retry after this
    /// delay (capped by the policy's maximum delay) instead of the backoff.
    RetryAfter(Duration),
}

impl Verdict {
    /// `true` unless the verdict is [`Verdict::Permanent`].
    pub const fn is_retryable(self) -> bool {
        !matches!(self, Self::Permanent)
    }
}

/// Classifies the outcome of one attempt.
///
/// `T` is the success type, `E` the error type of the operation.
///
/// Any closure `Fn(&E) -> Verdict` is a classifier that accepts every `Ok`.
///
/// ```
/// use selfheal::retry::{Classify, Verdict};
///
/// #[derive(Debug)]
/// enum DbError { Locked, Constraint }
///
/// let classify = |e: &DbError| match e {
///     DbError::Locked => Verdict::Transient,
///     DbError::Constraint => Verdict::Permanent,
/// };
/// assert_eq!(Classify::<(), _>::classify_error(&classify, &DbError::Locked), Verdict::Transient);
/// ```
pub trait Classify<T, E> {
    /// Classifies an error.
    fn classify_error(&self, error: &E) -> Verdict;

    /// Classifies a success: `None` accepts it (the default), `Some(verdict)`
    /// treats it as a failure (for example an HTTP `503` response). When the
    /// engine gives up on such a result, it returns the last `Ok` as it is.
    fn classify_ok(&self, value: &T) -> Option<Verdict> {
        let _ = value;
        None
    }

    /// A short, stable, low-cardinality name for a failed outcome, used in
    /// events and fingerprints. Defaults to the error's type name, or
    /// `"rejected"` for an `Ok` that [`Classify::classify_ok`] rejected.
    fn failure_kind(&self, outcome: Result<&T, &E>) -> Cow<'static, str> {
        match outcome {
            Ok(_) => Cow::Borrowed("rejected"),
            Err(_) => Cow::Borrowed(short_type_name::<E>()),
        }
    }

    /// What a failed outcome (classified `verdict`) tells the
    /// [adaptive throttle](crate::throttle) about the dependency's capacity:
    /// a [refusal](Signal::Refused) (it is pushing back), an
    /// [accept](Signal::Accepted) (it answered, if only with an error), or
    /// [nothing](Signal::NoAnswer). Defaults to a refusal for every
    /// retryable failure and an accept for a permanent one.
    ///
    /// Override it when the classifier can tell a refusal (a `429`, a
    /// `503`, a timeout: the dependency has more work than it can take)
    /// from a failure of the link (a reset connection, a refused connect:
    /// the network or a dead process, which a
    /// [circuit breaker](crate::breaker) watches). Throttling retries
    /// because the link is flaky only takes healing away from a dependency
    /// that has the capacity for them, and counting such failures as
    /// accepts would hide real refusals behind them; the HTTP middleware's
    /// classifier does this.
    fn throttle_signal(&self, outcome: Result<&T, &E>, verdict: Verdict) -> Signal {
        let _ = outcome;
        if verdict.is_retryable() {
            Signal::Refused
        } else {
            Signal::Accepted
        }
    }
}

/// What one outcome tells an [adaptive throttle](crate::throttle) about
/// the dependency's capacity ([`Classify::throttle_signal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The dependency took the request (a success, or an answer that is
    /// its own: a `404`, a validation error).
    Accepted,
    /// The dependency pushed back: it has more than it can take.
    Refused,
    /// The request got no answer that says anything about the dependency's
    /// capacity (the link failed): counted neither way.
    NoAnswer,
}

/// What `classifier` makes of `result`: `None` for an accepted success.
pub(crate) fn verdict_of<C, T, E>(classifier: &C, result: &Result<T, E>) -> Option<Verdict>
where
    C: Classify<T, E>,
{
    match result {
        Ok(value) => classifier.classify_ok(value),
        Err(error) => Some(classifier.classify_error(error)),
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&E) -> Verdict,
{
    fn classify_error(&self, error: &E) -> Verdict {
        self(error)
    }
}

/// Treats every error as transient and every success as good: the guide's
/// `@auto_retry`, and the default classifier of a [`Policy`](super::Policy).
///
/// Prefer a precise classifier where you can: retrying a permanent failure
/// costs time and load.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysTransient;

impl<T, E> Classify<T, E> for AlwaysTransient {
    fn classify_error(&self, _error: &E) -> Verdict {
        Verdict::Transient
    }
}

/// Errors that know whether they are transient.
///
/// Implement it on your error type and use [`ByTrait`] as the classifier.
pub trait Transient {
    /// The verdict for this error.
    fn verdict(&self) -> Verdict;
}

/// Classifies errors through their [`Transient`] implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByTrait;

impl<T, E: Transient> Classify<T, E> for ByTrait {
    fn classify_error(&self, error: &E) -> Verdict {
        error.verdict()
    }
}

impl Transient for std::io::Error {
    /// Connection-level and timing failures are transient; everything else
    /// (not found, permission denied, invalid input…) is permanent.
    fn verdict(&self) -> Verdict {
        use std::io::ErrorKind::*;
        match self.kind() {
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            | TimedOut | Interrupted | WouldBlock | UnexpectedEof | AddrInUse
            | AddrNotAvailable | HostUnreachable | NetworkUnreachable | NetworkDown
            | ResourceBusy => Verdict::Transient,
            _ => Verdict::Permanent,
        }
    }
}
