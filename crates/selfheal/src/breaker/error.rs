//! Errors returned by a [`Breaker`](super::Breaker).

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Human;
use crate::observe::BreakerState;

/// A call was refused without being made: the breaker is open, or it is
/// half-open and all of its probe slots are taken.
///
/// Its `Display` says which breaker and when it will let a call through again,
/// for example `circuit breaker 'api.openai.com' is open; next probe in 3.2s`.
/// An HTTP integration turns [`Open::retry_in`] into a `Retry-After` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    breaker: Arc<str>,
    state: BreakerState,
    retry_in: Duration,
}

impl Open {
    pub(crate) const fn new(breaker: Arc<str>, state: BreakerState, retry_in: Duration) -> Self {
        Self {
            breaker,
            state,
            retry_in,
        }
    }

    /// The name of the breaker that refused the call.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// The breaker's state when it refused: [`BreakerState::Open`], or
    /// [`BreakerState::HalfOpen`] when every probe slot was taken.
    pub const fn state(&self) -> BreakerState {
        self.state
    }

    /// How long until the breaker lets a probe call through.
    ///
    /// Zero when the breaker is half-open with all probe slots taken: a slot
    /// frees as soon as a probe finishes, which the breaker cannot predict.
    pub const fn retry_in(&self) -> Duration {
        self.retry_in
    }
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            BreakerState::HalfOpen => write!(
                f,
                "circuit breaker '{}' is half-open and its probe calls are in flight; try again shortly",
                self.breaker
            ),
            _ => write!(
                f,
                "circuit breaker '{}' is open; next probe in {}",
                self.breaker,
                Human(self.retry_in)
            ),
        }
    }
}

impl Error for Open {}

/// The error of a call made through a breaker: either the breaker refused it,
/// or the call was made and failed.
///
/// `Display` and [`Error::source`] are transparent for [`BreakerError::Inner`]:
/// the breaker adds nothing to an error it let through, so an error report
/// shows the inner error once, not twice.
#[derive(Debug)]
pub enum BreakerError<E> {
    /// The breaker refused the call; the operation was not run.
    Open(Open),
    /// The operation ran and returned this error.
    Inner(E),
}

impl<E> BreakerError<E> {
    /// `true` if the breaker refused the call.
    pub const fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }

    /// The refusal, if the breaker refused the call.
    pub const fn as_open(&self) -> Option<&Open> {
        match self {
            Self::Open(open) => Some(open),
            Self::Inner(_) => None,
        }
    }

    /// The operation's error, if the operation ran.
    pub const fn inner(&self) -> Option<&E> {
        match self {
            Self::Open(_) => None,
            Self::Inner(error) => Some(error),
        }
    }

    /// The operation's error, if the operation ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Open(_) => None,
            Self::Inner(error) => Some(error),
        }
    }
}

impl<E> From<Open> for BreakerError<E> {
    fn from(open: Open) -> Self {
        Self::Open(open)
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(open) => open.fmt(f),
            Self::Inner(error) => error.fmt(f),
        }
    }
}

impl<E: Error + 'static> Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Open(_) => None,
            Self::Inner(error) => error.source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(secs: f64) -> Open {
        Open::new(
            Arc::from("api.openai.com"),
            BreakerState::Open,
            Duration::from_secs_f64(secs),
        )
    }

    #[test]
    fn open_says_when_it_will_probe() {
        assert_eq!(
            open(3.2).to_string(),
            "circuit breaker 'api.openai.com' is open; next probe in 3.2s"
        );
        assert_eq!(
            open(0.25).to_string(),
            "circuit breaker 'api.openai.com' is open; next probe in 250ms"
        );
        assert_eq!(
            open(0.000_000_1).to_string(),
            "circuit breaker 'api.openai.com' is open; next probe in 1ms"
        );
        let busy = Open::new(Arc::from("db"), BreakerState::HalfOpen, Duration::ZERO);
        assert_eq!(
            busy.to_string(),
            "circuit breaker 'db' is half-open and its probe calls are in flight; try again shortly"
        );
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("request failed")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn breaker_error_is_transparent_for_inner_errors() {
        let error: BreakerError<Outer> = BreakerError::Inner(Outer(std::io::Error::other("reset")));
        assert_eq!(error.to_string(), "request failed");
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("reset")
        );
        assert!(!error.is_open());
        assert!(error.as_open().is_none());
        assert_eq!(
            error.inner().map(ToString::to_string).as_deref(),
            Some("request failed")
        );
        assert!(error.into_inner().is_some());

        let refused: BreakerError<Outer> = open(1.0).into();
        assert!(refused.is_open());
        assert!(refused.source().is_none());
        assert_eq!(refused.as_open().map(Open::breaker), Some("api.openai.com"));
        assert_eq!(
            refused.to_string(),
            "circuit breaker 'api.openai.com' is open; next probe in 1.0s"
        );
        assert!(refused.into_inner().is_none());
    }
}
