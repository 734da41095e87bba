//! `selfheal::db::Runner` on a SQLite file: two writers race for SQLite's
//! write lock and the runner re-runs the loser's whole transaction:
//! `cargo run -p selfheal --all-features --example db_runner`.

use std::time::Duration;

use selfheal::db::{Runner, TxError, sqlite};
use selfheal::health::{HealKind, Monitor};
use sqlx::SqlitePool;

const WRITERS: i64 = 2;
const INCREMENTS: i64 = 20;
const READ: &str = "SELECT xp FROM students WHERE id = 7";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("selfheal-db-runner-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("app.db");
    // selfheal's SQLite settings (WAL, ...), but a 1 ms busy_timeout instead
    // of 5 s: SQLite would otherwise absorb this contention by waiting, and
    // the lock race would never reach the runner.
    let options = sqlite::connect_options(path.to_str().ok_or("temp dir not UTF-8")?)?
        .busy_timeout(Duration::from_millis(1));
    let pool = SqlitePool::connect_with(options).await?;
    let schema = "CREATE TABLE students (id INTEGER PRIMARY KEY, xp INTEGER NOT NULL);
                  INSERT INTO students VALUES (7, 0);";
    sqlx::raw_sql(schema).execute(&pool).await?;

    let monitor = Monitor::builder().with_global(false).build()?;
    // Transactions begin with BEGIN IMMEDIATE (the runner's default on SQLite).
    let runner = Runner::new(pool.clone()).with_observer(monitor.observer());
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let runner = runner.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                // The guide's `student.xp += 10`: read, think, write.
                let save = async move |tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>| {
                    let (xp,): (i64,) = sqlx::query_as(READ).fetch_one(&mut **tx).await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    sqlx::query("UPDATE students SET xp = ? WHERE id = 7")
                        .bind(xp + 10)
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                };
                runner.run("save_progress", save).await?;
            }
            Ok::<_, TxError<sqlx::Error>>(())
        }));
    }
    for writer in writers {
        writer.await??;
    }

    let (xp,): (i64,) = sqlx::query_as(READ).fetch_one(&pool).await?;
    let report = monitor.report(Duration::from_secs(900));
    let (heals, errors) = (&report.heals, report.total_errors);
    let reruns = heals.get(&HealKind::TransactionRerun).copied().unwrap_or(0);
    println!("xp = {xp} after {WRITERS} writers x {INCREMENTS} increments of 10");
    println!("transactions re-run after losing the lock race: {reruns}");
    println!("heals recorded: {heals:?}; errors: {errors}");
    for heal in report.recent_heals.iter().take(3) {
        println!("  e.g. {:?} of {}", heal.kind, heal.operation);
    }
    let expected = WRITERS * INCREMENTS * 10;
    assert_eq!(xp, expected, "no update lost, none applied twice");
    assert!(reruns > 0, "the writers contended for the write lock");
    pool.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
