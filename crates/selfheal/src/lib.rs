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
//!
//! # How it fits together
//!
//! ```text
//!  engines                 integrations                 reporting
//!  retry ── breaker ──┐    http (reqwest middleware)    observe::emit ──► Observer
//!  fallback           ├──► db (sqlx runner, schema)         │  (one channel)
//!  supervise          │    web (HealLayer), session         ▼
//!                     └──  config                        health::Monitor ──► listener
//!                                                         (status, alerts,     (metrics)
//!                                                          dashboard)
//! ```
//!
//! **One reporting channel.** Every component reports what it did through
//! [`observe::emit`]: the engine's retries, recoveries and give-ups,
//! fallbacks, breaker transitions, and the errors and heals of the
//! integrations ([`observe::Event::Error`], [`observe::Event::Heal`]: a
//! panic caught, a transaction re-run, a worker restarted, a schema or a
//! session repaired). Each event is one `tracing` event and one call of an
//! [`Observer`](observe::Observer): the component's own, else the global
//! one. The [`health::Monitor`] is an observer (and installs itself as the
//! global one when started); whatever it records it hands to its
//! [listener](health::Monitor::set_listener), which is how the Prometheus
//! metrics count exactly what the dashboard shows. Engines know nothing of
//! the monitor; nothing imports upward.
//!
//! **One engine.** Every retrying thing (the async, blocking and
//! context-carrying drivers of [`retry::Policy`], the tower
//! [`RetryLayer`](retry::RetryLayer), the HTTP middleware, the db runner)
//! hands each attempt's outcome to the same engine step, which classifies,
//! spends the budget, reports, and answers with one decision (done, retry
//! after a delay, give up). A driver only decides how to wait and how to make
//! the next attempt.
//!
//! # Where things live
//!
//! | module | rooms |
//! |---|---|
//! | [`retry`] | `mod` (the `Policy` and its settings), `engine` (the step between attempts), `drive` (`retry`, `retry_with`, `retry_blocking`), `backoff`, `budget`, `classify`, `error`, `layer` (tower) |
//! | [`breaker`] | `mod` (the handle, permits), `builder`, `state` (the state machine), `window`, `error`, `layer` |
//! | [`observe`] | `mod` (`emit`, the global observer, `Fanout`), `event` (the vocabulary), `testing` (`Recorder`, feature `test-util`) |
//! | [`health`] | `mod` (the monitor and its record path), `builder`, `fingerprint`, `table`, `window`, `observer` (events → records), `evaluate` (rules → alerts), `tasks` (checks, ticker, delivery), `alert`, `check`, `report`, sinks (`webhook`, `email`) |
//! | [`supervise`] | `mod` (the `Supervisor` and its settings), `run` (the loop), `handle` |
//! | `db` | `runner`, `guard`, `classify`, `schema/{declare,drift,heal}`, per-backend SQL in `sqlite` and `postgres` behind a sealed trait |
//! | `http` | `mod` (the middleware's call), `builder`, `registry` (per-host state), `classify`, `hints` (header parsers), `idempotency`, `error` |
//! | `web` | `layer`, `future`, `context` (one request's reporting), `client` (who asked), `respond`, `probes`, `guard` (admin), `dashboard/{routes,view,json}` |
//! | `session` | `mod`, `healed` (the extractor), `fields`, `repair`, `error` |
//!
//! # Conventions
//!
//! - **Settings are `with_*` methods that take and return `self`.** A type
//!   used as it is built ([`retry::Policy`], `db::Guard`,
//!   [`supervise::Supervisor`]) checks a setting where it is set: a setter
//!   whose value can be wrong on its own returns
//!   `Result<Self, `[`ConfigError`]`>`. A `…Builder` ([`health::MonitorBuilder`],
//!   [`breaker::Builder`], `http::Builder`) checks everything once, in
//!   `build()`, because its settings are only valid together. Either way a
//!   misconfiguration fails at start-up, never on a request.
//! - **Futures:** public operations are `async fn` or return
//!   `impl Future`; tower services name their future (`ResponseFuture`), as
//!   tower requires; trait objects return a boxed future
//!   ([`health::SinkFuture`]).
//! - **Locks are poison-tolerant** (one private helper): a panic elsewhere
//!   must not turn the monitor's next record into a second panic.
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
pub mod throttle;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "axum")]
pub mod web;

#[cfg(any(feature = "axum", feature = "sqlx"))]
mod civil;
mod error;
mod sync;
pub use error::ConfigError;
