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
//!   [`Outcome::Success`]; `degraded_rate` and `hard_failure_rate` likewise
//!   (the three add up to 1). Percentages appear only in the text outputs.
//! * Latency percentiles are *exact*, from every stored sample, by the
//!   nearest-rank method (p95 is the smallest sample at or above 95 % of
//!   the sorted samples).
//! * The time series uses 1-second buckets of the action's start offset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::plan::Plan;

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
    /// A 5xx without the app's friendly page.
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
    /// The user got a friendly degraded answer (e.g. the app's kind 503 page).
    Degraded,
    /// The user saw an error.
    HardFailure(FailureKind),
}

#[derive(Debug, Clone)]
struct Sample {
    run: Arc<str>,
    step: &'static str,
    started_at: Duration,
    latency: Duration,
    outcome: Outcome,
}

/// Live counts of one run, for the progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Actions recorded.
    pub actions: u64,
    /// Of which `Success`.
    pub successes: u64,
    /// Of which `Degraded`.
    pub degraded: u64,
}

impl LiveStats {
    /// `successes / actions` (0 when there is none).
    pub fn success_rate(&self) -> f64 {
        ratio(self.successes, self.actions)
    }
}

#[derive(Debug)]
struct LiveCounts {
    name: Arc<str>,
    actions: AtomicU64,
    successes: AtomicU64,
    degraded: AtomicU64,
}

