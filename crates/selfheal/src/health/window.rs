//! A lock-free, time-bucketed counter.
//!
//! Each bucket is one `AtomicU64` packing `[epoch: 32 bits | count: 32 bits]`.
//! A bucket whose epoch is stale is reset by the same compare-exchange that
//! counts into it, so recording is O(1), needs no lock and no background sweep,
//! and a read is exact: it sums only the buckets whose epoch lies inside the
//! requested window.
//!
//! Each ring has one stripe of buckets per CPU (up to 8), and a thread counts
//! into its own stripe: when every thread reports the same error (an error
//! storm: exactly when recording must stay cheap), they do not fight over one
//! cache line. Reads add the stripes up.
//!
//! Why not Resilience4j's subtract-on-evict running total: evicting
//! consistently needs every recorder to agree on who subtracts what, which is a
//! lock (Resilience4j takes one) or a second atomic per record on the hot path.
//! A read here scans at most `buckets` words (60 by default, 8 cache lines),
//! which is a few hundred nanoseconds for the dashboard or the once-a-second
//! alert evaluation; the record path, paid on every error, stays one
//! compare-exchange.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const COUNT_MASK: u64 = u32::MAX as u64;

#[inline]
fn pack(epoch: u32, count: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count)
}

#[inline]
fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, (word & COUNT_MASK) as u32)
}

/// The number of stripes: the CPUs available, at most 8.
fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
    })
}

/// This thread's stripe index (threads are numbered as they first record).
#[inline]
fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|n| *n)
}

/// Counts per time bucket over a ring of `len` buckets (times the stripes).
#[derive(Debug)]
pub(crate) struct Ring {
    /// `stripes` consecutive runs of `len` buckets.
    slots: Box<[AtomicU64]>,
    len: usize,
    stripes: usize,
}

