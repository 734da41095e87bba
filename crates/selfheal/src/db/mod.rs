//! Database healing for sqlx: re-run whole transactions, never apply one twice,
//! heal the schema at start-up.
//!
//! # Why re-run the whole transaction, not just the `COMMIT`
//!
//! The guide's `safe_db_commit(db.session)` retries `commit()` when the
//! database says "locked", and rolls back on any other error. That looks
//! harmless and is wrong in both databases selfheal supports:
//!
//! - **PostgreSQL** aborts a transaction that fails with a serialization
//!   failure (`40001`) or a deadlock (`40P01`); its manual (§13.5,
//!   *Serialization Failure Handling*) is explicit that the *complete
//!   transaction* must be retried, together with the application logic that
//!   decided which statements to issue and which values to write: the reads
//!   behind those decisions are stale, and a second `COMMIT` of the aborted
//!   transaction only rolls it back.
//! - **SQLite** refuses a write with `SQLITE_BUSY` when another connection
//!   holds the write lock. A transaction that started with a plain (deferred)
//!   `BEGIN`, read, and then tries to write in WAL mode gets
//!   `SQLITE_BUSY_SNAPSHOT` *at once*, whatever `busy_timeout` says: its
//!   snapshot is older than the last commit, so the values it read may be
//!   stale. Retrying the statement or the commit cannot help; re-reading can.
//!
//! So the unit of retry is the transaction. A [`Runner`] takes a closure that
//! does the reads and writes, and runs *begin, closure, commit* as one attempt
//! under selfheal's one retry engine ([`Policy`]): a transient failure at any
//! step ([classified by code](classify), never by message) rolls back and
//! re-runs the closure from the start, with backoff, under the policy's
//! attempts, deadline and retry budget; a permanent one (a constraint
//! violation, a syntax error, your own application error) rolls back and
//! returns at once. Every re-run is an [`Event::Retry`](crate::observe::Event)
//! on the observer hook (and a [`HealKind::TransactionRerun`] on an attached
//! [`Monitor`]); a give-up is an error under a fingerprint such as
//! `sqlite:BUSY@save_progress` or `pg:40001@save_progress`.
//!
//! Because the closure may run more than once, it must not have side effects
//! outside the transaction (send the email after the runner returns).
//!
//! # Why `BEGIN IMMEDIATE` on SQLite
//!
//! A deferred `BEGIN` takes no lock; the first write tries to upgrade the read
//! snapshot to a write lock, and in WAL mode that upgrade fails with
//! `BUSY_SNAPSHOT` without waiting if anyone committed in between. `BEGIN
//! IMMEDIATE` takes the write lock up front, so it waits (up to
//! `busy_timeout`) *before* reading, and what it reads cannot go stale. The
//! runner starts SQLite transactions with [`sqlite::BEGIN_IMMEDIATE`];
//! [`sqlite::open_pool`] opens a pool with WAL, `synchronous = NORMAL`,
//! foreign keys on and a 5 s `busy_timeout` ([`sqlite::BUSY_TIMEOUT`]), which
//! absorbs most lock waits inside SQLite; the runner's re-runs come on top.
//!
//! # Why an idempotency guard: `commit_unknown_result`
//!
//! When the connection breaks *after* `COMMIT` was sent, the client cannot
//! know whether the server committed: the server may have committed and only
//! its answer was lost. FoundationDB names this error
//! `commit_unknown_result` and warns that blindly retrying may apply the
//! transaction twice; its answer is an idempotency id written by the
//! transaction itself. The [`Guard`] does the same: the runner writes a
//! unique operation id into `selfheal_operations` inside the transaction
//! (one row per run, with the attempt number). When a commit fails
//! ambiguously ([`classify::commit_outcome_unknown`]), the next attempt first
//! looks the id up on a fresh connection: if the row is there the earlier
//! attempt committed, and the runner returns that attempt's value instead of
//! applying the transaction again. If the lookup races with a commit still in
//! flight, the re-run's own insert of the same id waits for it and finds the
//! conflict, and the re-run is rolled back. Old ids are pruned after a
//! retention period.
//!
//! Without the guard, the runner does not re-run after an ambiguous commit
//! (it returns an error whose [`TxError::commit_outcome_unknown`] is `true`),
//! unless you declare the transaction idempotent with
//! [`Runner::assume_idempotent`] (an upsert of fixed values, say).
//!
//! # The simple form
//!
//! [`safe_commit`] is the guide's `safe_db_commit`: commit, roll back on
//! error, return a `Result`. It does not retry, on purpose; prefer the runner.
//!
//! # Schema healing
//!
//! [`schema`] runs your `sqlx::migrate!` migrations at start-up, then
//! compares the schema your app declares with the live one, repairs additive
//! drift (a missing column or index) and reports anything else as a failing
//! health check.
//!
//! # Example
//!
//! ```no_run
//! use selfheal::db::{self, Guard, Runner};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = db::sqlite::open_pool("sqlite://cozmic.db").await?;
//! db::guard::install(&pool).await?;
//! let runner = Runner::new(pool).with_guard(Guard::default());
//!
//! // The guide's `student.xp += 10; safe_db_commit(db.session)`, done right:
//! let xp: i64 = runner
//!     .run("save_progress", async |tx| {
//!         let (xp,): (i64,) = sqlx::query_as("SELECT xp FROM students WHERE id = ?")
//!             .bind(7)
//!             .fetch_one(&mut **tx)
//!             .await?;
//!         sqlx::query("UPDATE students SET xp = ? WHERE id = ?")
//!             .bind(xp + 10)
//!             .bind(7)
//!             .execute(&mut **tx)
//!             .await?;
//!         Ok::<_, sqlx::Error>(xp + 10)
//!     })
//!     .await?;
//! # let _ = xp; Ok(()) }
//! ```

