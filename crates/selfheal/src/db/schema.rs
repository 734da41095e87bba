//! Schema healing at start-up: migrate, compare with what the app declares,
//! repair what is additive, report the rest.
//!
//! The guide's `rebuild_database_if_needed()` "automatically adds missing
//! columns on startup". That is the right instinct for *additive* drift, a
//! column or an index the code expects and the database lacks (a migration
//! that was skipped, a database restored from an old backup): adding it with
//! its default loses nothing and keeps every row. It is the wrong instinct
//! for everything else. A column of the wrong type, a `NOT NULL` column with
//! no default that old rows cannot fill, a table that should have been
//! dropped: "fixing" those means converting, inventing or deleting data, and
//! that is a decision for a person writing a migration, not for a service at
//! 3 a.m.
//!
//! So [`Startup`] does, in order:
//!
//! 1. runs your `sqlx::migrate!` migrations ([`Startup::migrate`]); on
//!    PostgreSQL sqlx holds an advisory lock while it does, so instances
//!    starting together migrate once;
//! 2. installs selfheal's own table (the [idempotency guard](super::guard));
//! 3. compares the [`Schema`] you declare with the live database (SQLite:
//!    `pragma_table_info`, `pragma_index_list`; PostgreSQL: `pg_attribute`,
//!    `pg_index`) and, under a lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL:
//!    an advisory lock), repairs additive drift: `ALTER TABLE … ADD COLUMN`
//!    with the declared default, `CREATE INDEX`, and on PostgreSQL a missing
//!    default (`ALTER COLUMN … SET DEFAULT`). Each repair is a
//!    [`HealKind::SchemaRepaired`] on the monitor;
//! 4. reports everything else as [`Drift`]: a failing health check named
//!    `db.schema` on the monitor, with one line per problem, re-evaluated on
//!    the check's interval (so a migration that fixes it turns it green
//!    without a restart); and, if you asked with
//!    [`Startup::refuse_on_drift`], an error that stops the start-up.
//!
//! What is compared: tables (a missing one is reported: its definition,
//! constraints and keys belong in a migration), columns (presence; type,
//! by SQLite affinity or, on PostgreSQL, by the type the server resolves the
//! declared name to, ignoring lengths and precisions; nullability when you
//! declare it; presence of a default when you declare one), indexes (by
//! name, or by columns and uniqueness under another name), and tables that
//! must be gone ([`Schema::absent_table`]). Columns and tables you do not
//! declare are ignored.
//!
//! Types and defaults are SQL fragments written by the application (like a
//! migration), never user input.
//!
//! ```no_run
//! use selfheal::db::schema::{Column, Index, Schema, Startup, Table};
//!
//! # async fn demo(pool: sqlx::SqlitePool, monitor: selfheal::health::Monitor) -> Result<(), Box<dyn std::error::Error>> {
//! // static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
//! # let migrator = sqlx::migrate::Migrator::DEFAULT;
//! let schema = Schema::new().table(
//!     Table::new("students")
//!         .column(Column::new("id", "INTEGER").not_null())
//!         .column(Column::new("xp", "INTEGER").not_null().default("0"))
//!         .column(Column::new("streak", "INTEGER").not_null().default("0"))
//!         .index(Index::new("students_xp", ["xp"])),
//! );
//! let report = Startup::new(&pool)
//!     .migrate(&migrator)
//!     .declare(schema)
//!     .monitor(monitor)
//!     .refuse_on_drift(true)
//!     .run()
//!     .await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

use std::fmt;

use sqlx::Pool;
use sqlx::migrate::{MigrateError, Migrator};

use super::{Backend, guard, quote_ident};
use crate::health::{CheckOptions, HealKind, Monitor};

/// The schema the application needs: tables, and tables that must be gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    tables: Vec<Table>,
    absent: Vec<String>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a table.
    pub fn table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }

    /// Declares a table that must not exist any more (the app stopped using
    /// it and a migration should have dropped it). Its presence is
    /// reported; it is never dropped.
    pub fn absent_table(mut self, name: impl Into<String>) -> Self {
        self.absent.push(name.into());
        self
    }

    /// The declared tables.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }
}

