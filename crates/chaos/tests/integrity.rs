//! The integrity check can fail on a real database: after a short, calm run
//! (no faults, so nothing should be wrong), defects are planted in the app's
//! database with plain SQL and the check must report each of them, no more.
//!
//! Why: a check that never fails proves nothing. The unit tests in
//! `driver/integrity.rs` show each check catching its defect in hand-made
//! witnesses; this one shows that the witnesses gathered from a real run
//! (the users' record, the database, the SMTP inbox, the payment ledger)
//! carry the defect to the check. Run on SQLite always, and on PostgreSQL
//! when `SELFHEAL_TEST_POSTGRES_URL` is set.

use std::time::Duration;

use chaos::driver::{self, RunOptions};
use chaos::plan::Plan;
use chaos::progress::Progress;
use chaos::report::{Integrity, Recorder, runs};
use cozmic::config::Healing;

/// Runs `statements` on the app's database, each required to change a row.
async fn execute(db: &cozmic::db::Db, statements: &[&str]) -> anyhow::Result<()> {
    for statement in statements {
        let changed = if let Some(pool) = db.sqlite() {
            sqlx::query(statement).execute(pool).await?.rows_affected()
        } else if let Some(pool) = db.postgres() {
            sqlx::query(statement).execute(pool).await?.rows_affected()
        } else {
            anyhow::bail!("neither SQLite nor PostgreSQL");
        };
        anyhow::ensure!(changed == 1, "{statement}: {changed} rows changed");
    }
    Ok(())
}

/// A short calm run on `database_url`; before the check, one ledger row
/// deleted (the users saw every completion acknowledged: lost progress, and
/// XP no longer the ledger's sum), a premium flag set for a student who
/// never paid, and one stored question copied (an answer stored twice).
async fn planted_defects_are_reported(database_url: Option<String>) {
    let recorder = Recorder::new();
    let outcome = driver::run_tampered(
        RunOptions {
            name: runs::HEAL_ON,
            healing: Healing::On,
            storm: None,
            duration: Duration::from_secs(3),
            users: 4,
            plan: Plan::default().calm(),
            seed: 14,
            database_url,
            redis_url: None,
            app: Default::default(),
        },
        &recorder,
        &Progress::hidden(),
        async |db| {
            execute(
                db,
                &[
                    "DELETE FROM xp_ledger WHERE id = (SELECT MIN(id) FROM xp_ledger)",
                    "UPDATE students SET premium = 1 WHERE id = \
                     (SELECT MIN(id) FROM students WHERE premium = 0)",
                    "INSERT INTO questions (student_id, question, answer, status, created_at) \
                     SELECT student_id, question, answer, status, created_at FROM questions \
                     WHERE id = (SELECT MIN(id) FROM questions)",
                ],
            )
            .await
        },
    )
    .await
    .unwrap();
    println!("{:#?}", outcome.problems);
    assert_eq!(
        outcome.integrity,
        Integrity {
            integrity_violations: 2,
            acknowledged_missing: 1,
            xp_ledger_mismatches: 1,
            premium_without_charge: 1,
            answers_duplicated: 1,
            ..Integrity::default()
        }
    );
    assert_eq!(outcome.problems.len(), 4, "{:#?}", outcome.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defects_planted_in_sqlite_are_reported() {
    planted_defects_are_reported(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defects_planted_in_postgres_are_reported() {
    match std::env::var("SELFHEAL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => planted_defects_are_reported(Some(url)).await,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but SELFHEAL_TEST_POSTGRES_URL is not")
        }
        _ => eprintln!("SELFHEAL_TEST_POSTGRES_URL unset: skipped"),
    }
}