/// A handle on one named counter: increments are a single atomic add.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds 1.
    pub fn incr(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const SHARDS: usize = 16;

#[derive(Debug)]
struct RecorderInner {
    shards: Vec<Mutex<Vec<Sample>>>,
    next: AtomicUsize,
    live: RwLock<HashMap<String, Arc<LiveCounts>>>,
    counters: RwLock<BTreeMap<(String, String), Counter>>,
}

/// Records every user action and named counters, per run. Cheap to clone
/// (an `Arc`); safe to call from many tasks at once.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RecorderInner {
                shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
                next: AtomicUsize::new(0),
                live: RwLock::new(HashMap::new()),
                counters: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// Records one user action of `run` (e.g. `"heal_on"`) at journey `step`
    /// (e.g. `"dashboard"`), started `started_at` after the run began.
    pub fn record(
        &self,
        run: &str,
        step: &'static str,
        started_at: Duration,
        latency: Duration,
        outcome: Outcome,
    ) {
        let live = self.live_counts(run);
        live.actions.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Success => {
                live.successes.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Degraded => {
                live.degraded.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::HardFailure(_) => {}
        }
        let sample = Sample {
            run: Arc::clone(&live.name),
            step,
            started_at,
            latency,
            outcome,
        };
        let shard = self.inner.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.inner.shards[shard]
            .lock()
            .expect("recorder shard")
            .push(sample);
    }

    /// The counter `name` of `run` (created at 0 on first use).
    pub fn counter(&self, run: &str, name: &str) -> Counter {
        let key = (run.to_owned(), name.to_owned());
        if let Some(c) = self.inner.counters.read().expect("counters").get(&key) {
            return c.clone();
        }
        self.inner
            .counters
            .write()
            .expect("counters")
            .entry(key)
            .or_insert_with(|| Counter(Arc::new(AtomicU64::new(0))))
            .clone()
    }

    /// Adds `n` to the counter `name` of `run`.
    pub fn add(&self, run: &str, name: &str, n: u64) {
        self.counter(run, name).add(n);
    }

    /// Every counter of `run`.
    pub fn counters(&self, run: &str) -> BTreeMap<String, u64> {
        self.inner
            .counters
            .read()
            .expect("counters")
            .iter()
            .filter(|((r, _), _)| r == run)
            .map(|((_, name), c)| (name.clone(), c.get()))
            .collect()
    }

    /// Live counts of `run`.
    pub fn live(&self, run: &str) -> LiveStats {
        let live = self.inner.live.read().expect("live");
        live.get(run)
            .map(|c| LiveStats {
                actions: c.actions.load(Ordering::Relaxed),
                successes: c.successes.load(Ordering::Relaxed),
                degraded: c.degraded.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// The summary of `run` from every sample recorded so far.
    pub fn summary(&self, run: &str) -> RunSummary {
        let mut samples = Vec::new();
        for shard in &self.inner.shards {
            let shard = shard.lock().expect("recorder shard");
            samples.extend(shard.iter().filter(|s| &*s.run == run).cloned());
        }
        samples.sort_by_key(|s| s.started_at);
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
        let mut buckets: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
        for s in &samples {
            buckets.entry(s.started_at.as_secs()).or_default().push(s);
        }
        let timeline = buckets
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
            .collect();
        let counters = self.counters(run);
        let upstream_calls_per_action = ratio(
            counters.get(counters::UPSTREAM_CALLS).copied().unwrap_or(0),
            overall.total,
        );
        RunSummary {
            run: run.to_owned(),
            overall,
            steps,
            timeline,
            counters,
            upstream_calls_per_action,
        }
    }

    fn live_counts(&self, run: &str) -> Arc<LiveCounts> {
        if let Some(c) = self.inner.live.read().expect("live").get(run) {
            return Arc::clone(c);
        }
        let mut live = self.inner.live.write().expect("live");
        Arc::clone(live.entry(run.to_owned()).or_insert_with(|| {
            Arc::new(LiveCounts {
                name: Arc::from(run),
                actions: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                degraded: AtomicU64::new(0),
            })
        }))
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// The nearest-rank percentile `q` (0..=1) of already sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Hard failures by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepSummary {
    /// Actions.
    pub total: u64,
    /// `Success` outcomes.
    pub success: u64,
    /// `Degraded` outcomes.
    pub degraded: u64,
    /// Hard failures by kind.
    pub hard_failures: HardFailures,
    /// `success / total`, a fraction in 0..=1.
    pub success_rate: f64,
    /// `degraded / total`, a fraction in 0..=1.
    pub degraded_rate: f64,
    /// `hard failures / total`, a fraction in 0..=1.
    pub hard_failure_rate: f64,
    /// Latency percentiles.
    pub latency: LatencySummary,
}

impl StepSummary {
    fn from_samples<'a>(samples: impl Iterator<Item = &'a Sample>) -> Self {
        let mut sum = StepSummary::default();
        let mut latencies = Vec::new();
        for s in samples {
            sum.total += 1;
            latencies.push(s.latency);
            match s.outcome {
                Outcome::Success => sum.success += 1,
                Outcome::Degraded => sum.degraded += 1,
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
        sum.hard_failure_rate = ratio(sum.hard_failures.total(), sum.total);
        sum.latency = LatencySummary::from_latencies(latencies);
        sum
    }
}

/// One second of a run (only seconds in which an action started).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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

/// Integrity numbers the caller measured after a run (against the app's
/// database, the SMTP server and the payment ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// Database invariants found broken.
    pub integrity_violations: u64,
    /// Emails the app committed to send that never arrived.
    pub emails_lost: u64,
    /// Extra copies of emails that arrived more than once.
    pub emails_duplicated: u64,
    /// Purchases charged more than once.
    pub payments_duplicated: u64,
}

/// One run in `report.json`: the headline numbers at the top level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Actions recorded.
    pub actions: u64,
    /// Fraction of actions that succeeded, 0..=1.
    pub success_rate: f64,
    /// Fraction answered with a friendly degraded answer, 0..=1.
    pub degraded_rate: f64,
    /// Fraction that failed hard, 0..=1.
    pub hard_failure_rate: f64,
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
}

impl RunReport {
    /// Combines a run's summary with the integrity numbers measured after it.
    pub fn new(summary: RunSummary, integrity: Integrity) -> Self {
        Self {
            actions: summary.overall.total,
            success_rate: summary.overall.success_rate,
            degraded_rate: summary.overall.degraded_rate,
            hard_failure_rate: summary.overall.hard_failure_rate,
            hard_failures: summary.overall.hard_failures,
            latency: summary.overall.latency,
            upstream_calls_per_action: summary.upstream_calls_per_action,
            integrity,
            steps: summary.steps,
            counters: summary.counters,
            timeline: summary.timeline,
        }
    }

    fn overall(&self) -> StepSummary {
        StepSummary {
            total: self.actions,
            success: (self.success_rate * self.actions as f64).round() as u64,
            degraded: (self.degraded_rate * self.actions as f64).round() as u64,
            hard_failures: self.hard_failures,
            success_rate: self.success_rate,
            degraded_rate: self.degraded_rate,
            hard_failure_rate: self.hard_failure_rate,
            latency: self.latency,
        }
    }
}

/// One storm run: the upstream completely down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
    /// RNG seed.
    pub seed: u64,
    /// The fault plan.
    pub plan: Plan,
}

/// The whole report. Missing runs are left out of every output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// How the runs were made.
    pub meta: ReportMeta,
    /// Healing on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_on: Option<RunReport>,
    /// Healing off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_off: Option<RunReport>,
    /// The storm comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
}

/// A table rendered as aligned text or as Markdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Title line.
    pub title: String,
    /// Column headers.
    pub header: Vec<String>,
    /// Rows (same length as the header).
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Aligned plain text: first column left-aligned, the others right-aligned.
    pub fn text(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate().take(cols) {
                if i > 0 {
                    out.push_str("  ");
                }
                if i == 0 {
                    let _ = write!(out, "{cell:<w$}", w = widths[i]);
                } else {
                    let _ = write!(out, "{cell:>w$}", w = widths[i]);
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.header));
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// A GitHub-flavoured Markdown table under a `###` heading.
    pub fn markdown(&self) -> String {
        let esc = |s: &String| s.replace('|', "\\|");
        let mut out = format!("### {}\n\n", self.title);
        let _ = writeln!(
            out,
            "| {} |",
            self.header.iter().map(esc).collect::<Vec<_>>().join(" | ")
        );
        let align: Vec<&str> = (0..self.header.len())
            .map(|i| if i == 0 { ":---" } else { "---:" })
            .collect();
        let _ = writeln!(out, "| {} |", align.join(" | "));
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} |",
                row.iter().map(esc).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }
}

/// Reads one number of [`Integrity`].
type IntegrityField = fn(&Integrity) -> u64;

fn pct(fraction: f64) -> String {
    // Two decimals: the targets are stated to 0.1%.
    format!("{:.2}%", fraction * 100.0)
}

fn ms(v: f64) -> String {
    format!("{v:.0}")
}

/// Why an output could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Drawing the chart failed.
    #[error("cannot draw the chart: {0}")]
    Chart(String),
}

