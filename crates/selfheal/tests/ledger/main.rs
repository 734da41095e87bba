//! The health ledger against real databases: SQLite files in a temporary
//! directory and PostgreSQL (a schema per test in the server at
//! `SELFHEAL_TEST_POSTGRES_URL`; without it the PostgreSQL tests are skipped
//! locally with a note, and fail in CI, where `CI` is set).
//!
//! - [`fleet`]: three instances on one PostgreSQL: one alert and one
//!   resolved notice for the fleet, a killed instance marked silent.
//! - [`history`]: restarts keep the history (both databases); 40 simulated
//!   days of rollups, retention, marks and the monthly review.
//! - [`outage`]: the database away and back: requests unaffected, buckets
//!   buffered, dropped and counted, flushes resumed.

mod fleet;
mod history;
mod outage;
mod support;
