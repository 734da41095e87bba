//! How long to wait between attempts.
//!
//! Two shapes, constant and exponential, and four jitter kinds, with the
//! definitions of the AWS Architecture Blog study "Exponential Backoff and
//! Jitter" (Marc Brooker, 2015). Given `temp = min(cap, base * factor^n)` for the
//! `n`-th retry (`n` from 0):
//!
//! | jitter | delay |
//! |---|---|
//! | [`Jitter::None`] | `temp` |
//! | [`Jitter::Full`] | `random(0, temp)` |
//! | [`Jitter::Equal`] | `temp / 2 + random(0, temp / 2)` |
//! | [`Jitter::Decorrelated`] | `min(cap, random(base, previous * 3))`, `previous` starting at `base` |
//!
//! Why jitter: clients that fail together retry together, and a backoff without
//! jitter only moves the thundering herd later. The study found full jitter does
//! the least work and equal jitter nearly as little; decorrelated jitter
//! finishes fast but does more calls; no jitter is worst on both counts. The
//! `aws_jitter` example (`cargo run -p selfheal --release --example aws_jitter`)
//! reproduces this with this module's delays: the ordering of work holds from
//! about 80 contending clients up; below that, decorrelated jitter does the
//! least work (its first wait is already up to 3× the base, which spreads a
//! small crowd at once). Completion time follows the study at every size.
//!
//! Randomness comes from a [`Random`] source: thread-local `fastrand` by default,
//! or a seeded one in tests, so jitter is deterministic where it must be.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::ConfigError;

/// A source of uniform random numbers for jitter.
///
/// The default ([`ThreadRandom`]) uses `fastrand`'s thread-local generator.
/// Use [`SeededRandom`] (or your own) to make jitter deterministic in tests.
pub trait Random: Send + Sync + 'static {
    /// A uniform value in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// `fastrand`'s thread-local generator: fast, lock-free, not cryptographic
/// (jitter needs none).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn next_f64(&self) -> f64 {
        fastrand::f64()
    }
}

/// A seeded generator: the same seed gives the same sequence of delays.
#[derive(Debug)]
pub struct SeededRandom(Mutex<fastrand::Rng>);

impl SeededRandom {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(fastrand::Rng::with_seed(seed)))
    }
}

impl Random for SeededRandom {
    fn next_f64(&self) -> f64 {
        crate::sync::lock(&self.0).f64()
    }
}

/// How a computed delay is randomised. See the [module docs](self) for the
/// formulas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// No randomness: every client waits exactly the computed delay.
    None,
    /// Uniform in `[0, delay]`: the least total work (the default).
    #[default]
    Full,
    /// Half the delay, plus uniform in `[0, delay / 2]`: never retries
    /// immediately.
    Equal,
    /// Uniform in `[base, previous * 3]`, capped: grows from the previous delay
    /// rather than the attempt number.
    Decorrelated,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Constant(Duration),
    Exponential {
        base: Duration,
        factor: f64,
        cap: Duration,
    },
}

/// A backoff schedule: a shape (constant or exponential) and a [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use selfheal::retry::{Backoff, Jitter};
///
/// // 100 ms, 200 ms, 400 ms … capped at 5 s, with full jitter (the default).
/// let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))?;
/// assert_eq!(backoff.jitter(), Jitter::Full);
///
/// // Misconfigurations are rejected at construction.
/// assert!(Backoff::exponential(Duration::from_secs(5), 2.0, Duration::from_secs(1)).is_err());
/// assert!(Backoff::exponential(Duration::from_secs(1), 0.5, Duration::from_secs(5)).is_err());
/// # Ok::<(), selfheal::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    shape: Shape,
    jitter: Jitter,
}

