//! Per-operation retry outcomes (which attempt recovered, how long the
//! waits were, why a retry gave up), kept only while a health ledger asks
//! for them, and drained by it once a bucket.
//!
//! Why here and not in the ledger: the retry engine reports through the one
//! channel, the monitor. The monitor's listener slot belongs to the metrics
//! in most apps, and a second listener would need every app to wire a
//! [`Fanout`](crate::observe::Fanout). Recording here is off the error
//! path: only `Retry`, `Recovered` and `GaveUp` events reach it (each
//! already takes a lock for the recent heals), and not at all until a ledger
//! turns it on.

use std::collections::HashMap;

use crate::observe::GiveUpReason;

/// Attempts past this are counted under it.
pub(crate) const MAX_ATTEMPT: u32 = 16;

/// At most this many operations are tracked between two drains.
const MAX_OPERATIONS: usize = 256;

/// What happened at one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// The operation succeeded at this attempt (after at least one retry).
    Recovered,
    /// This attempt failed and the engine waited before the next one.
    Retry,
    /// The engine gave up after this attempt, for this reason.
    GaveUp(GiveUpReason),
}

impl Outcome {
    /// The outcome's name and its cause (`""` unless a give-up).
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::Recovered => ("recovered", ""),
            Self::Retry => ("retry", ""),
            Self::GaveUp(reason) => ("gave_up", reason.as_str()),
        }
    }
}

/// One tally: how many times `outcome` happened at `attempt`, and the
/// milliseconds waited (total waits for recoveries, the delay after the
/// attempt for retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) outcome: Outcome,
    pub(crate) attempt: u32,
    pub(crate) count: u64,
    pub(crate) waited_ms: u64,
}

/// The tallies since the last drain, per operation.
#[derive(Debug, Default)]
pub(crate) struct AttemptBook {
    ops: HashMap<String, Vec<Tally>>,
    /// Outcomes not kept because the book was full.
    pub(crate) overflow: u64,
}

impl AttemptBook {
    /// Counts one `outcome` of `operation` at `attempt`.
    pub(crate) fn add(&mut self, operation: &str, outcome: Outcome, attempt: u32, waited_ms: u64) {
        let attempt = attempt.clamp(1, MAX_ATTEMPT);
        if !self.ops.contains_key(operation) {
            if self.ops.len() >= MAX_OPERATIONS {
                self.overflow += 1;
                return;
            }
            self.ops.insert(operation.to_owned(), Vec::new());
        }
        let Some(tallies) = self.ops.get_mut(operation) else {
            return;
        };
        match tallies
            .iter_mut()
            .find(|t| t.outcome == outcome && t.attempt == attempt)
        {
            Some(t) => {
                t.count += 1;
                t.waited_ms = t.waited_ms.saturating_add(waited_ms);
            }
            None => tallies.push(Tally {
                outcome,
                attempt,
                count: 1,
                waited_ms,
            }),
        }
    }

    /// Takes every tally, leaving the book empty.
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn drain(&mut self) -> Vec<(String, Tally)> {
        self.overflow = 0;
        self.ops
            .drain()
            .flat_map(|(op, tallies)| tallies.into_iter().map(move |t| (op.clone(), t)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_per_operation_outcome_and_attempt() {
        let mut book = AttemptBook::default();
        book.add("send_email", Outcome::Recovered, 2, 100);
        book.add("send_email", Outcome::Recovered, 2, 300);
        book.add("send_email", Outcome::Retry, 1, 100);
        book.add(
            "send_email",
            Outcome::GaveUp(GiveUpReason::MaxAttempts),
            99,
            0,
        );
        let mut rows = book.drain();
        rows.sort_by_key(|(_, t)| (t.attempt, t.count));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].1.count, 2);
        assert_eq!(rows[1].1.waited_ms, 400);
        assert_eq!(rows[2].1.attempt, MAX_ATTEMPT);
        assert!(book.drain().is_empty());
    }
}
