//! The command line, and the list of runs it implies.
//!
//! Why the defaults: heal on + heal off (40 s each) + two storm runs (30 s
//! each, from the plan) must finish in under three minutes on a 2-core
//! machine, so CI can run the whole comparison.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `chaos`: inject real faults into the app and report what users saw,
/// healing on vs off.
#[derive(Debug, Clone, Parser)]
#[command(name = "chaos", version, about)]
pub struct Cli {
    /// Duration of each heal run (humantime: "40s", "2m").
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Concurrent virtual users.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub users: u16,

    /// Which heal modes to run.
    #[arg(long, value_enum, default_value_t = HealMode::Both)]
    pub heal: HealMode,

    /// Fault plan (TOML); the built-in default when absent.
    #[arg(long)]
    pub plan: Option<PathBuf>,

    /// Directory for report.json, report.txt, report.md and chart.svg.
    #[arg(long, default_value = "chaos-report")]
    pub out: PathBuf,

    /// Where the app's databases live: a PostgreSQL URL (each run gets a new
    /// database on that server, dropped after it) or a SQLite file (each run
    /// gets a new file beside it); a temporary SQLite file per run when absent.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Keep the app's sessions in Redis at this URL (`redis://…`), reached
    /// through a link proxy that the plan's `[redis]` section faults; in the
    /// database when absent.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Whether to run the two storm runs (retry budget on vs off).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub storm: Switch,

    /// RNG seed for every fault decision (random when absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,

    /// Also write the headline table and chart into this README, between
    /// `<!-- chaos:begin -->` and `<!-- chaos:end -->`.
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

/// `--heal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealMode {
    /// Healing on only.
    On,
    /// Healing off only.
    Off,
    /// Both, for the comparison.
    Both,
}

/// An on/off switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// What one run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// The normal fault plan, with healing on or off.
    Heal {
        /// Whether selfheal's healing is on.
        heal: bool,
    },
    /// The upstream completely down, with or without the retry budget.
    Storm {
        /// Whether the retry budget is on.
        budget: bool,
    },
}

/// One run of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSpec {
    /// Run name (one of [`report::runs`](crate::report::runs)).
    pub name: &'static str,
    /// What it does.
    pub kind: RunKind,
    /// How long it lasts.
    pub duration: Duration,
}

impl fmt::Display for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            RunKind::Heal { heal: true } => "fault plan, healing on",
            RunKind::Heal { heal: false } => "fault plan, healing off",
            RunKind::Storm { budget: true } => "upstream down, retry budget on",
            RunKind::Storm { budget: false } => "upstream down, retry budget off",
        };
        write!(
            f,
            "{:<22} {:>6}  {what}",
            self.name,
            humantime::format_duration(self.duration).to_string()
        )
    }
}

impl Cli {
    /// The runs, in order, given the storm duration from the plan.
    pub fn runs(&self, storm_duration: Duration) -> Vec<RunSpec> {
        use crate::report::runs::*;
        let mut runs = Vec::new();
        if matches!(self.heal, HealMode::On | HealMode::Both) {
            runs.push(RunSpec {
                name: HEAL_ON,
                kind: RunKind::Heal { heal: true },
                duration: self.duration,
            });
        }
        if matches!(self.heal, HealMode::Off | HealMode::Both) {
            runs.push(RunSpec {
                name: HEAL_OFF,
                kind: RunKind::Heal { heal: false },
                duration: self.duration,
            });
        }
        if self.storm == Switch::On {
            for (name, budget) in [(STORM_WITH_BUDGET, true), (STORM_WITHOUT_BUDGET, false)] {
                runs.push(RunSpec {
                    name,
                    kind: RunKind::Storm { budget },
                    duration: storm_duration,
                });
            }
        }
        runs
    }

    /// The seed given, or one from the clock.
    pub fn seed_or_random(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
    }

    /// Checks what clap cannot: a non-zero duration.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration.is_zero() {
            return Err("--duration must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_in_three_minutes() {
        let cli = Cli::try_parse_from(["chaos"]).unwrap();
        assert_eq!(cli.duration, Duration::from_secs(40));
        assert_eq!(cli.users, 32);
        assert_eq!(cli.heal, HealMode::Both);
        assert_eq!(cli.out, PathBuf::from("chaos-report"));
        let runs = cli.runs(Duration::from_secs(30));
        assert_eq!(runs.len(), 4);
        let total: Duration = runs.iter().map(|r| r.duration).sum();
        assert!(total < Duration::from_secs(180), "{total:?}");
    }

    #[test]
    fn every_flag_parses() {
        let cli = Cli::try_parse_from([
            "chaos",
            "--duration",
            "5s",
            "--users",
            "4",
            "--heal",
            "off",
            "--plan",
            "p.toml",
            "--out",
            "o",
            "--database-url",
            "sqlite://x.db",
            "--storm",
            "off",
            "--seed",
            "7",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(cli.duration, Duration::from_secs(5));
        assert_eq!(cli.seed_or_random(), 7);
        assert!(cli.quiet);
        let runs = cli.runs(Duration::from_secs(30));
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].kind, RunKind::Heal { heal: false });
        assert_eq!(cli.database_url.as_deref(), Some("sqlite://x.db"));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["chaos", "--users", "0"]).is_err());
        assert!(Cli::try_parse_from(["chaos", "--heal", "maybe"]).is_err());
        assert!(Cli::try_parse_from(["chaos", "--duration", "soon"]).is_err());
        let cli = Cli::try_parse_from(["chaos", "--duration", "0s"]).unwrap();
        assert!(cli.validate().is_err());
    }
}
