//! The idempotency guard: one row per transaction run, so that a commit whose
//! outcome is unknown is looked up instead of applied twice.
//!
//! The table, created by [`install`] (selfheal's own migration, for SQLite and
//! PostgreSQL):
//!
//! ```sql
//! CREATE TABLE selfheal_operations (
//!     id           TEXT    PRIMARY KEY,  -- 128 random bits, hex; one per Runner::run call
//!     attempt      INTEGER NOT NULL,     -- the attempt whose transaction wrote it
//!     committed_at BIGINT  NOT NULL      -- Unix milliseconds, for pruning
//! );
//! CREATE INDEX selfheal_operations_committed_at ON selfheal_operations (committed_at);
//! ```
//!
//! Why not a `sqlx::migrate!` migration: sqlx keeps one `_sqlx_migrations`
//! table per database, and a migrator refuses to run when the table lists a
//! version it does not know (`VersionMissing`). Migrations of selfheal's own
//! in that table would break your app's migrator. [`install`] is idempotent
//! (`CREATE … IF NOT EXISTS`, under an advisory lock on PostgreSQL so that
//! instances starting together do not race) and cheap enough to run at every
//! start-up; the [schema healer](super::schema::Startup) runs it.
//!
//! A row is only needed while the run that wrote it may still be retrying,
//! which is seconds; rows older than the retention (1 hour by default) are
//! deleted every [`Guard::with_prune_every`] commits, in the background.

use std::time::Duration;

use sqlx::Pool;

use super::{Backend, unix_ms};
use crate::ConfigError;

/// The guard table's name.
pub const TABLE: &str = "selfheal_operations";

/// Configuration of the idempotency guard (see the [module docs](self)).
///
/// Defaults: retention 1 hour, prune every 1,000 commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    retention: Duration,
    prune_every: u32,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

impl Guard {
    /// The defaults: retention 1 hour, prune every 1,000 commits.
    pub const fn new() -> Self {
        Self {
            retention: Duration::from_secs(3600),
            prune_every: 1000,
        }
    }

    /// Keeps ids for `retention` (at least one minute: a row must outlive
    /// every retry of the run that wrote it, deadline included).
    pub fn with_retention(mut self, retention: Duration) -> Result<Self, ConfigError> {
        if retention < Duration::from_secs(60) {
            return Err(ConfigError::new(format!(
                "idempotency guard retention must be at least one minute (it must outlive every \
                 retry of a transaction), got {retention:?}"
            )));
        }
        self.retention = retention;
        Ok(self)
    }

    /// Prunes expired ids once every `commits` guarded commits (at least 1).
    pub fn with_prune_every(mut self, commits: u32) -> Result<Self, ConfigError> {
        if commits == 0 {
            return Err(ConfigError::new(
                "idempotency guard prune interval must be at least 1 commit",
            ));
        }
        self.prune_every = commits;
        Ok(self)
    }

    /// How long ids are kept.
    pub const fn retention(&self) -> Duration {
        self.retention
    }

    /// Every how many commits expired ids are pruned.
    pub const fn prune_every(&self) -> u32 {
        self.prune_every
    }
}

/// Creates the guard table and its index if they do not exist (selfheal's
/// migration). Idempotent; safe to run at every start-up.
pub async fn install<DB: Backend>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    DB::install_guard(pool).await
}

/// Deletes ids committed more than `retention` ago; returns how many.
pub async fn prune<DB: Backend>(pool: &Pool<DB>, retention: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = unix_ms().saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
    DB::prune_guard(pool, cutoff).await
}
