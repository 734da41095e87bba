//! The overload suite's figures, as pure functions of the samples (one per
//! user request) and the schedule, so that they are unit-tested here
//! without a run.
//!
//! Definitions:
//!
//! * **Goodput** of a second: the requests *arriving* in that second (their
//!   scheduled arrival, open loop) that succeeded within the user's
//!   timeout. Counting by arrival keeps it bounded by what was offered; a
//!   phase's goodput is its successes divided by its length, in requests
//!   per second.
//! * **Time to recover** (metastability): the offset from the trigger's
//!   end to the start of the first 1-second window (windows start every
//!   100 ms and lie between the trigger's end and the run's end) in which
//!   the share of arriving requests that succeeded in time is at least
//!   95 % of that share before the trigger (from the end of the warm-up to
//!   the trigger's start). A share, not a count: with Poisson arrivals the
//!   count in one second varies by ±12 % at 70 requests a second, while
//!   every variant gets the same arrivals (same seed), so goodput relative
//!   to what was offered is what a window can compare. `None`: not before
//!   the run ended.
//! * **Settled goodput**: goodput from 10 s after the trigger's end to the
//!   run's end, as a fraction of goodput before the trigger: whether the
//!   system is still stuck once every timeout and backoff of the trigger
//!   has long run out.
//! * Latency percentiles are nearest-rank over every sample concerned.

use std::time::Duration;

use serde::Serialize;

/// One user request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Its scheduled arrival, from the start of the run.
    pub arrival: Duration,
    /// From its scheduled arrival to its answer (or to the user's timeout).
    pub latency: Duration,
    /// What it got.
    pub got: Got,
}

/// What a user request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Got {
    /// A success within the user's timeout.
    Success,
    /// Refused early by the server (`503` with `Retry-After`).
    Shed,
    /// Anything else: an error, a timeout.
    Failed,
}

/// When the trigger of a metastability run was, and how long the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// How long requests arrive.
    pub duration: Duration,
    /// Before this, the system warms up (connections, windows); not counted
    /// in the pre-trigger figures.
    pub warmup: Duration,
    /// When the trigger starts.
    pub trigger_start: Duration,
    /// When it ends.
    pub trigger_end: Duration,
}

/// The settled phase starts this long after the trigger's end.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Samples arriving in `[from, to)`.
fn within(samples: &[Sample], from: Duration, to: Duration) -> impl Iterator<Item = &Sample> {
    samples
        .iter()
        .filter(move |s| s.arrival >= from && s.arrival < to)
}

/// Successes per second among the requests arriving in `[from, to)`
/// (0 for an empty span).
pub fn goodput(samples: &[Sample], from: Duration, to: Duration) -> f64 {
    let span = to.saturating_sub(from).as_secs_f64();
    if span <= 0.0 {
        return 0.0;
    }
    within(samples, from, to)
        .filter(|s| s.got == Got::Success)
        .count() as f64
        / span
}

/// The share of requests arriving in `[from, to)` that succeeded; `None`
/// when none arrived.
pub fn success_share(samples: &[Sample], from: Duration, to: Duration) -> Option<f64> {
    let (mut all, mut ok) = (0usize, 0usize);
    for s in within(samples, from, to) {
        all += 1;
        ok += usize::from(s.got == Got::Success);
    }
    (all > 0).then(|| ok as f64 / all as f64)
}

/// Successes per arrival second, for `duration` (the chart's curve).
pub fn goodput_per_second(samples: &[Sample], duration: Duration) -> Vec<f64> {
    let seconds = duration.as_secs_f64().ceil() as usize;
    let mut series = vec![0.0; seconds];
    for s in samples.iter().filter(|s| s.got == Got::Success) {
        if let Some(slot) = series.get_mut(s.arrival.as_secs() as usize) {
            *slot += 1.0;
        }
    }
    series
}

