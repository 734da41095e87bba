//! The health ledger: the monitor's closed buckets kept in the app's own
//! database, so that health outlives the process and covers the fleet.
//!
//! # Why
//!
//! The [`Monitor`] lives in one process's memory for one hour. Services run
//! as several instances behind a load balancer and restart at every deploy,
//! and three things break there: the guide's alert rule ("the same error more
//! than 10 times in an hour") never fires when three instances each see 4, and
//! fires three times when each sees 11; the dashboard shows whichever
//! instance the load balancer picked, and a deploy wipes it; and "review
//! health logs monthly" has nothing to review.
//!
//! Sentry, or Prometheus with Alertmanager, fix that with a service of their
//! own to run. Every instance of a selfheal app already shares one database
//! (PostgreSQL for a fleet, SQLite for a single instance): the ledger writes
//! there, with nothing new to operate.
//!
//! # How
//!
//! - **The record path is untouched.** A supervised background task copies
//!   the monitor's *closed* buckets out of its lock-free rings once per
//!   bucket (1 minute by default): errors per fingerprint (count, kind,
//!   operation, the one redacted and truncated sample the monitor already
//!   keeps), heals per kind, requests and failures, and per operation which
//!   attempt recovered. Recording an error costs exactly what it did.
//! - **A database that is down delays flushes, never a request.** Closed
//!   buckets wait in a bounded buffer ([`LedgerBuilder::with_buffer`], 60 by
//!   default); past it the oldest are dropped and counted
//!   ([`LedgerStats::dropped_buckets`](super::LedgerStats), shown in the
//!   [`Report`](super::Report)). Writes are exactly-once per instance and
//!   bucket: a bucket whose commit outcome was lost is not counted twice.
//! - **Rolled up as written.** Each bucket is added to its minute, its hour
//!   and its day row in the same transaction, so a bucket that arrives late
//!   (after an outage) still lands in the right hour and no rollup job can
//!   fall behind; retention deletes each resolution past its horizon
//!   ([`Retention`]: 48 hours of minutes, 90 days of hours, 2 years of days).
//! - **The fleet.** Each instance heartbeats (id, version, host, start, last
//!   seen, status); [`Ledger::fleet`] merges fingerprints across instances
//!   with per-instance counts and flags instances silent for more than two
//!   heartbeats.
//! - **Alerts once per fleet.** With a ledger running, the monitor's alert
//!   rules are evaluated on the fleet's counts (4 + 4 + 4 is 12), and each
//!   notice is claimed through a row of the database (an upsert that
//!   succeeds for one instance only), so one alert and one resolved notice
//!   leave the fleet, whichever instances see the error. Rules run every
//!   5 s (the monitor's evaluation interval, if longer) on the fleet's
//!   written buckets plus this instance's unwritten ones, so an alert does
//!   not wait for a bucket to close; a resolution waits two flushes after
//!   the firing, until every instance's part is written. While the database
//!   is unreachable an instance falls back to its own view, and says so (a
//!   degraded condition on its monitor).
//! - **History and review.** [`Ledger::history`] gives 24 h / 7 d / 30 d
//!   views with a trend per fingerprint and marks (new, regressed,
//!   recurring, resolved); [`Ledger::review`] writes the guide's monthly
//!   review as Markdown, with retry advice where the data supports it.
//!   Advice is text for a person; nothing changes a policy by itself.
//!
//! Every function that depends on the time has an `_at` form that takes
//! the time (Unix milliseconds) instead of reading the ledger's clock: the
//! clock is tokio's (like the monitor's), anchored to the wall clock once.
//!
//! ```no_run
//! use selfheal::health::Monitor;
//! use selfheal::health::ledger::Ledger;
//!
//! # async fn demo(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
//! let monitor = Monitor::builder().start()?;
//! let ledger = Ledger::builder(pool, &monitor).with_version("1.4.2").build()?;
//! ledger.install().await?; // or `db::schema::Startup::with_health_ledger`
//! let worker = ledger.start();
//! // … serve …
//! let fleet = ledger.fleet().await?;
//! println!("{} instances, status {}", fleet.instances.len(), fleet.status);
//! # drop(worker); Ok(()) }
//! ```

