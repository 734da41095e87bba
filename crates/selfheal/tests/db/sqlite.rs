//! SQLite only: the real write lock. Another connection holds it (in bursts,
//! or for good) while the runner, or plain sqlx, works against it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use selfheal::db::{self, Runner, TxStep};
use selfheal::health::{HealKind, Monitor};
use selfheal::observe::Fanout;
use selfheal::observe::testing::Recorder;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection};

use crate::support::{Backend, Sqlite, TempDir, in_tasks, reruns, reruns_by_kind, run};

/// selfheal's options with a short busy timeout, so that lock waits surface
/// as `BUSY` instead of being absorbed inside SQLite.
fn options(dir: &TempDir, busy_timeout: Duration) -> SqliteConnectOptions {
    db::sqlite::connect_options(&dir.db_file())
        .unwrap()
        .busy_timeout(busy_timeout)
}

async fn pool(dir: &TempDir, busy_timeout: Duration) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(10)
        .connect_with(options(dir, busy_timeout))
        .await
        .unwrap()
}

/// Holds the write lock in bursts from its own connection (`BEGIN
/// IMMEDIATE`, hold `hold`, `COMMIT`, rest `rest`) until stopped; returns
/// the number of bursts.
fn spawn_lock_holder(
    options: SqliteConnectOptions,
    hold: Duration,
    rest: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        // The holder itself waits patiently for its turn.
        let mut conn =
            SqliteConnection::connect_with(&options.busy_timeout(Duration::from_secs(5)))
                .await
                .unwrap();
        let mut bursts = 0;
        while !stop.load(Ordering::Relaxed) {
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query("UPDATE holder SET bursts = bursts + 1")
                .execute(&mut conn)
                .await
                .unwrap();
            tokio::time::sleep(hold).await;
            sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
            bursts += 1;
            tokio::time::sleep(rest).await;
        }
        bursts
    })
}

/// A read-modify-write increment: the read decides what is written, so
/// only a re-run of the whole transaction is correct after a conflict.
async fn increment(tx: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let value: i64 = sqlx::query_scalar("SELECT value FROM counter WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE counter SET value = ? WHERE id = 1")
        .bind(value + 1)
        .execute(&mut *tx)
        .await?;
    Ok(value + 1)
}

const TASKS: usize = 8;
const INCREMENTS: usize = 200;
const BUSY_TIMEOUT: Duration = Duration::from_millis(5);
const HOLD: Duration = Duration::from_millis(3);
const REST: Duration = Duration::from_millis(2);

/// The counter and the lock holder's table in `db`, and a pool on it whose
/// lock waits are short.
async fn contended_setup(db: &Sqlite) -> SqlitePool {
    db.counter_table().await;
    db.exec("CREATE TABLE holder (bursts INTEGER NOT NULL)")
        .await;
    db.exec("INSERT INTO holder VALUES (0)").await;
    pool(db.dir(), BUSY_TIMEOUT).await
}