/// The mean of `values` (0 when empty).
pub fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values {
        sum += v;
        n += 1;
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Time to recover, as defined in the [module docs](self).
pub fn time_to_recover(samples: &[Sample], schedule: Schedule) -> Option<f64> {
    const WINDOW: Duration = Duration::from_secs(1);
    const STEP: Duration = Duration::from_millis(100);
    let before = success_share(samples, schedule.warmup, schedule.trigger_start)?;
    let threshold = 0.95 * before;
    let mut start = schedule.trigger_end;
    while start + WINDOW <= schedule.duration {
        if success_share(samples, start, start + WINDOW).is_some_and(|s| s >= threshold) {
            return Some((start - schedule.trigger_end).as_secs_f64());
        }
        start += STEP;
    }
    None
}

/// Settled goodput, as defined in the [module docs](self); `None` when
/// nothing succeeded before the trigger or the run is too short to settle.
pub fn settled_ratio(samples: &[Sample], schedule: Schedule) -> Option<f64> {
    let before = goodput(samples, schedule.warmup, schedule.trigger_start);
    let from = schedule.trigger_end + SETTLE;
    (before > 0.0 && from < schedule.duration)
        .then(|| goodput(samples, from, schedule.duration) / before)
}

/// The nearest-rank `q` percentile of the latencies of the samples that
/// `pick` keeps, in milliseconds (0 when none).
pub fn percentile_ms(samples: &[Sample], q: f64, pick: impl Fn(&Sample) -> bool) -> f64 {
    let mut latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| pick(s))
        .map(|s| s.latency)
        .collect();
    latencies.sort();
    crate::report::percentile(&latencies, q).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: Schedule = Schedule {
        duration: Duration::from_secs(30),
        warmup: Duration::from_secs(2),
        trigger_start: Duration::from_secs(10),
        trigger_end: Duration::from_secs(15),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Ten arrivals a second for the whole run; `got(t)` says what the one
    /// arriving at `t` got.
    fn samples(got: impl Fn(Duration) -> Got) -> Vec<Sample> {
        (0..300)
            .map(|i| {
                let arrival = ms(i * 100);
                Sample {
                    arrival,
                    latency: ms(20),
                    got: got(arrival),
                }
            })
            .collect()
    }

    #[test]
    fn recovery_is_timed_from_the_triggers_end_to_the_first_good_window() {
        // Everything fails from the trigger's start to 2.5 s after its end.
        let s = samples(|t| {
            if t >= SCHEDULE.trigger_start && t < SCHEDULE.trigger_end + ms(2500) {
                Got::Failed
            } else {
                Got::Success
            }
        });
        let recover = time_to_recover(&s, SCHEDULE).unwrap();
        assert!((recover - 2.5).abs() < 1e-9, "{recover}");
        assert_eq!(goodput(&s, SCHEDULE.warmup, SCHEDULE.trigger_start), 10.0);
        assert_eq!(
            goodput(&s, SCHEDULE.trigger_start, SCHEDULE.trigger_end),
            0.0
        );
        assert_eq!(settled_ratio(&s, SCHEDULE), Some(1.0));
    }

    #[test]
    fn a_system_that_stays_down_never_recovers() {
        let s = samples(|t| {
            if t < SCHEDULE.trigger_start {
                Got::Success
            } else {
                Got::Failed
            }
        });
        assert_eq!(time_to_recover(&s, SCHEDULE), None);
        assert_eq!(settled_ratio(&s, SCHEDULE), Some(0.0));
    }

    #[test]
    fn the_threshold_is_relative_to_the_share_before_the_trigger() {
        // Before: 80 % succeed (every fifth fails). After: 8 in 10 still
        // pass 95 % of 80 % (76 %); 7 in 10 do not.
        let s = samples(|t| {
            let i = t.as_millis() / 100;
            if t < SCHEDULE.trigger_start {
                if i % 5 == 0 {
                    Got::Failed
                } else {
                    Got::Success
                }
            } else if t < SCHEDULE.trigger_end {
                Got::Failed
            } else if i % 10 < 3 {
                Got::Shed
            } else {
                Got::Success
            }
        });
        assert_eq!(time_to_recover(&s, SCHEDULE), None);
        let s: Vec<Sample> = s
            .into_iter()
            .map(|mut x| {
                let i = x.arrival.as_millis() / 100;
                if x.arrival >= SCHEDULE.trigger_end && i % 10 == 2 {
                    x.got = Got::Success;
                }
                x
            })
            .collect();
        assert_eq!(time_to_recover(&s, SCHEDULE), Some(0.0));
    }

    #[test]
    fn goodput_per_second_counts_successes_by_arrival() {
        let s = samples(|t| {
            if t < ms(1500) {
                Got::Success
            } else {
                Got::Failed
            }
        });
        let series = goodput_per_second(&s, SCHEDULE.duration);
        assert_eq!(series.len(), 30);
        assert_eq!(series[0], 10.0);
        assert_eq!(series[1], 5.0);
        assert_eq!(series[2], 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_the_picked_samples() {
        let s: Vec<Sample> = (1..=100)
            .map(|i| Sample {
                arrival: ms(i),
                latency: ms(i),
                got: if i > 90 { Got::Shed } else { Got::Success },
            })
            .collect();
        assert_eq!(percentile_ms(&s, 0.5, |s| s.got == Got::Success), 45.0);
        assert_eq!(percentile_ms(&s, 0.99, |s| s.got == Got::Success), 90.0);
        assert_eq!(percentile_ms(&s, 0.99, |_| false), 0.0);
    }
}
