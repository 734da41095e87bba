//! The command line, and the list of runs it implies.
//!
//! Why the defaults: heal on + heal off (40 s each) + three open-loop storm
//! runs (20 s each, from the plan) + two kill -9 runs (20 s each) must
//! finish in under four minutes on a 2-core machine, so CI can run the
//! whole comparison.

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

    /// Whether to run the open-loop storm (no healing, retry budget, budget
    /// and breaker).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub storm: Switch,

    /// Whether to run the process-fault runs: the app as a child process
    /// killed with SIGKILL mid-run (healing on and off), and on PostgreSQL a
    /// fleet of instances behind a balancer with one killed.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub process: Switch,

    /// Duration of each process-fault run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub process_duration: Duration,

    /// RNG seed for every fault decision (random when absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Run each heal mode this many times, with seeds `seed`, `seed + 1`…,
    /// and report the mean and range of every headline figure (the storm
    /// runs once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub seeds: u16,

    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,

    /// Also write the headline table and chart into this README, between
    /// `<!-- NAME:begin -->` and `<!-- NAME:end -->` (NAME from
    /// `--readme-block`).
    #[arg(long)]
    pub readme: Option<PathBuf>,

    /// The README block to replace (`chaos` for the default plan; one block
    /// per plan, e.g. `chaos-harsh`; `--suite overload` writes
    /// `chaos-overload` unless told otherwise).
    #[arg(long, default_value = "chaos", value_parser = block_name)]
    pub readme_block: String,

    /// Which suite to run: the fault plan with healing on and off (the
    /// default), or the overload suite (a metastable retry storm and the
    /// app offered 3× what it serves; about 4 minutes per seed, run on its
    /// own).
    #[arg(long, value_enum, default_value_t = Suite::Faults)]
    pub suite: Suite,
}

/// `--suite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// The fault plan, healing on vs off, the storm and the process faults.
    Faults,
    /// The overload suite (`chaos::overload`).
    Overload,
}

impl Cli {
    /// The README block to write: `--readme-block`, or for the overload
    /// suite `chaos-overload` when it was left at its default.
    pub fn block(&self) -> &str {
        if self.suite == Suite::Overload && self.readme_block == "chaos" {
            "chaos-overload"
        } else {
            &self.readme_block
        }
    }
}

/// A README block name: letters, digits and `-` only (it goes into an
/// HTML comment).
fn block_name(name: &str) -> Result<String, String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(name.to_owned())
    } else {
        Err(format!("{name:?}: use letters, digits and '-' only"))
    }
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
    /// The open-loop storm: the AI upstream down for the middle of the run.
    Storm {
        /// How the app calls its upstream.
        variant: crate::report::StormVariant,
    },
    /// The app as a child process, killed with SIGKILL mid-run and restarted.
    Kill {
        /// Whether selfheal's healing is on.
        heal: bool,
    },
    /// Several instances on one PostgreSQL database behind a round-robin
    /// balancer, one killed mid-run and restarted (healing on).
    Fleet {
        /// How many instances.
        instances: usize,
    },
}

/// Instances in the fleet run.
pub const FLEET_INSTANCES: usize = 2;

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
            RunKind::Storm { variant } => {
                return write!(
                    f,
                    "{:<22} {:>6}  open-loop storm, {}",
                    self.name,
                    humantime::format_duration(self.duration).to_string(),
                    variant.label()
                );
            }
            RunKind::Kill { heal: true } => "kill -9 of the app mid-run, healing on",
            RunKind::Kill { heal: false } => "kill -9 of the app mid-run, healing off",
            RunKind::Fleet { .. } => "fleet on PostgreSQL, one instance killed",
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
            for variant in crate::report::StormVariant::ALL {
                runs.push(RunSpec {
                    name: variant.run_name(),
                    kind: RunKind::Storm { variant },
                    duration: storm_duration,
                });
            }
        }
        if self.process == Switch::On {
            use crate::driver::process_runs::*;
            for (name, heal) in [(KILL_HEAL_ON, true), (KILL_HEAL_OFF, false)] {
                if matches!(
                    (self.heal, heal),
                    (HealMode::Both, _) | (HealMode::On, true) | (HealMode::Off, false)
                ) {
                    runs.push(RunSpec {
                        name,
                        kind: RunKind::Kill { heal },
                        duration: self.process_duration,
                    });
                }
            }
            if self.on_postgres() && self.heal != HealMode::Off {
                runs.push(RunSpec {
                    name: FLEET_HEAL_ON,
                    kind: RunKind::Fleet {
                        instances: FLEET_INSTANCES,
                    },
                    duration: self.process_duration,
                });
            }
        }
        runs
    }

    /// Whether the runs' databases are on PostgreSQL.
    fn on_postgres(&self) -> bool {
        self.database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }

    /// One line per run left out for a reason the user should see (the
    /// fleet run on SQLite).
    pub fn skipped_runs(&self) -> Vec<String> {
        if self.process == Switch::On && !self.on_postgres() && self.heal != HealMode::Off {
            vec![format!(
                "{}: skipped: a fleet of {FLEET_INSTANCES} instances needs PostgreSQL (--database-url postgres://…); these runs are on SQLite",
                crate::driver::process_runs::FLEET_HEAL_ON
            )]
        } else {
            Vec::new()
        }
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
        if self.process_duration.is_zero() {
            return Err("--process-duration must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_in_four_minutes() {
        let cli = Cli::try_parse_from(["chaos"]).unwrap();
        assert_eq!(cli.duration, Duration::from_secs(40));
        assert_eq!(cli.users, 32);
        assert_eq!(cli.heal, HealMode::Both);
        assert_eq!(cli.out, PathBuf::from("chaos-report"));
        assert_eq!(cli.suite, Suite::Faults);
        assert_eq!(cli.block(), "chaos");
        let storm = crate::plan::StormPlan::default().duration;
        let runs = cli.runs(storm);
        // heal on/off, three storm variants, kill -9 with healing on/off
        // (no fleet on SQLite, and a line says so).
        assert_eq!(runs.len(), 7);
        assert_eq!(cli.skipped_runs().len(), 1);
        let total: Duration = runs.iter().map(|r| r.duration).sum();
        assert!(total <= Duration::from_secs(180), "{total:?}");
        let pg = Cli::try_parse_from(["chaos", "--database-url", "postgres://h/db"]).unwrap();
        assert_eq!(pg.runs(storm).len(), 8);
        assert!(pg.skipped_runs().is_empty());
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
            "--process",
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
    fn the_overload_suite_has_its_own_readme_block() {
        let cli = Cli::try_parse_from(["chaos", "--suite", "overload", "--seeds", "3"]).unwrap();
        assert_eq!(cli.suite, Suite::Overload);
        assert_eq!(cli.block(), "chaos-overload");
        let cli =
            Cli::try_parse_from(["chaos", "--suite", "overload", "--readme-block", "x"]).unwrap();
        assert_eq!(cli.block(), "x");
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
