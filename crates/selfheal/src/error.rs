use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A component was configured with values that cannot work (a cap below the
/// base delay, a factor below 1, zero attempts…). Returned by constructors and
/// builders, so a misconfiguration fails at start-up rather than at 3 a.m.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: Cow<'static, str>,
}

impl ConfigError {
    /// A configuration error with this message.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A wait written for people, in error messages: `3.2s` from one second up,
/// `250ms` below, rounded up ("0ms" would promise a retry that is not
/// possible yet).
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= Duration::from_secs(1) {
            write!(f, "{:.1}s", self.0.as_secs_f64())
        } else {
            write!(f, "{}ms", self.0.as_nanos().div_ceil(1_000_000))
        }
    }
}
