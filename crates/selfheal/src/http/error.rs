//! The errors the middleware makes itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use crate::error::Human;

/// Why a dependency is [`Unavailable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// The dependency's circuit breaker is open: the request was not sent.
    CircuitOpen,
    /// The server asked to be called again later (`Retry-After` or a
    /// rate-limit header), and later is past the call's deadline: the
    /// middleware gave up at once instead of waiting in vain.
    RetryAfterBeyondDeadline,
    /// A health check reports the dependency down
    /// ([`Builder::with_check`](super::Builder::with_check)): the request
    /// was not sent.
    ReportedDown,
}

/// The middleware failed a call itself, because the dependency is
/// unavailable for a known time: its circuit breaker is open, or it asked
/// to be called back after the call's deadline.
///
/// It reaches the caller inside
/// [`reqwest_middleware::Error::Middleware`]; find it with
/// [`unavailable`](super::unavailable), [`is_circuit_open`](super::is_circuit_open)
/// or [`retry_in`](super::retry_in). Either way
/// [`Unavailable::retry_after`] says when trying again makes sense: an
/// application can pass it on to its own client as `503` with `Retry-After`
/// instead of guessing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    dependency: Arc<str>,
    reason: UnavailableReason,
    retry_after: Duration,
    status: Option<StatusCode>,
    attempts: u32,
    check: Option<Arc<str>>,
}

impl Unavailable {
    pub(crate) fn circuit_open(dependency: Arc<str>, retry_in: Duration, attempts: u32) -> Self {
        Self {
            dependency,
            reason: UnavailableReason::CircuitOpen,
            retry_after: retry_in,
            status: None,
            attempts,
            check: None,
        }
    }

    pub(crate) fn reported_down(
        dependency: Arc<str>,
        check: &str,
        retry_after: Duration,
        attempts: u32,
    ) -> Self {
        Self {
            dependency,
            reason: UnavailableReason::ReportedDown,
            retry_after,
            status: None,
            attempts,
            check: Some(check.into()),
        }
    }

    pub(crate) fn beyond_deadline(
        dependency: Arc<str>,
        hint: Duration,
        status: StatusCode,
        attempts: u32,
    ) -> Self {
        Self {
            dependency,
            reason: UnavailableReason::RetryAfterBeyondDeadline,
            retry_after: hint,
            status: Some(status),
            attempts,
            check: None,
        }
    }

    /// The dependency's name (its host, or the name given with
    /// [`Dependency`](super::Dependency)).
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// Why it is unavailable.
    pub const fn reason(&self) -> UnavailableReason {
        self.reason
    }

    /// How long until it is worth calling again: the breaker's time to its
    /// next probe, the failing check's interval, or the server's hint (uncapped, at most
    /// [`hints::MAX_HINT`](super::hints::MAX_HINT)).
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The status of the last response (the `429` or `503` that carried the
    /// hint); `None` when no request was sent (an open breaker, a failing
    /// check).
    pub const fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Attempts made in this call before the middleware gave up (zero when
    /// the breaker refused the first one).
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The health check that reports the dependency down, for
    /// [`ReportedDown`](UnavailableReason::ReportedDown).
    pub fn check(&self) -> Option<&str> {
        self.check.as_deref()
    }

    /// `true` when the dependency's circuit breaker refused the call.
    pub const fn is_circuit_open(&self) -> bool {
        matches!(self.reason, UnavailableReason::CircuitOpen)
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = Human(self.retry_after);
        match self.reason {
            UnavailableReason::CircuitOpen => write!(
                f,
                "'{}' is unavailable: its circuit breaker is open; next probe in {after}",
                self.dependency
            ),
            UnavailableReason::ReportedDown => write!(
                f,
                "'{}' is unavailable: its health check '{}' is failing; calls resume when it \
                 passes (checked every {after})",
                self.dependency,
                self.check.as_deref().unwrap_or("?")
            ),
            UnavailableReason::RetryAfterBeyondDeadline => {
                let s = if self.attempts == 1 { "" } else { "s" };
                write!(f, "'{}' answered", self.dependency)?;
                if let Some(status) = self.status {
                    write!(f, " {}", status.as_u16())?;
                }
                write!(
                    f,
                    " and asked to retry after {after}, past the call's deadline; \
                     gave up after {} attempt{s}",
                    self.attempts
                )
            }
        }
    }
}

impl std::error::Error for Unavailable {}

/// The [`Unavailable`] error inside `error`, if the middleware made it.
pub fn unavailable(error: &reqwest_middleware::Error) -> Option<&Unavailable> {
    match error {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Unavailable>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

/// `true` when the call failed fast because the dependency's circuit breaker
/// is open (the request was not sent).
///
/// ```
/// # async fn demo(client: reqwest_middleware::ClientWithMiddleware) {
/// match client.get("https://api.example.com/v1/items").send().await {
///     Err(e) if selfheal::http::is_circuit_open(&e) => { /* serve the cached copy */ }
///     other => { let _ = other; }
/// }
/// # }
/// ```
pub fn is_circuit_open(error: &reqwest_middleware::Error) -> bool {
    unavailable(error).is_some_and(Unavailable::is_circuit_open)
}

/// When the failed call is worth making again, if the middleware knows:
/// the open breaker's time to its next probe, or the server's hint that was
/// past the deadline.
pub fn retry_in(error: &reqwest_middleware::Error) -> Option<Duration> {
    unavailable(error).map(Unavailable::retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_inside_the_middleware_error() {
        let e = reqwest_middleware::Error::middleware(Unavailable::circuit_open(
            "api.example.com".into(),
            Duration::from_millis(3200),
            0,
        ));
        assert!(is_circuit_open(&e));
        assert_eq!(retry_in(&e), Some(Duration::from_millis(3200)));
        assert_eq!(
            e.to_string(),
            "'api.example.com' is unavailable: its circuit breaker is open; next probe in 3.2s"
        );

        let e = reqwest_middleware::Error::middleware(Unavailable::beyond_deadline(
            "api.example.com".into(),
            Duration::from_secs(120),
            StatusCode::TOO_MANY_REQUESTS,
            1,
        ));
        assert!(!is_circuit_open(&e));
        assert_eq!(retry_in(&e), Some(Duration::from_secs(120)));
        assert_eq!(
            e.to_string(),
            "'api.example.com' answered 429 and asked to retry after 120.0s, past the call's \
             deadline; gave up after 1 attempt"
        );
    }
}