impl Default for Backoff {
    /// Exponential from 100 ms, factor 2, capped at 10 s, full jitter.
    fn default() -> Self {
        Self {
            shape: Shape::Exponential {
                base: Duration::from_millis(100),
                factor: 2.0,
                cap: Duration::from_secs(10),
            },
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The same delay before every retry, without jitter (add one with
    /// [`Backoff::with_jitter`]). A zero delay retries at once, without
    /// touching the timer.
    pub const fn constant(delay: Duration) -> Self {
        Self {
            shape: Shape::Constant(delay),
            jitter: Jitter::None,
        }
    }

    /// No wait at all between attempts.
    pub const fn immediate() -> Self {
        Self::constant(Duration::ZERO)
    }

    /// `min(cap, base * factor^n)` before the `n`-th retry (from 0), with full
    /// jitter.
    ///
    /// Errors when `factor` is below 1 or not finite, when `base` is zero, or
    /// when `cap` is below `base`.
    pub fn exponential(base: Duration, factor: f64, cap: Duration) -> Result<Self, ConfigError> {
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(ConfigError::new(format!(
                "backoff factor must be a finite number >= 1, got {factor}"
            )));
        }
        if base.is_zero() {
            return Err(ConfigError::new(
                "exponential backoff base must be greater than zero (use Backoff::immediate for no wait)",
            ));
        }
        if cap < base {
            return Err(ConfigError::new(format!(
                "backoff cap ({cap:?}) must not be below its base ({base:?})"
            )));
        }
        Ok(Self {
            shape: Shape::Exponential { base, factor, cap },
            jitter: Jitter::Full,
        })
    }

    /// The same schedule with another jitter.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The jitter in use.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The smallest and largest delay the schedule can produce, before jitter.
    pub const fn bounds(&self) -> (Duration, Duration) {
        match self.shape {
            Shape::Constant(d) => (d, d),
            Shape::Exponential { base, cap, .. } => (base, cap),
        }
    }

    /// The delay before retry number `retry` (0 for the first retry), given the
    /// previous delay (used by decorrelated jitter; pass `Duration::ZERO` for the
    /// first retry).
    #[inline]
    pub fn delay(&self, retry: u32, previous: Duration, random: &dyn Random) -> Duration {
        let (base, cap, temp) = match self.shape {
            Shape::Constant(d) => (d, d, d),
            Shape::Exponential { base, factor, cap } => {
                // base * factor^retry, computed in f64 seconds and saturated at cap.
                let exp = factor.powi(retry.min(i32::MAX as u32) as i32);
                let secs = base.as_secs_f64() * exp;
                let temp = if secs.is_finite() && secs < cap.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    cap
                };
                (base, cap, temp)
            }
        };
        match self.jitter {
            Jitter::None => temp,
            Jitter::Full => temp.mul_f64(random.next_f64()),
            Jitter::Equal => {
                let half = temp / 2;
                half + half.mul_f64(random.next_f64())
            }
            Jitter::Decorrelated => {
                let previous = if previous.is_zero() { base } else { previous };
                let upper = previous.saturating_mul(3).min(cap.max(base));
                if upper <= base {
                    return base.min(cap);
                }
                let span = upper - base;
                (base + span.mul_f64(random.next_f64())).min(cap)
            }
        }
    }
}

impl fmt::Display for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shape {
            Shape::Constant(d) => write!(f, "constant {d:?}")?,
            Shape::Exponential { base, factor, cap } => {
                write!(f, "exponential {base:?} x{factor} up to {cap:?}")?
            }
        }
        write!(f, ", {:?} jitter", self.jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn exponential_without_jitter_doubles_then_caps() {
        let b = Backoff::exponential(ms(100), 2.0, ms(1000))
            .unwrap()
            .with_jitter(Jitter::None);
        let r = ThreadRandom;
        let delays: Vec<_> = (0..6).map(|n| b.delay(n, Duration::ZERO, &r)).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        // A huge retry number saturates at the cap instead of overflowing.
        assert_eq!(b.delay(u32::MAX, Duration::ZERO, &r), ms(1000));
    }

    #[test]
    fn misconfigurations_are_rejected_with_a_clear_error() {
        let cap_below = Backoff::exponential(ms(500), 2.0, ms(100)).unwrap_err();
        assert!(cap_below.message().contains("cap"), "{cap_below}");
        let factor = Backoff::exponential(ms(100), 0.9, ms(1000)).unwrap_err();
        assert!(factor.message().contains("factor"), "{factor}");
        assert!(Backoff::exponential(ms(100), f64::NAN, ms(1000)).is_err());
        assert!(Backoff::exponential(Duration::ZERO, 2.0, ms(1000)).is_err());
    }

    #[test]
    fn seeded_random_is_deterministic() {
        let b = Backoff::exponential(ms(100), 2.0, ms(10_000)).unwrap();
        let run = |seed| {
            let r = SeededRandom::new(seed);
            (0..8)
                .map(|n| b.delay(n, Duration::ZERO, &r))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// A source that returns a fixed value, to reach the bounds exactly.
    struct Fixed(f64);
    impl Random for Fixed {
        fn next_f64(&self) -> f64 {
            self.0
        }
    }

    proptest! {
        #[test]
        fn every_jitter_stays_within_its_bounds(
            base_ms in 1u64..5_000,
            cap_extra_ms in 0u64..60_000,
            factor in 1.0f64..10.0,
            retry in 0u32..64,
            prev_ms in 0u64..200_000,
            seed in any::<u64>(),
        ) {
            let base = ms(base_ms);
            let cap = ms(base_ms + cap_extra_ms);
            let prev = ms(prev_ms);
            let r = SeededRandom::new(seed);
            let exp = Backoff::exponential(base, factor, cap).unwrap();
            let temp = exp.with_jitter(Jitter::None).delay(retry, prev, &r);
            prop_assert!(temp >= base && temp <= cap);

            let full = exp.with_jitter(Jitter::Full).delay(retry, prev, &r);
            prop_assert!(full <= temp);

            let equal = exp.with_jitter(Jitter::Equal).delay(retry, prev, &r);
            prop_assert!(equal >= temp / 2 && equal <= temp);

            let decorrelated = exp.with_jitter(Jitter::Decorrelated).delay(retry, prev, &r);
            prop_assert!(decorrelated >= base && decorrelated <= cap);
            let prev_eff = if prev.is_zero() { base } else { prev };
            prop_assert!(decorrelated <= prev_eff.saturating_mul(3).max(base));

            let constant = Backoff::constant(base).with_jitter(Jitter::Full).delay(retry, prev, &r);
            prop_assert!(constant <= base);
        }

        #[test]
        fn jitter_reaches_its_extremes(base_ms in 1u64..1_000, retry in 0u32..8) {
            let exp = Backoff::exponential(ms(base_ms), 2.0, ms(base_ms * 1_000)).unwrap();
            let temp = exp.with_jitter(Jitter::None).delay(retry, Duration::ZERO, &Fixed(0.0));
            prop_assert_eq!(exp.with_jitter(Jitter::Full).delay(retry, Duration::ZERO, &Fixed(0.0)), Duration::ZERO);
            prop_assert_eq!(exp.with_jitter(Jitter::Equal).delay(retry, Duration::ZERO, &Fixed(0.0)), temp / 2);
            prop_assert_eq!(exp.with_jitter(Jitter::Decorrelated).delay(retry, Duration::ZERO, &Fixed(0.0)), ms(base_ms));
        }
    }
}