/// The files [`Report::write_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFiles {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.txt` (the text tables).
    pub text: PathBuf,
    /// `report.md` (the Markdown tables).
    pub markdown: PathBuf,
    /// `chart.svg`.
    pub svg: PathBuf,
}

impl Report {
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

    /// The report's tables: steps, hard failures, storm, integrity.
    pub fn tables(&self) -> Vec<Table> {
        let runs = self.heal_runs();
        let mut tables = Vec::new();
        if !runs.is_empty() {
            let mut header = vec!["step".to_owned()];
            for (name, _) in &runs {
                for col in ["actions", "ok", "degraded", "hard", "p50 ms", "p95 ms"] {
                    header.push(format!("{name}: {col}"));
                }
            }
            let steps: BTreeSet<&String> = runs.iter().flat_map(|(_, r)| r.steps.keys()).collect();
            let cells = |s: Option<&StepSummary>| -> Vec<String> {
                match s {
                    Some(s) => vec![
                        s.total.to_string(),
                        pct(s.success_rate),
                        pct(s.degraded_rate),
                        pct(s.hard_failure_rate),
                        ms(s.latency.p50_ms),
                        ms(s.latency.p95_ms),
                    ],
                    None => vec!["-".to_owned(); 6],
                }
            };
            let mut rows = Vec::new();
            for step in steps {
                let mut row = vec![step.clone()];
                for (_, r) in &runs {
                    row.extend(cells(r.steps.get(step)));
                }
                rows.push(row);
            }
            let mut row = vec!["overall".to_owned()];
            for (_, r) in &runs {
                row.extend(cells(Some(&r.overall())));
            }
            rows.push(row);
            tables.push(Table {
                title: "What users saw, per journey step".into(),
                header,
                rows,
            });

            let mut header = vec!["hard failure".to_owned()];
            header.extend(runs.iter().map(|(n, _)| (*n).to_owned()));
            let mut rows: Vec<Vec<String>> = FailureKind::ALL
                .iter()
                .map(|k| {
                    let mut row = vec![k.name().to_owned()];
                    row.extend(
                        runs.iter()
                            .map(|(_, r)| r.hard_failures.get(*k).to_string()),
                    );
                    row
                })
                .collect();
            let mut row = vec!["upstream calls per action".to_owned()];
            row.extend(
                runs.iter()
                    .map(|(_, r)| format!("{:.2}", r.upstream_calls_per_action)),
            );
            rows.push(row);
            tables.push(Table {
                title: "Hard failures by kind".into(),
                header,
                rows,
            });

            let mut header = vec!["integrity".to_owned()];
            header.extend(runs.iter().map(|(n, _)| (*n).to_owned()));
            let fields: [(&str, IntegrityField); 4] = [
                ("integrity_violations", |i| i.integrity_violations),
                ("emails_lost", |i| i.emails_lost),
                ("emails_duplicated", |i| i.emails_duplicated),
                ("payments_duplicated", |i| i.payments_duplicated),
            ];
            let rows = fields
                .iter()
                .map(|(name, get)| {
                    let mut row = vec![(*name).to_owned()];
                    row.extend(runs.iter().map(|(_, r)| get(&r.integrity).to_string()));
                    row
                })
                .collect();
            tables.push(Table {
                title: "Integrity".into(),
                header,
                rows,
            });
        }
        if let Some(storm) = &self.storm {
            let row = |name: &str, s: &StormRun| {
                vec![
                    name.to_owned(),
                    s.requests.to_string(),
                    s.upstream_calls.to_string(),
                    format!("{:.2}", s.upstream_calls_per_request),
                    pct(s.success_rate),
                ]
            };
            tables.push(Table {
                title: "Storm: upstream completely down".into(),
                header: [
                    "run",
                    "requests",
                    "upstream calls",
                    "calls per request",
                    "ok",
                ]
                .map(str::to_owned)
                .to_vec(),
                rows: vec![
                    row("with retry budget", &storm.with_budget),
                    row("without retry budget", &storm.without_budget),
                ],
            });
        }
        tables
    }