/// Runs `$body` with `$p` bound to the pool, once per backend: the SQL the
/// ledger runs is the same text on SQLite and PostgreSQL (`$n` parameters,
/// `ON CONFLICT`, `CAST(SUM(..) AS BIGINT)`), only the pool's type differs.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::health::ledger::LedgerPool::Sqlite($p) => $body,
            $crate::health::ledger::LedgerPool::Postgres($p) => $body,
        }
    };
}

mod bucket;
mod fleet;
mod history;
mod review;
mod schema;
mod task;
mod time;
mod write;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use bucket::{AttemptCount, BucketRecord, ErrorCount};
pub use fleet::{Fleet, FleetFingerprint, InstanceView};
pub use history::{FingerprintHistory, History, Mark, MarkRules, Trend};
pub use review::{Advice, OperationRetries, Review};
pub use schema::{TABLES, declare, install};
pub use task::CONDITION;

use super::Monitor;
use crate::ConfigError;
use task::State;

/// The database a ledger writes to: the app's own pool.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LedgerPool {
    /// SQLite (one instance).
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL (a fleet; tables in the connection's current schema).
    Postgres(sqlx::PgPool),
}

impl From<sqlx::SqlitePool> for LedgerPool {
    fn from(pool: sqlx::SqlitePool) -> Self {
        Self::Sqlite(pool)
    }
}

impl From<sqlx::PgPool> for LedgerPool {
    fn from(pool: sqlx::PgPool) -> Self {
        Self::Postgres(pool)
    }
}

/// How long each resolution is kept. Defaults: 48 hours of minute buckets,
/// 90 days of hours, 2 years of days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Minute (monitor bucket) rows.
    pub minutes: Duration,
    /// Hour rows.
    pub hours: Duration,
    /// Day rows.
    pub days: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            minutes: Duration::from_secs(48 * 3600),
            hours: Duration::from_secs(90 * 86_400),
            days: Duration::from_secs(730 * 86_400),
        }
    }
}

/// An hour, in milliseconds (the second resolution).
pub const HOUR_MS: i64 = 3_600_000;
/// A day, in milliseconds (the third resolution, UTC days).
pub const DAY_MS: i64 = 86_400_000;

/// Builds a [`Ledger`]. Defaults are listed on each method.
#[derive(Debug)]
pub struct LedgerBuilder {
    pool: LedgerPool,
    monitor: Monitor,
    instance: Option<String>,
    version: String,
    host: Option<String>,
    flush_every: Option<Duration>,
    buffer: usize,
    retention: Retention,
    marks: MarkRules,
    fleet_alerts: bool,
    unix_origin_ms: Option<i64>,
}

