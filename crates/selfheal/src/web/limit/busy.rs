//! How busy a set of slots (or workers) was over the last window: the
//! signal that tells "more work than capacity" from "work arriving in
//! clumps", shared by [`AdaptiveLimit::with_wait`](super::AdaptiveLimit::with_wait)
//! and [`ControlledDelay`](super::ControlledDelay).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Busy time summed as work ends, judged once per window.
#[derive(Debug)]
pub(super) struct BusyWindow {
    /// Time the slots were held since `window_start_ms` (µs).
    busy_micros: AtomicU64,
    window_start_ms: AtomicU64,
    /// The busy share of the last windows (‰), as [`Judge`] says;
    /// [`NONE`] before the first.
    share_permille: AtomicU64,
    /// Whether that share reached the judge's threshold.
    saturated: AtomicBool,
}

/// `share_permille` before any window closed.
const NONE: u64 = u64::MAX;

impl Default for BusyWindow {
    fn default() -> Self {
        Self {
            busy_micros: AtomicU64::new(0),
            window_start_ms: AtomicU64::new(0),
            share_permille: AtomicU64::new(NONE),
            saturated: AtomicBool::new(false),
        }
    }
}

/// How a [`BusyWindow`] judges: the threshold, and whether one window
/// decides or a moving average of windows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Judge {
    /// Busy share (%) that is saturation.
    pub(super) percent: u64,
    /// Average each window with the previous average (half each): a share
    /// that wanders over the threshold for one window does not count.
    pub(super) smooth: bool,
}

impl BusyWindow {
    /// A slot was held for `held`.
    #[inline]
    pub(super) fn add(&self, held: Duration) {
        self.busy_micros
            .fetch_add(held.as_micros() as u64, Ordering::Relaxed);
    }

    /// Whether the `slots` were saturated over the last window of
    /// `interval` (times in ms from any fixed start), as `judge` says; the
    /// first caller after a window ends closes it. A window that ends after
    /// a quiet spell is long and mostly idle: not saturated.
    pub(super) fn saturated(
        &self,
        now_ms: u64,
        slots: u32,
        interval: Duration,
        judge: Judge,
    ) -> bool {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let elapsed_ms = now_ms.saturating_sub(start);
        if elapsed_ms >= interval.as_millis() as u64
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let busy = self.busy_micros.swap(0, Ordering::Relaxed);
            let capacity = u64::from(slots.max(1))
                .saturating_mul(elapsed_ms)
                .saturating_mul(1000)
                .max(1);
            let share = busy.saturating_mul(1000) / capacity;
            // A window that ran over two intervals closes after a quiet
            // spell: what came before it is history, not a trend to
            // average with (a rush, then silence, then a small burst would
            // otherwise be judged by the rush).
            let fresh = elapsed_ms >= 2 * interval.as_millis() as u64;
            let share = match self.share_permille.load(Ordering::Relaxed) {
                previous if judge.smooth && previous != NONE && !fresh => (share + previous) / 2,
                _ => share,
            };
            self.share_permille.store(share, Ordering::Relaxed);
            self.saturated
                .store(share >= judge.percent * 10, Ordering::Relaxed);
        }
        self.saturated.load(Ordering::Relaxed)
    }

    /// Whether the share judged at the last window's close reached
    /// `percent` (never before the first window closed).
    pub(super) fn reached(&self, percent: u64) -> bool {
        let share = self.share_permille.load(Ordering::Relaxed);
        share != NONE && share >= percent.saturating_mul(10)
    }
}
