//! Finding drift: the live schema ([`LiveTable`], [`LiveColumn`],
//! [`LiveIndex`]), the differences from the declaration ([`Drift`]), and
//! [`inspect`] and [`diff`], which read the database and change nothing.
//!
//! Kept apart from repairing so that what selfheal *notices* can be read
//! without what it *does*: every difference is found here, and only the few
//! additive ones are ever acted on, in [`heal`](super::heal).

use std::fmt;

use sqlx::Pool;

use super::{Column, Index, Schema};
use crate::db::Backend;

/// A table as it is in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveTable {
    /// Its columns, in order.
    pub columns: Vec<LiveColumn>,
    /// Its indexes (including those behind primary keys and unique
    /// constraints).
    pub indexes: Vec<LiveIndex>,
}

/// A column as it is in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveColumn {
    /// Name.
    pub name: String,
    /// Type, as the database reports it.
    pub ty: String,
    /// Whether it is `NOT NULL`.
    pub not_null: bool,
    /// Its default expression, as the database reports it.
    pub default: Option<String>,
}

/// An index as it is in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveIndex {
    /// Name.
    pub name: String,
    /// Columns, in order (`<expression>` for an expression).
    pub columns: Vec<String>,
    /// Whether it is unique.
    pub unique: bool,
}

/// A difference between the declared schema and the live one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drift {
    /// Additive: a column is missing and can be added (it is nullable or has
    /// a default).
    MissingColumn {
        /// Table.
        table: String,
        /// The declared column.
        column: Column,
    },
    /// Additive: an index is missing.
    MissingIndex {
        /// Table.
        table: String,
        /// The declared index.
        index: Index,
    },
    /// Additive on PostgreSQL (`SET DEFAULT`); reported on SQLite, which
    /// cannot change a column's default in place.
    MissingDefault {
        /// Table.
        table: String,
        /// The declared column.
        column: Column,
    },
    /// A declared table does not exist.
    MissingTable {
        /// Table.
        table: String,
    },
    /// A missing column is `NOT NULL` without a default: existing rows
    /// cannot be given a value.
    NotNullWithoutDefault {
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// A column has another type than declared.
    WrongType {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// Declared type.
        declared: String,
        /// Live type.
        live: String,
    },
    /// A declared type is unknown to the database.
    UnknownType {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// What the database said.
        message: String,
    },
    /// A column's nullability differs from the declaration.
    Nullability {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// Whether the declaration says `NOT NULL`.
        declared_not_null: bool,
    },
    /// An index of that name exists on other columns or with another
    /// uniqueness.
    IndexMismatch {
        /// Table.
        table: String,
        /// The declared index.
        declared: Index,
        /// The live index.
        live: LiveIndex,
    },
    /// A table the app declared absent exists.
    UnexpectedTable {
        /// Table.
        table: String,
    },
    /// An additive repair was attempted and failed.
    RepairFailed {
        /// The drift that could not be repaired.
        drift: Box<Drift>,
        /// The database's error.
        error: String,
    },
}

impl Drift {
    /// The table concerned.
    pub fn table(&self) -> &str {
        match self {
            Self::MissingColumn { table, .. }
            | Self::MissingIndex { table, .. }
            | Self::MissingDefault { table, .. }
            | Self::MissingTable { table }
            | Self::NotNullWithoutDefault { table, .. }
            | Self::WrongType { table, .. }
            | Self::UnknownType { table, .. }
            | Self::Nullability { table, .. }
            | Self::IndexMismatch { table, .. }
            | Self::UnexpectedTable { table } => table,
            Self::RepairFailed { drift, .. } => drift.table(),
        }
    }
}
impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingColumn { table, column } => write!(
                f,
                "column {table}.{} is missing (added as `{}`)",
                column.name,
                column.definition()
            ),
            Self::MissingIndex { table, index } => write!(
                f,
                "index {} on {table} ({}) is missing",
                index.name,
                index.columns.join(", ")
            ),
            Self::MissingDefault { table, column } => write!(
                f,
                "column {table}.{} has no default (declared: {})",
                column.name,
                column.default.as_deref().unwrap_or("NULL")
            ),
            Self::MissingTable { table } => write!(
                f,
                "table {table} does not exist: create it with a migration"
            ),
            Self::NotNullWithoutDefault { table, column } => write!(
                f,
                "column {table}.{column} is missing and is declared NOT NULL without a default: \
                 existing rows have no value for it; add it with a migration that fills it"
            ),
            Self::WrongType {
                table,
                column,
                declared,
                live,
            } => write!(
                f,
                "column {table}.{column} is {live} in the database but declared {declared}: \
                 convert it with a migration (selfheal never changes a column's type)"
            ),
            Self::UnknownType {
                table,
                column,
                message,
            } => write!(f, "column {table}.{column}: {message}"),
            Self::Nullability {
                table,
                column,
                declared_not_null,
            } => {
                if *declared_not_null {
                    write!(
                        f,
                        "column {table}.{column} accepts NULL but is declared NOT NULL"
                    )
                } else {
                    write!(
                        f,
                        "column {table}.{column} is NOT NULL but is declared nullable: writes of \
                         NULL will fail"
                    )
                }
            }
            Self::IndexMismatch {
                table,
                declared,
                live,
            } => write!(
                f,
                "index {} on {table} is {}({}) but declared {}({})",
                declared.name,
                if live.unique { "UNIQUE " } else { "" },
                live.columns.join(", "),
                if declared.unique { "UNIQUE " } else { "" },
                declared.columns.join(", ")
            ),
            Self::UnexpectedTable { table } => write!(
                f,
                "table {table} still exists but the app declares it dropped: drop it with a \
                 migration (selfheal never drops data)"
            ),
            Self::RepairFailed { drift, error } => {
                write!(f, "{drift}; the repair failed: {error}")
            }
        }
    }
}

