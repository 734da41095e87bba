//! `selfheal::db` against real SQLite databases (files in a temporary
//! directory, WAL mode): lock contention, permanent errors, the guard table,
//! schema healing.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use selfheal::db::schema::{self, Column, Drift, Index, Schema, Startup, StartupError, Table};
use selfheal::db::{self, Guard, Runner, TxStep};
use selfheal::health::{HealKind, Monitor};
use selfheal::observe::{Event, Fanout, Observer};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection};

/// A database file in its own temporary directory, removed on drop.
struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("selfheal-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self) -> String {
        self.dir.join("test.db").to_str().unwrap().to_owned()
    }

    /// selfheal's options with a short busy timeout, so that lock waits
    /// surface as `BUSY` instead of being absorbed inside SQLite.
    fn options(&self, busy_timeout: Duration) -> SqliteConnectOptions {
        db::sqlite::connect_options(&self.path())
            .unwrap()
            .busy_timeout(busy_timeout)
    }

    async fn pool(&self, busy_timeout: Duration) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(10)
            .connect_with(self.options(busy_timeout))
            .await
            .unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts retry events by failure kind.
#[derive(Debug, Default)]
struct Retries {
    total: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
}

impl Observer for Retries {
    fn on_event(&self, event: &Event<'_>) {
        if let Event::Retry { failure, .. } = event {
            self.total.fetch_add(1, Ordering::Relaxed);
            *self
                .by_kind
                .lock()
                .unwrap()
                .entry(failure.kind.to_owned())
                .or_default() += 1;
        }
    }
}

/// Bounds a test in time.
async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test)
        .await
        .expect("test took too long")
}

async fn counter_table(pool: &SqlitePool) {
    sqlx::query("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO counter (id, value) VALUES (1, 0)")
        .execute(pool)
        .await
        .unwrap();
}

async fn counter(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT value FROM counter WHERE id = 1")
        .fetch_one(pool)
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

const TASKS: usize = 8;
const INCREMENTS: usize = 200;
const BUSY_TIMEOUT: Duration = Duration::from_millis(5);
const HOLD: Duration = Duration::from_millis(3);
const REST: Duration = Duration::from_millis(2);

async fn contended_setup(name: &str) -> (TempDb, SqlitePool) {
    let db = TempDb::new(name);
    let pool = db.pool(BUSY_TIMEOUT).await;
    counter_table(&pool).await;
    sqlx::query("CREATE TABLE holder (bursts INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO holder VALUES (0)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool)
}

/// The workload: 8 tasks × 200 read-modify-write increments through
/// the runner while another connection holds the write lock in bursts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_keeps_contended_increments_exact() {
    bounded(Duration::from_secs(120), async {
        let (db, pool) = contended_setup("runner").await;
        let retries = Arc::new(Retries::default());
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let runner = Runner::new(pool.clone())
            .with_policy(Runner::<sqlx::Sqlite>::default_policy())
            .with_observer(Arc::new(Fanout::new(vec![
                retries.clone(),
                monitor.observer(),
            ])));
        let stop = Arc::new(AtomicBool::new(false));
        let holder = spawn_lock_holder(db.options(BUSY_TIMEOUT), HOLD, REST, stop.clone());

        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let runner = runner.clone();
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..INCREMENTS {
                    let outcome = runner
                        .run("increment", async |tx| {
                            let value: i64 =
                                sqlx::query_scalar("SELECT value FROM counter WHERE id = 1")
                                    .fetch_one(&mut **tx)
                                    .await?;
                            sqlx::query("UPDATE counter SET value = ? WHERE id = 1")
                                .bind(value + 1)
                                .execute(&mut **tx)
                                .await?;
                            Ok::<_, sqlx::Error>(value + 1)
                        })
                        .await;
                    if let Err(e) = outcome {
                        failures.push(e.to_string());
                    }
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for task in tasks {
            failures.extend(task.await.unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let bursts = holder.await.unwrap();
        let elapsed = started.elapsed();

        let total = counter(&pool).await;
        let by_kind = retries.by_kind.lock().unwrap().clone();
        let report = monitor.report(Duration::from_secs(900));
        println!(
            "sqlite runner: final {total} of {}, {} re-runs {by_kind:?}, {} transaction_rerun \
             heals, lock-holder bursts {bursts}, {elapsed:?}",
            TASKS * INCREMENTS,
            retries.total.load(Ordering::Relaxed),
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
        assert!(
            retries.total.load(Ordering::Relaxed) > 0,
            "no contention happened"
        );
        assert_eq!(
            report
                .heals
                .get(&HealKind::TransactionRerun)
                .copied()
                .unwrap_or(0),
            retries.total.load(Ordering::Relaxed)
        );
        drop(db);
    })
    .await;
}

/// The same workload with plain sqlx transactions: the lock conflicts are
/// real and surface as errors (each one an increment the user lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sqlx_transactions_fail_under_the_same_contention() {
    bounded(Duration::from_secs(120), async {
        let (db, pool) = contended_setup("plain").await;
        let stop = Arc::new(AtomicBool::new(false));
        let holder = spawn_lock_holder(db.options(BUSY_TIMEOUT), HOLD, REST, stop.clone());

        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..INCREMENTS {
                    let outcome: Result<(), sqlx::Error> = async {
                        let mut tx = pool.begin().await?;
                        let value: i64 =
                            sqlx::query_scalar("SELECT value FROM counter WHERE id = 1")
                                .fetch_one(&mut *tx)
                                .await?;
                        sqlx::query("UPDATE counter SET value = ? WHERE id = 1")
                            .bind(value + 1)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await
                    }
                    .await;
                    if let Err(e) = outcome {
                        *errors
                            .entry(db::classify::failure_kind(&e).into_owned())
                            .or_default() += 1;
                    }
                }
                errors
            }));
        }
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for task in tasks {
            for (kind, n) in task.await.unwrap() {
                *errors.entry(kind).or_default() += n;
            }
        }
        stop.store(true, Ordering::Relaxed);
        holder.await.unwrap();
        let failed: u64 = errors.values().sum();
        let total = counter(&pool).await;
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
        drop(db);
    })
    .await;
}

