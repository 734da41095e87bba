//! The cases that hold on both backends, written once against
//! [`Backend`] and run on each (`common::sqlite::*`, `common::postgres::*`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use selfheal::db::schema::{self, Column, Drift, Index, Schema, Startup, StartupError, Table};
use selfheal::db::{self, Guard, Runner, TxStep};
use selfheal::health::{HealKind, Monitor};

use crate::support::{Backend, TempDir, schema_check_message};

/// Runs each case on SQLite and on PostgreSQL, as a test of its own.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::support::run::<crate::support::Sqlite>(stringify!($case), std::time::Duration::from_secs(30), super::$case).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::support::run::<crate::support::Postgres>(stringify!($case), std::time::Duration::from_secs(30), super::$case).await;
            })*
        }
    };
}

both_backends!(
    a_permanent_error_is_attempted_once_and_rolled_back,
    an_application_error_is_returned_at_once,
    the_guard_records_one_id_per_run_and_prunes,
    a_missing_column_is_added_with_its_default_and_rows_are_kept,
    a_wrong_type_column_is_reported_and_left_untouched,
    migrations_run_then_drift_is_healed_or_reported,
    safe_commit_commits_or_returns_the_error,
);

/// A unique violation is permanent: the body runs once (at the strictest
/// isolation), its earlier writes are rolled back, and the error comes back
/// with its code.
async fn a_permanent_error_is_attempted_once_and_rolled_back<B: Backend>(db: &B) {
    db.exec("CREATE TABLE emails (address TEXT PRIMARY KEY)")
        .await;
    db.exec("CREATE TABLE log (line TEXT)").await;
    db.exec("INSERT INTO emails VALUES ('ada@example.com')")
        .await;
    let runner = B::serializable(Runner::new(db.pool().clone()));
    let runs = AtomicU32::new(0);
    let error = runner
        .run("register", async |tx| {
            runs.fetch_add(1, Ordering::Relaxed);
            B::execute(&mut **tx, "INSERT INTO log VALUES ('registering')").await?;
            B::execute(&mut **tx, "INSERT INTO emails VALUES ('ada@example.com')").await?;
            Ok::<_, sqlx::Error>(())
        })
        .await
        .unwrap_err();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert!(error.is_permanent());
    assert_eq!(error.attempts(), 1);
    assert_eq!(error.step(), TxStep::Body);
    assert_eq!(error.kind(), B::UNIQUE_VIOLATION);
    assert!(!error.commit_outcome_unknown());
    let logged = db.select("SELECT count(*) FROM log").await;
    assert_eq!(logged, 0, "the transaction was not rolled back");
}

/// An application error (no sqlx error inside) is the app's answer: rolled
/// back, returned at once, never re-run.
async fn an_application_error_is_returned_at_once<B: Backend>(db: &B) {
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

    db.counter_table().await;
    let runner = Runner::new(db.pool().clone());
    let runs = AtomicU32::new(0);
    let error = runner
        .run("spend", async |tx| {
            runs.fetch_add(1, Ordering::Relaxed);
            B::execute(&mut **tx, "UPDATE counter SET value = value - 5").await?;
            Err::<(), _>(AppError::NoCredit)
        })
        .await
        .unwrap_err();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert!(matches!(error.inner(), AppError::NoCredit));
    assert_eq!(error.kind(), "app");
    assert_eq!(db.counter().await, 0);
}

