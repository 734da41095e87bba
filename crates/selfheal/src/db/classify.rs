//! Which database errors are worth re-running a transaction for, and which
//! commit failures leave the outcome unknown.
//!
//! Classification reads the error's *code*, never its message: SQLite's
//! extended result code, PostgreSQL's SQLSTATE, the kind of an I/O error, the
//! variant of [`sqlx::Error`]. Messages change between versions and locales,
//! codes do not.
//!
//! | error | verdict | failure kind |
//! |---|---|---|
//! | SQLite `BUSY` (5) and its extended codes (`BUSY_RECOVERY` 261, `BUSY_SNAPSHOT` 517, `BUSY_TIMEOUT` 773) | transient | `sqlite:BUSY`, `sqlite:BUSY_SNAPSHOT`, … |
//! | SQLite `LOCKED` (6), `LOCKED_SHAREDCACHE` (262), `LOCKED_VTAB` (518) | transient | `sqlite:LOCKED`, … |
//! | SQLite `PROTOCOL` (15: a WAL locking race) | transient | `sqlite:PROTOCOL` |
//! | PostgreSQL `40001` serialization failure, `40P01` deadlock, `55P03` lock not available (`lock_timeout`), `57014` query canceled (`statement_timeout`), `40003` statement completion unknown | transient | `pg:40001`, … |
//! | PostgreSQL class `08` (connection exception), `57P01`/`57P02`/`57P03` (server shutting down or starting, `pg_terminate_backend`), `53300` too many connections, `55000` object not in prerequisite state (what a database closed to connections answers at connect: `ALLOW_CONNECTIONS false` during maintenance) | transient | `pg:57P01`, … |
//! | an I/O error that is connection-level (reset, aborted, broken pipe, unexpected EOF, timed out…) | transient | `io:ConnectionReset`, … |
//! | [`sqlx::Error::PoolTimedOut`] | transient | `pool:timeout` |
//! | [`sqlx::Error::WorkerCrashed`] (a SQLite connection's thread died; the pool replaces it) | transient | `sqlx:worker_crashed` |
//! | anything else: constraint violations (SQLite 19 and extended, PostgreSQL class 23), syntax and type errors, `RowNotFound`, decode errors, a closed pool… | permanent | `sqlite:CONSTRAINT_UNIQUE`, `pg:23505`, `sqlx:row_not_found`, … |
//!
//! Failure kinds are short and low-cardinality (a bounded set of codes), so
//! they are safe as health-monitor fingerprints.

use std::borrow::Cow;
use std::error::Error as StdError;

use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

use crate::retry::{Classify, Transient, Verdict};

/// Errors that may carry a [`sqlx::Error`]: how the transaction runner (and
/// [`DbClassify`]) find the database error inside your own error type.
///
/// The runner converts its own database errors (from `BEGIN`, `COMMIT` and
/// the idempotency guard) into your error type with `From<sqlx::Error>`, and
/// classifies whatever your closure returns through this trait. An error with
/// no sqlx error inside (`None`) is your application's own answer ("not
/// enough credit") and is never retried: the transaction is rolled back and
/// the error returned at once.
///
/// ```
/// use selfheal::db::AsSqlx;
///
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error("database: {0}")]
///     Db(#[from] sqlx::Error),
///     #[error("not enough credit")]
///     NoCredit,
/// }
///
/// impl AsSqlx for AppError {
///     fn as_sqlx(&self) -> Option<&sqlx::Error> {
///         match self {
///             AppError::Db(e) => Some(e),
///             AppError::NoCredit => None,
///         }
///     }
/// }
/// ```
pub trait AsSqlx {
    /// The sqlx error inside, if any.
    fn as_sqlx(&self) -> Option<&sqlx::Error>;
}

