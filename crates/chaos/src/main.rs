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

use chaos::cli::{Cli, RunKind, RunSpec, Suite};
use chaos::driver::storm::StormOptions;
use chaos::driver::{self, AppMode, RunOptions, RunOutcome};
use chaos::plan::Plan;
use chaos::progress::Progress;
use chaos::report::{
    ProcessReport, Recorder, Report, ReportMeta, RunReport, RunSummary, SeedRuns, StormReport,
    StormVariant, mean, runs,
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
    // The hidden child mode of the process-fault runs: serve the app.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let [flag, spec] = args.as_slice()
        && flag == driver::SERVE_APP
    {
        return match driver::serve_app(std::path::Path::new(spec)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("chaos app child: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
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
    if cli.suite == Suite::Overload {
        let command = shown_command(std::env::args().skip(1)).join(" ");
        chaos::overload::run_from_cli(cli, &command).await?;
        return Ok(ExitCode::SUCCESS);
    }
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
    for line in cli.skipped_runs() {
        println!("{line}");
    }
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
        update_readme(readme, &cli.readme_block, &report, &cli.out)?;
        println!("updated {}", readme.display());
    }
    // every integrity check counts.
    let broken = report
        .heal_on
        .as_ref()
        .is_some_and(|r| r.integrity.defects() > 0);
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs every spec in turn (the heal runs once per seed) and gathers the
/// report, with the integrity findings of the heal runs.
async fn run_all(
    cli: &Cli,
    plan: &Plan,
    seed: u64,
    specs: &[RunSpec],
) -> anyhow::Result<(Report, Vec<String>)> {
    let progress = Progress::new(cli.quiet);
    let seeds: Vec<u64> = (0..u64::from(cli.seeds))
        .map(|i| seed.wrapping_add(i))
        .collect();
    let mut report = Report {
        meta: ReportMeta {
            users: usize::from(cli.users),
            duration_secs: cli.duration.as_secs_f64(),
            seed,
            seeds: seeds.clone(),
            plan: plan.clone(),
        },
        heal_on: None,
        heal_off: None,
        runs: Vec::new(),
        storm: None,
        process: Default::default(),
        open_loop_storm: Vec::new(),
    };
    let mut problems = Vec::new();
    let mut per_seed = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        // A recorder per seed: the same run names, separate samples.
        let recorder = Recorder::new();
        let mut these = SeedRuns {
            seed,
            heal_on: None,
            heal_off: None,
        };
        let label = if seeds.len() > 1 {
            format!(" (seed {seed})")
        } else {
            String::new()
        };
        for spec in specs {
            let heal = matches!(spec.kind, RunKind::Heal { .. });
            if i > 0 && !heal {
                continue;
            }
            // the open-loop storm.
            if let RunKind::Storm { variant } = spec.kind {
                let began = Instant::now();
                let mut options =
                    StormOptions::from_plan(variant, &plan.storm, seed, cli.database_url.clone());
                options.app = AppMode::children_of_this_exe(1, false)?;
                let storm = driver::storm::run(options, &recorder, &progress).await?;
                println!(
                    "{:<22} {:>6} requests at {:.0}/s, {:.1} upstream calls/s while down, {:.2}% ok, {:.0} s",
                    spec.name,
                    storm.requests,
                    storm.offered_rate,
                    storm.upstream_calls_per_sec_down,
                    storm.success_rate * 100.0,
                    began.elapsed().as_secs_f64()
                );
                report.open_loop_storm.push(storm);
                continue;
            }
            let (outcome, summary) = run_one(cli, plan, seed, spec, &recorder, &progress).await?;
            match spec.name {
                runs::HEAL_ON => {
                    problems.extend(
                        outcome
                            .problems
                            .iter()
                            .map(|p| format!("heal on{label}: {p}")),
                    );
                    these.heal_on = Some(run_report(summary, &outcome));
                }
                runs::HEAL_OFF => {
                    problems.extend(
                        outcome
                            .problems
                            .iter()
                            .map(|p| format!("heal off{label} (expected): {p}")),
                    );
                    these.heal_off = Some(run_report(summary, &outcome));
                }
                name if outcome.process.is_some() => {
                    problems.extend(outcome.problems.iter().map(|p| format!("{name}: {p}")));
                    let run = run_report(summary, &outcome);
                    report.process.insert(
                        name.to_owned(),
                        ProcessReport {
                            actions: run.actions,
                            first_try_success_rate: run.first_try_success_rate,
                            success_rate: run.success_rate,
                            faults: outcome.process.clone().unwrap_or_default(),
                        },
                    );
                }
                _ => {}
            }
        }
        per_seed.push(these);
    }
    if per_seed.len() == 1 {
        let only = per_seed.pop().expect("one seed");
        report.heal_on = only.heal_on;
        report.heal_off = only.heal_off;
    } else {
        let on: Vec<RunReport> = per_seed.iter().filter_map(|s| s.heal_on.clone()).collect();
        let off: Vec<RunReport> = per_seed.iter().filter_map(|s| s.heal_off.clone()).collect();
        report.heal_on = mean(&on);
        report.heal_off = mean(&off);
        report.runs = per_seed;
    }
    // today's `storm` key, from the open-loop runs (with the
    // budget: the budget-only variant; without: no healing at all).
    let variant = |v| report.open_loop_storm.iter().find(|s| s.variant == v);
    if let (Some(with_budget), Some(without_budget)) = (
        variant(StormVariant::Budget),
        variant(StormVariant::NoHealing),
    ) {
        report.storm = Some(StormReport {
            with_budget: with_budget.storm_run(),
            without_budget: without_budget.storm_run(),
        });
    }
    Ok((report, problems))
}

/// A heal run's report: its summary, the integrity found after it, the
/// ledger's verdicts and what it cost.
fn run_report(summary: RunSummary, outcome: &RunOutcome) -> RunReport {
    let mut report =
        RunReport::new(summary, outcome.integrity).with_ledger(&outcome.tries, &outcome.judged);
    report.peak_rss_bytes = outcome.resources.peak_rss_bytes;
    report.cpu_ms_per_action =
        outcome.resources.cpu.as_secs_f64() * 1000.0 / report.actions.max(1) as f64;
    report
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
    let healing = |heal| if heal { Healing::On } else { Healing::Off };
    // Every run's app is a child process: its memory and CPU are its own
    // (peak RSS exactly), and it does not share a runtime with the users.
    let alone = || AppMode::children_of_this_exe(1, false);
    let (healing, storm, app) = match spec.kind {
        RunKind::Heal { heal } => (healing(heal), None, alone()?),
        // storms are run by `driver::storm::run`.
        RunKind::Storm { .. } => anyhow::bail!("{} is a storm, not a heal run", spec.name),
        RunKind::Kill { heal } => (healing(heal), None, AppMode::children_of_this_exe(1, true)?),
        RunKind::Fleet { instances } => (
            Healing::On,
            None,
            AppMode::children_of_this_exe(instances, true)?,
        ),
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
            app,
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

/// One line per heal run: the headline figures in words.
fn first_try_lines(report: &Report) -> String {
    let mut out = String::new();
    for (name, run) in [("heal on", &report.heal_on), ("heal off", &report.heal_off)] {
        if let Some(run) = run {
            let injected: u64 = run.faults.values().map(|t| t.injected).sum();
            out.push_str(&format!(
                "{name}: {:.2}% of first tries succeeded, {:.2}% after pressing again once; {:.2}% of the {injected} injected faults were seen by no user\n",
                run.first_try_success_rate * 100.0,
                run.success_rate * 100.0,
                run.faults_hidden_rate * 100.0,
            ));
        }
    }
    out
}

/// The command line as shown in the README: a URL (it may hold a
/// password) replaced by `<url>`.
fn shown_command(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut shown = Vec::new();
    let mut next_is_url = false;
    for arg in args {
        let is_url_flag = |a: &str| a == "--database-url" || a == "--redis-url";
        if next_is_url {
            shown.push("<url>".to_owned());
            next_is_url = false;
        } else if is_url_flag(&arg) {
            next_is_url = true;
            shown.push(arg);
        } else if let Some((flag, _)) = arg.split_once('=').filter(|(f, _)| is_url_flag(f)) {
            shown.push(format!("{flag}=<url>"));
        } else {
            shown.push(arg);
        }
    }
    shown
}

/// Replaces the README block `name` (between its markers) with the
/// report's Markdown and a link to the chart.
fn update_readme(readme: &Path, name: &str, report: &Report, out: &Path) -> anyhow::Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end_marker = format!("<!-- {name}:end -->");
    let text = std::fs::read_to_string(readme)?;
    let (Some(start), Some(end)) = (text.find(&begin), text.find(&end_marker)) else {
        anyhow::bail!("{} has no {begin} … {end_marker} block", readme.display());
    };
    let chart = out.join("chart.svg");
    let command = shown_command(std::env::args().skip(1));
    let block = format!(
        "{begin}\n<!-- generated by `cargo run --release -p chaos -- {}`; do not edit -->\n\n{}\n\n{}\n![success and p95 latency over time, heal on vs off]({})\n\n{end_marker}",
        command.join(" "),
        report.markdown().trim_end(),
        first_try_lines(report)
            .lines()
            .map(|l| format!("- {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        chart.display()
    );
    let updated = format!(
        "{}{block}{}",
        &text[..start],
        &text[end + end_marker.len()..]
    );
    std::fs::write(readme, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_reach_the_readme() {
        let args = [
            "--database-url",
            "postgres://u:secret@h/db",
            "--redis-url=redis://:pw@h",
            "--seeds",
            "3",
        ]
        .map(str::to_owned);
        let shown = shown_command(args.into_iter()).join(" ");
        assert_eq!(shown, "--database-url <url> --redis-url=<url> --seeds 3");
    }
}