pub mod classify;
pub mod guard;
pub mod postgres;
pub mod schema;
pub mod sqlite;

mod runner;

pub use classify::{AsSqlx, DbClassify};
pub use guard::Guard;
pub use runner::{Runner, TxError, TxStep, safe_commit};

#[cfg(doc)]
use crate::{health::HealKind, health::Monitor, retry::Policy};

/// A database selfheal supports: [`sqlx::Sqlite`] and [`sqlx::Postgres`].
///
/// Sealed: the runner, the guard and the schema healer need a few statements
/// written for each database (the guard's SQL, schema introspection).
pub trait Backend: sqlx::Database + sealed::Sealed {}

impl Backend for sqlx::Sqlite {}
impl Backend for sqlx::Postgres {}

#[allow(unreachable_pub)] // the sealed-trait pattern: public, but unnameable outside
pub(crate) mod sealed {
    use std::future::Future;

    use sqlx::Pool;
    use sqlx::migrate::{MigrateError, Migrator};

    use super::schema::LiveTable;

    pub trait Sealed: sqlx::Database {
        /// `ADD COLUMN`, with `IF NOT EXISTS` where the database has it.
        const ADD_COLUMN: &'static str;

        /// The statement that begins a runner's transaction by default
        /// (`None`: sqlx's own `BEGIN`).
        fn default_begin() -> Option<&'static str>;

        /// Creates the guard table if it does not exist.
        fn install_guard(pool: &Pool<Self>)
        -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Inserts the guard row unless the id exists; returns rows inserted.
        fn insert_guard<'c>(
            conn: &'c mut Self::Connection,
            id: &'c str,
            attempt: u32,
            at_ms: i64,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'c;

        /// The attempt that committed `id`, if any.
        fn find_guard<'c>(
            pool: &'c Pool<Self>,
            id: &'c str,
        ) -> impl Future<Output = Result<Option<u32>, sqlx::Error>> + Send + 'c;

        /// Deletes guard rows committed before `before_ms`.
        fn prune_guard(
            pool: &Pool<Self>,
            before_ms: i64,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + '_;

        /// The live table `name`, or `None` if it does not exist.
        fn live_table<'c>(
            conn: &'c mut Self::Connection,
            name: &'c str,
        ) -> impl Future<Output = Result<Option<LiveTable>, sqlx::Error>> + Send + 'c;

        /// Whether a column declared with `declared` can hold what the live
        /// column of type `live` holds (`Err` with a message when the declared
        /// type is unknown to the database).
        fn same_type<'c>(
            conn: &'c mut Self::Connection,
            declared: &'c str,
            live: &'c str,
        ) -> impl Future<Output = Result<Result<bool, String>, sqlx::Error>> + Send + 'c;

        /// Whether a column's missing default can be added in place.
        const CAN_SET_DEFAULT: bool;

        /// Runs one statement without parameters (schema repairs).
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

        /// Takes the lock under which the schema is repaired.
        fn lock_schema(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

        /// Releases it (`ok`: keep what was done).
        fn unlock_schema(
            conn: &mut Self::Connection,
            ok: bool,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

        /// The pool as the health ledger takes it.
        fn ledger_pool(pool: &Pool<Self>) -> crate::health::ledger::LedgerPool;

        /// Runs the app's migrations.
        fn migrate<'c>(
            pool: &'c Pool<Self>,
            migrator: &'c Migrator,
        ) -> impl Future<Output = Result<(), MigrateError>> + Send + 'c;
    }
}

/// Quotes an SQL identifier (both databases use double quotes).
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Milliseconds since the Unix epoch (the guard's timestamps).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
