//! The overload suite (`chaos --suite overload`): what healing does when
//! the problem is load, not faults. Run on its own, never inside the
//! default run (which must stay under four minutes).
//!
//! Why: retries help a flaky dependency and hurt an overloaded one. Retry
//! storms are the classic trigger of *metastable failures* (Bronson et al.,
//! HotOS 2021; Huang et al., OSDI 2022): a short overload makes every
//! attempt time out, every attempt is retried, and the retries keep the
//! upstream overloaded after the cause is gone. And a server that accepts
//! everything under overload serves nobody well. Two scenarios measure both
//! sides with real sockets and real queues:
//!
//! * [`metastable`]: an upstream with finite capacity ([`pool`]), an
//!   open-loop load at 70 % of it, a 10 s trigger halving its capacity,
//!   and three clients: naive retries, selfheal's previous static
//!   defaults, selfheal's adaptive defaults; goodput per second, upstream
//!   calls, time to recover;
//! * [`crate::driver::overload`]: cozmic itself offered three times the
//!   logins it can serve, with and without its adaptive concurrency limit;
//!   goodput, latency of what it accepts, what it sheds, its memory.
//!
//! [`figures`] defines every number as a pure function of the samples;
//! `report` renders the table (Markdown) and `chart` the curves (SVG).

mod chart;
pub mod figures;
pub mod metastable;
pub mod pool;
mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::driver::overload::{AppOverloadOptions, AppOverloadRun};
pub use metastable::{ClientVariant, MetastableOptions, MetastableRun};

/// The whole suite's results.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    /// The seeds run (each scenario once per seed).
    pub seeds: Vec<u64>,
    /// The metastability scenario's settings (those of the first run).
    pub metastable_setup: MetastableSetup,
    /// Every metastability run, seed by seed.
    pub metastable: Vec<MetastableRun>,
    /// Every app-overload run, seed by seed.
    pub app: Vec<AppOverloadRun>,
}

/// The metastability scenario's settings, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct MetastableSetup {
    /// Workers of the upstream.
    pub workers: usize,
    /// Service time, ms.
    pub service_ms: f64,
    /// Capacity, requests per second.
    pub capacity: f64,
    /// Offered rate, requests per second.
    pub rate: f64,
    /// Run length, s.
    pub duration_secs: f64,
    /// Warm-up, s.
    pub warmup_secs: f64,
    /// Trigger start and end, s.
    pub trigger_secs: [f64; 2],
    /// Service-time factor during the trigger.
    pub slowdown: f64,
    /// User timeout, ms.
    pub user_timeout_ms: f64,
    /// Attempt timeout, ms.
    pub attempt_timeout_ms: f64,
}

impl MetastableSetup {
    fn of(o: &MetastableOptions) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        Self {
            workers: o.workers,
            service_ms: ms(o.service),
            capacity: o.capacity(),
            rate: o.rate,
            duration_secs: o.schedule.duration.as_secs_f64(),
            warmup_secs: o.schedule.warmup.as_secs_f64(),
            trigger_secs: [
                o.schedule.trigger_start.as_secs_f64(),
                o.schedule.trigger_end.as_secs_f64(),
            ],
            slowdown: o.slowdown,
            user_timeout_ms: ms(o.user_timeout),
            attempt_timeout_ms: ms(o.attempt_timeout),
        }
    }
}

/// Runs the full suite for `seeds`: the metastability scenario for every
/// client variant, then the app overload without and with the limit (two
/// apps, measured in turn); prints a line per run.
pub async fn run_suite(seeds: &[u64], exe: PathBuf) -> anyhow::Result<OverloadReport> {
    let first = MetastableOptions::full(ClientVariant::Naive, seeds.first().copied().unwrap_or(0));
    let mut report = OverloadReport {
        seeds: seeds.to_vec(),
        metastable_setup: MetastableSetup::of(&first),
        metastable: Vec::new(),
        app: Vec::new(),
    };
    for &seed in seeds {
        for variant in ClientVariant::ALL {
            let began = Instant::now();
            let run = metastable::run(&MetastableOptions::full(variant, seed)).await?;
            println!(
                "metastable {:<9} seed {seed}: goodput {:.0} / {:.0} / {:.0} per s (before / during / after), recovered {}, {:.0} s",
                format!("{variant:?}"),
                run.goodput_before,
                run.goodput_during,
                run.goodput_after,
                run.time_to_recover_secs
                    .map_or("never".to_owned(), |t| format!("after {t:.1} s")),
                began.elapsed().as_secs_f64()
            );
            report.metastable.push(run);
        }
        let began = Instant::now();
        let runs =
            crate::driver::overload::run(&AppOverloadOptions::full(exe.clone(), seed)).await?;
        for run in runs {
            println!(
                "app overload, limit {:<3} seed {seed}: peaks {:.0?}/s, {:.0}/s offered, goodput {:.0?}/s ({:.0} % of peak), accepted p99 {:.0} ms (unloaded {:.0} ms), {} shed, {:.0} s",
                if run.limit { "on" } else { "off" },
                run.peaks,
                run.offered_rate,
                run.round_goodput,
                run.goodput_ratio * 100.0,
                run.accepted_p99_ms,
                run.unloaded_p99_ms,
                run.shed,
                began.elapsed().as_secs_f64()
            );
            report.app.push(run);
        }
    }
    Ok(report)
}

