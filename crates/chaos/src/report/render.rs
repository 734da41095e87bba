//! The text outputs: tables as aligned text (stdout, `report.txt`) and as
//! Markdown (`report.md`, for the README), `report.json`, and writing all of
//! the report's files.
//!
//! One builder per table keeps each table's columns next to the numbers it
//! shows; [`Table`] knows nothing of the report, only how to lay out cells.
//! Percentages appear here and nowhere else (the data holds fractions).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::{FailureKind, Integrity, Report, RunReport, StepSummary, StormReport, StormRun};
use crate::ledger::Tally;

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
    /// One column per heal run present (on before off), with each seed's
    /// report of that run.
    fn columns(&self) -> Vec<Col<'_>> {
        self.heal_runs()
            .into_iter()
            .map(|(name, mean)| Col {
                name,
                mean,
                seeds: self
                    .runs
                    .iter()
                    .filter_map(|seed| match name {
                        "heal on" => seed.heal_on.as_ref(),
                        _ => seed.heal_off.as_ref(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// The report's tables: first try per step, faults, final outcome per
    /// step, hard failures, integrity, resources, storm.
    pub fn tables(&self) -> Vec<Table> {
        let cols = self.columns();
        let mut tables = Vec::new();
        if !cols.is_empty() {
            tables.push(first_try_table(&cols));
            tables.push(fault_table(&cols));
            tables.push(step_table(&cols));
            tables.push(failure_table(&cols));
            tables.push(integrity_table(&cols));
            tables.push(resource_table(&cols));
        }
        if !self.open_loop_storm.is_empty() {
            tables.push(open_loop_storm_table(&self.open_loop_storm));
        } else if let Some(storm) = &self.storm {
            tables.push(storm_table(storm));
        }
        if !self.process.is_empty() {
            tables.push(process_table(&self.process));
        }
        tables
    }

    /// The plain-text report for stdout.
    pub fn text(&self) -> String {
        self.render_tables(Table::text)
    }

    /// The same tables in Markdown, for the README.
    pub fn markdown(&self) -> String {
        self.render_tables(Table::markdown)
    }

    /// Every table rendered by `render`, separated by a blank line.
    fn render_tables(&self, render: fn(&Table) -> String) -> String {
        self.tables()
            .iter()
            .map(render)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `report.json`'s content (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises to JSON")
    }

    /// The SVG chart: success % and p95 latency over time, one series per
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

/// One heal run's column: its report (the mean, with several seeds) and,
/// with several seeds, each seed's, for the range.
struct Col<'a> {
    name: &'static str,
    mean: &'a RunReport,
    seeds: Vec<&'a RunReport>,
}

impl Col<'_> {
    /// The seeds' lowest and highest value of `get` (`None` with one seed).
    fn range(&self, get: &dyn Fn(&RunReport) -> Option<f64>) -> Option<(f64, f64)> {
        if self.seeds.len() < 2 {
            return None;
        }
        let values: Vec<f64> = self.seeds.iter().filter_map(|r| get(r)).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo <= hi).then_some((lo, hi))
    }

    /// `get` of the mean as a percentage, with the seeds' range.
    fn pct(&self, get: &dyn Fn(&RunReport) -> Option<f64>) -> String {
        match get(self.mean) {
            None => "-".to_owned(),
            Some(v) => match self.range(get) {
                Some((lo, hi)) => format!("{} ({:.1}–{:.1})", pct(v), lo * 100.0, hi * 100.0),
                None => pct(v),
            },
        }
    }

    /// `get` of the mean with `decimals`, with the seeds' range.
    fn num(&self, get: &dyn Fn(&RunReport) -> Option<f64>, decimals: usize) -> String {
        match get(self.mean) {
            None => "-".to_owned(),
            Some(v) => match self.range(get) {
                Some((lo, hi)) => format!("{v:.decimals$} ({lo:.decimals$}–{hi:.decimals$})"),
                None => format!("{v:.decimals$}"),
            },
        }
    }
}

/// Reads one rate of a run report.
type Rate<'a> = &'a dyn Fn(&RunReport) -> Option<f64>;

/// Heal on against heal off for one rate where more is better, measured
/// over `n` trials per seed: the difference in points, and whether it is
/// beyond chance (a two-proportion z-test at 95 %, over every seed's
/// trials) — a win, a loss (said in capitals), or within noise.
fn verdict(cols: &[Col<'_>], get: Rate<'_>, n: Rate<'_>) -> String {
    let (Some(on), Some(off)) = (
        cols.iter().find(|c| c.name == "heal on"),
        cols.iter().find(|c| c.name == "heal off"),
    ) else {
        return "-".to_owned();
    };
    let (Some(p1), Some(p2), Some(n1), Some(n2)) =
        (get(on.mean), get(off.mean), n(on.mean), n(off.mean))
    else {
        return "-".to_owned();
    };
    let n1 = n1 * on.seeds.len().max(1) as f64;
    let n2 = n2 * off.seeds.len().max(1) as f64;
    proportion_verdict((p1, n1), (p2, n2))
}

/// Rate `p1` of `n1` trials (healing) against `p2` of `n2` (no healing):
/// the difference in points and the verdict of [`verdict`].
fn proportion_verdict((p1, n1): (f64, f64), (p2, n2): (f64, f64)) -> String {
    let points = (p1 - p2) * 100.0;
    let word = if n1.min(n2) < MIN_TRIALS {
        "too few to tell"
    } else if beyond_chance(p1, n1, p2, n2) {
        if points > 0.0 {
            "healing wins"
        } else {
            "HEALING LOSES"
        }
    } else {
        "within noise"
    };
    format!("{points:+.1} pts, {word}")
}

/// Below this many trials on either side the normal approximation of the
/// z-test does not hold: no verdict.
const MIN_TRIALS: f64 = 20.0;

/// Whether rates `p1` of `n1` trials and `p2` of `n2` differ beyond chance
/// (|z| ≥ 1.96).
fn beyond_chance(p1: f64, n1: f64, p2: f64, n2: f64) -> bool {
    if n1 < 1.0 || n2 < 1.0 {
        return false;
    }
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return false;
    }
    ((p1 - p2) / se).abs() >= 1.96
}

/// `first` followed by one column per run.
fn run_header(first: &str, cols: &[Col<'_>]) -> Vec<String> {
    let mut header = vec![first.to_owned()];
    header.extend(cols.iter().map(|c| c.name.to_owned()));
    header
}

/// The headline: first-try success per step (what healing alone
/// achieved), with what struck the tries that missed.
fn first_try_table(cols: &[Col<'_>]) -> Table {
    let mut header = vec!["step".to_owned()];
    for c in cols {
        header.push(format!("{}: first try ok", c.name));
        header.push(format!("{}: misses by cause", c.name));
    }
    header.push("on − off".to_owned());
    let steps: BTreeSet<&String> = cols.iter().flat_map(|c| c.mean.steps.keys()).collect();
    let mut rows = Vec::new();
    for step in steps {
        let get = |r: &RunReport| r.steps.get(step).map(|s| s.first_try_success_rate);
        let mut row = vec![step.clone()];
        let n = |r: &RunReport| r.steps.get(step).map(|s| s.total as f64);
        for c in cols {
            row.push(c.pct(&get));
            row.push(top_causes(c.mean.steps.get(step)));
        }
        row.push(verdict(cols, &get, &n));
        rows.push(row);
    }
    let get = |r: &RunReport| Some(r.first_try_success_rate);
    let mut row = vec!["overall".to_owned()];
    for c in cols {
        row.push(c.pct(&get));
        let mut all = std::collections::BTreeMap::<String, u64>::new();
        for s in c.mean.steps.values() {
            for (k, v) in &s.first_try_causes {
                *all.entry(k.clone()).or_default() += v;
            }
        }
        row.push(format_causes(&all));
    }
    row.push(verdict(cols, &get, &|r| Some(r.actions as f64)));
    rows.push(row);
    Table {
        title: "First try, per journey step (before anyone pressed again)".into(),
        header,
        rows,
    }
}

fn top_causes(step: Option<&StepSummary>) -> String {
    step.map_or_else(|| "-".to_owned(), |s| format_causes(&s.first_try_causes))
}

/// The three most frequent causes, `kind n`, most frequent first.
fn format_causes(causes: &std::collections::BTreeMap<String, u64>) -> String {
    let mut sorted: Vec<(&String, &u64)> = causes.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = sorted
        .iter()
        .take(3)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let rest: u64 = sorted.iter().skip(3).map(|(_, v)| **v).sum();
    match (shown.is_empty(), rest) {
        (true, _) => "none".to_owned(),
        (false, 0) => shown.join(", "),
        (false, rest) => format!("{}, other {rest}", shown.join(", ")),
    }
}

/// Per fault kind: injected, and what the users who met them saw; the
/// share no user saw is the guide's "auto-recover" figure.
fn fault_table(cols: &[Col<'_>]) -> Table {
    let mut header = vec!["fault".to_owned()];
    for c in cols {
        for col in ["injected", "hidden", "degraded", "failed", "no user saw"] {
            header.push(format!("{}: {col}", c.name));
        }
    }
    header.push("on − off".to_owned());
    let kinds: BTreeSet<&String> = cols.iter().flat_map(|c| c.mean.faults.keys()).collect();
    let mut rows = Vec::new();
    let tally_cells =
        |c: &Col<'_>, t: Option<&Tally>, get: &dyn Fn(&RunReport) -> Option<f64>| match t {
            Some(t) => vec![
                t.injected.to_string(),
                t.hidden.to_string(),
                t.degraded.to_string(),
                t.failed.to_string(),
                c.pct(get),
            ],
            None => vec!["-".to_owned(); 5],
        };
    for kind in kinds {
        let get = |r: &RunReport| r.faults.get(kind).map(Tally::hidden_rate);
        let n = |r: &RunReport| r.faults.get(kind).map(judged);
        let mut row = vec![kind.clone()];
        for c in cols {
            row.extend(tally_cells(c, c.mean.faults.get(kind), &get));
        }
        row.push(verdict(cols, &get, &n));
        rows.push(row);
    }
    // The upstream faults together: the "faults no user saw" target
    // is stated for them.
    let upstream = |r: &RunReport| {
        Tally::sum(
            r.faults
                .iter()
                .filter(|(kind, _)| kind.starts_with("upstream_"))
                .map(|(_, t)| t),
        )
    };
    if cols
        .iter()
        .any(|c| c.mean.faults.keys().any(|k| k.starts_with("upstream_")))
    {
        let get = |r: &RunReport| {
            let t = upstream(r);
            (judged(&t) > 0.0).then(|| t.hidden_rate())
        };
        let mut row = vec!["upstream faults".to_owned()];
        for c in cols {
            row.extend(tally_cells(c, Some(&upstream(c.mean)), &get));
        }
        row.push(verdict(cols, &get, &|r| Some(judged(&upstream(r)))));
        rows.push(row);
    }
    let get = |r: &RunReport| Some(r.faults_hidden_rate);
    let mut row = vec!["all faults".to_owned()];
    for c in cols {
        let total = Tally::sum(c.mean.faults.values());
        row.extend(tally_cells(c, Some(&total), &get));
    }
    row.push(verdict(cols, &get, &|r| {
        Some(judged(&Tally::sum(r.faults.values())))
    }));
    rows.push(row);
    Table {
        title: "Injected faults, and whether a user saw them".into(),
        header,
        rows,
    }
}

/// The faults of a tally that were judged (not unlinked).
fn judged(t: &Tally) -> f64 {
    (t.hidden + t.degraded + t.failed) as f64
}

/// Outcomes and latency per journey step, then overall, runs side by side,
/// after the user pressed again once.
fn step_table(cols: &[Col<'_>]) -> Table {
    let mut header = vec!["step".to_owned()];
    for c in cols {
        for col in [
            "actions",
            "ok",
            "degraded",
            "signed out",
            "hard",
            "p50 ms",
            "p95 ms",
        ] {
            header.push(format!("{}: {col}", c.name));
        }
    }
    header.push("on − off".to_owned());
    let steps: BTreeSet<&String> = cols.iter().flat_map(|c| c.mean.steps.keys()).collect();
    let cells =
        |c: &Col<'_>, s: Option<&StepSummary>, get: &dyn Fn(&RunReport) -> Option<f64>| match s {
            Some(s) => vec![
                s.total.to_string(),
                c.pct(get),
                pct(s.degraded_rate),
                pct(s.signed_out_rate),
                pct(s.hard_failure_rate),
                ms(s.latency.p50_ms),
                ms(s.latency.p95_ms),
            ],
            None => vec!["-".to_owned(); 7],
        };
    let mut rows = Vec::new();
    for step in steps {
        let get = |r: &RunReport| r.steps.get(step).map(|s| s.success_rate);
        let n = |r: &RunReport| r.steps.get(step).map(|s| s.total as f64);
        let mut row = vec![step.clone()];
        for c in cols {
            row.extend(cells(c, c.mean.steps.get(step), &get));
        }
        row.push(verdict(cols, &get, &n));
        rows.push(row);
    }
    let get = |r: &RunReport| Some(r.success_rate);
    let mut row = vec!["overall".to_owned()];
    for c in cols {
        row.extend(cells(c, Some(&c.mean.overall()), &get));
    }
    row.push(verdict(cols, &get, &|r| Some(r.actions as f64)));
    rows.push(row);
    Table {
        title: "After pressing again once (the final outcome), per journey step".into(),
        header,
        rows,
    }
}

/// Hard failures by kind, and the upstream calls per action.
fn failure_table(cols: &[Col<'_>]) -> Table {
    let mut rows: Vec<Vec<String>> = FailureKind::ALL
        .iter()
        .map(|k| {
            let mut row = vec![k.name().to_owned()];
            row.extend(
                cols.iter()
                    .map(|c| c.mean.hard_failures.get(*k).to_string()),
            );
            row
        })
        .collect();
    let mut row = vec!["upstream calls per action".to_owned()];
    row.extend(
        cols.iter()
            .map(|c| c.num(&|r| Some(r.upstream_calls_per_action), 2)),
    );
    rows.push(row);
    Table {
        title: "Hard failures by kind (final outcome)".into(),
        header: run_header("hard failure", cols),
        rows,
    }
}

/// The integrity numbers measured after each run.
fn integrity_table(cols: &[Col<'_>]) -> Table {
    let fields: [(&str, IntegrityField); 10] = [
        ("acknowledged write missing", |i| i.acknowledged_missing),
        ("write never sent", |i| i.writes_never_sent),
        ("XP not the ledger's sum", |i| i.xp_ledger_mismatches),
        ("email lost", |i| i.emails_lost),
        ("email sent twice", |i| i.emails_duplicated),
        ("charged twice", |i| i.payments_duplicated),
        ("charge without premium", |i| i.charges_without_premium),
        ("premium without charge", |i| i.premium_without_charge),
        ("tutor answer stored twice", |i| i.answers_duplicated),
        ("all defects", Integrity::defects),
    ];
    let rows = fields
        .iter()
        .map(|(name, get)| {
            let mut row = vec![(*name).to_owned()];
            row.extend(
                cols.iter()
                    .map(|c| c.num(&|r| Some(get(&r.integrity) as f64), 0)),
            );
            row
        })
        .collect();
    Table {
        title: "Integrity".into(),
        header: run_header("integrity", cols),
        rows,
    }
}

/// What each run cost the process that ran the app.
fn resource_table(cols: &[Col<'_>]) -> Table {
    let mut rss = vec!["peak RSS (MiB)".to_owned()];
    rss.extend(
        cols.iter()
            .map(|c| c.num(&|r| Some(r.peak_rss_bytes as f64 / (1024.0 * 1024.0)), 0)),
    );
    let mut cpu = vec!["CPU ms per action".to_owned()];
    cpu.extend(
        cols.iter()
            .map(|c| c.num(&|r| Some(r.cpu_ms_per_action), 2)),
    );
    Table {
        title: "Resources (the process running the app and the virtual users)".into(),
        header: run_header("resource", cols),
        rows: vec![rss, cpu],
    }
}

/// The process-fault runs side by side: the kill, how fast the app was
/// back, what users saw, what was lost.
fn process_table(process: &std::collections::BTreeMap<String, super::ProcessReport>) -> Table {
    type Cell = fn(&super::ProcessReport) -> String;
    let rows: [(&str, Cell); 10] = [
        ("instances", |p| p.faults.instances.to_string()),
        ("kills (SIGKILL)", |p| p.faults.kills.to_string()),
        ("back up in (s)", |p| {
            format!("{:.2}", p.faults.recovery_secs)
        }),
        ("first try ok", |p| pct(p.first_try_success_rate)),
        ("ok after pressing again", |p| pct(p.success_rate)),
        ("acknowledged writes lost", |p| {
            p.faults.acknowledged_writes_lost.to_string()
        }),
        ("emails lost", |p| {
            format!("{} of {}", p.faults.emails_lost, p.faults.emails_expected)
        }),
        ("emails sent twice", |p| {
            p.faults.emails_duplicated.to_string()
        }),
        ("emails waiting at the kill", |p| {
            p.faults.emails_waiting_at_kill.to_string()
        }),
        ("sessions lost", |p| {
            format!(
                "{} of {}",
                p.faults.sessions_lost, p.faults.sessions_checked
            )
        }),
    ];
    let mut header = vec!["".to_owned()];
    header.extend(process.keys().cloned());
    Table {
        title: "Process faults: an instance killed with SIGKILL mid-run, restarted".into(),
        header,
        rows: rows
            .iter()
            .map(|(name, cell)| {
                let mut row = vec![(*name).to_owned()];
                row.extend(process.values().map(cell));
                row
            })
            .collect(),
    }
}

/// The open-loop storm: requests keep arriving at a fixed rate while the
/// AI upstream is down, then back.
fn open_loop_storm_table(storms: &[super::OpenLoopStorm]) -> Table {
    let baseline = storms
        .iter()
        .find(|s| s.variant == super::StormVariant::NoHealing);
    let secs = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |s| format!("{s:.1}"));
    Table {
        title: format!(
            "Storm: {:.0} requests/s offered, the AI upstream down for {:.0} s of {:.0} s",
            storms[0].offered_rate, storms[0].outage_secs, storms[0].duration_secs
        ),
        header: [
            "policy",
            "requests",
            "upstream calls/s while down",
            "upstream calls/s overall",
            "fail fast after (s)",
            "recovered after (s)",
            "p95 while down (ms)",
            "ok",
            "degraded",
            "failed",
            "ok: against no healing",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: storms
            .iter()
            .map(|s| {
                let against = baseline.filter(|b| b.variant != s.variant).map_or_else(
                    || "-".to_owned(),
                    |b| {
                        proportion_verdict(
                            (s.success_rate, s.requests as f64),
                            (b.success_rate, b.requests as f64),
                        )
                    },
                );
                vec![
                    s.variant.label().to_owned(),
                    s.requests.to_string(),
                    format!("{:.1}", s.upstream_calls_per_sec_down),
                    format!("{:.1}", s.upstream_calls_per_sec_overall),
                    secs(s.time_to_fail_fast_secs),
                    secs(s.time_to_recover_secs),
                    ms(s.latency_p95_down_ms),
                    pct(s.success_rate),
                    pct(s.degraded_rate),
                    pct(s.failed_rate),
                    against,
                ]
            })
            .collect(),
    }
}

/// The storm comparison, retry budget on and off.
fn storm_table(storm: &StormReport) -> Table {
    let row = |name: &str, s: &StormRun| {
        vec![
            name.to_owned(),
            s.requests.to_string(),
            s.upstream_calls.to_string(),
            format!("{:.2}", s.upstream_calls_per_request),
            pct(s.success_rate),
        ]
    };
    Table {
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
    }
}
