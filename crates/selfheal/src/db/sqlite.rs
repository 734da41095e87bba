//! SQLite done right: `BEGIN IMMEDIATE`, WAL, a sane `busy_timeout`.
//!
//! [`open_pool`] opens a pool with the settings a web service wants:
//!
//! | setting | value | why |
//! |---|---|---|
//! | `create_if_missing` | on | a fresh install starts with an empty database, not an error |
//! | `journal_mode` | `WAL` | readers never block the writer and the writer never blocks readers |
//! | `synchronous` | `NORMAL` | with WAL: no fsync per commit; durable across application crashes, and a power loss may lose the last commits but never corrupts the database |
//! | `foreign_keys` | on | constraints are enforced |
//! | `busy_timeout` | 5 s ([`BUSY_TIMEOUT`]) | a connection waiting for the write lock waits inside SQLite first; the [`Runner`](super::Runner)'s re-runs (with backoff) come on top of that, so `BUSY` reaches the runner only after 5 s of waiting |
//!
//! and the [`Runner`](super::Runner) begins SQLite transactions with
//! [`BEGIN_IMMEDIATE`]: the write lock is taken (or waited for) before the
//! first read, so a read-then-write transaction cannot fail with
//! `BUSY_SNAPSHOT` halfway through (see the [module docs](super)).
//!
//! SQLite allows one writer at a time. WAL lets readers run alongside it; the
//! busy timeout and the runner make writers queue up instead of failing.
//!
//! Note: `sqlite::memory:` gives every pooled connection its own, separate
//! database; use a file (or a pool of one connection) for anything shared.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Pool, Row, Sqlite, SqliteConnection};

use super::schema::{LiveColumn, LiveIndex, LiveTable};
use super::sealed::Sealed;

/// The default `busy_timeout` of [`open_pool`]: 5 s (sqlx's own default too).
///
/// Long enough that ordinary write contention on a web service's database
/// is absorbed by waiting inside SQLite, short enough that a stuck writer
/// surfaces as `BUSY` (and a re-run, then an error) rather than a hung
/// request.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The statement the runner begins SQLite transactions with.
pub const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// Connection options with selfheal's settings (table in the
/// [module docs](self)), to adjust before connecting.
///
/// `path_or_url` is either a `sqlite:` URL (`sqlite://data/app.db`,
/// `sqlite:app.db?mode=rwc`) or a plain file path.
///
/// ```
/// use std::time::Duration;
/// let options = selfheal::db::sqlite::connect_options("data/app.db")?
///     .busy_timeout(Duration::from_secs(1));
/// # let _ = options;
/// # Ok::<(), sqlx::Error>(())
/// ```
pub fn connect_options(path_or_url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    let options = if path_or_url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(path_or_url)?
    } else {
        SqliteConnectOptions::new().filename(path_or_url)
    };
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT))
}

/// Opens a pool on `path_or_url` with selfheal's settings (see
/// [`connect_options`] and the [module docs](self)), creating the database
/// file if it is missing.
///
/// ```no_run
/// # async fn demo() -> Result<(), sqlx::Error> {
/// let pool = selfheal::db::sqlite::open_pool("sqlite://cozmic.db").await?;
/// # let _ = pool; Ok(()) }
/// ```
pub async fn open_pool(path_or_url: &str) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .connect_with(connect_options(path_or_url)?)
        .await
}

/// SQLite's type affinity of a declared column type (rules of
/// <https://www.sqlite.org/datatype3.html#determination_of_column_affinity>):
/// what SQLite actually stores, and so what two declarations must agree on.
pub(crate) fn affinity(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "TEXT"
    } else if t.contains("BLOB") || t.trim().is_empty() {
        "BLOB"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "REAL"
    } else {
        "NUMERIC"
    }
}

impl Sealed for Sqlite {
    const ADD_COLUMN: &'static str = "ADD COLUMN";
    const CAN_SET_DEFAULT: bool = false;

