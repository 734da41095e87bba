//! One closed bucket of one instance, as the ledger writes it, and how it
//! is copied out of the monitor.
//!
//! The copy reads the rings of a bucket that is closed (no recorder writes
//! it any more, short of one that read the clock just before it moved on),
//! one word per stripe, so it needs no lock and the record path does not
//! know it happens.

use std::collections::HashMap;

use super::super::{HealKind, Monitor, OTHER};
use crate::health::attempts::Tally;

/// What one instance saw in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketRecord {
    /// The bucket's start, Unix milliseconds (aligned to its width).
    pub start_ms: i64,
    /// Requests recorded.
    pub requests: u64,
    /// Failed requests.
    pub failed: u64,
    /// Errors per fingerprint.
    pub errors: Vec<ErrorCount>,
    /// Heals per kind (kinds that happened only).
    pub heals: Vec<(HealKind, u64)>,
    /// Retry outcomes per operation and attempt.
    pub attempts: Vec<AttemptCount>,
}

/// A fingerprint's errors in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCount {
    /// `kind@operation` (or `other`).
    pub fingerprint: String,
    /// The error kind.
    pub kind: String,
    /// The operation.
    pub operation: String,
    /// Errors in the bucket.
    pub count: u64,
    /// Of those, the ones that move the status and alerts (see
    /// [`ClientId`](crate::health::ClientId)).
    pub counted: u64,
    /// One sample message, redacted and truncated (the monitor's).
    pub sample: String,
}

/// Retry outcomes of one operation at one attempt, in one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttemptCount {
    /// The operation.
    pub operation: String,
    /// `recovered` (succeeded at `attempt`), `retry` (`attempt` failed and
    /// was retried) or `gave_up` (the engine stopped after `attempt`).
    pub outcome: String,
    /// Why it gave up (`max_attempts`, `deadline`, `budget`, …); empty
    /// otherwise.
    pub cause: String,
    /// The attempt (1 for the first).
    pub attempt: u32,
    /// How many times.
    pub count: u64,
    /// Milliseconds waited: all waits of the recoveries, the delays after
    /// the retried attempts.
    pub waited_ms: u64,
}

impl BucketRecord {
    /// An empty bucket starting at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        Self {
            start_ms,
            ..Self::default()
        }
    }

    /// Adds `count` errors of `kind` at `operation` (all counted).
    pub fn with_error(mut self, kind: &str, operation: &str, count: u64, sample: &str) -> Self {
        self.errors.push(ErrorCount {
            fingerprint: format!("{kind}@{operation}"),
            kind: kind.to_owned(),
            operation: operation.to_owned(),
            count,
            counted: count,
            sample: crate::health::truncate(&crate::redact::redact(sample), 200),
        });
        self
    }

    /// Sets the requests and failed requests.
    pub fn with_requests(mut self, requests: u64, failed: u64) -> Self {
        self.requests = requests;
        self.failed = failed;
        self
    }

    /// Adds `count` heals of `kind`.
    pub fn with_heal(mut self, kind: HealKind, count: u64) -> Self {
        self.heals.push((kind, count));
        self
    }

    /// Adds a retry outcome (see [`AttemptCount`]).
    pub fn with_attempts(
        mut self,
        operation: &str,
        outcome: &str,
        cause: &str,
        attempt: u32,
        count: u64,
        waited_ms: u64,
    ) -> Self {
        self.attempts.push(AttemptCount {
            operation: operation.to_owned(),
            outcome: outcome.to_owned(),
            cause: cause.to_owned(),
            attempt,
            count,
            waited_ms,
        });
        self
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
            && self.errors.is_empty()
            && self.heals.is_empty()
            && self.attempts.is_empty()
    }
}

impl Monitor {
    /// The monitor's epoch now.
    pub(super) fn epoch_now(&self) -> u32 {
        self.now().epoch
    }

    /// Copies bucket `epoch` out of the rings (it should be closed).
    pub(super) fn snapshot(&self, epoch: u32, start_ms: i64) -> BucketRecord {
        let mut record = BucketRecord::new(start_ms);
        let min_clients = self.inner.min_clients;
        let mut seen: HashMap<String, usize> = HashMap::new();
        self.for_each_fingerprint(|fp| {
            let count = fp.ring.at(epoch);
            if count == 0 {
                return;
            }
            let counted = fp.by_client.counted(count, epoch, 1, min_clients);
            // Two (kind, operation) pairs may spell the same key
            // (`a@b` at `c`, `a` at `b@c`): one row, counts added.
            if let Some(&i) = seen.get(fp.key()) {
                record.errors[i].count += count;
                record.errors[i].counted += counted;
                return;
            }
            seen.insert(fp.key().to_owned(), record.errors.len());
            record.errors.push(ErrorCount {
                fingerprint: fp.key().to_owned(),
                kind: fp.kind.to_string(),
                operation: if &*fp.kind == OTHER {
                    String::new()
                } else {
                    fp.operation.to_string()
                },
                count,
                counted,
                sample: fp.sample.to_string(),
            });
        });
        record.requests = self.inner.requests.at(epoch);
        record.failed = self.inner.failed_requests.at(epoch);
        for kind in HealKind::ALL {
            let n = self.inner.heals[kind.index()].at(epoch);
            if n > 0 {
                record.heals.push((kind, n));
            }
        }
        record
    }

    /// Turns on the per-operation retry tallies (a ledger reads them).
    pub(super) fn keep_attempts(&self) {
        self.inner
            .keep_attempts
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The retry tallies since the last call.
    pub(super) fn drain_attempts(&self) -> Vec<AttemptCount> {
        crate::sync::lock(&self.inner.attempts)
            .drain()
            .into_iter()
            .map(|(operation, t): (String, Tally)| {
                let (outcome, cause) = t.outcome.names();
                AttemptCount {
                    operation,
                    outcome: outcome.to_owned(),
                    cause: cause.to_owned(),
                    attempt: t.attempt,
                    count: t.count,
                    waited_ms: t.waited_ms,
                }
            })
            .collect()
    }
}