impl AsSqlx for sqlx::Error {
    fn as_sqlx(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

/// Finds a [`sqlx::Error`] in a boxed error by downcasting (the error type of
/// many small services).
impl AsSqlx for Box<dyn StdError + Send + Sync> {
    fn as_sqlx(&self) -> Option<&sqlx::Error> {
        self.downcast_ref::<sqlx::Error>()
    }
}

/// The verdict for one database error. See the [module docs](self).
pub fn verdict(error: &sqlx::Error) -> Verdict {
    match error {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                pg_verdict(pg.code())
            } else if let Some(code) = sqlite_code(db.as_ref()) {
                sqlite_verdict(code)
            } else {
                Verdict::Permanent
            }
        }
        sqlx::Error::Io(io) => io.verdict(),
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// Whether `error` is contention rather than unavailability: the database
/// answered, but a lock or a conflicting transaction stood in the way
/// (SQLite `BUSY`/`LOCKED` and their extended codes; PostgreSQL `40001`,
/// `40P01`, `55P03` `lock_timeout`, `57014` `statement_timeout`). An app
/// tells its users "busy, try again" for these and "cannot reach the
/// database" for the other transient errors.
///
/// ```
/// assert!(!selfheal::db::classify::is_contention(&sqlx::Error::PoolTimedOut));
/// ```
pub fn is_contention(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        matches!(pg.code(), "40001" | "40P01" | "55P03" | "57014")
    } else {
        sqlite_code(db.as_ref()).is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }
}

/// A short, stable name for a database error, for logs and fingerprints:
/// `sqlite:BUSY`, `pg:40001`, `io:ConnectionReset`, `pool:timeout`…
pub fn failure_kind(error: &sqlx::Error) -> Cow<'static, str> {
    match error {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                Cow::Owned(format!("pg:{}", pg.code()))
            } else if let Some(code) = sqlite_code(db.as_ref()) {
                Cow::Borrowed(sqlite_name(code))
            } else {
                Cow::Borrowed("db:other")
            }
        }
        sqlx::Error::Io(io) => Cow::Owned(format!("io:{:?}", io.kind())),
        sqlx::Error::PoolTimedOut => Cow::Borrowed("pool:timeout"),
        sqlx::Error::PoolClosed => Cow::Borrowed("pool:closed"),
        sqlx::Error::WorkerCrashed => Cow::Borrowed("sqlx:worker_crashed"),
        sqlx::Error::RowNotFound => Cow::Borrowed("sqlx:row_not_found"),
        sqlx::Error::Protocol(_) => Cow::Borrowed("sqlx:protocol"),
        sqlx::Error::Tls(_) => Cow::Borrowed("sqlx:tls"),
        sqlx::Error::Configuration(_) => Cow::Borrowed("sqlx:configuration"),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => Cow::Borrowed("sqlx:decode"),
        sqlx::Error::Encode(_) => Cow::Borrowed("sqlx:encode"),
        sqlx::Error::ColumnNotFound(_) | sqlx::Error::ColumnIndexOutOfBounds { .. } => {
            Cow::Borrowed("sqlx:column")
        }
        sqlx::Error::TypeNotFound { .. } => Cow::Borrowed("sqlx:type_not_found"),
        sqlx::Error::Migrate(_) => Cow::Borrowed("sqlx:migrate"),
        sqlx::Error::BeginFailed => Cow::Borrowed("sqlx:begin_failed"),
        _ => Cow::Borrowed("sqlx:other"),
    }
}

/// Whether a failed `COMMIT` may nevertheless have committed.
///
/// A database that answers `COMMIT` with an error of its own (a serialization
/// failure, a deferred constraint, `BUSY`) is alive and tells us the
/// transaction did not commit. But when the connection breaks after `COMMIT`
/// was sent (an I/O error, a protocol error, the server shutting the session
/// down), the server may have committed and only the answer was lost: the
/// outcome is unknown, and re-running the transaction blindly may apply it
/// twice. That is what the idempotency guard is for.
///
/// Unknown: every error that is not a database error; PostgreSQL classes `08`
/// (connection), `57` (operator intervention: `pg_terminate_backend`,
/// shutdown), `58` (system error), `XX` (internal error) and `40003`
/// (statement completion unknown); SQLite `IOERR` (10, and its extended
/// codes: the commit record may have reached the WAL before the error).
pub fn commit_outcome_unknown(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                let code = pg.code();
                code == "40003"
                    || ["08", "57", "58", "XX"]
                        .iter()
                        .any(|class| code.starts_with(class))
            } else if let Some(code) = sqlite_code(db.as_ref()) {
                code & 0xff == 10
            } else {
                true
            }
        }
        _ => true,
    }
}

/// Classifies any error type that implements [`AsSqlx`] with [`verdict`] and
/// [`failure_kind`]; errors without a sqlx error inside are permanent. Use it
/// with the retry engine for single statements outside a transaction
/// (a transaction goes through the [`Runner`](super::Runner)).
///
/// ```
/// use selfheal::db::DbClassify;
/// use selfheal::retry::Policy;
///
/// let policy = Policy::default().with_classifier(DbClassify);
/// # async fn demo(pool: sqlx::SqlitePool, policy: Policy<DbClassify>) -> Result<(), sqlx::Error> {
/// // One autocommit statement: safe to retry as a whole.
/// policy
///     .retry_named("touch_last_seen", || {
///         sqlx::query("UPDATE students SET last_seen = unixepoch() WHERE id = 1").execute(&pool)
///     })
///     .await
///     .map_err(|e| e.into_inner())?;
/// # Ok(()) }
/// # let _ = policy;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DbClassify;

impl<T, E: AsSqlx> Classify<T, E> for DbClassify {
    fn classify_error(&self, error: &E) -> Verdict {
        error.as_sqlx().map_or(Verdict::Permanent, verdict)
    }

    fn failure_kind(&self, outcome: Result<&T, &E>) -> Cow<'static, str> {
        match outcome {
            Ok(_) => Cow::Borrowed("rejected"),
            Err(error) => error.as_sqlx().map_or(Cow::Borrowed("app"), failure_kind),
        }
    }
}

/// `sqlx::Error` knows whether it is transient, so [`ByTrait`](crate::retry::ByTrait)
/// classifies it too (same rules as [`verdict`]).
impl Transient for sqlx::Error {
    fn verdict(&self) -> Verdict {
        verdict(self)
    }
}