/// A declared table: its name, the columns and indexes the app needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    name: String,
    columns: Vec<Column>,
    indexes: Vec<Index>,
}

impl Table {
    /// A table named `name` with no columns declared yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            columns: Vec::new(),
            indexes: Vec::new(),
        }
    }

    /// Declares a column.
    pub fn column(mut self, column: Column) -> Self {
        self.columns.push(column);
        self
    }

    /// Declares an index.
    pub fn index(mut self, index: Index) -> Self {
        self.indexes.push(index);
        self
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A declared column. Defaults: nullability not checked (and nullable when
/// added), no default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    name: String,
    ty: String,
    not_null: Option<bool>,
    default: Option<String>,
}

impl Column {
    /// A column `name` of SQL type `ty` (`"INTEGER"`, `"TEXT"`, `"bigint"`,
    /// `"timestamptz"`…).
    pub fn new(name: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ty: ty.into(),
            not_null: None,
            default: None,
        }
    }

    /// The column must be `NOT NULL`.
    pub fn not_null(mut self) -> Self {
        self.not_null = Some(true);
        self
    }

    /// The column must accept `NULL`.
    pub fn nullable(mut self) -> Self {
        self.not_null = Some(false);
        self
    }

    /// The column's default, an SQL expression (`"0"`, `"'free'"`,
    /// `"now()"`): used when the column is added, and its presence checked.
    pub fn default(mut self, expression: impl Into<String>) -> Self {
        self.default = Some(expression.into());
        self
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn definition(&self) -> String {
        let mut sql = format!("{} {}", quote_ident(&self.name), self.ty);
        if self.not_null == Some(true) {
            sql.push_str(" NOT NULL");
        }
        if let Some(default) = &self.default {
            sql.push_str(" DEFAULT ");
            sql.push_str(default);
        }
        sql
    }
}

/// A declared index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    name: String,
    columns: Vec<String>,
    unique: bool,
}

impl Index {
    /// An index `name` on `columns`, in order.
    pub fn new<I, S>(name: impl Into<String>, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            columns: columns.into_iter().map(Into::into).collect(),
            unique: false,
        }
    }

    /// A unique index.
    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    fn create_sql(&self, table: &str) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
            if self.unique { "UNIQUE " } else { "" },
            quote_ident(&self.name),
            quote_ident(table),
            columns.join(", ")
        )
    }
}

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
    /// Whether selfheal repairs this drift on `DB` (it adds, never changes
    /// or removes).
    fn repairable<DB: Backend>(&self) -> bool {
        match self {
            Self::MissingColumn { .. } | Self::MissingIndex { .. } => true,
            Self::MissingDefault { .. } => DB::CAN_SET_DEFAULT,
            _ => false,
        }
    }

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

/// What [`heal`] or [`Startup::run`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Additive drift that was repaired.
    pub repaired: Vec<Drift>,
    /// Drift that was not repaired (a failing health check).
    pub problems: Vec<Drift>,
}

