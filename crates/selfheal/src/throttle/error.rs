//! Errors returned by an [`AdaptiveThrottle`](super::AdaptiveThrottle).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A call was refused locally, without being made: the dependency has been
/// refusing or failing more than the throttle lets through.
///
/// Its `Display` names the throttle and how much of its traffic it is
/// refusing, for example `throttle 'api.openai.com' refused the call (62 %
/// of calls are being refused locally)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Throttled {
    throttle: Arc<str>,
    probability: f64,
}

impl Throttled {
    pub(crate) const fn new(throttle: Arc<str>, probability: f64) -> Self {
        Self {
            throttle,
            probability,
        }
    }

    /// The name of the throttle that refused the call.
    pub fn throttle(&self) -> &str {
        &self.throttle
    }

    /// The probability of refusal when the call was refused.
    pub const fn probability(&self) -> f64 {
        self.probability
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throttle '{}' refused the call ({:.0} % of calls are being refused locally)",
            self.throttle,
            self.probability * 100.0
        )
    }
}

impl Error for Throttled {}

/// The error of a call made through a throttle: refused locally, or made
/// and failed. `Display` and [`Error::source`] are transparent for
/// [`ThrottleError::Inner`].
#[derive(Debug)]
pub enum ThrottleError<E> {
    /// The throttle refused the call; the operation was not run.
    Throttled(Throttled),
    /// The operation ran and returned this error.
    Inner(E),
}

impl<E> ThrottleError<E> {
    /// `true` if the throttle refused the call.
    pub const fn is_throttled(&self) -> bool {
        matches!(self, Self::Throttled(_))
    }

    /// The operation's error, if the operation ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Throttled(_) => None,
            Self::Inner(error) => Some(error),
        }
    }
}

impl<E: fmt::Display> fmt::Display for ThrottleError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Throttled(refused) => refused.fmt(f),
            Self::Inner(error) => error.fmt(f),
        }
    }
}

impl<E: Error + 'static> Error for ThrottleError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Throttled(_) => None,
            Self::Inner(error) => error.source(),
        }
    }
}