    fn ledger_pool(pool: &Pool<Self>) -> crate::health::ledger::LedgerPool {
        pool.clone().into()
    }

    fn default_begin() -> Option<&'static str> {
        Some(BEGIN_IMMEDIATE)
    }

    async fn install_guard(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin_with(BEGIN_IMMEDIATE).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS selfheal_operations (\
                 id TEXT PRIMARY KEY NOT NULL, \
                 attempt INTEGER NOT NULL, \
                 committed_at INTEGER NOT NULL\
             ) WITHOUT ROWID",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "CREATE INDEX IF NOT EXISTS selfheal_operations_committed_at \
             ON selfheal_operations (committed_at)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn insert_guard<'c>(
        conn: &'c mut SqliteConnection,
        id: &'c str,
        attempt: u32,
        at_ms: i64,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO selfheal_operations (id, attempt, committed_at) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(at_ms)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    async fn find_guard<'c>(pool: &'c Pool<Self>, id: &'c str) -> Result<Option<u32>, sqlx::Error> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT attempt FROM selfheal_operations WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        Ok(row.map(|(attempt,)| attempt as u32))
    }

    async fn prune_guard(pool: &Pool<Self>, before_ms: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM selfheal_operations WHERE committed_at < ?")
            .bind(before_ms)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn live_table<'c>(
        conn: &'c mut SqliteConnection,
        name: &'c str,
    ) -> Result<Option<LiveTable>, sqlx::Error> {
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let columns = sqlx::query(
            "SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info(?) ORDER BY cid",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| {
            Ok(LiveColumn {
                name: row.try_get("name")?,
                ty: row.try_get("type")?,
                not_null: row.try_get::<i64, _>("notnull")? != 0,
                default: row.try_get("dflt_value")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let list: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, \"unique\" FROM pragma_index_list(?) ORDER BY seq")
                .bind(name)
                .fetch_all(&mut *conn)
                .await?;
        let mut indexes = Vec::with_capacity(list.len());
        for (index, unique) in list {
            let columns: Vec<(Option<String>,)> =
                sqlx::query_as("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(&mut *conn)
                    .await?;
            indexes.push(LiveIndex {
                name: index,
                // An expression column has no name.
                columns: columns
                    .into_iter()
                    .map(|(c,)| c.unwrap_or_else(|| "<expression>".to_owned()))
                    .collect(),
                unique: unique != 0,
            });
        }
        Ok(Some(LiveTable { columns, indexes }))
    }

    async fn execute<'c>(conn: &'c mut SqliteConnection, sql: &'c str) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .persistent(false)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn lock_schema(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::query(BEGIN_IMMEDIATE)
            .persistent(false)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn unlock_schema(conn: &mut SqliteConnection, ok: bool) -> Result<(), sqlx::Error> {
        let end = if ok { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end)
            .persistent(false)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn migrate<'c>(pool: &'c Pool<Self>, migrator: &'c Migrator) -> Result<(), MigrateError> {
        migrator.run(pool).await
    }

    async fn same_type<'c>(
        _conn: &'c mut SqliteConnection,
        declared: &'c str,
        live: &'c str,
    ) -> Result<Result<bool, String>, sqlx::Error> {
        Ok(Ok(affinity(declared) == affinity(live)))
    }
}

#[cfg(test)]
mod tests {
    use super::affinity;

    #[test]
    fn affinities() {
        assert_eq!(affinity("INTEGER"), "INTEGER");
        assert_eq!(affinity("bigint"), "INTEGER");
        assert_eq!(affinity("VARCHAR(20)"), "TEXT");
        assert_eq!(affinity("TEXT"), "TEXT");
        assert_eq!(affinity(""), "BLOB");
        assert_eq!(affinity("DOUBLE PRECISION"), "REAL");
        assert_eq!(affinity("DECIMAL(10,2)"), "NUMERIC");
        assert_eq!(affinity("BOOLEAN"), "NUMERIC");
    }
}
