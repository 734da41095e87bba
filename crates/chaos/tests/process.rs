//! Process faults with real processes: cozmic served by the chaos binary as
//! a child, killed with SIGKILL mid-run and restarted on the same port and
//! database; on PostgreSQL, a fleet of two behind the round-robin balancer.
//!
//! The driver refuses a kill whose child did not die of signal 9, and a
//! restart that does not listen again on the same address, so a run that
//! returns a `ProcessFaults` with one kill and one restart proves both.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chaos::driver::{self, AppMode, ProcessFaults, RunOptions, RunOutcome, process_runs};
use chaos::plan::Plan;
use chaos::progress::Progress;
use chaos::report::Recorder;
use cozmic::config::Healing;

fn chaos_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chaos"))
}

fn options(name: &'static str, instances: usize, database_url: Option<String>) -> RunOptions {
    RunOptions {
        name,
        healing: Healing::On,
        storm: None,
        duration: Duration::from_secs(6),
        users: 3,
        plan: Plan::default(),
        seed: 14,
        database_url,
        redis_url: None,
        app: AppMode::Children {
            exe: chaos_exe(),
            instances,
            kill: true,
        },
    }
}

async fn run(options: RunOptions) -> (RunOutcome, ProcessFaults, u64) {
    let name = options.name;
    let began = Instant::now();
    let recorder = Recorder::new();
    let outcome = driver::run(options, &recorder, &Progress::hidden())
        .await
        .unwrap();
    let actions = recorder.summary(name).overall.total;
    println!(
        "{name} in {:.1} s, {actions} actions\n{outcome:#?}",
        began.elapsed().as_secs_f64()
    );
    let process = outcome.process.clone().expect("the run killed a process");
    (outcome, process, actions)
}

/// The common checks: one real kill, one restart, quick recovery, the users
/// kept acting, the counts came out and nothing acknowledged was lost.
fn killed_and_restarted(outcome: &RunOutcome, process: &ProcessFaults, actions: u64) {
    assert_eq!((process.kills, process.restarts), (1, 1), "{process:?}");
    assert!(
        process.recovery_secs > 0.0 && process.recovery_secs < 10.0,
        "{process:?}"
    );
    assert!(actions > 10, "users acted: {actions}");
    // Witnesses signed in before the kill, and their sessions (in the
    // database, signed with the shared key) still work after it.
    assert!(process.sessions_checked >= 1, "{process:?}");
    assert_eq!(process.sessions_lost, 0, "{process:?}");
    // A commit is durable before the page says so: a kill loses none.
    assert_eq!(process.acknowledged_writes_lost, 0, "{process:?}");
    assert!(process.emails_expected >= 3, "{process:?}");
    assert_eq!(process.emails_expected, outcome.emails_expected);
    assert_eq!(process.emails_lost, outcome.integrity.emails_lost);
    assert_eq!(
        process.emails_duplicated,
        outcome.integrity.emails_duplicated
    );
    if cfg!(target_os = "linux") {
        // The app's own process (the harness' is not what is read).
        let rss = outcome.resources.peak_rss_bytes;
        assert!(
            rss > 4 * 1024 * 1024 && rss < 4 * 1024 * 1024 * 1024,
            "{rss}"
        );
        assert!(!outcome.resources.cpu.is_zero());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_sqlite_restarts_the_app_and_counts_what_was_lost() {
    let (outcome, process, actions) = run(options(process_runs::KILL_HEAL_ON, 1, None)).await;
    assert_eq!(process.instances, 1);
    killed_and_restarted(&outcome, &process, actions);
    // The outbox is durable: no email lost. The worker delivers one email
    // at a time, so a kill can catch at most one between the server's
    // "250 OK" and "marked sent" (mail.rs documents that window): it then
    // arrives twice, and nothing else may be wrong.
    assert_eq!(process.emails_lost, 0, "{process:?}");
    assert!(process.emails_duplicated <= process.kills, "{process:?}");
    assert!(
        outcome
            .problems
            .iter()
            .all(|p| p.contains("extra copies of emails")),
        "{:#?}",
        outcome.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_sqlite_is_refused_with_a_reason() {
    let options = options(process_runs::FLEET_HEAL_ON, 2, None);
    let reason = driver::skip_reason(&options).expect("a fleet needs PostgreSQL");
    assert!(reason.contains("PostgreSQL"), "{reason}");
    let error = driver::run(options, &Recorder::new(), &Progress::hidden())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("skipped"), "{error}");
}

/// Two instances on one PostgreSQL database behind the balancer, one
/// killed: nothing acknowledged is lost and no email is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_survives_a_kill_9_of_one_instance() {
    let Some(url) = postgres_url() else {
        return;
    };
    let (outcome, process, actions) = run(options(process_runs::FLEET_HEAL_ON, 2, Some(url))).await;
    assert_eq!(process.instances, 2);
    killed_and_restarted(&outcome, &process, actions);
    assert_eq!(process.emails_lost, 0, "{process:?}");
}

/// The fleet delivers every email once: the two instances' outbox workers
/// claim each row before sending it, so they never send the same one. The
/// one duplicate a kill can cause is the email in flight when it struck
/// (the server said 250, the process died before the row was marked sent;
/// it carries the same `Message-ID`, so a receiver drops it): at most one
/// per kill, and before the claim there were dozens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_postgres_delivers_every_email_once_but_for_the_one_in_flight() {
    let Some(url) = postgres_url() else {
        return;
    };
    let (_, process, _) = run(options(process_runs::FLEET_HEAL_ON, 2, Some(url))).await;
    assert!(process.emails_expected > 0, "{process:?}");
    assert_eq!(process.emails_lost, 0, "{process:?}");
    assert!(process.emails_duplicated <= process.kills, "{process:?}");
}

/// `SELFHEAL_TEST_POSTGRES_URL`; in CI its absence is a failure, not a skip
/// (and a server that does not answer fails the run).
fn postgres_url() -> Option<String> {
    match std::env::var("SELFHEAL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but SELFHEAL_TEST_POSTGRES_URL is not")
        }
        _ => {
            eprintln!("SELFHEAL_TEST_POSTGRES_URL unset: skipped");
            None
        }
    }
}
