//! The database: SQLite by default, PostgreSQL by URL, every write through
//! selfheal's transaction runner.
//!
//! Why a runner and not `pool.begin()`: the guide's `safe_db_commit` retries
//! the *commit* when SQLite says "database is locked". A commit is not the
//! unit to retry: the transaction is. The runner re-runs the whole closure
//! on a lock conflict or a PostgreSQL serialization failure, and its
//! idempotency guard looks up a commit whose outcome was lost instead of
//! applying it twice. Every write below is one `run` call, so "+10 XP and a
//! ledger row" and "a student and their welcome email" are all-or-nothing.
//!
//! The two backends share every query (`$1` placeholders work in both); the
//! `on_db!` macro compiles each body once per backend, and `transaction!`
//! runs a write's transaction body through the runner of either.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use selfheal::db::schema::{Column, Index, Schema, Startup, Table};
use selfheal::db::{Guard, Runner, TxError};
use selfheal::health::Monitor;
use selfheal::retry::Policy;
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use crate::config::{Config, Healing};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The app's database: a runner on one of the two backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite (WAL, `BEGIN IMMEDIATE`).
    Sqlite(Runner<Sqlite>),
    /// PostgreSQL.
    Postgres(Runner<Postgres>),
}

/// Runs `$body` with `$r` bound to the backend's runner; the body is
/// compiled once per backend.
macro_rules! on_db {
    ($db:expr, $r:ident => $body:expr) => {
        match $db {
            Db::Sqlite($r) => $body,
            Db::Postgres($r) => $body,
        }
    };
}

/// The future of write transaction `$name` on whichever backend `$db` is:
/// `|$tx| $body` is the transaction body (run, and re-run on a conflict,
/// by the runner), compiled once per backend. The future owns a clone of
/// the `Db`, so it is `'static`; the body must own what it uses.
macro_rules! transaction {
    ($db:expr, $name:literal, |$tx:ident| $body:block) => {{
        let this = $db.clone();
        async move { on_db!(&this, r => r.run($name, async move |$tx| $body).await) }
    }};
}

type Result<T> = std::result::Result<T, TxError<sqlx::Error>>;

