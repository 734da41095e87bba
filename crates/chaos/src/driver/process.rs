//! Process faults: `kill -9` of an app instance in the middle of a run, and
//! what it cost once the run has drained.
//!
//! Why: everything else the harness injects happens *to* a running app
//! (a lock, a reset, an outage); a crash is what a deployment, the OOM
//! killer or a node failure does, and it is where in-memory state is lost:
//! a commit not yet acknowledged, an email between "250 OK" and "marked
//! sent", a session kept in memory. The app runs as child processes (see
//! `child`) so that the killer sends a real `SIGKILL`, then restarts the
//! instance on the same address and database at once, as a supervisor
//! would; clients simply reconnect.
//!
//! What is counted ([`ProcessFaults`]):
//! * the kill itself goes into the fault ledger as `process_kill`, a window
//!   from the signal to the instance listening again, judged by the user
//!   tries that overlapped it;
//! * acknowledged writes lost: lesson completions a user saw confirmed that
//!   are not in the database after the restart;
//! * emails lost or delivered twice (the SMTP server's delivery report
//!   against the outbox, as the integrity check does; an email the app was
//!   delivering when it died shows up here);
//! * sessions lost: witness students, signed in before the kill, whose
//!   session no longer opens the dashboard on the restarted instance (they
//!   would have to sign in again).
//!
//! A kill run injects nothing else (no upstream, SMTP, lock, panic or
//! session faults: see [`Plan::calm`](crate::plan::Plan::calm)), so that what it loses is the kill's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use super::app::{AppMode, Fleet};
use super::world::World;
use super::{RunOptions, RunOutcome, Shared};
use crate::ledger::FaultLedger;
use crate::report::Recorder;

/// The ledger's name for the fault.
pub const PROCESS_KILL: &str = "process_kill";

/// The names of the process-fault runs.
pub mod process_runs {
    /// One instance killed mid-run, healing on.
    pub const KILL_HEAL_ON: &str = "kill_heal_on";
    /// One instance killed mid-run, healing off.
    pub const KILL_HEAL_OFF: &str = "kill_heal_off";
    /// A fleet on PostgreSQL, one instance killed mid-run, healing on.
    pub const FLEET_HEAL_ON: &str = "fleet_heal_on";
}

/// Witness students signed in before the kill, whose sessions are checked
/// after it.
const WITNESSES: usize = 4;

/// What the process faults of one run cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessFaults {
    /// App instances (1, or the fleet's size).
    pub instances: u64,
    /// Instances killed with `SIGKILL`.
    pub kills: u64,
    /// Instances restarted after a kill (and listening again).
    pub restarts: u64,
    /// User tries that failed at the first try during the run (the kill
    /// is the run's only fault, so these are the ones it caused).
    pub first_try_failures: u64,
    /// Longest time from the signal to the restarted instance listening,
    /// seconds.
    pub recovery_secs: f64,
    /// Lesson completions a user saw acknowledged that are not in the
    /// database at the end.
    pub acknowledged_writes_lost: u64,
    /// Emails waiting in the outbox (not yet marked sent) when the signal
    /// was sent: the ones a crash can catch mid-delivery.
    pub emails_waiting_at_kill: u64,
    /// Emails the app committed to send.
    pub emails_expected: u64,
    /// Committed emails that never arrived.
    pub emails_lost: u64,
    /// Extra copies of emails that arrived.
    pub emails_duplicated: u64,
    /// Witness sessions that worked just before the kill.
    pub sessions_checked: u64,
    /// Of those, sessions that no longer worked on the restarted instance
    /// (the student must sign in again).
    pub sessions_lost: u64,
}

/// Why the run `options` describes cannot be run here (a fleet needs
/// PostgreSQL: SQLite is one file on one machine); `None` when it can.
pub fn skip_reason(options: &RunOptions) -> Option<String> {
    let postgres = options
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    (options.app.instances() > 1 && !postgres).then(|| {
        format!(
            "{}: skipped: a fleet of {} instances needs PostgreSQL (--database-url postgres://…); this run is on SQLite",
            options.name,
            options.app.instances()
        )
    })
}

/// What the killer did while the users ran.
#[derive(Debug, Clone, Default)]
pub(super) struct KillReport {
    kills: u64,
    restarts: u64,
    recovery: Duration,
    emails_waiting: u64,
    sessions_checked: u64,
    sessions_lost: u64,
}

/// The task that kills an instance mid-run and restarts it.
#[derive(Debug)]
pub(super) struct Killer {
    task: JoinHandle<anyhow::Result<KillReport>>,
}

impl Killer {
    /// Starts the killer when the run asks for a kill (the app must run as
    /// children); `started` is when the users started.
    pub(super) fn start(world: &World, options: &RunOptions, started: Instant) -> Option<Self> {
        if !options.app.kills() {
            return None;
        }
        let fleet = world.app.fleet()?.clone();
        let task = tokio::spawn(kill_mid_run(
            fleet,
            world.ledger.clone(),
            world.app.url(),
            options.name,
            options.seed,
            started + options.duration,
            started,
        ));
        Some(Self { task })
    }

    /// Waits for the killer (it is done well before the users are).
    pub(super) async fn stop(self) -> anyhow::Result<KillReport> {
        self.task
            .await?
            .map_err(|e| e.context("the process killer failed"))
    }
}