/// The files [`OverloadReport::write`] wrote.
#[derive(Debug, Clone)]
pub struct OverloadFiles {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `chart.svg`.
    pub svg: PathBuf,
}

impl OverloadReport {
    /// Writes `report.json`, `report.md` and `chart.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<OverloadFiles> {
        std::fs::create_dir_all(dir)?;
        let files = OverloadFiles {
            json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            svg: dir.join("chart.svg"),
        };
        std::fs::write(&files.json, serde_json::to_string_pretty(self)?)?;
        std::fs::write(&files.markdown, self.markdown())?;
        std::fs::write(&files.svg, self.svg().map_err(anyhow::Error::msg)?)?;
        Ok(files)
    }
}

/// `chaos --suite overload`: runs the suite for `--seed` and the
/// `--seeds` after it, writes the files into `--out`, prints the tables and,
/// with `--readme`, replaces its block (`command` is the command line as
/// shown there).
pub async fn run_from_cli(cli: &crate::cli::Cli, command: &str) -> anyhow::Result<()> {
    let seed = cli.seed_or_random();
    let seeds: Vec<u64> = (0..u64::from(cli.seeds))
        .map(|i| seed.wrapping_add(i))
        .collect();
    println!(
        "chaos overload suite: seeds {seeds:?}, about {} s per seed",
        3 * 50 + 150
    );
    let began = Instant::now();
    let report = run_suite(&seeds, std::env::current_exe()?).await?;
    let files = report.write(&cli.out)?;
    println!("\n{}", report.markdown());
    println!(
        "wrote {}, {}, {} in {:.0} s",
        files.json.display(),
        files.markdown.display(),
        files.svg.display(),
        began.elapsed().as_secs_f64()
    );
    if let Some(readme) = &cli.readme {
        let block = format!(
            "<!-- generated by `cargo run --release -p chaos -- {command}`; do not edit -->\n\n{}\n![goodput per second: metastability clients and the app under 3x overload]({})\n",
            report.markdown().trim_end(),
            files.svg.display()
        );
        replace_block(readme, cli.block(), &block)?;
        println!("updated {}", readme.display());
    }
    Ok(())
}

/// Replaces what is between `<!-- name:begin -->` and `<!-- name:end -->`
/// in `readme` with `body`.
fn replace_block(readme: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let text = std::fs::read_to_string(readme)?;
    let (Some(start), Some(stop)) = (text.find(&begin), text.find(&end)) else {
        anyhow::bail!("{} has no {begin} … {end} block", readme.display());
    };
    anyhow::ensure!(
        start < stop,
        "{}: {end} comes before {begin}",
        readme.display()
    );
    let updated = format!(
        "{}{begin}\n{body}\n{end}{}",
        &text[..start],
        &text[stop + end.len()..]
    );
    std::fs::write(readme, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readme_block_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let readme = dir.path().join("README.md");
        std::fs::write(
            &readme,
            "top\n<!-- b:begin -->\nold\n<!-- b:end -->\nbottom\n",
        )
        .unwrap();
        replace_block(&readme, "b", "new").unwrap();
        assert_eq!(
            std::fs::read_to_string(&readme).unwrap(),
            "top\n<!-- b:begin -->\nnew\n<!-- b:end -->\nbottom\n"
        );
        assert!(replace_block(&readme, "missing", "x").is_err());
    }
}
