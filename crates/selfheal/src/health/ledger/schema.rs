//! The ledger's tables: created by [`install`] (selfheal's own migration,
//! like the idempotency guard's, and for the same reason: a migration in the
//! app's `_sqlx_migrations` table would break the app's migrator), and
//! declared by [`declare`] so that the [schema healer](crate::db::schema)
//! repairs additive drift in them like in the app's own.
//!
//! Counts are keyed by instance, resolution (`scale`, the bucket width in
//! milliseconds: the monitor's, an hour, a day) and bucket start (Unix ms):
//! each instance only ever writes its own rows, so instances never contend.

use crate::db::schema::{Column, Index, Schema, Table};

use super::LedgerPool;

/// The ledger's tables, in creation order.
pub const TABLES: [&str; 7] = [
    "selfheal_health_instances",
    "selfheal_health_fingerprints",
    "selfheal_health_errors",
    "selfheal_health_requests",
    "selfheal_health_heals",
    "selfheal_health_attempts",
    "selfheal_health_alerts",
];

/// One statement per table or index; the same text on both databases.
const DDL: [&str; 10] = [
    "CREATE TABLE IF NOT EXISTS selfheal_health_instances (\
         instance_id TEXT NOT NULL PRIMARY KEY, \
         version TEXT NOT NULL DEFAULT '', \
         host TEXT NOT NULL DEFAULT '', \
         started_ms BIGINT NOT NULL, \
         last_seen_ms BIGINT NOT NULL, \
         heartbeat_ms BIGINT NOT NULL, \
         flushed_until BIGINT NOT NULL DEFAULT -1, \
         status TEXT NOT NULL DEFAULT 'healthy', \
         reasons TEXT NOT NULL DEFAULT '', \
         dropped BIGINT NOT NULL DEFAULT 0, \
         stopped_ms BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS selfheal_health_fingerprints (\
         fingerprint TEXT NOT NULL PRIMARY KEY, \
         kind TEXT NOT NULL, \
         operation TEXT NOT NULL, \
         sample TEXT NOT NULL DEFAULT '', \
         first_seen_ms BIGINT NOT NULL, \
         last_seen_ms BIGINT NOT NULL, \
         first_version TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS selfheal_health_errors (\
         instance_id TEXT NOT NULL, \
         scale BIGINT NOT NULL, \
         bucket_ms BIGINT NOT NULL, \
         fingerprint TEXT NOT NULL, \
         count BIGINT NOT NULL, \
         counted BIGINT NOT NULL, \
         PRIMARY KEY (instance_id, scale, bucket_ms, fingerprint))",
    "CREATE INDEX IF NOT EXISTS selfheal_health_errors_time \
         ON selfheal_health_errors (scale, bucket_ms)",
    "CREATE TABLE IF NOT EXISTS selfheal_health_requests (\
         instance_id TEXT NOT NULL, \
         scale BIGINT NOT NULL, \
         bucket_ms BIGINT NOT NULL, \
         requests BIGINT NOT NULL, \
         failed BIGINT NOT NULL, \
         PRIMARY KEY (instance_id, scale, bucket_ms))",
    "CREATE TABLE IF NOT EXISTS selfheal_health_heals (\
         instance_id TEXT NOT NULL, \
         scale BIGINT NOT NULL, \
         bucket_ms BIGINT NOT NULL, \
         kind TEXT NOT NULL, \
         count BIGINT NOT NULL, \
         PRIMARY KEY (instance_id, scale, bucket_ms, kind))",
    "CREATE TABLE IF NOT EXISTS selfheal_health_attempts (\
         instance_id TEXT NOT NULL, \
         scale BIGINT NOT NULL, \
         bucket_ms BIGINT NOT NULL, \
         operation TEXT NOT NULL, \
         outcome TEXT NOT NULL, \
         cause TEXT NOT NULL, \
         attempt BIGINT NOT NULL, \
         count BIGINT NOT NULL, \
         waited_ms BIGINT NOT NULL, \
         PRIMARY KEY (instance_id, scale, bucket_ms, operation, outcome, cause, attempt))",
    "CREATE INDEX IF NOT EXISTS selfheal_health_attempts_time \
         ON selfheal_health_attempts (scale, bucket_ms)",
    "CREATE TABLE IF NOT EXISTS selfheal_health_alerts (\
         rule TEXT NOT NULL, \
         fingerprint TEXT NOT NULL, \
         firing BIGINT NOT NULL, \
         fired_ms BIGINT NOT NULL, \
         resolved_ms BIGINT NOT NULL DEFAULT 0, \
         instance_id TEXT NOT NULL, \
         PRIMARY KEY (rule, fingerprint))",
    "CREATE INDEX IF NOT EXISTS selfheal_health_requests_time \
         ON selfheal_health_requests (scale, bucket_ms)",
];

