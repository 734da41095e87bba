//! The app under test, wherever it runs: in the harness' process, or as one
//! or more child processes (see `child`) on one database.
//!
//! Why one type: the rest of the driver needs the same few things from the
//! app either way (the URL users browse, the session table and database
//! pools to corrupt a session, the database to drain and check, the
//! monitor's counts), and only the process-fault runs need children. In
//! child mode the harness opens its own `cozmic::db::Db` on the app's
//! database for all of that, since the app's memory is in another process;
//! the monitor's counts come from the children's status lines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cozmic::config::Config;
use cozmic::db::Db;

use super::child::{ChildStatus, Instance, Totals};
use crate::balancer::Balancer;

/// Where a run's app lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AppMode {
    /// In the harness' process (`cozmic::start`): nothing can kill it, and
    /// its memory is the harness' too.
    #[default]
    InProcess,
    /// `instances` child processes of `exe` (the chaos binary, which serves
    /// the app for its hidden `--serve-app` argument) on the run's database;
    /// more than one only on PostgreSQL, behind a round-robin balancer.
    /// With `kill`, one instance is killed with `SIGKILL` mid-run and
    /// restarted on the same address and database.
    Children {
        /// The chaos binary (`std::env::current_exe()`, or in integration
        /// tests `env!("CARGO_BIN_EXE_chaos")`).
        exe: PathBuf,
        /// How many instances.
        instances: usize,
        /// Whether one is killed mid-run.
        kill: bool,
    },
}

impl AppMode {
    /// Whether a process is killed in the run.
    pub fn kills(&self) -> bool {
        matches!(self, AppMode::Children { kill: true, .. })
    }

    /// How many app instances the run has.
    pub fn instances(&self) -> usize {
        match self {
            AppMode::InProcess => 1,
            AppMode::Children { instances, .. } => *instances,
        }
    }
}

/// A fresh `SECRET_KEY` for an app run by the harness: every instance (and
/// every life of one) of that run signs sessions alike.
pub(super) fn random_secret_key() -> cozmic::config::Secret {
    cozmic::config::Secret::new(format!(
        "{:016x}{:016x}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..)
    ))
}

/// What the users and the session corrupter need from the app.
#[derive(Debug, Clone)]
pub(super) struct AppAccess {
    /// The URL users browse (the balancer's, for a fleet).
    pub(super) base: String,
    /// The session store's table (`None` for Redis).
    pub(super) session_table: Option<&'static str>,
    /// The database's pool, if SQLite.
    pub(super) sqlite: Option<sqlx::SqlitePool>,
    /// The database's pool, if PostgreSQL.
    pub(super) postgres: Option<sqlx::PgPool>,
}

/// Child instances on one database, and the harness' own view of it.
#[derive(Debug)]
pub(super) struct Fleet {
    /// The instances (locked by the killer while it kills and restarts one).
    pub(super) instances: Vec<tokio::sync::Mutex<Instance>>,
    /// In front of more than one instance.
    balancer: Option<Balancer>,
    /// The harness' own connection to the app's database.
    pub(super) db: Db,
    session_table: Option<&'static str>,
}

impl Fleet {
    /// Starts `count` instances of the app `config` describes from `exe`,
    /// their spec files in `dir`, and a balancer when there are several.
    pub(super) async fn start(
        exe: &Path,
        config: Config,
        count: usize,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(count >= 1, "a fleet needs at least one instance");
        let mut instances = Vec::new();
        for i in 0..count {
            let spec = dir.join(format!("app-{i}.json"));
            instances.push(Instance::start(exe, config.clone(), spec).await?);
        }
        let balancer = if count > 1 {
            Some(Balancer::start(instances.iter().map(Instance::addr).collect()).await?)
        } else {
            None
        };
        // The app has migrated the database: the harness' pool sees the
        // same schema (and is opened with the same settings as the app's).
        let monitor = selfheal::health::Monitor::builder()
            .with_global(false)
            .build()?;
        let db = Db::open(&config, &monitor).await?;
        let session_table = match &config.redis_url {
            Some(_) => None,
            None => cozmic::store::Store::open(&db, None).await?.table(),
        };
        Ok(Self {
            instances: instances.into_iter().map(tokio::sync::Mutex::new).collect(),
            balancer,
            db,
            session_table,
        })
    }

    fn url(&self, first: SocketAddr) -> String {
        match &self.balancer {
            Some(balancer) => balancer.url(),
            None => format!("http://{first}"),
        }
    }

