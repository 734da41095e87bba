use std::fmt;
use std::time::Duration;

use crate::observe::GiveUpReason;

/// The retry engine gave up: the last error, and why the engine stopped.
///
/// When the server gave a hint (`Retry-After`), [`RetryError::retry_after`]
/// carries it, so an application can pass it on to its own user (for example as
/// a `503` with `Retry-After`) instead of guessing.
///
/// Use [`RetryError::into_inner`] to get the original error back.
pub struct RetryError<E> {
    error: E,
    reason: GiveUpReason,
    attempts: u32,
    retry_after: Option<Duration>,
}

impl<E> RetryError<E> {
    pub(crate) fn new(
        error: E,
        reason: GiveUpReason,
        attempts: u32,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            error,
            reason,
            attempts,
            retry_after,
        }
    }

    /// The last error.
    pub fn inner(&self) -> &E {
        &self.error
    }

    /// The last error, by value.
    pub fn into_inner(self) -> E {
        self.error
    }

    /// Why the engine stopped.
    pub fn reason(&self) -> GiveUpReason {
        self.reason
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The last delay the server asked for, if it asked.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// `true` when the engine stopped because the error is permanent.
    pub fn is_permanent(&self) -> bool {
        self.reason == GiveUpReason::Permanent
    }

    /// Applies `f` to the inner error, keeping the rest.
    pub fn map<F, E2>(self, f: F) -> RetryError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        RetryError {
            error: f(self.error),
            reason: self.reason,
            attempts: self.attempts,
            retry_after: self.retry_after,
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryError")
            .field("error", &self.error)
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "gave up after {} attempt{s} ({})",
            self.attempts, self.reason
        )?;
        if let Some(after) = self.retry_after {
            write!(f, ", server asked to retry after {after:?}")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl<E> std::error::Error for RetryError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