/// The advisory lock key held on PostgreSQL while the tables are created
/// (ASCII "selfheal" + 2; the guard uses + 0, the schema healer + 1).
const INSTALL_LOCK: i64 = 0x7365_6c66_6865_616c + 2;

/// Creates the ledger's tables and indexes if they do not exist.
/// Idempotent; on PostgreSQL under an advisory lock, so that instances
/// starting together do not race on the catalog.
pub async fn install(pool: &LedgerPool) -> Result<(), sqlx::Error> {
    match pool {
        LedgerPool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for statement in DDL {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        LedgerPool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(INSTALL_LOCK)
                .execute(&mut *tx)
                .await?;
            for statement in DDL {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
    }
}

/// The ledger's tables as a [`Schema`] declaration, for the
/// [schema healer](crate::db::schema::Startup): columns added since a
/// table was created are added back with their defaults, and anything else
/// is reported.
pub fn declare() -> Schema {
    let big = |name: &str| Column::new(name, "BIGINT").not_null();
    let text = |name: &str| Column::new(name, "TEXT").not_null();
    let keyed = |name: &str| {
        Table::new(name)
            .column(text("instance_id"))
            .column(big("scale"))
            .column(big("bucket_ms"))
    };
    Schema::new()
        .table(
            Table::new(TABLES[0])
                .column(text("instance_id"))
                .column(text("version").default("''"))
                .column(text("host").default("''"))
                .column(big("started_ms"))
                .column(big("last_seen_ms"))
                .column(big("heartbeat_ms"))
                .column(big("flushed_until").default("-1"))
                .column(text("status").default("'healthy'"))
                .column(text("reasons").default("''"))
                .column(big("dropped").default("0"))
                .column(big("stopped_ms").default("0")),
        )
        .table(
            Table::new(TABLES[1])
                .column(text("fingerprint"))
                .column(text("kind"))
                .column(text("operation"))
                .column(text("sample").default("''"))
                .column(big("first_seen_ms"))
                .column(big("last_seen_ms"))
                .column(text("first_version").default("''")),
        )
        .table(
            keyed(TABLES[2])
                .column(text("fingerprint"))
                .column(big("count"))
                .column(big("counted"))
                .index(Index::new(
                    "selfheal_health_errors_time",
                    ["scale", "bucket_ms"],
                )),
        )
        .table(
            keyed(TABLES[3])
                .column(big("requests"))
                .column(big("failed"))
                .index(Index::new(
                    "selfheal_health_requests_time",
                    ["scale", "bucket_ms"],
                )),
        )
        .table(keyed(TABLES[4]).column(text("kind")).column(big("count")))
        .table(
            keyed(TABLES[5])
                .column(text("operation"))
                .column(text("outcome"))
                .column(text("cause"))
                .column(big("attempt"))
                .column(big("count"))
                .column(big("waited_ms"))
                .index(Index::new(
                    "selfheal_health_attempts_time",
                    ["scale", "bucket_ms"],
                )),
        )
        .table(
            Table::new(TABLES[6])
                .column(text("rule"))
                .column(text("fingerprint"))
                .column(big("firing"))
                .column(big("fired_ms"))
                .column(big("resolved_ms").default("0"))
                .column(text("instance_id")),
        )
}