/// Puts an email in the outbox, inside the caller's transaction `$tx`.
macro_rules! enqueue {
    ($tx:expr, $recipient:expr, $email:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO outbox (recipient, subject, body, kind, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind($recipient.to_owned())
        .bind($email.subject.clone())
        .bind($email.body.clone())
        .bind($email.kind.clone())
        .bind($now)
        .execute(&mut **$tx)
        .await
    };
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// The future of a work queue's claim on one row of `$table`, for
/// `$lease`: one statement that picks the first row (by id) matching
/// `$pick` and stamps it with `$set`, returning `$returning`, so that only
/// the claimer works on it until the lease runs out; `Result<Option<T>>`,
/// `T` the caller's row type. In `$pick` and `$set`, `$1` is now and `$2`
/// the lease's end (milliseconds since the epoch), and `$3` is now minus
/// `$age` (an `Option<Duration>`: bound only when `Some`). PostgreSQL skips
/// rows another worker's transaction is stamping right now (`FOR UPDATE
/// SKIP LOCKED`); SQLite has one writer at a time.
macro_rules! claim {
    ($db:expr, $name:literal, $table:literal, pick: $pick:literal, set: $set:literal,
     returning: $returning:literal, $lease:expr, $age:expr $(,)?) => {{
        let lease_ms = $lease.as_millis() as i64;
        let age_ms: Option<i64> = $age.map(|a: Duration| a.as_millis() as i64);
        let this = $db.clone();
        let postgres = matches!(this, Db::Postgres(_));
        async move {
            on_db!(&this, r => r.run($name, async move |tx| {
                let now = now_ms();
                let sql = if !postgres {
                    concat!(
                        "UPDATE ", $table, " SET ", $set, " WHERE id = (SELECT id FROM ", $table,
                        " WHERE ", $pick, " ORDER BY id LIMIT 1) RETURNING ", $returning
                    )
                } else {
                    concat!(
                        "UPDATE ", $table, " SET ", $set, " WHERE id = (SELECT id FROM ", $table,
                        " WHERE ", $pick, " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ",
                        $returning
                    )
                };
                let query = sqlx::query_as(sql).bind(now).bind(now + lease_ms);
                match age_ms {
                    Some(age) => query.bind(now - age),
                    None => query,
                }
                .fetch_optional(&mut **tx)
                .await
            })
            .await)
        }
    }};
}

// The submodules come after the macros above, which they use.
mod meta;
mod outbox;
mod payments;
mod progress;
mod questions;
mod students;

pub use outbox::{NewEmail, OutboxEmail};
pub use payments::UnsettledPayment;
pub use progress::{Activity, Completion, Integrity, LESSON_XP, XP_PER_LEVEL, level};
pub use questions::Question;
pub use students::{SignupError, Student};

impl Db {
    /// Opens the database `config` names, runs the migrations, installs the
    /// guard table and heals additive schema drift (reported on `monitor`).
    pub async fn open(config: &Config, monitor: &Monitor) -> anyhow::Result<Self> {
        let url = config.database_url();
        let heal = config.healing == Healing::On;
        let db = if url.starts_with("postgres") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                // A request waits at most 3 s for a connection while the
                // server is unreachable, then answers a friendly 503.
                .acquire_timeout(Duration::from_secs(3))
                // lock_timeout 3 s, statement_timeout 10 s: a table lock
                // held by a migration is a friendly 503, not a hang.
                .connect_with(selfheal::db::postgres::connect_options(&url)?)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
            Startup::new(&pool)
                .with_migrate(&POSTGRES_MIGRATIONS)
                .with_declare(schema())
                .with_monitor(monitor.clone())
                .with_health_ledger(true)
                .run()
                .await?;
            Db::Postgres(runner(Runner::new(pool), heal, monitor)?)
        } else {
            crate::config::create_private_dir(&config.data_dir)?;
            let options = if heal {
                selfheal::db::sqlite::connect_options(&url)?
            } else {
                // The naive app: sqlx's defaults (rollback journal, a 5 s
                // busy timeout), deferred `BEGIN`, no re-runs.
                url.parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .create_if_missing(true)
            };
            // Password hashes and sessions: a new database file is 0600.
            let file = options.get_filename();
            let name = file.to_string_lossy();
            if !name.is_empty() && !name.starts_with(':') && !name.starts_with("file:") {
                crate::config::create_private_file(file)?;
            }
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the SQLite database: {e}"))?;
            Startup::new(&pool)
                .with_migrate(&SQLITE_MIGRATIONS)
                .with_declare(schema())
                .with_monitor(monitor.clone())
                .with_health_ledger(true)
                .run()
                .await?;
            Db::Sqlite(runner(Runner::new(pool), heal, monitor)?)
        };
        db.ensure_instance_tag().await?;
        Ok(db)
    }

    /// The pool as the health ledger takes it (the ledger's tables are
    /// installed and healed by [`Db::open`]).
    pub fn ledger_pool(&self) -> selfheal::health::ledger::LedgerPool {
        match self {
            Db::Sqlite(r) => r.pool().clone().into(),
            Db::Postgres(r) => r.pool().clone().into(),
        }
    }

    /// The SQLite pool, if that is the backend.
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Db::Sqlite(r) => Some(r.pool()),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, if that is the backend.
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(r) => Some(r.pool()),
            Db::Sqlite(_) => None,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_db!(self, r => r.pool().close().await)
    }

    /// Whether the database answers (the readiness check).
    pub async fn ping(&self) -> std::result::Result<(), sqlx::Error> {
        on_db!(self, r => sqlx::query("SELECT 1").execute(r.pool()).await.map(|_| ()))
    }
}

fn runner<DB: selfheal::db::Backend>(
    runner: Runner<DB>,
    heal: bool,
    monitor: &Monitor,
) -> anyhow::Result<Runner<DB>> {
    let runner = runner.with_observer(monitor.observer());
    Ok(if heal {
        runner.with_guard(Guard::new())
    } else {
        // One attempt, a plain deferred BEGIN: a lock conflict the busy
        // timeout does not absorb is the user's error page.
        runner
            .with_policy(Policy::default().with_max_attempts(1)?.without_budget())
            .with_begin("BEGIN")
    })
}

/// The schema the code expects, for start-up healing: a database restored
/// from before a column existed gets it back (with its default) instead of
/// failing every query that names it.
fn schema() -> Schema {
    let bigint = |name: &str| Column::new(name, "BIGINT").not_null().default("0");
    Schema::new()
        .table(
            Table::new("students")
                .column(bigint("xp"))
                .column(bigint("streak"))
                .column(Column::new("last_active_day", "BIGINT").nullable())
                .column(bigint("is_admin"))
                .column(bigint("premium")),
        )
        .table(Table::new("xp_ledger").index(Index::new("xp_ledger_student", ["student_id", "id"])))
        .table(Table::new("questions").index(Index::new("questions_student", ["student_id", "id"])))
        .table(
            Table::new("outbox")
                .column(bigint("attempts"))
                .column(Column::new("failed_at", "BIGINT").nullable())
                .column(Column::new("last_error", "TEXT").nullable())
                .column(Column::new("claimed_until", "BIGINT").nullable())
                .index(Index::new("outbox_due", ["sent_at", "next_attempt_at"])),
        )
        .table(Table::new("payments").column(Column::new("check_after", "BIGINT").nullable()))
}
