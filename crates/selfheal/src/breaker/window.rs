//! The sliding window of outcomes behind the failure-ratio trip mode.
//!
//! The window is a ring of `n` buckets, each covering `width = sampling / n` of
//! time. Each bucket is one `AtomicU64` packing
//!
//! ```text
//!  63            34 33          17 16           0
//! [ epoch: 30 bits | failures: 17 | total: 17    ]
//! ```
//!
//! where `epoch = elapsed / width` is the index of the time slice the counts
//! belong to. Recording an outcome is one compare-exchange loop on one bucket,
//! with no lock and no allocation; a bucket whose epoch is stale (it holds a
//! slice that has slid out of the window) is reset by that same
//! compare-exchange. Reading the window sums the buckets whose epoch is among
//! the last `n`, so a bucket nobody has written to for a while simply stops
//! counting.
//!
//! Bounds and their consequences, all deliberate:
//! - Counts are 17 bits (131 071 per bucket). A bucket that reaches the limit
//!   halves both of its counts before counting on: its failure ratio, the only
//!   thing the breaker reads, is kept, and the window keeps reacting to new
//!   failures instead of freezing.
//! - Epochs are stored modulo 2^30. A bucket left untouched for exactly a
//!   multiple of 2^30 slices (102 years with 3 s buckets, 30 hours with the
//!   smallest buckets the builder allows) would be counted again; the error is
//!   bounded by that one bucket's old counts.
//! - A thread that stalls for a whole sampling window between reading the
//!   clock and recording may reset a newer bucket; it loses at most that
//!   bucket's counts.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 17;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_BITS: u32 = 30;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const EPOCH_SHIFT: u32 = 2 * COUNT_BITS;

/// Largest number of outcomes one bucket keeps before halving its counts.
pub(crate) const BUCKET_CAPACITY: u64 = COUNT_MAX;

/// Counts read from the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) failures: u64,
    pub(crate) total: u64,
}

/// A time-bucketed, lock-free sliding window of outcomes.
pub(crate) struct Window {
    buckets: Box<[AtomicU64]>,
    /// Bucket width, in nanoseconds.
    width: Divisor,
    /// Number of buckets.
    len: Divisor,
}

/// Exact unsigned division by a constant, with a multiplication instead of a
/// `div` instruction (which costs tens of cycles on many server CPUs, and the
/// closed path needs two of them per outcome).
///
/// `magic = floor((2^64 - 1) / d)` underestimates `1 / d`, so the high half
/// of `x * magic` is the quotient or at most two less; the remainder says
/// which, and corrects it.
#[derive(Clone, Copy, Debug)]
struct Divisor {
    d: u64,
    magic: u64,
}

impl Divisor {
    const fn new(d: u64) -> Self {
        assert!(d > 0, "division by zero");
        Self {
            d,
            magic: u64::MAX / d,
        }
    }

    /// `(x / d, x % d)`.
    #[inline]
    const fn div_rem(self, x: u64) -> (u64, u64) {
        let mut q = ((x as u128 * self.magic as u128) >> 64) as u64;
        let mut r = x - q * self.d;
        while r >= self.d {
            q += 1;
            r -= self.d;
        }
        (q, r)
    }
}

const fn pack(epoch: u64, failures: u64, total: u64) -> u64 {
    ((epoch & EPOCH_MASK) << EPOCH_SHIFT) | (failures << COUNT_BITS) | total
}

