//! The SQLite lock holder: a side connection that takes the database's write
//! lock (`BEGIN IMMEDIATE`) in bursts, for about the plan's `held_fraction`
//! of the time, so that the app meets a real `database is locked`.
//!
//! Its own task, started before the users and stopped after them, with its
//! bursts counted in the run's `sqlite_lock_bursts` counter. Nothing is held
//! on PostgreSQL, in a storm, or when the plan turns it off.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection;
use tokio::task::JoinHandle;

use super::RunOptions;
use super::world::World;
use crate::plan::Plan;
use crate::report::{self, Recorder};

/// The running lock holder (or nothing, when no lock is to be held).
pub(super) struct LockHolder {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl LockHolder {
    /// Starts holding the lock when the app is on SQLite and the plan asks
    /// for it (never in a storm).
    pub(super) fn start(world: &World, options: &RunOptions, recorder: &Recorder) -> Self {
        let plan = &options.plan;
        let stop = Arc::new(AtomicBool::new(false));
        let task = match (
            &world.sqlite_path,
            plan.sqlite_lock.enabled && !options.is_storm(),
        ) {
            (Some(path), true) => Some(tokio::spawn(hold_sqlite_lock(
                path.clone(),
                plan.clone(),
                options.seed,
                stop.clone(),
                recorder.counter(options.name, "sqlite_lock_bursts"),
            ))),
            _ => None,
        };
        Self { stop, task }
    }

    /// Stops holding the lock; an error of the holder is the run's error.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task {
            task.await?
                .map_err(|e| e.context("the SQLite lock holder failed"))?;
        }
        Ok(())
    }
}

/// Holds the SQLite write lock (`BEGIN IMMEDIATE` on a side connection) in
/// bursts, for about `held_fraction` of the time.
async fn hold_sqlite_lock(
    path: PathBuf,
    plan: Plan,
    seed: u64,
    stop: Arc<AtomicBool>,
    bursts: report::Counter,
) -> anyhow::Result<()> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(3));
    let lock = &plan.sqlite_lock;
    let f = lock.held_fraction.clamp(0.001, 0.9);
    let off_mean = lock.burst.mean().as_secs_f64() * (1.0 - f) / f;
    while !stop.load(Ordering::Relaxed) {
        let off = Duration::from_secs_f64(off_mean * 2.0 * rng.f64());
        tokio::time::sleep(off).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
        bursts.incr();
        tokio::time::sleep(lock.burst.sample(&mut rng)).await;
        sqlx::query("COMMIT").execute(&mut conn).await?;
    }
    Ok(())
}
