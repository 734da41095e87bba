//! Repairing: which drift is additive, the SQL that repairs it, and
//! [`heal`], which runs that SQL under a lock and says what it did in a
//! [`SchemaReport`].
//!
//! Only additions (a column, an index, a default on PostgreSQL) are ever
//! repaired; everything else found in [`drift`](super::drift) is reported
//! as it is.

use std::fmt;

use sqlx::Pool;

use super::drift::diff_on;
use super::{Drift, Schema};
use crate::db::{Backend, quote_ident};
use crate::health::Monitor;
use crate::observe::{self, Event, HealKind, Observer};

impl Drift {
    /// Whether selfheal repairs this drift on `DB` (it adds, never changes
    /// or removes).
    fn repairable<DB: Backend>(&self) -> bool {
        match self {
            Self::MissingColumn { .. } | Self::MissingIndex { .. } => true,
            Self::MissingDefault { .. } => DB::CAN_SET_DEFAULT,
            _ => false,
        }
    }

    fn repair_sql<DB: Backend>(&self) -> Option<String> {
        match self {
            Self::MissingColumn { table, column } => Some(format!(
                "ALTER TABLE {} {} {}",
                quote_ident(table),
                DB::ADD_COLUMN,
                column.definition()
            )),
            Self::MissingIndex { table, index } => Some(index.create_sql(table)),
            Self::MissingDefault { table, column } if DB::CAN_SET_DEFAULT => Some(format!(
                "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}",
                quote_ident(table),
                quote_ident(&column.name),
                column.default.as_deref().unwrap_or("NULL")
            )),
            _ => None,
        }
    }

    /// The operation name under which a repair is recorded.
    fn operation(&self) -> String {
        match self {
            Self::MissingColumn { table, column } | Self::MissingDefault { table, column } => {
                format!("schema:{table}.{}", column.name)
            }
            Self::MissingIndex { table, index } => format!("schema:{table}:{}", index.name),
            other => format!("schema:{}", other.table()),
        }
    }
}

/// What [`heal`] or [`Startup::run`](super::Startup::run) found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaReport {
    /// Additive drift that was repaired.
    pub repaired: Vec<Drift>,
    /// Drift that was not repaired (a failing health check).
    pub problems: Vec<Drift>,
}

impl SchemaReport {
    /// `true` when no problem remains.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for SchemaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.repaired.is_empty() && self.problems.is_empty() {
            return f.write_str("schema matches the declaration");
        }
        for drift in &self.repaired {
            writeln!(f, "repaired: {drift}")?;
        }
        for drift in &self.problems {
            writeln!(f, "problem: {drift}")?;
        }
        Ok(())
    }
}

/// Compares `schema` with the live database and repairs additive drift,
/// under a lock (SQLite: one `BEGIN IMMEDIATE` transaction; PostgreSQL: an
/// advisory lock), so that instances starting together repair once. Records
/// each repair on `monitor` as [`HealKind::SchemaRepaired`].
pub async fn heal<DB: Backend>(
    pool: &Pool<DB>,
    schema: &Schema,
    monitor: Option<&Monitor>,
) -> Result<SchemaReport, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    DB::lock_schema(&mut *conn).await?;
    let outcome = heal_locked::<DB>(&mut *conn, schema, monitor).await;
    let unlocked = DB::unlock_schema(&mut *conn, outcome.is_ok()).await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the pool.
        conn.close_on_drop();
    }
    let report = outcome?;
    unlocked?;
    Ok(report)
}

async fn heal_locked<DB: Backend>(
    conn: &mut DB::Connection,
    schema: &Schema,
    monitor: Option<&Monitor>,
) -> Result<SchemaReport, sqlx::Error> {
    let mut report = SchemaReport::default();
    for drift in diff_on::<DB>(conn, schema).await? {
        if !drift.repairable::<DB>() {
            report.problems.push(drift);
            continue;
        }
        let Some(sql) = drift.repair_sql::<DB>() else {
            report.problems.push(drift);
            continue;
        };
        match DB::execute(conn, &sql).await {
            Ok(()) => {
                tracing::warn!(target: "selfheal", %drift, sql, "schema repaired");
                observe::emit(
                    monitor.map(|m| m as &dyn Observer),
                    &Event::Heal {
                        kind: HealKind::SchemaRepaired,
                        operation: &drift.operation(),
                    },
                );
                report.repaired.push(drift);
            }
            Err(error) => report.problems.push(Drift::RepairFailed {
                drift: Box::new(drift),
                error: error.to_string(),
            }),
        }
    }
    Ok(report)
}
