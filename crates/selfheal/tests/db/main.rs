//! `selfheal::db` against real databases: SQLite (files in a temporary
//! directory, WAL mode) and PostgreSQL (a schema per test in the server at
//! `SELFHEAL_TEST_POSTGRES_URL`; without it the PostgreSQL tests are skipped
//! locally with a note, and fail in CI, where `CI` is set).
//!
//! - [`common`]: what holds on both backends (permanent and application
//!   errors, the guard table, schema healing, migrations, `safe_commit`),
//!   written once and run on each.
//! - [`sqlite`]: the real SQLite write lock (contention, a lock that never
//!   clears).
//! - [`postgres`]: real 40001 serialization failures, killed backends, a
//!   proxy that loses COMMIT's reply, PostgreSQL's schema repairs.
//! - [`support`]: the per-test databases and the [`support::Backend`] trait.

mod common;
mod postgres;
mod sqlite;
mod support;
