//! How busy a set of slots (or workers) was over the last window: the
//! signal that tells "more work than capacity" from "work arriving in
//! clumps", shared by [`AdaptiveLimit::with_wait`](super::AdaptiveLimit::with_wait)
//! and [`ControlledDelay`](super::ControlledDelay).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Busy time summed as work ends, judged once per window.
#[derive(Debug, Default)]
pub(super) struct BusyWindow {
    /// Time the slots were held since `window_start_ms` (µs).
    busy_micros: AtomicU64,
    window_start_ms: AtomicU64,
    /// Whether the slots were busy at least 90 % of the last window.
    saturated: AtomicBool,
}

impl BusyWindow {
    /// A slot was held for `held`.
    #[inline]
    pub(super) fn add(&self, held: Duration) {
        self.busy_micros
            .fetch_add(held.as_micros() as u64, Ordering::Relaxed);
    }

    /// Whether the `slots` were busy at least 90 % of the last window of
    /// `interval` (times in ms from any fixed start); the first caller
    /// after a window ends closes it. A window that ends after a quiet
    /// spell is long and mostly idle: not saturated.
    pub(super) fn saturated(&self, now_ms: u64, slots: u32, interval: Duration) -> bool {
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let elapsed_ms = now_ms.saturating_sub(start);
        if elapsed_ms >= interval.as_millis() as u64
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let busy = self.busy_micros.swap(0, Ordering::Relaxed);
            let capacity = u64::from(slots.max(1)) * elapsed_ms * 1000;
            self.saturated.store(
                busy.saturating_mul(10) >= capacity.saturating_mul(9),
                Ordering::Relaxed,
            );
        }
        self.saturated.load(Ordering::Relaxed)
    }
}
