//! The open-loop storm's results: what an upstream outage costs the
//! upstream and the users, per healing variant.
//!
//! Why open loop: with closed-loop users (each waits for its answer before
//! the next request) a fast failure brings the next request sooner, so the
//! load on the upstream is about the same whatever the policy, and the storm
//! measured nothing. Real traffic does not wait: requests arrive at a fixed
//! offered rate whatever happened to the previous ones. So the storm sends
//! requests on a schedule, takes the upstream down for a period in the
//! middle of the run and brings it back, and reports per variant (no
//! healing, retry budget only, budget and circuit breaker):
//!
//! * the offered rate and the upstream calls per second, during the outage
//!   and overall (retries multiply calls; a breaker stops them);
//! * **time to fail fast**: from the outage's start to the start of the
//!   first 1-second window (windows start every 100 ms, and lie inside the
//!   outage) in which at least 95 % of the requests started in that window
//!   got their answer, whatever it was, within 100 ms. `None`: never during
//!   the outage;
//! * **time to recover**: from the upstream's return to the start of the
//!   first 1-second window (every 100 ms, inside the rest of the run) in
//!   which at least 95 % of the requests started in that window succeeded.
//!   `None`: not before the run ended;
//! * what users got, overall and during the outage: success (the tutor's
//!   answer), degraded (a truthful "temporarily unavailable" page, judged as
//!   everywhere else in chaos) or failed (anything else: an error page, a
//!   timeout, a request not sent because too many were in flight).
//!
//! The figures are pure functions of the samples (one per request) and the
//! schedule, so that they are unit-tested here without a run.

use std::time::Duration;

use serde::Serialize;

/// How the app calls its upstream in one storm run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StormVariant {
    /// Healing off: one attempt per request, the error page when it fails.
    NoHealing,
    /// Healing on with the retry budget, no circuit breaker.
    Budget,
    /// Healing on with selfheal's defaults: the retry budget, the adaptive
    /// throttle and the circuit breaker.
    BudgetBreaker,
}

impl StormVariant {
    /// Every variant, in report order.
    pub const ALL: [StormVariant; 3] = [
        StormVariant::NoHealing,
        StormVariant::Budget,
        StormVariant::BudgetBreaker,
    ];

    /// The run's name (in `report.json` and the progress bars).
    pub fn run_name(self) -> &'static str {
        match self {
            StormVariant::NoHealing => super::runs::STORM_NO_HEALING,
            StormVariant::Budget => super::runs::STORM_BUDGET,
            StormVariant::BudgetBreaker => super::runs::STORM_BUDGET_BREAKER,
        }
    }

    /// What a reader calls it.
    pub fn label(self) -> &'static str {
        match self {
            StormVariant::NoHealing => "no healing",
            StormVariant::Budget => "retry budget",
            StormVariant::BudgetBreaker => "selfheal's defaults (budget, throttle, breaker)",
        }
    }
}

/// What one request of the storm got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// The tutor's answer.
    Success,
    /// A truthful "temporarily unavailable" answer.
    Degraded,
    /// Anything else.
    Failed,
}

/// One request of the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormSample {
    /// When it was sent, from the start of the run.
    pub started: Duration,
    /// How long its answer took (the timeout when there was none).
    pub latency: Duration,
    /// What it got.
    pub got: Got,
}

/// When the outage was, and how long the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormSchedule {
    /// How long requests arrive.
    pub duration: Duration,
    /// When the upstream went down, from the start of the run.
    pub outage_start: Duration,
    /// When it came back.
    pub outage_end: Duration,
}

/// Upstream calls counted per phase of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamCalls {
    /// Calls while the upstream was down.
    pub during_outage: u64,
    /// Every call of the run.
    pub total: u64,
}

/// One open-loop storm run: its figures as defined in the module docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenLoopStorm {
    /// The variant.
    pub variant: StormVariant,
    /// The offered rate, requests per second.
    pub offered_rate: f64,
    /// How long requests arrived, in seconds.
    pub duration_secs: f64,
    /// When the upstream went down, seconds after the start.
    pub outage_start_secs: f64,
    /// How long it stayed down, in seconds.
    pub outage_secs: f64,
    /// Requests that arrived.
    pub requests: u64,
    /// Calls (attempts) that reached the upstream's side.
    pub upstream_calls: u64,
    /// `upstream_calls / requests`.
    pub upstream_calls_per_request: f64,
    /// Upstream calls per second while it was down.
    pub upstream_calls_per_sec_down: f64,
    /// Upstream calls per second over the whole run.
    pub upstream_calls_per_sec_overall: f64,
    /// Seconds from the outage's start until answers came back fast (see
    /// the module docs); `None`: never during the outage.
    pub time_to_fail_fast_secs: Option<f64>,
    /// Seconds from the upstream's return until 95 % succeeded again (see
    /// the module docs); `None`: not before the run ended.
    pub time_to_recover_secs: Option<f64>,
    /// 95th percentile latency of the requests started during the outage,
    /// in milliseconds.
    pub latency_p95_down_ms: f64,
    /// Fraction of all requests that succeeded, 0..=1.
    pub success_rate: f64,
    /// Fraction of all requests answered with a truthful degraded page.
    pub degraded_rate: f64,
    /// Fraction of all requests that failed.
    pub failed_rate: f64,
    /// Fraction of the requests started during the outage that succeeded.
    pub success_rate_down: f64,
    /// Fraction of the requests started during the outage that were degraded.
    pub degraded_rate_down: f64,
    /// Fraction of the requests started during the outage that failed.
    pub failed_rate_down: f64,
}

