//! The fingerprint table: a fixed-capacity, insert-only, lock-free hash table.
//!
//! Why not a `RwLock<HashMap>` or a copy-on-write map: every recorded error
//! looks its fingerprint up, from every thread at once. A read lock writes to
//! a shared cache line on every lookup, and a copy-on-write map (arc-swap)
//! costs a guard per lookup; both were measured slower than the rest of the
//! record path together. Fingerprints are never removed (their counts age out
//! of the time buckets instead) and their number is capped, so the table can be
//! sized once (twice the cap, open addressing with linear probing) and filled
//! slot by slot: a lookup is a few plain loads, an insert takes a mutex (the
//! rare path) and publishes through a `OnceLock`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::fingerprint::Fingerprint;

#[derive(Debug)]
pub(crate) struct Table {
    slots: Box<[OnceLock<Box<Fingerprint>>]>,
    mask: usize,
    len: AtomicUsize,
    max: usize,
    insert: Mutex<()>,
}

impl Table {
    /// A table for at most `max` fingerprints.
    pub(crate) fn new(max: usize) -> Self {
        let capacity = (max.max(1) * 2).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            mask: capacity - 1,
            len: AtomicUsize::new(0),
            max,
            insert: Mutex::new(()),
        }
    }

    #[inline]
    fn probe(&self, hash: u64, kind: &str, operation: &str) -> Result<&Fingerprint, usize> {
        let mut i = hash as usize & self.mask;
        loop {
            match self.slots[i].get() {
                None => return Err(i),
                Some(fp) if fp.hash == hash && &*fp.kind == kind && &*fp.operation == operation => {
                    return Ok(fp);
                }
                Some(_) => i = (i + 1) & self.mask,
            }
        }
    }

    /// The fingerprint for `(kind, operation)`, if tracked.
    #[inline]
    pub(crate) fn get(&self, hash: u64, kind: &str, operation: &str) -> Option<&Fingerprint> {
        self.probe(hash, kind, operation).ok()
    }

    /// The fingerprint for `(kind, operation)`, inserting `make()` if it is
    /// new; `None` when the table is full.
    pub(crate) fn get_or_insert(
        &self,
        hash: u64,
        kind: &str,
        operation: &str,
        make: impl FnOnce() -> Fingerprint,
    ) -> Option<&Fingerprint> {
        if self.len.load(Ordering::Relaxed) >= self.max {
            return self.get(hash, kind, operation);
        }
        let _guard = crate::sync::lock(&self.insert);
        match self.probe(hash, kind, operation) {
            Ok(fp) => Some(fp),
            Err(_) if self.len.load(Ordering::Relaxed) >= self.max => None,
            Err(empty) => {
                // Only inserts write slots, and they hold the mutex: the slot
                // found empty is still empty.
                let fp = self.slots[empty].get_or_init(|| Box::new(make()));
                self.len.fetch_add(1, Ordering::Relaxed);
                Some(fp)
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Fingerprint> {
        self.slots
            .iter()
            .filter_map(|slot| slot.get().map(|b| &**b))
    }
}
