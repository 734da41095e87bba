//! Self-healing building blocks for Rust web services.
//!
//! A service heals itself the way a careful operator would: it retries what is
//! transient and never what is not, falls back when a dependency is gone, stops
//! calling a dependency that is down, and reports every one of those decisions,
//! so that what was healed and what could not be is visible in one place.
//!
//! - [`retry`]: one retry engine (async, blocking, tower) with backoff and
//!   jitter, deadlines, classification, server hints and a retry budget.
//! - [`fallback`]: a default instead of an error, reported.
//! - [`breaker`]: a circuit breaker that fails fast while a dependency is
//!   down and lets a few probes find out when it is back.
//! - [`observe`]: the hook every component reports through (tracing events and
//!   an [`Observer`](observe::Observer) for the health monitor).
//! - `db` (feature `sqlx`): database transactions re-run whole on lock
//!   conflicts and serialization failures, an idempotency guard for commits
//!   with an unknown outcome, and schema healing at start-up.
//! - [`supervise`]: background tasks restarted with backoff when they fail;
//!   past a restart intensity they keep restarting (reported degraded), exit
//!   the process for its orchestrator, or stop, as chosen per worker; a
//!   dependency that is down is waited for, not counted as a crash; stopped
//!   cleanly on a signal.
//! - [`health`]: the monitor every heal and error is reported to, its status,
//!   alert rules and alert sinks (log; webhook with the `webhook` feature;
//!   email with the `email` feature); readiness from the present only; one
//!   client's failures (its input) never move the status.
//! - `tls` (feature `tls`, enabled by `webhook`, `email` and `reqwest`): installs rustls's
//!   ring crypto provider once per process.
//! - `http` (feature `reqwest`): a `reqwest_middleware::Middleware` that
//!   retries only what may be repeated (idempotent methods, idempotency
//!   keys), obeys `Retry-After` and rate-limit headers, and keeps a retry
//!   budget and a circuit breaker per host.
//!
//! - `web` (feature `axum`): the [`HealLayer`](web::HealLayer) that
//!   catches panics and 5xx and answers kindly, `/healthz` and `/readyz`,
//!   the admin health dashboard (HTML and `application/health+json`).
//! - `session` (feature `sessions`): typed tower-sessions with defaults and
//!   field-by-field repair.
//! - `config` (feature `config`): every missing environment variable in one
//!   error; `SECRET_KEY` loaded or generated.
//! - `metrics` (feature `prometheus`): `/metrics` in Prometheus text format.
//!
//! Time is always tokio's clock, so every time-based behaviour can be tested
//! under `tokio::time::pause()` in milliseconds.
#![forbid(unsafe_code)]

pub mod breaker;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "sqlx")]
pub mod db;
pub mod fallback;
pub mod health;
#[cfg(feature = "reqwest")]
pub mod http;
#[cfg(feature = "prometheus")]
pub mod metrics;
pub mod observe;
pub mod redact;
pub mod retry;
#[cfg(feature = "sessions")]
pub mod session;
pub mod supervise;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "axum")]
pub mod web;

mod error;
mod sync;
pub use error::ConfigError;