impl LedgerBuilder {
    /// This instance's id in the fleet. Default: `host-` and 8 random hex
    /// digits (a new id per process; past instances stay in the history).
    pub fn with_instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(crate::health::truncate(&id.into(), 100));
        self
    }

    /// The version shown per instance. Default: empty.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = crate::health::truncate(&version.into(), 50);
        self
    }

    /// The host shown per instance. Default: `$HOSTNAME`, else the
    /// kernel's host name, else `unknown`.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(crate::health::truncate(&host.into(), 100));
        self
    }

    /// How often closed buckets are flushed and the instance heartbeats.
    /// Default: the monitor's bucket width (1 minute).
    pub fn with_flush_every(mut self, every: Duration) -> Self {
        self.flush_every = Some(every);
        self
    }

    /// Closed buckets kept in memory while the database is unreachable;
    /// beyond, the oldest are dropped and counted. Default 60 (an hour of
    /// minutes; about 300 KB a bucket with 1,000 fingerprints).
    pub fn with_buffer(mut self, buckets: usize) -> Self {
        self.buffer = buckets.max(1);
        self
    }

    /// How long each resolution is kept. Default: [`Retention::default`].
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The rules behind the history's marks. Default: [`MarkRules::default`].
    pub fn with_marks(mut self, marks: MarkRules) -> Self {
        self.marks = marks;
        self
    }

    /// Whether the monitor's alert rules run on the fleet's counts (claimed
    /// once per fleet through the database). Default `true`; `false` keeps
    /// alerts per instance and only records.
    pub fn with_fleet_alerts(mut self, on: bool) -> Self {
        self.fleet_alerts = on;
        self
    }

    /// The Unix time (ms) the ledger's clock reads now; the clock then runs
    /// on tokio's time. Default: the wall clock. For tests under paused time.
    pub fn with_unix_origin_ms(mut self, ms: i64) -> Self {
        self.unix_origin_ms = Some(ms);
        self
    }

    /// Builds the ledger (nothing runs until [`Ledger::start`]).
    pub fn build(self) -> Result<Ledger, ConfigError> {
        let width_ms = (self.monitor.inner.width_nanos / 1_000_000) as i64;
        if !(1..HOUR_MS).contains(&width_ms) || HOUR_MS % width_ms != 0 {
            return Err(ConfigError::new(format!(
                "the health ledger needs a monitor bucket width of whole milliseconds that \
                 divides an hour (and is shorter), got {width_ms} ms"
            )));
        }
        let flush_every = self
            .flush_every
            .unwrap_or(Duration::from_millis(width_ms as u64));
        if flush_every.is_zero() {
            return Err(ConfigError::new("ledger flush interval must be above zero"));
        }
        let clock = time::Clock::new(self.unix_origin_ms);
        let host = self.host.unwrap_or_else(time::host_name);
        let instance = self
            .instance
            .unwrap_or_else(|| format!("{host}-{:08x}", fastrand::u32(..)));
        let monitor_origin_ms = clock.now_ms()
            - self
                .monitor
                .inner
                .origin
                .elapsed()
                .as_millis()
                .min(i64::MAX as u128) as i64;
        let state = State::new(&self.monitor, &instance, self.fleet_alerts);
        Ok(Ledger {
            inner: Arc::new(LedgerInner {
                pool: self.pool,
                monitor: self.monitor,
                instance,
                version: self.version,
                host,
                started_ms: clock.now_ms(),
                clock,
                monitor_origin_ms,
                width_ms,
                flush_every,
                buffer: self.buffer,
                retention: self.retention,
                marks: self.marks,
                fleet_alerts: self.fleet_alerts,
                state: Mutex::new(state),
            }),
        })
    }
}

pub(crate) struct LedgerInner {
    pool: LedgerPool,
    monitor: Monitor,
    instance: String,
    version: String,
    host: String,
    started_ms: i64,
    clock: time::Clock,
    /// The Unix time (ms) of the monitor's epoch 0.
    monitor_origin_ms: i64,
    /// The monitor's bucket width: the finest resolution.
    width_ms: i64,
    flush_every: Duration,
    buffer: usize,
    retention: Retention,
    marks: MarkRules,
    fleet_alerts: bool,
    state: Mutex<State>,
}

/// The health ledger (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<LedgerInner>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("instance", &self.inner.instance)
            .field("version", &self.inner.version)
            .field("width_ms", &self.inner.width_ms)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// A builder writing `monitor`'s buckets to `pool`.
    pub fn builder(pool: impl Into<LedgerPool>, monitor: &Monitor) -> LedgerBuilder {
        LedgerBuilder {
            pool: pool.into(),
            monitor: monitor.clone(),
            instance: None,
            version: String::new(),
            host: None,
            flush_every: None,
            buffer: 60,
            retention: Retention::default(),
            marks: MarkRules::default(),
            fleet_alerts: true,
            unix_origin_ms: None,
        }
    }

    /// Creates the ledger's tables if they do not exist ([`install`]).
    pub async fn install(&self) -> Result<(), sqlx::Error> {
        install(&self.inner.pool).await
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The ledger's clock: Unix milliseconds, running on tokio's time.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The finest resolution, the monitor's bucket width, in milliseconds.
    pub fn bucket_ms(&self) -> i64 {
        self.inner.width_ms
    }

    /// The pool written to.
    pub fn pool(&self) -> &LedgerPool {
        &self.inner.pool
    }
}