/// A unique violation is permanent: the body runs once, its earlier writes
/// are rolled back, and the error comes back with its code.
#[tokio::test]
async fn a_permanent_error_is_attempted_once_and_rolled_back() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("permanent");
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        sqlx::query("CREATE TABLE emails (address TEXT PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE log (line TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO emails VALUES ('ada@example.com')")
            .execute(&pool)
            .await
            .unwrap();
        let runner = Runner::new(pool.clone());
        let runs = AtomicU32::new(0);
        let error = runner
            .run("register", async |tx| {
                runs.fetch_add(1, Ordering::Relaxed);
                sqlx::query("INSERT INTO log VALUES ('registering')")
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("INSERT INTO emails VALUES ('ada@example.com')")
                    .execute(&mut **tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .await
            .unwrap_err();
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        assert!(error.is_permanent());
        assert_eq!(error.attempts(), 1);
        assert_eq!(error.step(), TxStep::Body);
        assert_eq!(error.kind(), "sqlite:CONSTRAINT_PRIMARYKEY");
        assert!(!error.commit_outcome_unknown());
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM log")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(logged, 0, "the transaction was not rolled back");
    })
    .await;
}

/// An application error (no sqlx error inside) is the app's answer: rolled
/// back, returned at once, never re-run.
#[tokio::test]
async fn an_application_error_is_returned_at_once() {
    #[derive(Debug, thiserror::Error)]
    enum AppError {
        #[error(transparent)]
        Db(#[from] sqlx::Error),
        #[error("not enough credit")]
        NoCredit,
    }
    impl db::AsSqlx for AppError {
        fn as_sqlx(&self) -> Option<&sqlx::Error> {
            match self {
                AppError::Db(e) => Some(e),
                AppError::NoCredit => None,
            }
        }
    }

    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("app-error");
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        counter_table(&pool).await;
        let runner = Runner::new(pool.clone());
        let runs = AtomicU32::new(0);
        let error = runner
            .run("spend", async |tx| {
                runs.fetch_add(1, Ordering::Relaxed);
                sqlx::query("UPDATE counter SET value = value - 5")
                    .execute(&mut **tx)
                    .await?;
                Err::<(), _>(AppError::NoCredit)
            })
            .await
            .unwrap_err();
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        assert!(matches!(error.inner(), AppError::NoCredit));
        assert_eq!(error.kind(), "app");
        assert_eq!(counter(&pool).await, 0);
    })
    .await;
}

