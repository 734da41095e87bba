//! `cargo run --release -p chaos`: inject real faults into cozmic and
//! report what users saw, healing on vs off, plus the retry storm.
//!
//! Writes `report.json`, `report.txt`, `report.md` and `chart.svg` into
//! `--out` (default `chaos-report/`); with `--readme README.md` it also
//! replaces the block between `<!-- chaos:begin -->` and
//! `<!-- chaos:end -->` with the headline table and the chart. Exits with 1
//! when the healing run broke integrity (lost or doubled progress, lost or
//! duplicated emails, double charges).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chaos::cli::{Cli, RunKind, RunSpec};
use chaos::driver::{self, RunOptions, RunOutcome};
use chaos::plan::Plan;
use chaos::progress::Progress;
use chaos::report::{
    Recorder, Report, ReportMeta, RunReport, RunSummary, StormReport, StormRun, runs,
};
use clap::Parser;
use cozmic::config::Healing;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                // The app logs every fault it heals; the report is the point here.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off,chaos=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The panics chaos asks for are expected: keep them out of the output
    // (the report counts them); any other panic is printed as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let requested = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with(cozmic::config::FaultHooks::PANIC_MESSAGE));
        if !requested {
            default_hook(info);
        }
    }));
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        eprintln!("chaos: {e}");
        return ExitCode::from(2);
    }
    let plan = match &cli.plan {
        Some(path) => match Plan::load(path) {
            Ok(plan) => plan,
            Err(e) => {
                eprintln!("chaos: {e}");
                return ExitCode::from(2);
            }
        },
        None => Plan::default(),
    };
    match run(&cli, plan).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chaos: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, plan: Plan) -> anyhow::Result<ExitCode> {
    let seed = cli.seed_or_random();
    let specs = cli.runs(plan.storm.duration);
    let total: Duration = specs.iter().map(|r| r.duration).sum();
    println!(
        "chaos: {} users, seed {seed}, {} of runs, database: {}",
        cli.users,
        humantime::format_duration(total),
        if cli.database_url.is_some() {
            "PostgreSQL/URL"
        } else {
            "temporary SQLite"
        }
    );
    let began = Instant::now();
    let (report, problems) = run_all(cli, &plan, seed, &specs).await?;
    let files = report.write_to(&cli.out)?;
    println!("\n{}", report.text());
    print!("{}", first_try_lines(&report));
    if !problems.is_empty() {
        println!("integrity findings:");
        for problem in problems.iter().take(30) {
            println!("  - {problem}");
        }
    }
    println!(
        "\nwrote {}, {}, {}, {} in {:.0} s",
        files.json.display(),
        files.text.display(),
        files.markdown.display(),
        files.svg.display(),
        began.elapsed().as_secs_f64()
    );
    if let Some(readme) = &cli.readme {
        update_readme(readme, &report, &cli.out)?;
        println!("updated {}", readme.display());
    }
    let broken = report.heal_on.as_ref().is_some_and(|r| {
        r.integrity.integrity_violations
            + r.integrity.emails_lost
            + r.integrity.emails_duplicated
            + r.integrity.payments_duplicated
            > 0
    });
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs every spec in turn and gathers the report, with the integrity
/// findings of the heal runs.
async fn run_all(
    cli: &Cli,
    plan: &Plan,
    seed: u64,
    specs: &[RunSpec],
) -> anyhow::Result<(Report, Vec<String>)> {
    let recorder = Recorder::new();
    let progress = Progress::new(cli.quiet);
    let mut report = Report {
        meta: ReportMeta {
            users: usize::from(cli.users),
            duration_secs: cli.duration.as_secs_f64(),
            seed,
            plan: plan.clone(),
        },
        heal_on: None,
        heal_off: None,
        storm: None,
    };
    let mut storm_with = None;
    let mut storm_without = None;
    let mut problems = Vec::new();
    for spec in specs {
        let (outcome, summary) = run_one(cli, plan, seed, spec, &recorder, &progress).await?;
        match spec.name {
            runs::HEAL_ON => {
                problems.extend(outcome.problems.iter().map(|p| format!("heal on: {p}")));
                report.heal_on = Some(RunReport::new(summary, outcome.integrity));
            }
            runs::HEAL_OFF => {
                problems.extend(
                    outcome
                        .problems
                        .iter()
                        .map(|p| format!("heal off (expected): {p}")),
                );
                report.heal_off = Some(RunReport::new(summary, outcome.integrity));
            }
            runs::STORM_WITH_BUDGET => storm_with = Some(StormRun::from_summary(&summary)),
            _ => storm_without = Some(StormRun::from_summary(&summary)),
        }
    }
    if let (Some(with_budget), Some(without_budget)) = (storm_with, storm_without) {
        report.storm = Some(StormReport {
            with_budget,
            without_budget,
        });
    }
    Ok((report, problems))
}

/// Runs one spec, prints its one-line summary and returns what it measured.
async fn run_one(
    cli: &Cli,
    plan: &Plan,
    seed: u64,
    spec: &RunSpec,
    recorder: &Recorder,
    progress: &Progress,
) -> anyhow::Result<(RunOutcome, RunSummary)> {
    let run_began = Instant::now();
    let (healing, storm) = match spec.kind {
        RunKind::Heal { heal } => (if heal { Healing::On } else { Healing::Off }, None),
        RunKind::Storm { budget } => (Healing::On, Some(budget)),
    };
    let outcome = driver::run(
        RunOptions {
            name: spec.name,
            healing,
            storm,
            duration: spec.duration,
            users: usize::from(cli.users),
            plan: plan.clone(),
            seed,
            database_url: cli.database_url.clone(),
            redis_url: cli.redis_url.clone(),
        },
        recorder,
        progress,
    )
    .await?;
    let summary = recorder.summary(spec.name);
    println!(
        "{:<22} {:>6} actions, {:.2}% ok, {:.0} s (users {} s, start/drain/checks {:.0} s)",
        spec.name,
        summary.overall.total,
        summary.overall.success_rate * 100.0,
        run_began.elapsed().as_secs_f64(),
        spec.duration.as_secs(),
        run_began
            .elapsed()
            .saturating_sub(spec.duration)
            .as_secs_f64()
    );
    Ok((outcome, summary))
}

/// One line per heal run: actions that succeeded at the first try.
fn first_try_lines(report: &Report) -> String {
    let mut out = String::new();
    for (name, run) in [("heal on", &report.heal_on), ("heal off", &report.heal_off)] {
        if let Some(run) = run {
            let failures = run.counters.get("first_try_failures").copied().unwrap_or(0);
            let first_try_ok = 1.0 - failures as f64 / run.actions.max(1) as f64;
            out.push_str(&format!(
                "{name}: {:.2}% of actions succeeded at the first try; after a friendly or failed answer the user pressed again {} times (the table counts the final outcome)\n",
                first_try_ok * 100.0,
                failures
            ));
        }
    }
    out
}

/// Replaces the README block between the chaos markers with the report's
/// Markdown and a link to the chart.
fn update_readme(readme: &Path, report: &Report, out: &Path) -> anyhow::Result<()> {
    const BEGIN: &str = "<!-- chaos:begin -->";
    const END: &str = "<!-- chaos:end -->";
    let text = std::fs::read_to_string(readme)?;
    let (Some(start), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        anyhow::bail!("{} has no {BEGIN} … {END} block", readme.display());
    };
    let chart = out.join("chart.svg");
    let block = format!(
        "{BEGIN}\n<!-- generated by `cargo run --release -p chaos -- --readme README.md --out {}`; do not edit -->\n\n{}\n\n{}\n![success and p95 latency over time, heal on vs off]({})\n\n{END}",
        out.display(),
        report.markdown().trim_end(),
        first_try_lines(report)
            .lines()
            .map(|l| format!("- {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        chart.display()
    );
    let updated = format!("{}{block}{}", &text[..start], &text[end + END.len()..]);
    std::fs::write(readme, updated)?;
    Ok(())
}
