//! What users saw: the outcome recorder, summaries, and the three outputs
//! (a text/Markdown table, `report.json`, an SVG chart).
//!
//! Why it is built this way: the point of chaos is one comparison, healing on
//! versus off under the same faults, so every output puts the two runs side
//! by side, per journey step and overall. The recorder is called from every
//! virtual user at once, so it is sharded (a few mutex-protected sample
//! vectors, picked round-robin) and its counters are atomics behind a
//! read-mostly map; neither is on a path where contention would distort the
//! latencies it records.
//!
//! Definitions used everywhere:
//! * `success_rate` is a *fraction* in 0..=1 of actions whose outcome was
//!   [`Outcome::Success`]; `degraded_rate`, `signed_out_rate` and
//!   `hard_failure_rate` likewise (the four add up to 1). Percentages appear
//!   only in the text outputs.
//! * Latency percentiles are *exact*, from every stored sample, by the
//!   nearest-rank method (p95 is the smallest sample at or above 95 % of
//!   the sorted samples).
//! * The time series uses 1-second buckets of the action's start offset.
//!
//! The module is laid out along the way the numbers flow:
//! * `record`: the [`Recorder`] the virtual users call while a run is live
//!   (samples, live counts, named counters);
//! * `summary`: what a run's samples add up to (rates, exact percentiles,
//!   1-second buckets);
//! * this file: the shared vocabulary (run and counter names, outcomes) and
//!   the report itself (one [`RunReport`] per heal run, the storm comparison);
//! * `render`: the text/Markdown tables, `report.json` and the files written;
//! * `chart`: the SVG chart.

mod chart;
mod ledger;
mod mean;
mod record;
mod render;
mod storm;
mod summary;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ledger::Tally;
use crate::plan::Plan;

pub use ledger::NO_FAULT;
pub use mean::mean;
pub use record::{Counter, LiveStats, Recorder};
pub use render::{ReportError, Table, WrittenFiles};
// The open-loop storm.
pub use storm::{
    Got, OpenLoopStorm, StormSample, StormSchedule, StormVariant, UpstreamCalls, time_to_fail_fast,
    time_to_recover,
};
pub use summary::{
    HardFailures, LatencySummary, RunSummary, SecondBucket, StepSummary, percentile,
};

/// Run names used by the harness.
pub mod runs {
    /// Healing enabled.
    pub const HEAL_ON: &str = "heal_on";
    /// Healing disabled.
    pub const HEAL_OFF: &str = "heal_off";
    /// Storm with the retry budget.
    pub const STORM_WITH_BUDGET: &str = "storm_with_budget";
    /// Storm without the retry budget.
    pub const STORM_WITHOUT_BUDGET: &str = "storm_without_budget";
    // the open-loop storm's variants.
    /// Open-loop storm, healing off.
    pub const STORM_NO_HEALING: &str = "storm_no_healing";
    /// Open-loop storm, retry budget only.
    pub const STORM_BUDGET: &str = "storm_budget";
    /// Open-loop storm, retry budget and circuit breaker.
    pub const STORM_BUDGET_BREAKER: &str = "storm_budget_breaker";
}

/// Counter names used by the harness.
pub mod counters {
    /// Requests the upstream servers received.
    pub const UPSTREAM_CALLS: &str = "upstream_calls";
    /// Faults the app recovered from (as reported by selfheal).
    pub const FAULTS_RECOVERED: &str = "faults_recovered";
    /// Alerts the health monitor fired.
    pub const ALERTS_FIRED: &str = "alerts_fired";

    /// `faults_injected.{kind}`.
    pub fn faults_injected(kind: &str) -> String {
        format!("faults_injected.{kind}")
    }
}

/// Why an action was a hard failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A 5xx that is not a truthful degraded answer (a generic error page, request id or not).
    ServerError,
    /// Connection error, reset or timeout.
    Connection,
    /// A panic escaped to the user.
    Panic,
    /// Wrong status or content.
    Unexpected,
}

impl FailureKind {
    /// Every kind, in report order.
    pub const ALL: [FailureKind; 4] = [
        FailureKind::ServerError,
        FailureKind::Connection,
        FailureKind::Panic,
        FailureKind::Unexpected,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::ServerError => "server_error",
            FailureKind::Connection => "connection",
            FailureKind::Panic => "panic",
            FailureKind::Unexpected => "unexpected",
        }
    }
}

