use std::borrow::Cow;
use std::fmt;

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