/// The extended result code of a SQLite error.
fn sqlite_code(db: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    db.try_downcast_ref::<SqliteError>()?;
    // `SqliteError::code` renders the extended result code in decimal.
    db.code()?.parse().ok()
}

fn sqlite_verdict(code: i32) -> Verdict {
    match code & 0xff {
        // BUSY, LOCKED, PROTOCOL (WAL lock race), with every extended code.
        5 | 6 | 15 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// Transient PostgreSQL SQLSTATEs: see the module table.
fn pg_verdict(code: &str) -> Verdict {
    match code {
        "40001" | "40P01" | "55P03" | "40003" | "57P01" | "57P02" | "57P03" | "53300" | "55000"
        | "57014" => Verdict::Transient,
        _ if code.starts_with("08") => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

/// Names of SQLite result codes (<https://www.sqlite.org/rescode.html>).
fn sqlite_name(code: i32) -> &'static str {
    match code {
        261 => "sqlite:BUSY_RECOVERY",
        517 => "sqlite:BUSY_SNAPSHOT",
        773 => "sqlite:BUSY_TIMEOUT",
        262 => "sqlite:LOCKED_SHAREDCACHE",
        518 => "sqlite:LOCKED_VTAB",
        275 => "sqlite:CONSTRAINT_CHECK",
        531 => "sqlite:CONSTRAINT_COMMITHOOK",
        787 => "sqlite:CONSTRAINT_FOREIGNKEY",
        1043 => "sqlite:CONSTRAINT_FUNCTION",
        1299 => "sqlite:CONSTRAINT_NOTNULL",
        1555 => "sqlite:CONSTRAINT_PRIMARYKEY",
        1811 => "sqlite:CONSTRAINT_TRIGGER",
        2067 => "sqlite:CONSTRAINT_UNIQUE",
        2323 => "sqlite:CONSTRAINT_VTAB",
        2579 => "sqlite:CONSTRAINT_ROWID",
        3091 => "sqlite:CONSTRAINT_DATATYPE",
        1032 => "sqlite:READONLY_DBMOVED",
        _ => match code & 0xff {
            1 => "sqlite:ERROR",
            2 => "sqlite:INTERNAL",
            3 => "sqlite:PERM",
            4 => "sqlite:ABORT",
            5 => "sqlite:BUSY",
            6 => "sqlite:LOCKED",
            7 => "sqlite:NOMEM",
            8 => "sqlite:READONLY",
            9 => "sqlite:INTERRUPT",
            10 => "sqlite:IOERR",
            11 => "sqlite:CORRUPT",
            12 => "sqlite:NOTFOUND",
            13 => "sqlite:FULL",
            14 => "sqlite:CANTOPEN",
            15 => "sqlite:PROTOCOL",
            17 => "sqlite:SCHEMA",
            18 => "sqlite:TOOBIG",
            19 => "sqlite:CONSTRAINT",
            20 => "sqlite:MISMATCH",
            21 => "sqlite:MISUSE",
            23 => "sqlite:AUTH",
            25 => "sqlite:RANGE",
            26 => "sqlite:NOTADB",
            _ => "sqlite:other",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes() {
        for busy in [5, 261, 517, 773, 6, 262, 518, 15] {
            assert_eq!(sqlite_verdict(busy), Verdict::Transient, "{busy}");
        }
        for permanent in [1, 19, 2067, 1555, 787, 1299, 10, 13, 8] {
            assert_eq!(sqlite_verdict(permanent), Verdict::Permanent, "{permanent}");
        }
        assert_eq!(sqlite_name(517), "sqlite:BUSY_SNAPSHOT");
        assert_eq!(sqlite_name(5), "sqlite:BUSY");
        assert_eq!(sqlite_name(266), "sqlite:IOERR");
    }

    #[test]
    fn pg_codes() {
        for transient in [
            "40001", "40P01", "55P03", "40003", "57P01", "08006", "08003", "53300",
        ] {
            assert_eq!(pg_verdict(transient), Verdict::Transient, "{transient}");
        }
        for permanent in ["23505", "42601", "42703", "22P02", "40002", "XX000"] {
            assert_eq!(pg_verdict(permanent), Verdict::Permanent, "{permanent}");
        }
    }

    #[test]
    fn non_database_errors() {
        let reset = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(verdict(&reset), Verdict::Transient);
        assert_eq!(failure_kind(&reset), "io:ConnectionReset");
        assert!(commit_outcome_unknown(&reset));
        assert_eq!(verdict(&sqlx::Error::PoolTimedOut), Verdict::Transient);
        assert_eq!(failure_kind(&sqlx::Error::PoolTimedOut), "pool:timeout");
        assert_eq!(verdict(&sqlx::Error::RowNotFound), Verdict::Permanent);
        assert_eq!(verdict(&sqlx::Error::PoolClosed), Verdict::Permanent);
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(sqlx::Error::PoolTimedOut);
        assert!(boxed.as_sqlx().is_some());
        let other: Box<dyn StdError + Send + Sync> = "no credit".into();
        assert!(other.as_sqlx().is_none());
    }
}