/// What one user action ended in (classified by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The user got what they asked for.
    Success,
    /// The user got a truthful degraded answer that lost nothing: the app's own notice, or a 503 with `Retry-After`.
    Degraded,
    /// The user's session was lost: the login page instead of the page asked
    /// for. Neither degraded (something was lost: being signed in) nor an
    /// error page.
    SignedOut,
    /// The user saw an error.
    HardFailure(FailureKind),
}

/// Integrity numbers the caller measured after a run (against the app's
/// database, the SMTP server and the payment ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// Database invariants found broken: the sum of `acknowledged_missing`,
    /// `writes_never_sent` and `xp_ledger_mismatches`.
    pub integrity_violations: u64,
    /// Emails the app committed to send that never arrived.
    pub emails_lost: u64,
    /// Extra copies of emails that arrived more than once.
    pub emails_duplicated: u64,
    /// Purchases charged more than once.
    pub payments_duplicated: u64,
    // each check counted on its own.
    /// Lesson completions the user saw acknowledged that are not in the ledger.
    pub acknowledged_missing: u64,
    /// Ledger rows the user never sent.
    pub writes_never_sent: u64,
    /// Students whose XP disagrees with their ledger.
    pub xp_ledger_mismatches: u64,
    /// Students the payment provider charged who are not premium.
    pub charges_without_premium: u64,
    /// Premium students the payment provider never charged.
    pub premium_without_charge: u64,
    /// Tutor questions stored more often than the user asked them.
    pub answers_duplicated: u64,
}

impl Integrity {
    /// Every defect found, each counted once (`integrity_violations` stands
    /// for its three parts): 0 when the run kept its promises.
    pub fn defects(&self) -> u64 {
        self.integrity_violations
            + self.emails_lost
            + self.emails_duplicated
            + self.payments_duplicated
            + self.charges_without_premium
            + self.premium_without_charge
            + self.answers_duplicated
    }
}

/// One run in `report.json`: the headline numbers at the top level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Actions recorded.
    pub actions: u64,
    /// Fraction of actions that succeeded, 0..=1.
    pub success_rate: f64,
    /// Fraction answered with a friendly degraded answer, 0..=1.
    pub degraded_rate: f64,
    /// Fraction that failed hard, 0..=1.
    pub hard_failure_rate: f64,
    /// Fraction that ended on the login page (the session was lost), 0..=1.
    pub signed_out_rate: f64,
    /// Hard failures by kind.
    pub hard_failures: HardFailures,
    /// Latency over all actions.
    pub latency: LatencySummary,
    /// Upstream calls per user action.
    pub upstream_calls_per_action: f64,
    /// The integrity numbers.
    #[serde(flatten)]
    pub integrity: Integrity,
    /// Per journey step.
    pub steps: BTreeMap<String, StepSummary>,
    /// Named counters.
    pub counters: BTreeMap<String, u64>,
    /// 1-second buckets.
    pub timeline: Vec<SecondBucket>,
    /// Fraction of first tries that succeeded (before any press again), 0..=1.
    pub first_try_success_rate: f64,
    /// Per fault kind (`upstream_reset`, `db_lock`, `panic_after_commit`…):
    /// injected, and hidden / degraded / failed by what the user who met it
    /// saw (see [`ledger`](crate::ledger)).
    pub faults: BTreeMap<String, Tally>,
    /// Share of the judged faults that no user saw, all kinds together.
    pub faults_hidden_rate: f64,
    /// Peak resident memory during the run, in bytes (of the process that
    /// ran the app; 0 when not measured).
    pub peak_rss_bytes: u64,
    /// CPU time (user + system) of that process per recorded action, in
    /// milliseconds.
    pub cpu_ms_per_action: f64,
}

impl RunReport {
    /// Combines a run's summary with the integrity numbers measured after it.
    pub fn new(summary: RunSummary, integrity: Integrity) -> Self {
        Self {
            actions: summary.overall.total,
            success_rate: summary.overall.success_rate,
            degraded_rate: summary.overall.degraded_rate,
            hard_failure_rate: summary.overall.hard_failure_rate,
            signed_out_rate: summary.overall.signed_out_rate,
            hard_failures: summary.overall.hard_failures,
            latency: summary.overall.latency,
            upstream_calls_per_action: summary.upstream_calls_per_action,
            integrity,
            steps: summary.steps,
            counters: summary.counters,
            timeline: summary.timeline,
            first_try_success_rate: 0.0,
            faults: BTreeMap::new(),
            faults_hidden_rate: 1.0,
            peak_rss_bytes: 0,
            cpu_ms_per_action: 0.0,
        }
    }

