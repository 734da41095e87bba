//! The driver: starts cozmic in-process with its fault hooks armed, points
//! it at faulty upstreams and a flaky SMTP server, holds the SQLite write
//! lock in bursts, corrupts sessions, and lets virtual users live through
//! it; then drains the outbox and checks integrity.
//!
//! Why in-process and over real sockets: the faults must be real (a real
//! `database is locked`, a real TCP reset, a real SMTP refusal) and the users
//! must see what a browser sees (status codes, redirects, pages), so the
//! app is the real binary's router on a loopback port, and the users are
//! HTTP clients with cookie jars.
//!
//! How an action is judged (the same in both modes):
//! - **success**: the page the user asked for (the dashboard with its XP,
//!   the tutor's answer, the premium receipt…);
//! - **degraded**: a friendly answer instead (the app's own "temporarily
//!   unavailable" page, selfheal's error page with a request id, or the login
//!   page after a session had to be reset);
//! - **hard failure**: a 5xx without a friendly page, a connection error or
//!   reset, a wrong page.
//!
//! A user who gets anything but success presses again once (after a short
//! pause; with the same form, so nothing is applied twice): the recorded
//! outcome is the final one, and the first-try numbers are kept as counters
//! (`first_try_failures`, `user_retries`) so that nothing is hidden.
//!
//! The parts: this file holds the run itself, a short sequence of steps over
//! a `World` (`world`: everything a run sets up, the upstream servers behind
//! their fault proxies, the SMTP server and its outages, the app); `links`
//! puts link proxies in front of PostgreSQL and Redis and faults them (and
//! may restart PostgreSQL); `lock` holds the SQLite write lock in bursts; `user` is one virtual
//! user's journey and how it judges what it saw; `integrity` checks, once
//! the outbox has drained, that nothing was lost or applied twice; `storm`
//! is the open-loop storm, a run of its own.
//!
//! The app runs in this process or as child processes ([`AppMode`]; the
//! command line uses children, so that the app's memory and CPU are
//! measured apart from the harness): `app` is what the driver needs from
//! it either way, `child` serves and supervises one instance as a process,
//! and `process` kills one mid-run (`kill -9`) and counts what that lost.

mod app;
mod child;
mod database;
mod integrity;
mod links;
mod lock;
pub mod overload;
mod process;
mod resources;
pub mod storm;
mod user;
mod world;

// Process faults (issue 14): the app as child processes, kill -9, a fleet.
pub use app::AppMode;
pub use child::{ProcStats, SERVE_APP, serve_app};
pub use process::{PROCESS_KILL, ProcessFaults, process_runs, skip_reason};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cozmic::config::Healing;
use tokio::task::JoinHandle;

use crate::ledger::{self, Judged, TryRecord};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::{Integrity, Recorder, counters};
use lock::LockHolder;
pub use resources::Resources;
use world::World;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run name (one of [`report::runs`](crate::report::runs)).
    pub name: &'static str,
    /// Healing on or off.
    pub healing: Healing,
    /// The open-loop storm's variant (set by [`storm::run`]): no planned
    /// faults, no SMTP outages, the app's upstream policy as the variant
    /// says. `None` for a heal run.
    pub storm: Option<crate::report::StormVariant>,
    /// How long users act.
    pub duration: Duration,
    /// Concurrent virtual users.
    pub users: usize,
    /// The fault plan.
    pub plan: Plan,
    /// RNG seed.
    pub seed: u64,
    /// Where the run's database is made: a PostgreSQL URL (a new database
    /// on that server, dropped after the run) or a SQLite file (a new file
    /// beside it); a temporary SQLite file when `None`. Runs never share one.
    pub database_url: Option<String>,
    /// Keep the app's sessions in Redis at this URL (through a link proxy
    /// that the `[redis]` plan faults); in the database when `None`.
    pub redis_url: Option<String>,
    /// Where the app runs: in this process, or as child processes (which
    /// the process-fault runs kill).
    pub app: AppMode,
}

/// What a run measured besides the recorder's samples.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Integrity after the run drained.
    pub integrity: Integrity,
    /// One line per integrity problem found (empty when all is well).
    pub problems: Vec<String>,
    /// Emails the app committed to send.
    pub emails_expected: u64,
    /// Students at the end.
    pub students: u64,
    /// What the process faults cost (`None`: the run killed nothing).
    pub process: Option<ProcessFaults>,
    /// Every try of every user action, with what the user saw.
    pub tries: Vec<TryRecord>,
    /// The fault ledger's verdicts.
    pub judged: Judged,
    /// What the run cost the process.
    pub resources: Resources,
    /// The PostgreSQL database made for the run (dropped after it); `None`
    /// on SQLite.
    pub postgres_database: Option<String>,
}

/// Counters shared by the users of one run.
#[derive(Debug, Default)]
struct Shared {
    /// Per student email: nonces the user saw acknowledged, and every nonce sent.
    progress: Mutex<BTreeMap<String, UserProgress>>,
    user_retries: AtomicU64,
    first_try_failures: AtomicU64,
    panics_requested: AtomicU64,
    sessions_corrupted: AtomicU64,
    relogins: AtomicU64,
    /// Every try, in the order they ended.
    tries: Mutex<Vec<TryRecord>>,
}

/// What one student sent and saw acknowledged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct UserProgress {
    /// Lesson nonces the app confirmed.
    acknowledged: BTreeSet<String>,
    /// Every lesson nonce sent.
    sent: BTreeSet<String>,
    /// How many times each question was sent to the tutor.
    questions: BTreeMap<String, u64>,
}