impl Ring {
    /// A ring of `len` buckets, all empty. Epoch 0 buckets start empty too:
    /// a zero count is a zero count whatever its tag.
    pub(crate) fn new(len: usize) -> Self {
        let len = len.max(1);
        let stripes = stripes();
        Self {
            slots: (0..len * stripes).map(|_| AtomicU64::new(0)).collect(),
            len,
            stripes,
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.len as u32
    }

    /// Adds `n` to the bucket of `epoch` (saturating).
    #[inline]
    pub(crate) fn add(&self, epoch: u32, n: u32) {
        let stripe = my_stripe() % self.stripes;
        let slot = &self.slots[stripe * self.len + epoch as usize % self.len];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (tag, count) = unpack(current);
            let next = if tag == epoch {
                if count == u32::MAX {
                    return;
                }
                pack(epoch, count.saturating_add(n))
            } else if tag.wrapping_sub(epoch) < u32::MAX / 2 && tag != epoch {
                // The slot already belongs to a newer epoch (this recorder read
                // the clock before a concurrent one moved on): count it there
                // rather than erase the newer bucket.
                if count == u32::MAX {
                    return;
                }
                pack(tag, count.saturating_add(n))
            } else {
                pack(epoch, n)
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The sum over the `span` most recent epochs, `now` included.
    pub(crate) fn sum(&self, now: u32, span: u32) -> u64 {
        let span = span.min(self.len());
        self.slots
            .iter()
            .map(|slot| {
                let (tag, count) = unpack(slot.load(Ordering::Relaxed));
                if now.wrapping_sub(tag) < span {
                    u64::from(count)
                } else {
                    0
                }
            })
            .sum()
    }

    /// The count of bucket `epoch` alone (0 if its slots moved on to a newer
    /// epoch): one word per stripe. A read for the health ledger, which
    /// copies closed buckets out; the record path never calls it.
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn at(&self, epoch: u32) -> u64 {
        let index = epoch as usize % self.len;
        (0..self.stripes)
            .map(|stripe| {
                let (tag, count) =
                    unpack(self.slots[stripe * self.len + index].load(Ordering::Relaxed));
                if tag == epoch { u64::from(count) } else { 0 }
            })
            .sum()
    }

    /// Adds the counts of the `out.len()` most recent epochs into `out`,
    /// oldest first.
    pub(crate) fn add_series(&self, now: u32, out: &mut [u64]) {
        let span = (out.len() as u32).min(self.len());
        for slot in self.slots.iter() {
            let (tag, count) = unpack(slot.load(Ordering::Relaxed));
            let age = now.wrapping_sub(tag);
            if age < span {
                out[(span - 1 - age) as usize] += u64::from(count);
            }
        }
    }
}

/// Which clients were seen, per time bucket: a 32-bit linear-counting
/// sketch (one bit per client hash) packed with its epoch in one
/// `AtomicU64`, reset by the compare-exchange that sets a bit, like
/// [`Ring`]. The popcount of the OR over a window is a lower bound of the
/// distinct clients in it (two clients may share a bit), exact enough to
/// tell "one client" from "several".
///
/// A client that keeps failing sets a bit that is already set: a load and
/// no write, so one client's storm costs nothing here.
#[derive(Debug)]
pub(crate) struct Sketch {
    slots: Box<[AtomicU64]>,
}

impl Sketch {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            slots: (0..len.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Notes client `hash` in the bucket of `epoch`.
    #[inline]
    pub(crate) fn add(&self, epoch: u32, hash: u64) {
        let bit = 1u32 << (hash % 32);
        let slot = &self.slots[epoch as usize % self.slots.len()];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (tag, bits) = unpack(current);
            // This epoch's bucket, or a newer one (see `Ring::add`).
            let next = if tag.wrapping_sub(epoch) < u32::MAX / 2 {
                if bits & bit != 0 {
                    return;
                }
                pack(tag, bits | bit)
            } else {
                pack(epoch, bit)
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// A lower bound of the distinct clients seen in the `span` most recent
    /// epochs, `now` included (at most 32).
    pub(crate) fn distinct(&self, now: u32, span: u32) -> u32 {
        let span = span.min(self.slots.len() as u32);
        self.slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Relaxed)))
            .filter(|(tag, _)| now.wrapping_sub(*tag) < span)
            .fold(0u32, |acc, (_, bits)| acc | bits)
            .count_ones()
    }
}

/// The part of a count recorded with a client, and which clients: what
/// decides whether a count moves the status (see `ClientId`).
#[derive(Debug)]
pub(crate) struct ByClient {
    attributed: Ring,
    clients: Sketch,
    /// Whether anything was ever recorded with a client: when not, reads
    /// skip both scans.
    any: std::sync::atomic::AtomicBool,
}

impl ByClient {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            attributed: Ring::new(len),
            clients: Sketch::new(len),
            any: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// One event from client `hash` in the bucket of `epoch`.
    #[inline]
    pub(crate) fn add(&self, epoch: u32, hash: u64) {
        self.attributed.add(epoch, 1);
        self.clients.add(epoch, hash);
        if !self.any.load(Ordering::Relaxed) {
            self.any.store(true, Ordering::Relaxed);
        }
    }

    /// Of `all` events over the `span` most recent epochs, those that count:
    /// all of them once they came from `min_clients` distinct clients, else
    /// only those recorded without a client.
    pub(crate) fn counted(&self, all: u64, now: u32, span: u32, min_clients: u32) -> u64 {
        if all == 0
            || !self.any.load(Ordering::Relaxed)
            || self.clients.distinct(now, span) >= min_clients
        {
            return all;
        }
        all.saturating_sub(self.attributed.sum(now, span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sketch_counts_distinct_clients_per_window_and_one_client_once() {
        let s = Sketch::new(4);
        for _ in 0..1000 {
            s.add(10, 7);
        }
        assert_eq!(s.distinct(10, 4), 1, "one client, however many errors");
        s.add(10, 8);
        s.add(11, 9);
        assert_eq!(s.distinct(11, 4), 3);
        assert_eq!(s.distinct(11, 1), 1, "only the newest bucket");
        assert_eq!(s.distinct(20, 4), 0, "aged out");
        s.add(14, 7);
        assert_eq!(
            s.distinct(14, 4),
            2,
            "a reused slot starts empty; 11 is still in the window"
        );
    }

    #[test]
    fn counts_age_out_of_the_window() {
        let r = Ring::new(4);
        r.add(10, 1);
        r.add(10, 2);
        r.add(11, 5);
        assert_eq!(r.sum(11, 4), 8);
        assert_eq!(r.sum(11, 1), 5);
        let mut series = [0; 3];
        r.add_series(11, &mut series);
        assert_eq!(series, [0, 3, 5]);
        // Epoch 14 reuses epoch 10's slot: the old count is gone.
        r.add(14, 1);
        assert_eq!(r.sum(14, 4), 6);
        assert_eq!(r.sum(20, 4), 0);
        assert_eq!(r.at(11), 5);
        assert_eq!(r.at(14), 1);
        assert_eq!(r.at(10), 0, "overwritten by epoch 14");
    }

    #[test]
    fn a_late_recorder_does_not_erase_a_newer_bucket() {
        let r = Ring::new(4);
        r.add(14, 3);
        r.add(10, 1); // same slot, older epoch: counted in the newer bucket
        assert_eq!(r.sum(14, 1), 4);
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let r = std::sync::Arc::new(Ring::new(60));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..100_000u32 {
                        r.add(i / 25_000, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.sum(3, 60), 400_000);
    }
}