    fn overall(&self) -> StepSummary {
        StepSummary {
            total: self.actions,
            success: (self.success_rate * self.actions as f64).round() as u64,
            degraded: (self.degraded_rate * self.actions as f64).round() as u64,
            signed_out: (self.signed_out_rate * self.actions as f64).round() as u64,
            hard_failures: self.hard_failures,
            success_rate: self.success_rate,
            degraded_rate: self.degraded_rate,
            signed_out_rate: self.signed_out_rate,
            hard_failure_rate: self.hard_failure_rate,
            latency: self.latency,
            first_try_success_rate: self.first_try_success_rate,
            first_try_causes: BTreeMap::new(),
        }
    }
}

/// One storm run: the upstream completely down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StormRun {
    /// User requests during the storm.
    pub requests: u64,
    /// Calls (connection attempts) that reached the upstream side.
    pub upstream_calls: u64,
    /// `upstream_calls / requests`: the retry amplification.
    pub upstream_calls_per_request: f64,
    /// Fraction of requests that succeeded, 0..=1.
    pub success_rate: f64,
}

impl StormRun {
    /// From the numbers directly.
    pub fn new(requests: u64, upstream_calls: u64, success_rate: f64) -> Self {
        Self {
            requests,
            upstream_calls,
            upstream_calls_per_request: ratio(upstream_calls, requests),
            success_rate,
        }
    }

    /// From a run's summary, using its `upstream_calls` counter.
    pub fn from_summary(summary: &RunSummary) -> Self {
        let calls = summary
            .counters
            .get(counters::UPSTREAM_CALLS)
            .copied()
            .unwrap_or(0);
        Self::new(summary.overall.total, calls, summary.overall.success_rate)
    }
}

/// The storm comparison: retry budget on vs off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StormReport {
    /// With selfheal's retry budget.
    pub with_budget: StormRun,
    /// Without it.
    pub without_budget: StormRun,
}

/// How the runs were made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportMeta {
    /// Virtual users.
    pub users: usize,
    /// Duration of each heal run, in seconds.
    pub duration_secs: f64,
    /// RNG seed (the first one, with several).
    pub seed: u64,
    /// Every seed the heal runs were made with (`--seeds N`: N of them).
    pub seeds: Vec<u64>,
    /// The fault plan.
    pub plan: Plan,
}

/// The heal runs of one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRuns {
    /// The seed.
    pub seed: u64,
    /// Healing on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_on: Option<RunReport>,
    /// Healing off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_off: Option<RunReport>,
}

/// The whole report. Missing runs are left out of every output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// How the runs were made.
    pub meta: ReportMeta,
    /// Healing on (with several seeds, the mean of every figure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_on: Option<RunReport>,
    /// Healing off (with several seeds, the mean of every figure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_off: Option<RunReport>,
    /// With several seeds: each seed's heal runs (the means above come
    /// from these).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<SeedRuns>,
    /// The storm comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
    /// The open-loop storm, one entry per variant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub open_loop_storm: Vec<OpenLoopStorm>,
    /// The process-fault runs (`kill_heal_on`, `kill_heal_off`,
    /// `fleet_heal_on`), by run name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub process: BTreeMap<String, ProcessReport>,
}

/// One process-fault run: what users saw and what the kill lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessReport {
    /// Actions recorded.
    pub actions: u64,
    /// Fraction of first tries that succeeded, 0..=1.
    pub first_try_success_rate: f64,
    /// Fraction of actions that succeeded after pressing again, 0..=1.
    pub success_rate: f64,
    /// What the kill did and lost.
    #[serde(flatten)]
    pub faults: crate::driver::ProcessFaults,
}

impl Report {
    /// The heal runs present, with their display names (on before off).
    fn heal_runs(&self) -> Vec<(&'static str, &RunReport)> {
        let mut runs = Vec::new();
        if let Some(r) = &self.heal_on {
            runs.push(("heal on", r));
        }
        if let Some(r) = &self.heal_off {
            runs.push(("heal off", r));
        }
        runs
    }
}

/// `n / d`, 0 when `d` is 0.
fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}