/// The live table `name` in the current schema, or `None`.
pub async fn inspect<DB: Backend>(
    pool: &Pool<DB>,
    table: &str,
) -> Result<Option<LiveTable>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    DB::live_table(&mut *conn, table).await
}

/// Compares `schema` with the live database; changes nothing.
pub async fn diff<DB: Backend>(
    pool: &Pool<DB>,
    schema: &Schema,
) -> Result<Vec<Drift>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    diff_on::<DB>(&mut *conn, schema).await
}

/// [`diff`] on a connection the caller holds (under the repair lock, in
/// [`heal`](super::heal())).
pub(super) async fn diff_on<DB: Backend>(
    conn: &mut DB::Connection,
    schema: &Schema,
) -> Result<Vec<Drift>, sqlx::Error> {
    let mut drift = Vec::new();
    for table in &schema.tables {
        let Some(live) = DB::live_table(conn, &table.name).await? else {
            drift.push(Drift::MissingTable {
                table: table.name.clone(),
            });
            continue;
        };
        for column in &table.columns {
            let t = || table.name.clone();
            let Some(found) = live.columns.iter().find(|c| c.name == column.name) else {
                if column.not_null == Some(true) && column.default.is_none() {
                    drift.push(Drift::NotNullWithoutDefault {
                        table: t(),
                        column: column.name.clone(),
                    });
                } else {
                    drift.push(Drift::MissingColumn {
                        table: t(),
                        column: column.clone(),
                    });
                }
                continue;
            };
            match DB::same_type(conn, &column.ty, &found.ty).await? {
                Ok(true) => {}
                Ok(false) => drift.push(Drift::WrongType {
                    table: t(),
                    column: column.name.clone(),
                    declared: column.ty.clone(),
                    live: found.ty.clone(),
                }),
                Err(message) => drift.push(Drift::UnknownType {
                    table: t(),
                    column: column.name.clone(),
                    message,
                }),
            }
            if let Some(not_null) = column.not_null
                && not_null != found.not_null
            {
                drift.push(Drift::Nullability {
                    table: t(),
                    column: column.name.clone(),
                    declared_not_null: not_null,
                });
            }
            if column.default.is_some() && found.default.is_none() {
                drift.push(Drift::MissingDefault {
                    table: t(),
                    column: column.clone(),
                });
            }
        }
        for index in &table.indexes {
            match live.indexes.iter().find(|i| i.name == index.name) {
                Some(found) => {
                    if found.columns != index.columns || found.unique != index.unique {
                        drift.push(Drift::IndexMismatch {
                            table: table.name.clone(),
                            declared: index.clone(),
                            live: found.clone(),
                        });
                    }
                }
                None => {
                    let equivalent = live
                        .indexes
                        .iter()
                        .any(|i| i.columns == index.columns && i.unique == index.unique);
                    if !equivalent {
                        drift.push(Drift::MissingIndex {
                            table: table.name.clone(),
                            index: index.clone(),
                        });
                    }
                }
            }
        }
    }
    for absent in &schema.absent {
        if DB::live_table(conn, absent).await?.is_some() {
            drift.push(Drift::UnexpectedTable {
                table: absent.clone(),
            });
        }
    }
    Ok(drift)
}
