//! The SQLite lock holder: a side connection that takes the database's write
//! lock (`BEGIN IMMEDIATE`) in bursts, for about the plan's `held_fraction`
//! of the time, so that the app meets a real `database is locked`.
//!
//! Its own task, started before the users and stopped after them, with its
//! bursts counted in the run's `sqlite_lock_bursts` counter. Nothing is held
//! on PostgreSQL, in a storm, or when the plan turns it off.
//!
//! Each burst is also a fault in the run's ledger, a window over every step
//! from when the lock was taken to when it was released: `db_lock` when it
//! was held no longer than the app's busy timeout (5 s, in both modes: a
//! waiting writer gets the lock inside SQLite), `db_lock_long` when longer
//! (a writer that waits its whole busy timeout gets `database is locked`).
//! The holder itself waits for the lock up to [`HOLDER_BUSY_TIMEOUT`] and
//! skips a burst it could not start rather than failing the run; a burst in
//! progress when the run ends is cut short.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::task::JoinHandle;

use super::RunOptions;
use super::world::World;
use crate::ledger::FaultLedger;
use crate::plan::Plan;
use crate::report::{self, Recorder, counters};

/// The app's SQLite busy timeout (selfheal's with healing on, sqlx's
/// default with it off: both 5 s). A burst longer than this is `db_lock_long`.
pub(crate) const APP_BUSY_TIMEOUT: Duration = selfheal::db::sqlite::BUSY_TIMEOUT;

/// How long the holder waits for the write lock itself (an app write in
/// progress) before it skips a burst.
pub(crate) const HOLDER_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The ledger kind of a burst no longer than [`APP_BUSY_TIMEOUT`].
pub(crate) const DB_LOCK: &str = "db_lock";

/// The ledger kind of a burst longer than [`APP_BUSY_TIMEOUT`].
pub(crate) const DB_LOCK_LONG: &str = "db_lock_long";

/// The running lock holder (or nothing, when no lock is to be held).
pub(super) struct LockHolder {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The run's name, the ledger and the recorder, for the counters at stop.
    run: &'static str,
    ledger: Arc<FaultLedger>,
    recorder: Recorder,
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
                Bursts {
                    counter: recorder.counter(options.name, "sqlite_lock_bursts"),
                    skipped: recorder.counter(options.name, "sqlite_lock_skipped"),
                    ledger: Arc::clone(&world.ledger),
                },
            ))),
            _ => None,
        };
        Self {
            stop,
            task,
            run: options.name,
            ledger: Arc::clone(&world.ledger),
            recorder: recorder.clone(),
        }
    }

    /// Stops holding the lock; an error of the holder is the run's error.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task {
            task.await?
                .map_err(|e| e.context("the SQLite lock holder failed"))?;
            for kind in [DB_LOCK, DB_LOCK_LONG] {
                self.recorder.add(
                    self.run,
                    &counters::faults_injected(kind),
                    self.ledger.count(kind),
                );
            }
        }
        Ok(())
    }
}

/// Where the bursts are counted.
struct Bursts {
    /// `sqlite_lock_bursts`: bursts held.
    counter: report::Counter,
    /// `sqlite_lock_skipped`: bursts the holder could not start in time.
    skipped: report::Counter,
    /// The run's fault ledger (`db_lock`, `db_lock_long`).
    ledger: Arc<FaultLedger>,
}

/// Holds the SQLite write lock (`BEGIN IMMEDIATE` on a side connection) in
/// bursts, for about `held_fraction` of the time.
async fn hold_sqlite_lock(
    path: PathBuf,
    plan: Plan,
    seed: u64,
    stop: Arc<AtomicBool>,
    bursts: Bursts,
) -> anyhow::Result<()> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(HOLDER_BUSY_TIMEOUT);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(3));
    let lock = &plan.sqlite_lock;
    let f = lock.held_fraction.clamp(0.001, 0.9);
    let off_mean = lock.burst.mean().as_secs_f64() * (1.0 - f) / f;
    while !stop.load(Ordering::Relaxed) {
        let off = Duration::from_secs_f64(off_mean * 2.0 * rng.f64());
        sleep_unless_stopped(off, &stop).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let burst = lock.burst.sample(&mut rng);
        match sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await {
            Ok(_) => {}
            // The app held the lock past the holder's own busy timeout: no
            // burst this time (counted), the next one as planned.
            Err(e) if is_busy(&e) => {
                bursts.skipped.incr();
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let from = Instant::now();
        bursts.counter.incr();
        // Held for `burst`, or until the run ends.
        sleep_unless_stopped(burst, &stop).await;
        sqlx::query("COMMIT").execute(&mut conn).await?;
        let to = Instant::now();
        let kind = if to - from > APP_BUSY_TIMEOUT {
            DB_LOCK_LONG
        } else {
            DB_LOCK
        };
        bursts.ledger.window(kind, from, to, &[]);
    }
    Ok(())
}

/// Whether `e` is SQLite's `SQLITE_BUSY` or one of its extended codes
/// (`database is locked`).
fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// Sleeps for `d` in steps of at most 100 ms, ending early once `stop` is
/// set (so that a long burst or pause does not hold up the end of the run).
async fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let from = Instant::now();
    while from.elapsed() < d && !stop.load(Ordering::Relaxed) {
        let left = d.saturating_sub(from.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}
