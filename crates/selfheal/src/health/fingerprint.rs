//! One fingerprint's counters: what the monitor keeps per `(kind,
//! operation)`, and the text helpers that bound what it keeps.
//!
//! Apart from the monitor because everything about a fingerprint is fixed
//! when it is first seen (its key, its one redacted sample) except its
//! counters, which are lock-free rings: the record path touches nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

use super::window::{ByClient, Ring};

#[derive(Debug)]
pub(crate) struct Fingerprint {
    /// The table hash of `(kind, operation)`.
    pub(super) hash: u64,
    pub(super) kind: Box<str>,
    pub(super) operation: Box<str>,
    /// `kind@operation`, or just `kind` for [`OTHER`].
    pub(super) key: Box<str>,
    pub(super) sample: Box<str>,
    pub(super) ring: Ring,
    /// The part of `ring` recorded with a client (a request's), and which
    /// clients: see [`ClientId`].
    pub(super) by_client: ByClient,
    /// Monitor time (ms) of the first and last event.
    pub(super) first_seen_ms: u64,
    pub(super) last_seen_ms: AtomicU64,
}

impl Fingerprint {
    pub(super) fn new(
        hash: u64,
        kind: &str,
        operation: &str,
        sample: &str,
        now_ms: u64,
        buckets: usize,
    ) -> Self {
        let key = if operation == "*" {
            kind.into()
        } else {
            format!("{kind}@{operation}").into()
        };
        Self {
            hash,
            kind: kind.into(),
            operation: operation.into(),
            key,
            sample: sample.into(),
            ring: Ring::new(buckets),
            by_client: ByClient::new(buckets),
            first_seen_ms: now_ms,
            last_seen_ms: AtomicU64::new(now_ms),
        }
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    #[inline]
    pub(super) fn touch(&self, now_ms: u64) {
        // Store only when it moved by a second or more: a hot fingerprint does
        // not write this cache line on every event.
        if now_ms >= self.last_seen_ms.load(Ordering::Relaxed) + 1000 {
            self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        }
    }
}

/// Truncates `s` to at most `max` characters, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}