/// The fraction of `samples` for which `pass` holds, `None` when empty.
fn share(samples: &[&StormSample], pass: impl Fn(&StormSample) -> bool) -> Option<f64> {
    (!samples.is_empty())
        .then(|| samples.iter().filter(|s| pass(s)).count() as f64 / samples.len() as f64)
}

/// The windows definition both times share: the offset from `from` of the
/// first 1-second window starting at `from + k × 100 ms` and ending by
/// `until` in which at least 95 % of the requests started in it pass.
fn first_good_window(
    samples: &[StormSample],
    from: Duration,
    until: Duration,
    pass: impl Fn(&StormSample) -> bool,
) -> Option<f64> {
    const WINDOW: Duration = Duration::from_secs(1);
    const STEP: Duration = Duration::from_millis(100);
    let mut start = from;
    while start + WINDOW <= until {
        let inside: Vec<&StormSample> = samples
            .iter()
            .filter(|s| s.started >= start && s.started < start + WINDOW)
            .collect();
        if share(&inside, &pass).is_some_and(|p| p >= 0.95) {
            return Some((start - from).as_secs_f64());
        }
        start += STEP;
    }
    None
}

/// Time to fail fast, as defined in the module docs.
pub fn time_to_fail_fast(samples: &[StormSample], schedule: StormSchedule) -> Option<f64> {
    first_good_window(samples, schedule.outage_start, schedule.outage_end, |s| {
        s.latency <= Duration::from_millis(100)
    })
}

/// Time to recover, as defined in the module docs.
pub fn time_to_recover(samples: &[StormSample], schedule: StormSchedule) -> Option<f64> {
    first_good_window(samples, schedule.outage_end, schedule.duration, |s| {
        s.got == Got::Success
    })
}

/// The nearest-rank 95th percentile of `latencies`, in milliseconds (0 when empty).
fn p95_ms(mut latencies: Vec<Duration>) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort();
    let rank = ((latencies.len() as f64) * 0.95).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
}

impl OpenLoopStorm {
    /// The figures of one run from its samples, its schedule and the
    /// upstream calls counted.
    pub fn measure(
        variant: StormVariant,
        offered_rate: f64,
        schedule: StormSchedule,
        samples: &[StormSample],
        calls: UpstreamCalls,
    ) -> Self {
        let all: Vec<&StormSample> = samples.iter().collect();
        let down: Vec<&StormSample> = samples
            .iter()
            .filter(|s| s.started >= schedule.outage_start && s.started < schedule.outage_end)
            .collect();
        let rate = |of: &[&StormSample], got| share(of, |s| s.got == got).unwrap_or(0.0);
        let outage = schedule.outage_end.saturating_sub(schedule.outage_start);
        let per_sec = |calls: u64, over: Duration| {
            if over.is_zero() {
                0.0
            } else {
                calls as f64 / over.as_secs_f64()
            }
        };
        let requests = samples.len() as u64;
        Self {
            variant,
            offered_rate,
            duration_secs: schedule.duration.as_secs_f64(),
            outage_start_secs: schedule.outage_start.as_secs_f64(),
            outage_secs: outage.as_secs_f64(),
            requests,
            upstream_calls: calls.total,
            upstream_calls_per_request: super::ratio(calls.total, requests),
            upstream_calls_per_sec_down: per_sec(calls.during_outage, outage),
            upstream_calls_per_sec_overall: per_sec(calls.total, schedule.duration),
            time_to_fail_fast_secs: time_to_fail_fast(samples, schedule),
            time_to_recover_secs: time_to_recover(samples, schedule),
            latency_p95_down_ms: p95_ms(down.iter().map(|s| s.latency).collect()),
            success_rate: rate(&all, Got::Success),
            degraded_rate: rate(&all, Got::Degraded),
            failed_rate: rate(&all, Got::Failed),
            success_rate_down: rate(&down, Got::Success),
            degraded_rate_down: rate(&down, Got::Degraded),
            failed_rate_down: rate(&down, Got::Failed),
        }
    }