/// Signs up the witnesses, waits for a random moment in the middle third of
/// the run, checks the witnesses' sessions, waits (at most 3 s) for emails
/// in the outbox, kills one instance, restarts it, records the outage in the ledger and checks the sessions again on
/// the restarted instance.
async fn kill_mid_run(
    fleet: Arc<Fleet>,
    ledger: Arc<FaultLedger>,
    url: String,
    run: &'static str,
    seed: u64,
    deadline: Instant,
    started: Instant,
) -> anyhow::Result<KillReport> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6b69_6c6c);
    let mut witnesses = Vec::new();
    for i in 0..WITNESSES {
        if let Some(witness) = Witness::sign_up(&url, &format!("witness{i}.{run}@chaos.test")).await
        {
            witnesses.push(witness);
        }
    }
    let kill_at = started + (deadline - started).mul_f64(0.3 + 0.3 * rng.f64());
    tokio::time::sleep_until(kill_at.into()).await;
    let victim = rng.usize(..fleet.instances.len());
    let mut instance = fleet.instances[victim].lock().await;
    let direct = instance.url();
    let mut alive = Vec::new();
    for witness in &witnesses {
        if witness.signed_in(&direct).await {
            alive.push(witness);
        }
    }
    // The moment that tests the outbox: while emails wait in it (looked for
    // during at most 3 s, then the kill happens anyway).
    let mut emails_waiting = 0;
    let look_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < look_until {
        emails_waiting = fleet
            .db
            .outbox_counts()
            .await
            .map_or(0, |c| c.0.max(0) as u64);
        if emails_waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = instance.kill().await?;
    instance.restart().await?;
    let back_up = Instant::now();
    drop(instance);
    ledger.window(PROCESS_KILL, killed_at, back_up, &[]);
    let mut lost = 0;
    for witness in &alive {
        if !witness.signed_in(&direct).await {
            lost += 1;
        }
    }
    Ok(KillReport {
        kills: 1,
        restarts: 1,
        recovery: back_up - killed_at,
        emails_waiting,
        sessions_checked: alive.len() as u64,
        sessions_lost: lost,
    })
}

/// A student signed in with a browser of their own, only to see whether
/// the session survives.
struct Witness {
    http: reqwest::Client,
}

impl Witness {
    /// Signs up `email` at `url`; `None` when that did not work.
    async fn sign_up(url: &str, email: &str) -> Option<Self> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        // The sign-up page first, for its CSRF token, as a browser does.
        let form = http
            .get(format!("{url}/signup"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let csrf = super::user::form_value(&form, "csrf")?;
        let page = http
            .post(format!("{url}/signup"))
            .form(&[
                ("name", "Witness"),
                ("email", email),
                ("password", "chaos-password-123"),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        page.contains("id=\"xp\"").then_some(Self { http })
    }

    /// Whether the session opens the dashboard at `url` (not the login page).
    async fn signed_in(&self, url: &str) -> bool {
        let Ok(response) = self.http.get(format!("{url}/dashboard")).send().await else {
            return false;
        };
        let signed_out = response.url().path() == "/login";
        let ok = response.status().is_success();
        let page = response.text().await.unwrap_or_default();
        ok && !signed_out && page.contains("id=\"xp\"")
    }
}

/// What the run's process faults cost, once it has drained and its
/// integrity was checked (`outcome`).
pub(super) async fn finish(
    report: KillReport,
    options: &RunOptions,
    world: &World,
    shared: &Shared,
    outcome: &RunOutcome,
    recorder: &Recorder,
) -> anyhow::Result<ProcessFaults> {
    let counters = recorder.counters(options.name);
    Ok(ProcessFaults {
        first_try_failures: counters.get("first_try_failures").copied().unwrap_or(0),
        instances: options.app.instances() as u64,
        kills: report.kills,
        restarts: report.restarts,
        recovery_secs: report.recovery.as_secs_f64(),
        acknowledged_writes_lost: acknowledged_writes_lost(world.app.db(), shared).await?,
        emails_waiting_at_kill: report.emails_waiting,
        emails_expected: outcome.emails_expected,
        emails_lost: outcome.integrity.emails_lost,
        emails_duplicated: outcome.integrity.emails_duplicated,
        sessions_checked: report.sessions_checked,
        sessions_lost: report.sessions_lost,
    })
}

/// Lesson completions users saw acknowledged that the database does not
/// hold.
async fn acknowledged_writes_lost(db: &cozmic::db::Db, shared: &Shared) -> anyhow::Result<u64> {
    let progress = shared.progress.lock().expect("progress").clone();
    let mut lost = 0;
    for (id, email) in db.students().await? {
        let Some(user) = progress.get(&email) else {
            continue;
        };
        let in_db: std::collections::BTreeSet<String> =
            db.ledger_nonces(id).await?.into_iter().collect();
        lost += user.acknowledged.difference(&in_db).count() as u64;
    }
    Ok(lost)
}

impl AppMode {
    /// Children of the running executable (the chaos binary), for the CLI's
    /// process runs.
    pub fn children_of_this_exe(instances: usize, kill: bool) -> std::io::Result<Self> {
        Ok(AppMode::Children {
            exe: std::env::current_exe()?,
            instances,
            kill,
        })
    }
}