    /// The plain-text report for stdout.
    pub fn text(&self) -> String {
        self.tables()
            .iter()
            .map(Table::text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The same tables in Markdown, for the README.
    pub fn markdown(&self) -> String {
        self.tables()
            .iter()
            .map(Table::markdown)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `report.json`'s content (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises to JSON")
    }

    /// The SVG chart: success % and p95 latency over time, one series per
    /// heal run.
    pub fn svg(&self) -> Result<String, ReportError> {
        let series: Vec<(&str, &RunReport)> = self.heal_runs();
        let mut svg = String::new();
        draw_chart(&mut svg, &series).map_err(ReportError::Chart)?;
        Ok(svg)
    }

    /// Writes `report.json`, `report.txt`, `report.md` and `chart.svg` into
    /// `dir` (created if missing).
    pub fn write_to(&self, dir: impl AsRef<Path>) -> Result<WrittenFiles, ReportError> {
        let dir = dir.as_ref();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ReportError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let files = WrittenFiles {
            json: dir.join("report.json"),
            text: dir.join("report.txt"),
            markdown: dir.join("report.md"),
            svg: dir.join("chart.svg"),
        };
        let svg = self.svg()?;
        for (path, content) in [
            (&files.json, self.to_json()),
            (&files.text, self.text()),
            (&files.markdown, self.markdown()),
            (&files.svg, svg),
        ] {
            std::fs::write(path, content).map_err(io_err(path))?;
        }
        Ok(files)
    }
}

fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// One panel of the chart: `value` of every second with actions, one line
/// per run (a second without actions has no point rather than a zero).
fn draw_panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    y_max: f64,
    series: &[(&str, &RunReport)],
    value: impl Fn(&SecondBucket) -> f64,
) -> Result<(), String> {
    use plotters::prelude::*;

    let colors = [RGBColor(0, 114, 178), RGBColor(213, 94, 0)];
    let max_t = series
        .iter()
        .flat_map(|(_, r)| r.timeline.iter().map(|b| b.second + 1))
        .max()
        .unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, run)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points = run
            .timeline
            .iter()
            .filter(|b| b.actions > 0)
            .map(|b| (b.second as f64, value(b)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

fn draw_chart(svg: &mut String, series: &[(&str, &RunReport)]) -> Result<(), String> {
    use plotters::prelude::*;

    let max_p95 = series
        .iter()
        .flat_map(|(_, r)| r.timeline.iter().map(|b| b.p95_ms))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let root = SVGBackend::with_string(svg, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(
            "chaos: what users saw, heal on vs heal off",
            ("sans-serif", 24),
        )
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    draw_panel(
        &top,
        "Success % over time",
        "success %",
        100.0,
        series,
        |b| b.success_rate * 100.0,
    )?;
    draw_panel(
        &bottom,
        "p95 latency over time",
        "p95 latency (ms)",
        max_p95,
        series,
        |b| b.p95_ms,
    )?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