    /// Every instance's lives added up.
    async fn totals(&self) -> Vec<Totals> {
        let mut all = Vec::new();
        for instance in &self.instances {
            all.push(instance.lock().await.totals());
        }
        all
    }
}

/// The app under test.
#[derive(Debug)]
pub(super) enum App {
    /// In this process.
    InProcess(cozmic::Running),
    /// Child processes.
    Children {
        /// The instances and the harness' database view.
        fleet: Arc<Fleet>,
        /// The URL users browse.
        url: String,
    },
}

impl App {
    /// Starts the app `config` describes as `mode` says (spec files for
    /// children go to `dir`, the run's private temporary directory).
    pub(super) async fn start(mode: &AppMode, config: Config, dir: &Path) -> anyhow::Result<Self> {
        match mode {
            AppMode::InProcess => Ok(App::InProcess(cozmic::start(config).await?)),
            AppMode::Children { exe, instances, .. } => {
                // The app in this process would have installed it; the
                // harness' own HTTP clients need it all the same.
                selfheal::tls::install_default_crypto_provider();
                let fleet = Fleet::start(exe, config, *instances, dir).await?;
                let first = fleet.instances[0].lock().await.addr();
                let url = fleet.url(first);
                Ok(App::Children {
                    fleet: Arc::new(fleet),
                    url,
                })
            }
        }
    }

    /// The URL users browse.
    pub(super) fn url(&self) -> String {
        match self {
            App::InProcess(running) => running.url(),
            App::Children { url, .. } => url.clone(),
        }
    }

    /// The app's database (the harness' own pool on it for children).
    pub(super) fn db(&self) -> &Db {
        match self {
            App::InProcess(running) => running.state().db(),
            App::Children { fleet, .. } => &fleet.db,
        }
    }

    /// What the users need.
    pub(super) fn access(&self) -> AppAccess {
        let session_table = match self {
            App::InProcess(running) => running.state().sessions().table(),
            App::Children { fleet, .. } => fleet.session_table,
        };
        AppAccess {
            base: self.url(),
            session_table,
            sqlite: self.db().sqlite().cloned(),
            postgres: self.db().postgres().cloned(),
        }
    }

    /// The children, when the app runs as such.
    pub(super) fn fleet(&self) -> Option<&Arc<Fleet>> {
        match self {
            App::InProcess(_) => None,
            App::Children { fleet, .. } => Some(fleet),
        }
    }

    /// Wakes the outbox worker (children poll on their own).
    pub(super) fn wake_mailer(&self) {
        if let App::InProcess(running) = self {
            running.state().mailer().wake();
        }
    }

    /// The health monitors' heals by kind and alerts fired (summed over
    /// every instance and every life).
    pub(super) async fn health(&self) -> ChildStatus {
        match self {
            App::InProcess(running) => ChildStatus::of(running.state().monitor()),
            App::Children { fleet, .. } => {
                let mut sum = ChildStatus::default();
                for totals in fleet.totals().await {
                    sum.add(&totals.status);
                }
                sum
            }
        }
    }

    /// The highest peak RSS (`VmHWM`) of any app process so far, bytes;
    /// `None` in-process (the harness shares the process) or off Linux.
    pub(super) async fn peak_rss_bytes(&self) -> Option<u64> {
        let fleet = self.fleet()?;
        let peak = fleet
            .totals()
            .await
            .iter()
            .map(|t| t.peak_rss_bytes)
            .max()?;
        (peak > 0).then_some(peak)
    }

    /// CPU seconds the app processes used so far (every instance and life);
    /// `None` in-process or off Linux.
    pub(super) async fn cpu_secs(&self) -> Option<f64> {
        let totals = self.fleet()?.totals().await;
        let known = totals.iter().any(|t| t.peak_rss_bytes > 0);
        known.then(|| totals.iter().map(|t| t.cpu_secs).sum())
    }

    /// Stops the app (gracefully) and closes the harness' pool.
    pub(super) async fn shutdown(self) {
        match self {
            App::InProcess(running) => running.shutdown().await,
            App::Children { fleet, .. } => {
                for instance in &fleet.instances {
                    instance.lock().await.stop().await;
                }
                fleet.db.close().await;
                if let Ok(fleet) = Arc::try_unwrap(fleet)
                    && let Some(balancer) = fleet.balancer
                {
                    balancer.shutdown().await;
                }
            }
        }
    }
}
