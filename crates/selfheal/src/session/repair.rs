//! What a repair is: the field (or the whole session) and why
//! ([`Repair`], [`RepairReason`]). Made while loading, logged, reported to
//! the monitor, and kept on the [`Healed`](super::Healed) session.

use std::fmt;

/// One repair made while loading a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    /// The field (session key), or `"record"` / `"cookie"` for a whole
    /// session replaced.
    pub field: &'static str,
    /// Why.
    pub reason: RepairReason,
}

/// Why a field or a session was repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairReason {
    /// The key was absent from an existing session: set to its default.
    Missing,
    /// The stored value did not decode as the field's type: reset.
    Undecodable,
    /// The stored value failed the field's check (the rule's words): reset.
    Invalid(&'static str),
    /// The store could not decode the session record: a fresh session with
    /// a new id.
    RecordUnreadable,
    /// The request's session cookie could not be verified or named no
    /// session we know: a fresh session.
    CookieRejected,
}

impl fmt::Display for RepairReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing, set to its default"),
            Self::Undecodable => f.write_str("undecodable, reset to its default"),
            Self::Invalid(rule) => write!(f, "failed its check ({rule}), reset to its default"),
            Self::RecordUnreadable => f.write_str("session record unreadable, fresh session"),
            Self::CookieRejected => f.write_str("session cookie rejected, fresh session"),
        }
    }
}