impl RunOptions {
    /// Whether this is a storm run (upstreams down, no other faults).
    fn is_storm(&self) -> bool {
        self.storm.is_some()
    }
}

impl Shared {
    /// Updates what the student `email` sent and saw acknowledged (an empty
    /// record on first use).
    fn update_progress(&self, email: String, update: impl FnOnce(&mut UserProgress)) {
        update(
            self.progress
                .lock()
                .expect("progress")
                .entry(email)
                .or_default(),
        );
    }

    /// Records one try of a user action.
    fn record_try(&self, record: TryRecord) {
        self.tries.lock().expect("tries").push(record);
    }

    /// Adds the users' own counters to `run`'s.
    fn record(&self, run: &str, recorder: &Recorder) {
        let counts = [
            (counters::faults_injected("panic"), &self.panics_requested),
            (
                counters::faults_injected("session_corrupted"),
                &self.sessions_corrupted,
            ),
            ("user_retries".to_owned(), &self.user_retries),
            ("first_try_failures".to_owned(), &self.first_try_failures),
            ("relogins".to_owned(), &self.relogins),
        ];
        for (name, count) in counts {
            recorder.add(run, &name, count.load(Ordering::Relaxed));
        }
    }
}

/// Runs one scenario and records it into `recorder` under `options.name`.
pub async fn run(
    options: RunOptions,
    recorder: &Recorder,
    progress: &Progress,
) -> anyhow::Result<RunOutcome> {
    run_tampered(options, recorder, progress, async |_| Ok(())).await
}

/// Like [`run`], but `tamper` gets the app's database after the outbox has
/// drained and before the integrity check: the tests use it to plant a
/// defect (delete an acknowledged ledger row, set a premium flag nobody
/// paid for) and see the check report it. Runs never call it otherwise.
pub async fn run_tampered(
    mut options: RunOptions,
    recorder: &Recorder,
    progress: &Progress,
    tamper: impl AsyncFnOnce(&cozmic::db::Db) -> anyhow::Result<()>,
) -> anyhow::Result<RunOutcome> {
    if let Some(reason) = skip_reason(&options) {
        anyhow::bail!(reason);
    }
    if options.app.kills() {
        options.plan = options.plan.calm();
    }
    let mut world = World::start(&options).await?;
    let locker = LockHolder::start(&world, &options, recorder);
    let shared = Arc::new(Shared::default());
    let sampler = resources::Sampler::start();
    let started = world.ledger.started();
    let killer = process::Killer::start(&world, &options, started);
    let users = user::spawn(&options, &world, recorder, &shared, started);
    watch(&options, recorder, progress, started, users).await?;
    let resources = sampler.stop().await;
    locker.stop().await?;
    let killed = match killer {
        Some(killer) => Some(killer.stop().await?),
        None => None,
    };
    world.record_counters(&options, recorder);
    shared.record(options.name, recorder);
    world.record_health(options.name, recorder).await;
    world.drain(&options, recorder).await?;
    let checked = if options.is_storm() {
        Ok(RunOutcome::default())
    } else {
        match tamper(world.app.db()).await {
            Ok(()) => integrity::run_checks(&world, &shared).await,
            Err(error) => Err(error),
        }
    };
    let mut outcome = match checked {
        Ok(outcome) => outcome,
        Err(error) => {
            // Shut down (and drop the run's database) whatever went wrong.
            world.shutdown().await;
            return Err(error);
        }
    };
    if let Some(killed) = killed {
        outcome.process =
            Some(process::finish(killed, &options, &world, &shared, &outcome, recorder).await?);
    }
    let tries = std::mem::take(&mut *shared.tries.lock().expect("tries"));
    let mail_failures = if options.is_storm() {
        Vec::new()
    } else {
        mail_failures(&world).await?
    };
    outcome.judged = ledger::judge(&world.ledger.faults(), &tries, &mail_failures);
    outcome.tries = tries;
    outcome.resources = resources;
    if let (Some(peak), Some(cpu)) = (world.peak_rss_bytes().await, world.app.cpu_secs().await) {
        // The app in processes of its own: its figures (every instance and
        // life, start-up and drain included), not the harness'.
        outcome.resources = resources::Resources {
            peak_rss_bytes: peak,
            cpu: Duration::from_secs_f64(cpu),
        };
    }
    outcome.postgres_database = world.postgres_database();
    world.shutdown().await;
    Ok(outcome)
}

/// When (offset from the run's start) each email was committed that was
/// then lost or delivered twice: what an SMTP outage is judged by.
async fn mail_failures(world: &World) -> anyhow::Result<Vec<Duration>> {
    let db = world.app.db();
    let tag = db.instance_tag().await?;
    let delivery = world.smtp.delivery_report();
    Ok(db
        .outbox_created()
        .await?
        .into_iter()
        .filter(|(id, _)| {
            let received = delivery
                .received
                .get(&cozmic::mail::message_id(*id, &tag))
                .copied()
                .unwrap_or(0);
            received != 1
        })
        .map(|(_, created_ms)| world.ledger.offset_of_unix_ms(created_ms))
        .collect())
}

/// Shows the run's progress until its deadline, then waits for every user.
async fn watch(
    options: &RunOptions,
    recorder: &Recorder,
    progress: &Progress,
    started: Instant,
    users: Vec<JoinHandle<()>>,
) -> anyhow::Result<()> {
    let deadline = started + options.duration;
    let bar = progress.run_bar(options.name, options.duration);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.update(
            started.elapsed().min(options.duration),
            recorder.live(options.name),
        );
    }
    for user in users {
        user.await?;
    }
    bar.finish(recorder.live(options.name));
    Ok(())
}
