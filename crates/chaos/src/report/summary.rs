//! What a run's samples add up to: per-step and overall outcome rates, exact
//! latency percentiles, and the 1-second timeline.
//!
//! These are pure functions of the recorded samples (and the run's counters),
//! kept apart from the recorder so that the arithmetic the report's
//! definitions promise (fractions in 0..=1, nearest-rank percentiles,
//! buckets of the start offset) reads in one place and is tested without a
//! live run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::record::Sample;
use super::{FailureKind, Outcome, counters, ratio};

/// The nearest-rank percentile `q` (0..=1) of already sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Hard failures by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardFailures {
    /// 5xx without a friendly page.
    pub server_error: u64,
    /// Connection errors, resets, timeouts.
    pub connection: u64,
    /// Escaped panics.
    pub panic: u64,
    /// Wrong status or content.
    pub unexpected: u64,
}

impl HardFailures {
    /// The count of one kind.
    pub fn get(&self, kind: FailureKind) -> u64 {
        match kind {
            FailureKind::ServerError => self.server_error,
            FailureKind::Connection => self.connection,
            FailureKind::Panic => self.panic,
            FailureKind::Unexpected => self.unexpected,
        }
    }

    /// All kinds added up.
    pub fn total(&self) -> u64 {
        self.server_error + self.connection + self.panic + self.unexpected
    }
}

/// Latency percentiles in milliseconds (exact, nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl LatencySummary {
    /// Percentiles of unsorted samples.
    pub fn from_latencies(mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let mean = if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0
                / latencies.len() as f64
        };
        Self {
            p50_ms: ms(percentile(&latencies, 0.50)),
            p95_ms: ms(percentile(&latencies, 0.95)),
            p99_ms: ms(percentile(&latencies, 0.99)),
            max_ms: ms(latencies.last().copied()),
            mean_ms: mean,
        }
    }
}

/// Outcomes and latency of one step (or of a whole run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    /// Actions.
    pub total: u64,
    /// `Success` outcomes.
    pub success: u64,
    /// `Degraded` outcomes.
    pub degraded: u64,
    /// `SignedOut` outcomes.
    pub signed_out: u64,
    /// Hard failures by kind.
    pub hard_failures: HardFailures,
    /// `success / total`, a fraction in 0..=1.
    pub success_rate: f64,
    /// `degraded / total`, a fraction in 0..=1.
    pub degraded_rate: f64,
    /// `signed_out / total`, a fraction in 0..=1.
    pub signed_out_rate: f64,
    /// `hard failures / total`, a fraction in 0..=1.
    pub hard_failure_rate: f64,
    /// Latency percentiles.
    pub latency: LatencySummary,
    /// Fraction of this step's first tries that succeeded, 0..=1 (before
    /// the user pressed again).
    pub first_try_success_rate: f64,
    /// First tries that did not succeed, by the kind of fault that struck
    /// them (`no_fault` when none did; a try struck by two kinds counts
    /// under both).
    pub first_try_causes: BTreeMap<String, u64>,
}

impl StepSummary {
    /// Counts and percentiles of `samples`.
    fn from_samples<'a>(samples: impl Iterator<Item = &'a Sample>) -> Self {
        let mut sum = StepSummary::default();
        let mut latencies = Vec::new();
        for s in samples {
            sum.total += 1;
            latencies.push(s.latency);
            match s.outcome {
                Outcome::Success => sum.success += 1,
                Outcome::Degraded => sum.degraded += 1,
                Outcome::SignedOut => sum.signed_out += 1,
                Outcome::HardFailure(kind) => match kind {
                    FailureKind::ServerError => sum.hard_failures.server_error += 1,
                    FailureKind::Connection => sum.hard_failures.connection += 1,
                    FailureKind::Panic => sum.hard_failures.panic += 1,
                    FailureKind::Unexpected => sum.hard_failures.unexpected += 1,
                },
            }
        }
        sum.success_rate = ratio(sum.success, sum.total);
        sum.degraded_rate = ratio(sum.degraded, sum.total);
        sum.signed_out_rate = ratio(sum.signed_out, sum.total);
        sum.hard_failure_rate = ratio(sum.hard_failures.total(), sum.total);
        sum.latency = LatencySummary::from_latencies(latencies);
        sum
    }
}

/// One second of a run (only seconds in which an action started).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SecondBucket {
    /// Seconds since the run began.
    pub second: u64,
    /// Actions started in this second.
    pub actions: u64,
    /// Fraction of them that succeeded (0..=1).
    pub success_rate: f64,
    /// Their p95 latency in milliseconds.
    pub p95_ms: f64,
}

/// Everything recorded for one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The run name.
    pub run: String,
    /// All steps together.
    pub overall: StepSummary,
    /// Per journey step.
    pub steps: BTreeMap<String, StepSummary>,
    /// 1-second buckets.
    pub timeline: Vec<SecondBucket>,
    /// Named counters.
    pub counters: BTreeMap<String, u64>,
    /// The `upstream_calls` counter divided by the number of actions.
    pub upstream_calls_per_action: f64,
}

impl RunSummary {
    /// The summary of `run` from its samples (sorted by start) and counters.
    pub(super) fn from_samples(
        run: &str,
        samples: &[Sample],
        counters: BTreeMap<String, u64>,
    ) -> Self {
        let overall = StepSummary::from_samples(samples.iter());
        let steps: BTreeSet<&'static str> = samples.iter().map(|s| s.step).collect();
        let steps = steps
            .into_iter()
            .map(|step| {
                (
                    step.to_owned(),
                    StepSummary::from_samples(samples.iter().filter(|s| s.step == step)),
                )
            })
            .collect();
        let upstream_calls_per_action = ratio(
            counters.get(counters::UPSTREAM_CALLS).copied().unwrap_or(0),
            overall.total,
        );
        RunSummary {
            run: run.to_owned(),
            overall,
            steps,
            timeline: timeline(samples),
            counters,
            upstream_calls_per_action,
        }
    }
}

/// One [`SecondBucket`] per second in which an action started.
fn timeline(samples: &[Sample]) -> Vec<SecondBucket> {
    let mut buckets: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        buckets.entry(s.started_at.as_secs()).or_default().push(s);
    }
    buckets
        .into_iter()
        .map(|(second, bucket)| {
            let sum = StepSummary::from_samples(bucket.into_iter());
            SecondBucket {
                second,
                actions: sum.total,
                success_rate: sum.success_rate,
                p95_ms: sum.latency.p95_ms,
            }
        })
        .collect()
}