/// The workload: 8 tasks × 200 read-modify-write increments through
/// the runner while another connection holds the write lock in bursts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_keeps_contended_increments_exact() {
    run("runner", Duration::from_secs(120), async |db: &Sqlite| {
        let pool = contended_setup(db).await;
        let recorder = Recorder::new();
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let runner = Runner::new(pool.clone())
            .with_policy(Runner::<sqlx::Sqlite>::default_policy())
            .with_observer(Arc::new(Fanout::new(vec![
                recorder.observer(),
                monitor.observer(),
            ])));
        let stop = Arc::new(AtomicBool::new(false));
        let holder = spawn_lock_holder(options(db.dir(), BUSY_TIMEOUT), HOLD, REST, stop.clone());

        let started = Instant::now();
        let failures = in_tasks(TASKS, INCREMENTS, move || {
            let runner = runner.clone();
            async move {
                runner
                    .run("increment", async |tx| increment(tx).await)
                    .await
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let bursts = holder.await.unwrap();
        let elapsed = started.elapsed();

        let total = db.counter().await;
        let reruns = reruns(&recorder) as u64;
        let report = monitor.report(Duration::from_secs(900));
        println!(
            "sqlite runner: final {total} of {}, {reruns} re-runs {:?}, {} transaction_rerun \
             heals, lock-holder bursts {bursts}, {elapsed:?}",
            TASKS * INCREMENTS,
            reruns_by_kind(&recorder),
            report.heals.get(&HealKind::TransactionRerun).unwrap_or(&0),
        );
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        assert_eq!(total, (TASKS * INCREMENTS) as i64);
        assert!(bursts > 0);
        // The fault was real: the runner did re-run transactions.
        assert!(reruns > 0, "no contention happened");
        assert_eq!(
            report
                .heals
                .get(&HealKind::TransactionRerun)
                .copied()
                .unwrap_or(0),
            reruns
        );
        pool.close().await;
    })
    .await;
}

/// The same workload with plain sqlx transactions: the lock conflicts are
/// real and surface as errors (each one an increment the user lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sqlx_transactions_fail_under_the_same_contention() {
    run("plain", Duration::from_secs(120), async |db: &Sqlite| {
        let pool = contended_setup(db).await;
        let stop = Arc::new(AtomicBool::new(false));
        let holder = spawn_lock_holder(options(db.dir(), BUSY_TIMEOUT), HOLD, REST, stop.clone());

        let plain = pool.clone();
        let failures = in_tasks(TASKS, INCREMENTS, move || {
            let pool = plain.clone();
            async move {
                let mut tx = pool.begin().await?;
                increment(&mut tx).await?;
                tx.commit().await
            }
        })
        .await;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for e in &failures {
            *errors
                .entry(db::classify::failure_kind(e).into_owned())
                .or_default() += 1;
        }
        stop.store(true, Ordering::Relaxed);
        holder.await.unwrap();
        let failed: u64 = errors.values().sum();
        let total = db.counter().await;
        println!(
            "sqlite plain sqlx: final {total} of {}, {failed} failed {errors:?}",
            TASKS * INCREMENTS
        );
        assert!(failed > 0, "the contention produced no failure");
        assert!(
            errors
                .keys()
                .all(|k| k.starts_with("sqlite:BUSY") || k.starts_with("sqlite:LOCKED")),
            "{errors:?}"
        );
        assert_eq!(total + failed as i64, (TASKS * INCREMENTS) as i64);
        pool.close().await;
    })
    .await;
}

/// A lock that never clears: the runner gives up after its attempts, and
/// the give-up is an error on the monitor under the fingerprint
/// `sqlite:BUSY@<operation>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_is_recorded_under_its_code_and_operation() {
    run("give-up", Duration::from_secs(30), async |db: &Sqlite| {
        db.counter_table().await;
        let pool = pool(db.dir(), Duration::from_millis(1)).await;
        // Another connection takes the write lock and keeps it.
        let mut holder = SqliteConnection::connect_with(&options(db.dir(), Duration::from_secs(1)))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let runner = Runner::new(pool.clone())
            .with_policy(
                Runner::<sqlx::Sqlite>::default_policy()
                    .with_max_attempts(3)
                    .unwrap(),
            )
            .with_observer(monitor.observer());
        let error = runner
            .run("save_progress", async |tx| {
                sqlx::query("UPDATE counter SET value = value + 1")
                    .execute(&mut **tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .await
            .unwrap_err();
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        println!("gave up: {error}");
        assert_eq!(error.attempts(), 3);
        assert_eq!(error.step(), TxStep::Begin);
        assert_eq!(error.reason(), selfheal::observe::GiveUpReason::MaxAttempts);
        assert_eq!(error.kind(), "sqlite:BUSY");
        let report = monitor.report(Duration::from_secs(900));
        let fingerprint = report
            .fingerprints
            .iter()
            .find(|f| f.fingerprint == "sqlite:BUSY@save_progress")
            .unwrap_or_else(|| panic!("{:?}", report.fingerprints));
        assert_eq!(fingerprint.count, 1);
        assert_eq!(report.heals.get(&HealKind::TransactionRerun), Some(&2));
        assert_eq!(report.retries, 2);
        assert_eq!(db.counter().await, 0);
        pool.close().await;
    })
    .await;
}

/// Runs cancelled at every moment of their life (a client that hangs up, a
/// request timeout), hundreds of times, with other runs going on: none may
/// leave a connection inside a transaction. sqlx 0.8.6's custom `BEGIN` on
/// SQLite has an await point after SQLite began the transaction and before
/// a `Transaction` exists to roll it back (it asks the worker thread for the
/// handle, to check the transaction began); a run cancelled there left a
/// pooled connection holding the write lock for good, and every writer on
/// other connections failed after its busy timeout (a chaos run wedged with
/// half its writes failing). The runner begins in a task of its own, which
/// finishes even when the run is cancelled. Without that task this test
/// failed on its first run: a whole run gave up on `database is locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_cancelled_at_any_moment_leave_no_transaction_behind() {
    run(
        "cancelled-anywhere",
        Duration::from_secs(60),
        async |db: &Sqlite| {
            db.counter_table().await;
            let pool = pool(db.dir(), Duration::from_secs(5)).await;
            let runner = Runner::new(pool.clone());
            let mut rng = fastrand::Rng::with_seed(7);
            let mut cancelled = 0;
            for round in 0..400u32 {
                // Two runs at once, one of them cut short after a random
                // delay around a begin's length.
                let cut = Duration::from_micros(rng.u64(0..=400 + u64::from(round % 4) * 200));
                let short = tokio::time::timeout(
                    cut,
                    runner.run("cut", async |tx| {
                        sqlx::query("UPDATE counter SET value = value + 1")
                            .execute(&mut **tx)
                            .await?;
                        Ok::<_, sqlx::Error>(())
                    }),
                );
                let whole = runner.run("whole", async |tx| {
                    sqlx::query("UPDATE counter SET value = value + 1")
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                });
                let (short, whole) = tokio::join!(short, whole);
                cancelled += usize::from(short.is_err());
                whole.expect("a whole run commits");
            }
            println!("{cancelled} of 400 runs cancelled");
            assert!(
                cancelled > 0,
                "no run was cut short: the test tests nothing"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            // No pooled connection is left inside a transaction: another
            // writer gets the lock at once.
            let mut writer =
                SqliteConnection::connect_with(&options(db.dir(), Duration::from_secs(2)))
                    .await
                    .unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut writer)
                .await
                .expect("a writer gets the lock: no cancelled run kept it");
            sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
            // And no pooled connection thinks it is inside a transaction.
            let mut held = Vec::new();
            for _ in 0..pool.size() {
                held.push(pool.acquire().await.unwrap());
            }
            for conn in &held {
                assert!(
                    !conn.is_in_transaction(),
                    "a pooled connection kept a transaction"
                );
            }
            drop(held);
            pool.close().await;
        },
    )
    .await;
}

/// A run cancelled while its `BEGIN IMMEDIATE` waits for the lock (a
/// request timeout, a client gone) leaves no transaction behind: once the
/// lock is free, another writer gets it. A connection returned to the pool
/// inside a transaction would hold SQLite's write lock for good and fail
/// every writer; sqlx 0.8 rolls such a begin back, and this keeps it so
/// (a cancellation just *after* the begin is the next test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_while_begin_waits_leaves_no_lock_behind() {
    run(
        "cancelled-begin",
        Duration::from_secs(30),
        async |db: &Sqlite| {
            db.counter_table().await;
            // Patient connections: the begin waits for the lock inside SQLite.
            let pool = pool(db.dir(), Duration::from_secs(5)).await;
            let runner = Runner::new(pool.clone());
            let mut holder =
                SqliteConnection::connect_with(&options(db.dir(), Duration::from_secs(1)))
                    .await
                    .unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut holder)
                .await
                .unwrap();
            for _ in 0..3 {
                let cancelled = tokio::time::timeout(
                    Duration::from_millis(200),
                    runner.run("cancelled", async |tx| {
                        sqlx::query("UPDATE counter SET value = value + 1")
                            .execute(&mut **tx)
                            .await?;
                        Ok::<_, sqlx::Error>(())
                    }),
                )
                .await;
                assert!(cancelled.is_err(), "the run should still be waiting");
            }
            // The lock is free; the cancelled begins get it in turn, and must
            // give it back.
            sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut writer =
                SqliteConnection::connect_with(&options(db.dir(), Duration::from_secs(3)))
                    .await
                    .unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut writer)
                .await
                .expect("a writer gets the lock: no cancelled begin kept it");
            sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
            // And the pool's connections are all usable: nothing ran twice or
            // half.
            runner
                .run("after", async |tx| {
                    sqlx::query("UPDATE counter SET value = value + 1")
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                })
                .await
                .unwrap();
            assert_eq!(db.counter().await, 1);
            pool.close().await;
        },
    )
    .await;
}
