//! The CI smoke run (about 10 s): cozmic with healing on under the default
//! fault plan, 8 users for 8 s, then the integrity checks. Fails on any
//! integrity violation (lost or doubled progress, a lost or duplicated
//! email, a double charge), and if the faults did not actually happen.

use std::time::Duration;

use chaos::driver::{self, RunOptions};
use chaos::plan::Plan;
use chaos::progress::Progress;
use chaos::report::{Recorder, counters, runs};
use cozmic::config::Healing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healing_on_under_the_default_plan_keeps_integrity() {
    let recorder = Recorder::new();
    let mut plan = Plan::default();
    // Dense enough to happen several times in 8 s.
    plan.panic.probability = 0.02;
    plan.sessions.corrupt_fraction = 0.25;
    let outcome = driver::run(
        RunOptions {
            name: runs::HEAL_ON,
            healing: Healing::On,
            storm: None,
            duration: Duration::from_secs(8),
            users: 8,
            plan,
            seed: 42,
            database_url: None,
            redis_url: None,
            app: Default::default(),
        },
        &recorder,
        &Progress::hidden(),
    )
    .await
    .unwrap();
    let summary = recorder.summary(runs::HEAL_ON);
    println!("{summary:#?}\n{outcome:#?}");
    assert!(
        outcome.problems.is_empty(),
        "integrity: {:#?}",
        outcome.problems
    );
    assert_eq!(outcome.integrity.integrity_violations, 0);
    assert_eq!(outcome.integrity.emails_lost, 0);
    assert_eq!(outcome.integrity.emails_duplicated, 0);
    assert_eq!(outcome.integrity.payments_duplicated, 0);
    assert!(
        outcome.students >= 8 && outcome.emails_expected >= 8,
        "{outcome:?}"
    );
    assert!(
        summary.overall.total > 50,
        "users acted: {}",
        summary.overall.total
    );
    // The faults were real.
    let injected: u64 = summary
        .counters
        .iter()
        .filter(|(name, _)| name.starts_with("faults_injected"))
        .map(|(_, n)| n)
        .sum();
    assert!(injected > 10, "faults injected: {:?}", summary.counters);
    assert!(
        summary
            .counters
            .get(counters::UPSTREAM_CALLS)
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert!(
        summary.overall.success_rate > 0.95,
        "healing on: {:?}",
        summary.overall
    );
    // Every upstream fault is in the ledger, linked to the try it struck
    // (the app passed the try's request id on), and judged.
    let faults = &outcome.judged.faults;
    let upstream: u64 = faults
        .iter()
        .filter(|(kind, _)| kind.starts_with("upstream_"))
        .map(|(_, t)| t.injected)
        .sum();
    let counted: u64 = summary
        .counters
        .iter()
        .filter(|(name, _)| {
            name.starts_with("faults_injected.")
                && chaos::faults::FaultKind::ALL
                    .iter()
                    .any(|k| name.ends_with(&format!(".{}", k.name())))
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(upstream, counted, "{faults:#?} vs {:?}", summary.counters);
    let unlinked: u64 = faults.values().map(|t| t.unlinked).sum();
    assert_eq!(unlinked, 0, "every fault linked to a try: {faults:#?}");
    for (kind, t) in faults {
        assert_eq!(
            t.injected,
            t.hidden + t.degraded + t.failed + t.unlinked,
            "{kind}"
        );
    }
    assert!(faults.contains_key("panic_before_handler"), "{faults:#?}");
    assert!(!outcome.tries.is_empty());
    assert!(outcome.resources.peak_rss_bytes > 0);
}

/// Two runs on the same PostgreSQL URL, one after the other: each gets its
/// own database, so the second counts only its own students, emails and
/// charges (before, a second run reported the first one's as violations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_on_one_postgres_url_are_isolated() {
    let Some(url) = postgres_url() else {
        return;
    };
    let mut made = Vec::new();
    for (name, seed) in [(runs::HEAL_ON, 1), (runs::HEAL_OFF, 2), (runs::HEAL_ON, 3)] {
        let recorder = Recorder::new();
        let outcome = driver::run(
            RunOptions {
                name,
                healing: if name == runs::HEAL_ON {
                    Healing::On
                } else {
                    Healing::Off
                },
                storm: None,
                duration: Duration::from_secs(3),
                users: 4,
                plan: Plan::default(),
                seed,
                database_url: Some(url.clone()),
                redis_url: None,
                app: Default::default(),
            },
            &recorder,
            &Progress::hidden(),
        )
        .await
        .unwrap();
        assert!(outcome.students >= 4, "{name}: {outcome:?}");
        if name == runs::HEAL_ON {
            assert!(
                outcome.problems.is_empty(),
                "{name} (seed {seed}): {:#?}",
                outcome.problems
            );
        }
        // Only this run's students: 4 users, each one student at a time (a
        // new one only after finishing every lesson, which takes longer than
        // 3 s with think times), never another run's: shared, the third run
        // would count at least 12.
        assert!(outcome.students <= 8, "{name}: {}", outcome.students);
        made.push(outcome.postgres_database.expect("a database was made"));
    }
    // Every run's database was dropped (other runs on this server, say a
    // concurrent test, may have theirs: only these three are checked).
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let left: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname = ANY($1)")
            .bind(&made)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(made.len(), 3);
    assert!(left.is_empty(), "{left:?}");
}

/// The PostgreSQL URL of the test environment: skipped locally when unset,
/// required in CI.
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
