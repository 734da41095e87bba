//! `chaos`: for now, validates the command line, loads the fault plan and
//! prints what would run. The driver that starts the app and the virtual
//! users is added on top of the library modules.

use std::process::ExitCode;
use std::time::Duration;

use chaos::cli::Cli;
use chaos::plan::Plan;
use clap::Parser;

fn main() -> ExitCode {
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
    let seed = cli.seed_or_random();
    let runs = cli.runs(plan.storm.duration);
    let total: Duration = runs.iter().map(|r| r.duration).sum();
    println!(
        "chaos plan: {} virtual users, seed {seed}, output in {}",
        cli.users,
        cli.out.display()
    );
    match &cli.database_url {
        Some(url) => println!("database: {url}"),
        None => println!("database: a temporary SQLite file"),
    }
    println!("runs ({} in total):", humantime::format_duration(total));
    for run in &runs {
        println!("  {run}");
    }
    println!("\nfault plan:\n{plan}");
    ExitCode::SUCCESS
}
