//! Gradient2's arithmetic, once a window: see [`AdaptiveLimit`](super::AdaptiveLimit).

use super::Settings;

/// The algorithm's own state, touched once a window.
#[derive(Debug)]
pub(super) struct Gradient {
    pub(super) estimated: f64,
    pub(super) long_micros: f64,
    pub(super) windows: u32,
}

/// Windows over which the long average is taken, and its warm-up.
const LONG_WINDOW: f64 = 600.0;
const WARMUP: u32 = 10;

impl Gradient {
    /// The state of a limit that starts at `initial`.
    pub(super) fn new(initial: u32) -> Self {
        Self {
            estimated: f64::from(initial),
            long_micros: 0.0,
            windows: 0,
        }
    }

    /// One window of Gradient2: the new limit.
    pub(super) fn update(&mut self, s: &Settings, short: f64, max_in_flight: u32) -> u32 {
        self.windows += 1;
        if self.windows <= WARMUP {
            // The warm-up averages its windows (Gradient2's own choice). The
            // lowest window was tried: a login limit then settled lower
            // under a rush, but the app-wide limit, seeded by the quietest
            // of its first windows, shed pages on the chaos journey that
            // the mean let through (healing that hurts).
            let n = f64::from(self.windows);
            self.long_micros += (short - self.long_micros) / n;
        } else {
            let factor = 2.0 / (LONG_WINDOW + 1.0);
            self.long_micros = self.long_micros * (1.0 - factor) + short * factor;
        }
        if self.long_micros / short > 2.0 {
            self.long_micros *= 0.95;
        }
        if f64::from(max_in_flight) >= self.estimated / 2.0 {
            let gradient = (s.tolerance * self.long_micros / short).clamp(0.5, 1.0);
            let next = self.estimated * gradient + s.queue;
            self.estimated = ((1.0 - s.smoothing) * self.estimated + s.smoothing * next)
                .clamp(f64::from(s.min), f64::from(s.max));
        }
        self.estimated as u32
    }
}