const fn unpack(word: u64) -> (u64, u64, u64) {
    (
        word >> EPOCH_SHIFT,
        (word >> COUNT_BITS) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

impl Window {
    /// A window of `buckets` buckets of `width_nanos` each. Both must be
    /// non-zero (the builder checks).
    pub(crate) fn new(buckets: u32, width_nanos: u64) -> Self {
        debug_assert!(buckets > 0 && width_nanos > 0);
        Self {
            buckets: (0..buckets)
                .map(|_| AtomicU64::new(pack(0, 0, 0)))
                .collect(),
            width: Divisor::new(width_nanos),
            len: Divisor::new(u64::from(buckets)),
        }
    }

    /// The epoch (time-slice index) of an instant, given as nanoseconds since
    /// the breaker was created.
    #[inline]
    pub(crate) fn epoch(&self, elapsed_nanos: u64) -> u64 {
        self.width.div_rem(elapsed_nanos).0
    }

    /// The index of the bucket that holds `epoch`.
    #[inline]
    pub(crate) fn slot(&self, epoch: u64) -> usize {
        self.len.div_rem(epoch).1 as usize
    }

    /// Records one outcome in the bucket of `epoch`; returns the bucket's
    /// total after it.
    #[inline]
    pub(crate) fn record(&self, epoch: u64, failed: bool) -> u64 {
        let slot = &self.buckets[self.slot(epoch)];
        let tag = epoch & EPOCH_MASK;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (stored, mut failures, mut total) = unpack(current);
            if stored != tag {
                // The bucket holds a slice that has left the window: start over.
                failures = 0;
                total = 0;
            } else if total == COUNT_MAX {
                // Saturated: halve, which keeps the ratio and leaves room.
                failures /= 2;
                total /= 2;
            }
            let next = pack(tag, failures + u64::from(failed), total + 1);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return total + 1,
                Err(actual) => current = actual,
            }
        }
    }

    /// Records one success in bucket `slot` (which must be
    /// [`Window::slot`]`(epoch)`), but only if that bucket already holds
    /// `epoch` and has room: never resets or halves a bucket. Returns the
    /// bucket's total after it, or `None` (nothing recorded) when the bucket
    /// holds another slice or is full; the caller then records through
    /// [`Window::record`] with an epoch read from the clock.
    #[inline]
    pub(crate) fn add_success_if_current(&self, slot: usize, epoch: u64) -> Option<u64> {
        let slot = &self.buckets[slot];
        let tag = epoch & EPOCH_MASK;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (stored, _, total) = unpack(current);
            if stored != tag || total == COUNT_MAX {
                return None;
            }
            // `total < COUNT_MAX`: adding one cannot carry into the failures.
            match slot.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(total + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Sums the buckets that belong to the window ending at `epoch`: the
    /// slices `epoch - n + 1 ..= epoch`.
    pub(crate) fn counts(&self, epoch: u64) -> Counts {
        let tag = epoch & EPOCH_MASK;
        let len = self.len.d;
        let mut counts = Counts::default();
        for slot in self.buckets.iter() {
            let (stored, failures, total) = unpack(slot.load(Ordering::Relaxed));
            // Age in slices; a bucket from the "future" (written by a thread
            // that read the clock after us) wraps to a huge age and is skipped.
            let age = tag.wrapping_sub(stored) & EPOCH_MASK;
            if age < len {
                counts.failures += failures;
                counts.total += total;
            }
        }
        counts
    }

    /// Forgets every outcome. `epoch` is the current one: every bucket is
    /// stamped with it and zero counts, so none of them can look newer than a
    /// later write.
    pub(crate) fn reset(&self, epoch: u64) {
        let empty = pack(epoch, 0, 0);
        for slot in self.buckets.iter() {
            slot.store(empty, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn counts(failures: u64, total: u64) -> Counts {
        Counts { failures, total }
    }

    #[test]
    fn divisor_matches_plain_division_at_the_edges() {
        for d in [
            1,
            2,
            3,
            7,
            10,
            1_000,
            3_000_000_000,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let divisor = Divisor::new(d);
            for x in [
                0,
                1,
                d - 1,
                d,
                d.saturating_add(1),
                2 * (d / 2),
                u64::MAX / 2,
                u64::MAX - 1,
                u64::MAX,
            ] {
                assert_eq!(divisor.div_rem(x), (x / d, x % d), "{x} / {d}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn divisor_matches_plain_division(d in 1..=u64::MAX, x: u64) {
            proptest::prop_assert_eq!(Divisor::new(d).div_rem(x), (x / d, x % d));
        }

        #[test]
        fn divisor_matches_plain_division_for_small_divisors(d in 1..=1_000_000u64, x: u64) {
            proptest::prop_assert_eq!(Divisor::new(d).div_rem(x), (x / d, x % d));
        }
    }

    #[test]
    fn pack_round_trips() {
        let word = pack(EPOCH_MASK, COUNT_MAX, COUNT_MAX);
        assert_eq!(unpack(word), (EPOCH_MASK, COUNT_MAX, COUNT_MAX));
        assert_eq!(unpack(pack(7, 3, 9)), (7, 3, 9));
        // The epoch is stored modulo 2^30.
        assert_eq!(unpack(pack(EPOCH_MASK + 5, 1, 2)), (4, 1, 2));
    }

    #[test]
    fn records_into_the_current_bucket_and_sums_the_window() {
        let window = Window::new(4, 10);
        window.record(0, true);
        window.record(0, false);
        window.record(1, true);
        window.record(3, false);
        assert_eq!(window.counts(3), counts(2, 4));
        // At epoch 4 the window is slices 1..=4: slice 0 has slid out.
        assert_eq!(window.counts(4), counts(1, 2));
        // Slice 4 reuses slice 0's bucket and starts from zero there.
        window.record(4, true);
        assert_eq!(window.counts(4), counts(2, 3));
        // Far in the future nothing counts any more.
        assert_eq!(window.counts(100), counts(0, 0));
    }

    #[test]
    fn epoch_is_elapsed_over_width() {
        let window = Window::new(10, 3_000);
        assert_eq!(window.epoch(0), 0);
        assert_eq!(window.epoch(2_999), 0);
        assert_eq!(window.epoch(3_000), 1);
        assert_eq!(window.epoch(30_000), 10);
    }

    #[test]
    fn saturated_bucket_halves_and_keeps_the_ratio() {
        let window = Window::new(1, 1);
        for i in 0..COUNT_MAX {
            window.record(0, i % 4 == 0);
        }
        let full = window.counts(0);
        assert_eq!(full.total, COUNT_MAX);
        window.record(0, true);
        let halved = window.counts(0);
        assert_eq!(halved.total, COUNT_MAX / 2 + 1);
        assert_eq!(halved.failures, full.failures / 2 + 1);
        let before = full.failures as f64 / full.total as f64;
        let after = halved.failures as f64 / halved.total as f64;
        assert!((before - after).abs() < 0.001, "{before} vs {after}");
    }

    #[test]
    fn reset_forgets_everything_and_later_writes_count() {
        let window = Window::new(3, 1);
        window.record(5, true);
        window.record(6, true);
        window.reset(6);
        assert_eq!(window.counts(6), counts(0, 0));
        window.record(6, true);
        window.record(7, false);
        assert_eq!(window.counts(7), counts(1, 2));
    }

    #[test]
    fn conditional_success_only_lands_in_a_current_bucket_with_room() {
        let window = Window::new(4, 10);
        // Bucket 1 still holds its initial slice 0, not slice 5.
        assert_eq!(window.add_success_if_current(window.slot(5), 5), None);
        assert_eq!(window.counts(5), counts(0, 0));
        assert_eq!(window.record(5, true), 1);
        assert_eq!(window.add_success_if_current(window.slot(5), 5), Some(2));
        assert_eq!(window.counts(5), counts(1, 2));
        // A slice that has been overwritten by a newer one is not touched.
        window.record(9, false);
        assert_eq!(window.add_success_if_current(window.slot(5), 5), None);
        assert_eq!(window.counts(9), counts(0, 1));
        // A full bucket is left to `record`, which halves it.
        let full = Window::new(1, 1);
        for _ in 0..COUNT_MAX {
            full.record(0, false);
        }
        assert_eq!(full.add_success_if_current(0, 0), None);
        assert_eq!(full.counts(0), counts(0, COUNT_MAX));
    }

    #[test]
    fn concurrent_records_are_not_lost() {
        let window = Window::new(2, 1);
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let window = &window;
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        window.record(0, thread % 2 == 0);
                    }
                });
            }
        });
        assert_eq!(window.counts(0), counts(20_000, 40_000));
    }
}