    /// The storm's row in the old `storm` section of `report.json`
    /// (requests, upstream calls, success).
    pub fn storm_run(&self) -> super::StormRun {
        super::StormRun::new(self.requests, self.upstream_calls, self.success_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: StormSchedule = StormSchedule {
        duration: Duration::from_secs(10),
        outage_start: Duration::from_secs(2),
        outage_end: Duration::from_secs(6),
    };

    /// Ten requests a second for ten seconds; `got(t)` says what the one
    /// started at `t` got and how long it took.
    fn samples(got: impl Fn(Duration) -> (Got, Duration)) -> Vec<StormSample> {
        (0..100)
            .map(|i| {
                let started = Duration::from_millis(i * 100);
                let (got, latency) = got(started);
                StormSample {
                    started,
                    latency,
                    got,
                }
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_outage_answered_slowly_then_fast_and_a_late_recovery_are_timed() {
        // Slow (1 s) failures for the outage's first 1.5 s, then fast
        // degraded answers; after the outage, failures for 2 s, then success.
        let s = samples(|t| {
            if t < SCHEDULE.outage_start {
                (Got::Success, ms(20))
            } else if t < SCHEDULE.outage_start + ms(1500) {
                (Got::Failed, ms(1000))
            } else if t < SCHEDULE.outage_end + ms(2000) {
                // Fast degraded answers, past the upstream's return too.
                (Got::Degraded, ms(5))
            } else {
                (Got::Success, ms(20))
            }
        });
        let fail_fast = time_to_fail_fast(&s, SCHEDULE).unwrap();
        assert!((fail_fast - 1.5).abs() < 1e-9, "{fail_fast}");
        let recover = time_to_recover(&s, SCHEDULE).unwrap();
        assert!((recover - 2.0).abs() < 1e-9, "{recover}");
    }

    #[test]
    fn never_failing_fast_and_never_recovering_are_none() {
        let s = samples(|t| {
            if t < SCHEDULE.outage_start {
                (Got::Success, ms(20))
            } else {
                (Got::Failed, ms(400))
            }
        });
        assert_eq!(time_to_fail_fast(&s, SCHEDULE), None);
        assert_eq!(time_to_recover(&s, SCHEDULE), None);
    }

    #[test]
    fn one_slow_answer_in_twenty_still_counts_as_fast() {
        // A hundred requests a second, every twentieth slow: 95 % are fast.
        let s: Vec<StormSample> = (0..1000)
            .map(|i| StormSample {
                started: ms(i * 10),
                latency: if i % 20 == 0 { ms(900) } else { ms(3) },
                got: Got::Degraded,
            })
            .collect();
        assert_eq!(time_to_fail_fast(&s, SCHEDULE), Some(0.0));
        // Every tenth slow: 90 %, never fast.
        let s: Vec<StormSample> = s
            .into_iter()
            .enumerate()
            .map(|(i, mut sample)| {
                if i % 10 == 5 {
                    sample.latency = ms(900);
                }
                sample
            })
            .collect();
        assert_eq!(time_to_fail_fast(&s, SCHEDULE), None);
    }

    #[test]
    fn the_figures_add_up() {
        let s = samples(|t| {
            if t >= SCHEDULE.outage_start && t < SCHEDULE.outage_end {
                (Got::Degraded, ms(10))
            } else {
                (Got::Success, ms(30))
            }
        });
        let calls = UpstreamCalls {
            during_outage: 8,
            total: 68,
        };
        let storm = OpenLoopStorm::measure(StormVariant::BudgetBreaker, 10.0, SCHEDULE, &s, calls);
        assert_eq!(storm.requests, 100);
        assert!((storm.upstream_calls_per_sec_down - 2.0).abs() < 1e-9);
        assert!((storm.upstream_calls_per_sec_overall - 6.8).abs() < 1e-9);
        assert!((storm.upstream_calls_per_request - 0.68).abs() < 1e-9);
        assert!((storm.degraded_rate - 0.4).abs() < 1e-9);
        assert!((storm.success_rate - 0.6).abs() < 1e-9);
        assert_eq!(storm.failed_rate, 0.0);
        assert_eq!(storm.degraded_rate_down, 1.0);
        assert_eq!(storm.latency_p95_down_ms, 10.0);
        assert_eq!(storm.time_to_recover_secs, Some(0.0));
        let json = serde_json::to_value(&storm).unwrap();
        assert_eq!(json["variant"], "budget_breaker");
    }
}