impl Report {
    /// `true` when no problem remains.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
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

async fn diff_on<DB: Backend>(
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

/// Compares `schema` with the live database and repairs additive drift,
/// under a lock (SQLite: one `BEGIN IMMEDIATE` transaction; PostgreSQL: an
/// advisory lock), so that instances starting together repair once. Records
/// each repair on `monitor` as [`HealKind::SchemaRepaired`].
pub async fn heal<DB: Backend>(
    pool: &Pool<DB>,
    schema: &Schema,
    monitor: Option<&Monitor>,
) -> Result<Report, sqlx::Error> {
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
) -> Result<Report, sqlx::Error> {
    let mut report = Report::default();
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
                if let Some(monitor) = monitor {
                    monitor.record_heal(HealKind::SchemaRepaired, &drift.operation());
                }
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

/// Start-up could not complete.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartupError {
    /// The migrations failed.
    Migrate(MigrateError),
    /// The database failed while inspecting or repairing.
    Database(sqlx::Error),
    /// Drift remains and [`Startup::refuse_on_drift`] is set.
    Drift(Report),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Migrate(e) => write!(f, "database migrations failed: {e}"),
            Self::Database(e) => write!(f, "schema check failed: {e}"),
            Self::Drift(report) => {
                write!(
                    f,
                    "the database schema does not match what the application needs, refusing \
                     to start:"
                )?;
                for drift in &report.problems {
                    write!(f, "\n  - {drift}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Migrate(e) => Some(e),
            Self::Database(e) => Some(e),
            Self::Drift(_) => None,
        }
    }
}

impl From<sqlx::Error> for StartupError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// The start-up sequence (see the [module docs](self)): migrations,
/// selfheal's table, schema comparison, additive repair, a health check.
///
/// Defaults: no migrations, no declared schema, guard table installed,
/// repairs on, start-up not refused on drift, no monitor; the check runs
/// every 60 s and is not critical (a drifted column breaks a feature, not
/// the whole service: the status becomes degraded, `/readyz` stays up).
#[derive(Debug)]
#[must_use = "call .run().await"]
pub struct Startup<'a, DB: Backend> {
    pool: &'a Pool<DB>,
    migrator: Option<&'a Migrator>,
    schema: Option<Schema>,
    monitor: Option<Monitor>,
    refuse: bool,
    repair: bool,
    guard_table: bool,
    check: CheckOptions,
}

impl<'a, DB: Backend> Startup<'a, DB> {
    /// Start-up on `pool`, with the defaults.
    pub fn new(pool: &'a Pool<DB>) -> Self {
        Self {
            pool,
            migrator: None,
            schema: None,
            monitor: None,
            refuse: false,
            repair: true,
            guard_table: true,
            check: CheckOptions {
                interval: std::time::Duration::from_secs(60),
                critical: false,
                ..CheckOptions::default()
            },
        }
    }

    /// Runs these migrations first (`sqlx::migrate!()`).
    pub fn migrate(mut self, migrator: &'a Migrator) -> Self {
        self.migrator = Some(migrator);
        self
    }

    /// Compares the live schema with `schema`.
    pub fn declare(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Records repairs on `monitor` and registers the `db.schema` check on it.
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Returns [`StartupError::Drift`] instead of starting when drift
    /// remains after repair.
    pub fn refuse_on_drift(mut self, refuse: bool) -> Self {
        self.refuse = refuse;
        self
    }

    /// Whether to repair additive drift (default `true`); `false` only
    /// reports.
    pub fn repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }

    /// Whether to install selfheal's guard table (default `true`).
    pub fn guard_table(mut self, install: bool) -> Self {
        self.guard_table = install;
        self
    }

    /// How the `db.schema` check runs.
    pub fn check_options(mut self, options: CheckOptions) -> Self {
        self.check = options;
        self
    }

    /// Runs the sequence.
    pub async fn run(self) -> Result<Report, StartupError> {
        if let Some(migrator) = self.migrator {
            DB::migrate(self.pool, migrator)
                .await
                .map_err(StartupError::Migrate)?;
        }
        if self.guard_table {
            guard::install(self.pool).await?;
        }
        let Some(schema) = self.schema else {
            return Ok(Report::default());
        };
        let report = if self.repair {
            heal(self.pool, &schema, self.monitor.as_ref()).await?
        } else {
            Report {
                repaired: Vec::new(),
                problems: diff(self.pool, &schema).await?,
            }
        };
        for problem in &report.problems {
            tracing::error!(target: "selfheal", %problem, "schema drift that selfheal does not repair");
        }
        if let Some(monitor) = &self.monitor {
            let pool = self.pool.clone();
            let schema = schema.clone();
            monitor.register_check("db.schema", self.check.clone(), move || {
                let pool = pool.clone();
                let schema = schema.clone();
                async move {
                    let drift = diff(&pool, &schema).await.map_err(|e| e.to_string())?;
                    if drift.is_empty() {
                        Ok(())
                    } else {
                        Err(drift
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "))
                    }
                }
            });
        }
        if self.refuse && !report.is_healthy() {
            return Err(StartupError::Drift(report));
        }
        Ok(report)
    }
}