/// The guarded runner writes one id per run; `prune` deletes expired ids.
async fn the_guard_records_one_id_per_run_and_prunes<B: Backend>(db: &B) {
    db.counter_table().await;
    db::guard::install(db.pool()).await.unwrap();
    db::guard::install(db.pool()).await.unwrap(); // idempotent
    let runner = Runner::new(db.pool().clone()).with_guard(Guard::default());
    for _ in 0..5 {
        runner
            .run("increment", async |tx| {
                B::execute(&mut **tx, "UPDATE counter SET value = value + 1").await?;
                Ok::<_, sqlx::Error>(())
            })
            .await
            .unwrap();
    }
    let ids = db
        .select("SELECT count(DISTINCT id) FROM selfheal_operations")
        .await;
    assert_eq!(ids, 5);
    assert_eq!(db.counter().await, 5);
    // Nothing is old enough yet ...
    assert_eq!(runner.prune().await.unwrap(), 0);
    // ... until it is.
    db.exec("UPDATE selfheal_operations SET committed_at = committed_at - 7200000")
        .await;
    assert_eq!(runner.prune().await.unwrap(), 5);
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
async fn a_missing_column_is_added_with_its_default_and_rows_are_kept<B: Backend>(db: &B) {
    // An old database: no `xp`, no `plan`, no index.
    db.exec("CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .await;
    db.exec("INSERT INTO students (id, name) VALUES (1, 'Ada'), (2, 'Grace')")
        .await;
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let report = Startup::new(db.pool())
        .with_declare(students_schema())
        .with_monitor(monitor.clone())
        .with_refuse_on_drift(true)
        .run()
        .await
        .unwrap();
    println!("{report}");
    assert!(report.is_healthy(), "{report}");
    assert_eq!(report.repaired.len(), 3, "{report}");
    let rows = db
        .select_strings(
            "SELECT name || ' ' || CAST(xp AS TEXT) || ' ' || plan FROM students ORDER BY id",
        )
        .await;
    assert_eq!(rows, ["Ada 0 free", "Grace 0 free"]);
    let live = schema::inspect(db.pool(), "students")
        .await
        .unwrap()
        .unwrap();
    assert!(live.indexes.iter().any(|i| i.name == "students_xp"));
    let heals = monitor.report(Duration::from_secs(900)).heals;
    assert_eq!(heals.get(&HealKind::SchemaRepaired), Some(&3));
    // The check passes, and a second start-up has nothing to do.
    assert!(monitor.run_checks().await);
    let again = Startup::new(db.pool())
        .with_declare(students_schema())
        .run()
        .await
        .unwrap();
    assert_eq!(again, schema::SchemaReport::default());
    // selfheal's own table came with it.
    assert!(
        schema::inspect(db.pool(), "selfheal_operations")
            .await
            .unwrap()
            .is_some()
    );
}

/// A column of the wrong type is reported (a failing check, an error when
/// start-up refuses) and left untouched, data included.
async fn a_wrong_type_column_is_reported_and_left_untouched<B: Backend>(db: &B) {
    db.exec(
        "CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         xp TEXT NOT NULL DEFAULT 'lots', plan TEXT DEFAULT 'free')",
    )
    .await;
    db.exec("INSERT INTO students (id, name) VALUES (1, 'Ada')")
        .await;
    let monitor = Monitor::builder().with_global(false).build().unwrap();

    // Not refusing: start-up goes on, the check fails with a clear message.
    let report = Startup::new(db.pool())
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
    let message = schema_check_message(&monitor);
    let expected = format!(
        "students.xp is {} in the database but declared INTEGER",
        B::TEXT
    );
    assert!(message.contains(&expected), "{message}");
    let xp = db.select_strings("SELECT xp FROM students").await;
    assert_eq!(xp, ["lots"], "data was touched");
    let live = schema::inspect(db.pool(), "students")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        live.columns.iter().find(|c| c.name == "xp").unwrap().ty,
        B::TEXT
    );

    // Refusing: start-up fails with the same explanation.
    let refused = Startup::new(db.pool())
        .with_declare(students_schema())
        .with_refuse_on_drift(true)
        .run()
        .await
        .unwrap_err();
    assert!(matches!(refused, StartupError::Drift(_)));
    println!("{refused}");
    assert!(refused.to_string().contains("refusing to start"));
}

/// Start-up runs real sqlx migrations, then heals what they left out, and
/// reports what cannot be healed (a NOT NULL column without a default, a
/// table that should be gone).
async fn migrations_run_then_drift_is_healed_or_reported<B: Backend>(db: &B) {
    let dir = TempDir::new("migrations");
    std::fs::write(
        dir.path().join("0001_students.sql"),
        "CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
         CREATE TABLE legacy_sessions (id INTEGER PRIMARY KEY);\n\
         INSERT INTO students (id, name) VALUES (1, 'Ada');\n",
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let schema = Schema::new()
        .table(
            Table::new("students")
                .column(Column::new("xp", "BIGINT").not_null().default("0"))
                .column(Column::new("email", "TEXT").not_null()),
        )
        .absent_table("legacy_sessions");
    let report = Startup::new(db.pool())
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
        report
            .problems
            .iter()
            .any(|d| matches!(d, Drift::UnexpectedTable { table } if table == "legacy_sessions"))
    );
    let applied = db.select("SELECT count(*) FROM _sqlx_migrations").await;
    assert_eq!(applied, 1);
    let xp = db.select("SELECT xp FROM students").await;
    assert_eq!(xp, 0);
}

/// `safe_commit` (the guide's simple form) commits, and reports a failure
/// as a `Result` with the transaction rolled back.
async fn safe_commit_commits_or_returns_the_error<B: Backend>(db: &B) {
    db.counter_table().await;
    db.exec(
        "CREATE TABLE children (parent INTEGER NOT NULL REFERENCES counter (id) \
         DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;
    let mut tx = db.pool().begin().await.unwrap();
    B::execute(&mut tx, "UPDATE counter SET value = 1")
        .await
        .unwrap();
    db::safe_commit(tx).await.unwrap();
    assert_eq!(db.counter().await, 1);

    // A deferred foreign key fails at COMMIT.
    let mut tx = db.pool().begin().await.unwrap();
    B::execute(&mut tx, "UPDATE counter SET value = 2")
        .await
        .unwrap();
    B::execute(&mut tx, "INSERT INTO children VALUES (42)")
        .await
        .unwrap();
    let error = db::safe_commit(tx).await.unwrap_err();
    assert_eq!(db::classify::failure_kind(&error), B::FOREIGN_KEY_VIOLATION);
    assert_eq!(db.counter().await, 1);
}