/// The guarded runner writes one id per run; `prune` deletes expired ids.
#[tokio::test]
async fn the_guard_records_one_id_per_run_and_prunes() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("guard");
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        counter_table(&pool).await;
        db::guard::install(&pool).await.unwrap();
        db::guard::install(&pool).await.unwrap(); // idempotent
        let runner = Runner::new(pool.clone()).with_guard(Guard::default());
        for _ in 0..5 {
            runner
                .run("increment", async |tx| {
                    sqlx::query("UPDATE counter SET value = value + 1")
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                })
                .await
                .unwrap();
        }
        let ids: i64 = sqlx::query_scalar("SELECT count(DISTINCT id) FROM selfheal_operations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ids, 5);
        assert_eq!(counter(&pool).await, 5);
        // Nothing is old enough yet ...
        assert_eq!(runner.prune().await.unwrap(), 0);
        // ... until it is.
        sqlx::query("UPDATE selfheal_operations SET committed_at = committed_at - 7200000")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(runner.prune().await.unwrap(), 5);
    })
    .await;
}

fn students_schema() -> Schema {
    Schema::new().table(
        Table::new("students")
            .column(Column::new("id", "INTEGER"))
            .column(Column::new("name", "TEXT").not_null())
            .column(Column::new("xp", "INTEGER").not_null().default("0"))
            .column(Column::new("plan", "TEXT").default("'free'"))
            .index(Index::new("students_xp", ["xp"])),
    )
}

/// A database missing a column (and an index) gets them, with the default,
/// and keeps its rows; the repairs are heals on the monitor.
#[tokio::test]
async fn a_missing_column_is_added_with_its_default_and_rows_are_kept() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("drift-missing");
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        // An old database: no `xp`, no `plan`, no index.
        sqlx::query("CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO students (name) VALUES ('Ada'), ('Grace')")
            .execute(&pool)
            .await
            .unwrap();
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let report = Startup::new(&pool)
            .with_declare(students_schema())
            .with_monitor(monitor.clone())
            .with_refuse_on_drift(true)
            .run()
            .await
            .unwrap();
        println!("{report}");
        assert!(report.is_healthy(), "{report}");
        assert_eq!(report.repaired.len(), 3, "{report}");
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, xp, plan FROM students ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                ("Ada".to_owned(), 0, "free".to_owned()),
                ("Grace".to_owned(), 0, "free".to_owned())
            ]
        );
        let live = schema::inspect(&pool, "students").await.unwrap().unwrap();
        assert!(live.indexes.iter().any(|i| i.name == "students_xp"));
        let heals = monitor.report(Duration::from_secs(900)).heals;
        assert_eq!(heals.get(&HealKind::SchemaRepaired), Some(&3));
        // The check passes, and a second start-up has nothing to do.
        assert!(monitor.run_checks().await);
        let again = Startup::new(&pool)
            .with_declare(students_schema())
            .run()
            .await
            .unwrap();
        assert_eq!(again, schema::SchemaReport::default());
        // selfheal's own table came with it.
        assert!(
            schema::inspect(&pool, "selfheal_operations")
                .await
                .unwrap()
                .is_some()
        );
    })
    .await;
}

