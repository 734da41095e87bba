//! What a transaction that gave up returns: the error, the step that
//! failed, and whether its commit may have been applied.

use std::borrow::Cow;
use std::fmt;

use crate::db::classify::{self, AsSqlx};
use crate::observe::GiveUpReason;

/// The step of a transaction that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxStep {
    /// Looking up the idempotency id after an ambiguous commit.
    Check,
    /// Acquiring a connection and beginning the transaction.
    Begin,
    /// Your closure.
    Body,
    /// Writing the idempotency id.
    Guard,
    /// `COMMIT`.
    Commit,
}

impl TxStep {
    /// A short lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Begin => "begin",
            Self::Body => "body",
            Self::Guard => "guard",
            Self::Commit => "commit",
        }
    }
}

impl fmt::Display for TxStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transaction the runner gave up on: the last error, the step that
/// failed, why the engine stopped, and whether a commit may have happened.
///
/// Use [`TxError::into_inner`] to get your error back.
pub struct TxError<E> {
    pub(super) error: E,
    pub(super) step: TxStep,
    pub(super) reason: GiveUpReason,
    pub(super) attempts: u32,
    pub(super) outcome_unknown: bool,
}

impl<E> TxError<E> {
    /// The last error.
    pub fn inner(&self) -> &E {
        &self.error
    }

    /// The last error, by value.
    pub fn into_inner(self) -> E {
        self.error
    }

    /// The step of the last attempt that failed.
    pub fn step(&self) -> TxStep {
        self.step
    }

    /// Why the runner stopped.
    pub fn reason(&self) -> GiveUpReason {
        self.reason
    }

    /// Attempts made (each a whole transaction).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// `true` when the error is permanent (tried once).
    pub fn is_permanent(&self) -> bool {
        self.reason == GiveUpReason::Permanent
    }

    /// `true` when a `COMMIT` failed in a way that leaves its outcome unknown
    /// and nothing proved since that it did not commit: the transaction may
    /// have been applied. Without the [`Guard`](crate::db::Guard) this is how an ambiguous
    /// commit ends; with it, only when the database stayed unreachable.
    pub fn commit_outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }
}

impl<E: AsSqlx> TxError<E> {
    /// The failure kind of the last error (`sqlite:BUSY`, `pg:23505`, `app`
    /// for an error of your own).
    pub fn kind(&self) -> Cow<'static, str> {
        self.error
            .as_sqlx()
            .map_or(Cow::Borrowed("app"), classify::failure_kind)
    }
}

impl<E: fmt::Debug> fmt::Debug for TxError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxError")
            .field("error", &self.error)
            .field("step", &self.step)
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("commit_outcome_unknown", &self.outcome_unknown)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for TxError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "transaction gave up after {} attempt{s} ({}) at {}",
            self.attempts, self.reason, self.step
        )?;
        if self.outcome_unknown {
            f.write_str(", commit outcome unknown")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl<E> std::error::Error for TxError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
