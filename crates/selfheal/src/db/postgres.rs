//! PostgreSQL specifics: isolation levels for the runner, and the statements
//! behind the guard and the schema healer.
//!
//! The runner begins PostgreSQL transactions with a plain `BEGIN` (READ
//! COMMITTED, the server's default). A read-modify-write transaction that
//! must see a consistent snapshot should run SERIALIZABLE
//! ([`BEGIN_SERIALIZABLE`] with [`Runner::with_begin`](super::Runner::with_begin)):
//! PostgreSQL then aborts one of two conflicting transactions with `40001`,
//! and the runner re-runs it, which is exactly the retry loop §13.5 of the
//! manual asks applications to have.
//!
//! Tables are looked up in `current_schema()` (the first schema of the
//! `search_path`).
//!
//! # Bounded waits
//!
//! A PostgreSQL session waits for a lock as long as it is held, and a
//! statement runs as long as it runs: a migration that takes
//! `ACCESS EXCLUSIVE` on a table, a `VACUUM FULL`, an administrator's open
//! transaction, and every request that touches the table hangs behind it,
//! holding a pool connection, until the pool is exhausted and the whole app
//! is down for one lock. [`connect_options`] sets `lock_timeout` (3 s) and
//! `statement_timeout` (10 s) on every connection: a lock that is not
//! granted in time fails with `55P03`, a statement that runs too long with
//! `57014`, both transient for the runner, which re-runs the transaction
//! until its deadline and then gives up with an error the app answers as
//! "busy, try again" (503 with `Retry-After`).

use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, Pool, Postgres, Row};

/// `lock_timeout` set by [`connect_options`].
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(3);

/// `statement_timeout` set by [`connect_options`].
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection options for `url` with selfheal's bounded waits
/// ([`LOCK_TIMEOUT`], [`STATEMENT_TIMEOUT`]; see the [module docs](self)).
/// Settings given in the URL's `options` parameter come first and are kept
/// unless they set the same variables.
///
/// ```
/// let options = selfheal::db::postgres::connect_options("postgres://app@db/app").unwrap();
/// # let _ = options;
/// ```
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.options([
        ("lock_timeout", format!("{}ms", LOCK_TIMEOUT.as_millis())),
        (
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        ),
    ]))
}

use super::schema::{LiveColumn, LiveIndex, LiveTable};
use super::sealed::Sealed;

/// `BEGIN ISOLATION LEVEL SERIALIZABLE`.
pub const BEGIN_SERIALIZABLE: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// `BEGIN ISOLATION LEVEL REPEATABLE READ`.
pub const BEGIN_REPEATABLE_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";

/// The advisory lock key `install` holds while creating the guard table
/// (ASCII "selfheal").
const INSTALL_LOCK: i64 = 0x7365_6c66_6865_616c;

/// The advisory lock key held while the schema is repaired.
const SCHEMA_LOCK: i64 = INSTALL_LOCK + 1;

/// The `oid` of table `name` in the current schema.
const TABLE_OID: &str = "(SELECT c.oid FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relname = $1 AND n.nspname = current_schema() AND c.relkind IN ('r', 'p'))";

impl Sealed for Postgres {
    const ADD_COLUMN: &'static str = "ADD COLUMN IF NOT EXISTS";
    const CAN_SET_DEFAULT: bool = true;

    fn ledger_pool(pool: &Pool<Self>) -> crate::health::ledger::LedgerPool {
        pool.clone().into()
    }

    fn default_begin() -> Option<&'static str> {
        None
    }

    async fn install_guard(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        // Instances starting together would race on CREATE TABLE IF NOT
        // EXISTS (a unique violation in the catalog); the lock serializes them.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INSTALL_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS selfheal_operations (\
                 id TEXT PRIMARY KEY, \
                 attempt INTEGER NOT NULL, \
                 committed_at BIGINT NOT NULL)",
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
        conn: &'c mut PgConnection,
        id: &'c str,
        attempt: u32,
        at_ms: i64,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO selfheal_operations (id, attempt, committed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(attempt as i32)
        .bind(at_ms)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    async fn find_guard<'c>(pool: &'c Pool<Self>, id: &'c str) -> Result<Option<u32>, sqlx::Error> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT attempt FROM selfheal_operations WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        Ok(row.map(|(attempt,)| attempt as u32))
    }

    async fn prune_guard(pool: &Pool<Self>, before_ms: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM selfheal_operations WHERE committed_at < $1")
            .bind(before_ms)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn live_table<'c>(
        conn: &'c mut PgConnection,
        name: &'c str,
    ) -> Result<Option<LiveTable>, sqlx::Error> {
        let exists: Option<(bool,)> = sqlx::query_as(&format!("SELECT {TABLE_OID} IS NOT NULL"))
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
        if !matches!(exists, Some((true,))) {
            return Ok(None);
        }
        let columns = sqlx::query(&format!(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty, \
                    a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS dflt \
             FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = {TABLE_OID} AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum"
        ))
        .bind(name)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| {
            Ok(LiveColumn {
                name: row.try_get("name")?,
                ty: row.try_get("ty")?,
                not_null: row.try_get("not_null")?,
                default: row.try_get("dflt")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let indexes = sqlx::query(&format!(
            "SELECT i.relname::text AS name, ix.indisunique AS uniq, \
                    array_agg(coalesce(a.attname::text, '<expression>') ORDER BY k.ord) AS cols \
             FROM pg_index ix \
             JOIN pg_class i ON i.oid = ix.indexrelid \
             CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             LEFT JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum \
             WHERE ix.indrelid = {TABLE_OID} \
             GROUP BY i.relname, ix.indisunique \
             ORDER BY i.relname"
        ))
        .bind(name)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| {
            Ok(LiveIndex {
                name: row.try_get("name")?,
                columns: row.try_get("cols")?,
                unique: row.try_get("uniq")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(LiveTable { columns, indexes }))
    }

    async fn execute<'c>(conn: &'c mut PgConnection, sql: &'c str) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .persistent(false)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn lock_schema(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn unlock_schema(conn: &mut PgConnection, _ok: bool) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SCHEMA_LOCK)
            .execute(conn)
            .await
            .map(drop)
    }

    async fn migrate<'c>(pool: &'c Pool<Self>, migrator: &'c Migrator) -> Result<(), MigrateError> {
        migrator.run(pool).await
    }

    async fn same_type<'c>(
        conn: &'c mut PgConnection,
        declared: &'c str,
        live: &'c str,
    ) -> Result<Result<bool, String>, sqlx::Error> {
        // The server resolves aliases (int = int4 = integer, varchar =
        // character varying, timestamptz…); type modifiers (lengths,
        // precisions) are not compared.
        let (declared_oid, live_oid): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT to_regtype($1)::oid::int8, to_regtype($2)::oid::int8")
                .bind(declared)
                .bind(live)
                .fetch_one(conn)
                .await?;
        Ok(match declared_oid {
            None => Err(format!(
                "declared type `{declared}` is not a type PostgreSQL knows (declare the real \
                 type: `integer` with a default, not `serial`)"
            )),
            Some(oid) => Ok(Some(oid) == live_oid),
        })
    }
}