/// A column of the wrong type is reported (a failing check, an error when
/// start-up refuses) and left untouched, data included.
#[tokio::test]
async fn a_wrong_type_column_is_reported_and_left_untouched() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("drift-type");
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        sqlx::query(
            "CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             xp TEXT NOT NULL DEFAULT 'lots', plan TEXT DEFAULT 'free')",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO students (name) VALUES ('Ada')")
            .execute(&pool)
            .await
            .unwrap();
        let monitor = Monitor::builder().with_global(false).build().unwrap();

        // Not refusing: start-up goes on, the check fails with a clear message.
        let report = Startup::new(&pool)
            .with_declare(students_schema())
            .with_monitor(monitor.clone())
            .run()
            .await
            .unwrap();
        println!("{report}");
        assert!(
            report.problems.iter().any(|d| matches!(
                d,
                Drift::WrongType { column, .. } if column == "xp"
            )),
            "{report}"
        );
        assert!(!monitor.run_checks().await);
        let check = monitor
            .checks()
            .into_iter()
            .find(|c| c.name == "db.schema")
            .unwrap();
        let message = check.message.unwrap();
        println!("check db.schema: {message}");
        assert!(message.contains("students.xp is TEXT in the database but declared INTEGER"));
        let xp: String = sqlx::query_scalar("SELECT xp FROM students")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(xp, "lots", "data was touched");
        let live = schema::inspect(&pool, "students").await.unwrap().unwrap();
        assert_eq!(
            live.columns.iter().find(|c| c.name == "xp").unwrap().ty,
            "TEXT"
        );

        // Refusing: start-up fails with the same explanation.
        let refused = Startup::new(&pool)
            .with_declare(students_schema())
            .with_refuse_on_drift(true)
            .run()
            .await
            .unwrap_err();
        assert!(matches!(refused, StartupError::Drift(_)));
        println!("{refused}");
        assert!(refused.to_string().contains("refusing to start"));
    })
    .await;
}

/// Start-up runs real sqlx migrations, then heals what they left out, and
/// reports what cannot be healed (a NOT NULL column without a default, a
/// table that should be gone).
#[tokio::test]
async fn migrations_run_then_drift_is_healed_or_reported() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("migrate");
        let migrations = db.dir.join("migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(
            migrations.join("0001_students.sql"),
            "CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
             CREATE TABLE legacy_sessions (id INTEGER PRIMARY KEY);\n\
             INSERT INTO students (name) VALUES ('Ada');\n",
        )
        .unwrap();
        let migrator = sqlx::migrate::Migrator::new(migrations.as_path())
            .await
            .unwrap();
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        let schema = Schema::new()
            .table(
                Table::new("students")
                    .column(Column::new("xp", "BIGINT").not_null().default("0"))
                    .column(Column::new("email", "TEXT").not_null()),
            )
            .absent_table("legacy_sessions");
        let report = Startup::new(&pool)
            .with_migrate(&migrator)
            .with_declare(schema)
            .run()
            .await
            .unwrap();
        println!("{report}");
        assert_eq!(report.repaired.len(), 1);
        assert!(report.problems.iter().any(|d| matches!(
            d,
            Drift::NotNullWithoutDefault { column, .. } if column == "email"
        )));
        assert!(
            report.problems.iter().any(
                |d| matches!(d, Drift::UnexpectedTable { table } if table == "legacy_sessions")
            )
        );
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(applied, 1);
        let xp: i64 = sqlx::query_scalar("SELECT xp FROM students")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(xp, 0);
    })
    .await;
}

/// `safe_commit` (the guide's simple form) commits, and reports a failure
/// as a `Result` with the transaction rolled back.
#[tokio::test]
async fn safe_commit_commits_or_returns_the_error() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("safe-commit");
        let pool = db::sqlite::open_pool(&db.path()).await.unwrap();
        counter_table(&pool).await;
        sqlx::query("CREATE TABLE children (parent INTEGER NOT NULL REFERENCES counter (id) DEFERRABLE INITIALLY DEFERRED)")
            .execute(&pool)
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE counter SET value = 1")
            .execute(&mut *tx)
            .await
            .unwrap();
        db::safe_commit(tx).await.unwrap();
        assert_eq!(counter(&pool).await, 1);

        // A deferred foreign key fails at COMMIT.
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE counter SET value = 2")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO children VALUES (42)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let error = db::safe_commit(tx).await.unwrap_err();
        assert_eq!(db::classify::failure_kind(&error), "sqlite:CONSTRAINT_FOREIGNKEY");
        assert_eq!(counter(&pool).await, 1);
    })
    .await;
}

/// A lock that never clears: the runner gives up after its attempts, and
/// the give-up is an error on the monitor under the fingerprint
/// `sqlite:BUSY@<operation>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_up_is_recorded_under_its_code_and_operation() {
    bounded(Duration::from_secs(30), async {
        let db = TempDb::new("give-up");
        let pool = db.pool(Duration::from_millis(1)).await;
        counter_table(&pool).await;
        // Another connection takes the write lock and keeps it.
        let mut holder = SqliteConnection::connect_with(&db.options(Duration::from_secs(1)))
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
        assert_eq!(counter(&pool).await, 0);
    })
    .await;
}
