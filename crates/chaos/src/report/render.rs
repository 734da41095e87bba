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
    /// The report's tables: steps, hard failures, storm, integrity.
    pub fn tables(&self) -> Vec<Table> {
        let runs = self.heal_runs();
        let mut tables = Vec::new();
        if !runs.is_empty() {
            tables.push(step_table(&runs));
            tables.push(failure_table(&runs));
            tables.push(integrity_table(&runs));
        }
        if let Some(storm) = &self.storm {
            tables.push(storm_table(storm));
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

/// The heal runs present, each with its display name.
type HealRuns<'a> = [(&'static str, &'a RunReport)];

/// `first` followed by one column per run.
fn run_header(first: &str, runs: &HealRuns<'_>) -> Vec<String> {
    let mut header = vec![first.to_owned()];
    header.extend(runs.iter().map(|(n, _)| (*n).to_owned()));
    header
}

/// Outcomes and latency per journey step, then overall, runs side by side.
fn step_table(runs: &HealRuns<'_>) -> Table {
    let mut header = vec!["step".to_owned()];
    for (name, _) in runs {
        for col in [
            "actions",
            "ok",
            "degraded",
            "signed out",
            "hard",
            "p50 ms",
            "p95 ms",
        ] {
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
                pct(s.signed_out_rate),
                pct(s.hard_failure_rate),
                ms(s.latency.p50_ms),
                ms(s.latency.p95_ms),
            ],
            None => vec!["-".to_owned(); 7],
        }
    };
    let mut rows = Vec::new();
    for step in steps {
        let mut row = vec![step.clone()];
        for (_, r) in runs {
            row.extend(cells(r.steps.get(step)));
        }
        rows.push(row);
    }
    let mut row = vec!["overall".to_owned()];
    for (_, r) in runs {
        row.extend(cells(Some(&r.overall())));
    }
    rows.push(row);
    Table {
        title: "What users saw, per journey step".into(),
        header,
        rows,
    }
}

/// Hard failures by kind, and the upstream calls per action.
fn failure_table(runs: &HealRuns<'_>) -> Table {
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
    Table {
        title: "Hard failures by kind".into(),
        header: run_header("hard failure", runs),
        rows,
    }
}

/// The integrity numbers measured after each run.
fn integrity_table(runs: &HealRuns<'_>) -> Table {
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
    Table {
        title: "Integrity".into(),
        header: run_header("integrity", runs),
        rows,
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
