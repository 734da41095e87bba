//! The text outputs: tables as aligned text (stdout, `report.txt`) and as
//! Markdown (`report.md`, for the README), `report.json`, and writing all of
//! the report's files.
//!
//! One builder per table keeps each table's columns next to the numbers it
//! shows; [`Table`] knows nothing of the report, only how to lay out cells.
//! Percentages appear here and nowhere else (the data holds fractions).
//! The heal runs' tables are in `heal`, the other suites' (process faults,
//! storms) in `suites`; what they share (the layout, the columns, the
//! verdict of a difference) is here.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::{Integrity, Report, RunReport};

mod heal;
mod suites;

use heal::{
    failure_table, fault_table, first_try_table, integrity_table, resource_table, step_table,
};
use suites::{open_loop_storm_table, process_table, storm_table};

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
