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
//! 1. runs your `sqlx::migrate!` migrations ([`Startup::with_migrate`]); on
//!    PostgreSQL sqlx holds an advisory lock while it does, so instances
//!    starting together migrate once;
//! 2. installs selfheal's own table (the [idempotency guard](super::guard)),
//!    and with [`Startup::with_health_ledger`] the
//!    [health ledger](crate::health::ledger)'s, whose declaration is added to
//!    yours;
//! 3. compares the [`Schema`] you declare with the live database (SQLite:
//!    `pragma_table_info`, `pragma_index_list`; PostgreSQL: `pg_attribute`,
//!    `pg_index`) and, under a lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL:
//!    an advisory lock), repairs additive drift: `ALTER TABLE … ADD COLUMN`
//!    with the declared default, `CREATE INDEX`, and on PostgreSQL a missing
//!    default (`ALTER COLUMN … SET DEFAULT`). Each repair is a
//!    [`HealKind::SchemaRepaired`](crate::health::HealKind::SchemaRepaired)
//!    on the monitor;
//! 4. reports everything else as [`Drift`]: a failing health check named
//!    `db.schema` on the monitor, with one line per problem, re-evaluated on
//!    the check's interval (so a migration that fixes it turns it green
//!    without a restart); and, if you asked with
//!    [`Startup::with_refuse_on_drift`], an error that stops the start-up.
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
//!     .with_migrate(&migrator)
//!     .with_declare(schema)
//!     .with_monitor(monitor)
//!     .with_refuse_on_drift(true)
//!     .run()
//!     .await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod declare;
mod drift;
mod heal;

use std::fmt;

use sqlx::Pool;
use sqlx::migrate::{MigrateError, Migrator};

pub use self::declare::{Column, Index, Schema, Table};
pub use self::drift::{Drift, LiveColumn, LiveIndex, LiveTable, diff, inspect};
pub use self::heal::{SchemaReport, heal};
use super::{Backend, guard};
use crate::health::{CheckOptions, Monitor};

/// Start-up could not complete.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartupError {
    /// The migrations failed.
    Migrate(MigrateError),
    /// The database failed while inspecting or repairing.
    Database(sqlx::Error),
    /// Drift remains and [`Startup::with_refuse_on_drift`] is set.
    Drift(SchemaReport),
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
    ledger: bool,
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
            ledger: false,
            check: CheckOptions {
                interval: std::time::Duration::from_secs(60),
                critical: false,
                ..CheckOptions::default()
            },
        }
    }

    /// Runs these migrations first (`sqlx::migrate!()`).
    pub fn with_migrate(mut self, migrator: &'a Migrator) -> Self {
        self.migrator = Some(migrator);
        self
    }

    /// Compares the live schema with `schema`.
    pub fn with_declare(mut self, schema: Schema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Records repairs on `monitor` and registers the `db.schema` check on it.
    pub fn with_monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Returns [`StartupError::Drift`] instead of starting when drift
    /// remains after repair.
    pub fn with_refuse_on_drift(mut self, refuse: bool) -> Self {
        self.refuse = refuse;
        self
    }

    /// Whether to repair additive drift (default `true`); `false` only
    /// reports.
    pub fn with_repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }

    /// Whether to install selfheal's guard table (default `true`).
    pub fn with_guard_table(mut self, install: bool) -> Self {
        self.guard_table = install;
        self
    }

    /// Whether to install the [health ledger](crate::health::ledger)'s
    /// tables and check them with the app's (default `false`): missing
    /// columns added since are repaired like the app's own.
    pub fn with_health_ledger(mut self, install: bool) -> Self {
        self.ledger = install;
        self
    }

    /// How the `db.schema` check runs.
    pub fn with_check_options(mut self, options: CheckOptions) -> Self {
        self.check = options;
        self
    }

    /// Runs the sequence.
    pub async fn run(self) -> Result<SchemaReport, StartupError> {
        if let Some(migrator) = self.migrator {
            DB::migrate(self.pool, migrator)
                .await
                .map_err(StartupError::Migrate)?;
        }
        if self.guard_table {
            guard::install(self.pool).await?;
        }
        let mut schema = self.schema;
        if self.ledger {
            crate::health::ledger::install(&DB::ledger_pool(self.pool)).await?;
            let tables = crate::health::ledger::declare().tables;
            schema.get_or_insert_with(Schema::new).tables.extend(tables);
        }
        let Some(schema) = schema else {
            return Ok(SchemaReport::default());
        };
        let report = if self.repair {
            heal(self.pool, &schema, self.monitor.as_ref()).await?
        } else {
            SchemaReport {
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
