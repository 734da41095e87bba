//! The axum side of selfheal: unhandled errors caught, recorded and answered
//! kindly; probes; the admin health dashboard.
//!
//! ## Why a layer, and why it replaces 5xx bodies
//!
//! A handler that panics, or answers `500` with `e.to_string()` in the body,
//! tells the user nothing useful and may tell an attacker a lot (SQL, file
//! paths, a database URL with its password). The guide's Flask version wraps
//! every route in `log_unhandled_exception`; here one [`HealLayer`] on the
//! `Router` does the same for every route at once:
//!
//! - a **panic** is caught (the connection and the server survive, the next
//!   request is served as usual), recorded as an error of kind `Panic` and a
//!   [`PanicCaught`](crate::health::HealKind::PanicCaught) heal, and answered
//!   with a friendly `500`;
//! - every **5xx** is recorded with its status code as the kind (`"500"`,
//!   `"503"`) and the **route template** (`/users/{id}`, from axum's
//!   [`MatchedPath`](axum::extract::MatchedPath)) as the operation, never the
//!   raw path: `/users/1` and `/users/2` are one fingerprint, and an
//!   attacker cannot mint fingerprints by varying the URL;
//! - every request's outcome feeds the monitor's error rate;
//! - the answer is a friendly page (HTML for browsers, JSON when the request
//!   says `Accept: application/json`) carrying a **request id** (the
//!   client's `x-request-id` when it is a plain token, else a fresh one), the
//!   same id that is logged with the error, so a user's screenshot can be
//!   matched with the log line. Never the error text, never a backtrace.
//!
//! **Replacement policy.** The body of every 5xx response is replaced, unless
//! the response carries the [`Friendly`] marker: the app then vouches that it
//! wrote the body for users. This is the safe default: a 5xx body that
//! axum, a library or a hurried `(StatusCode::INTERNAL_SERVER_ERROR,
//! e.to_string())` produced is exactly the one that leaks internals, and the
//! layer cannot tell a kind sentence from a SQL error by looking. The status
//! code is kept, and so are the headers (a `Retry-After` on a `503` still
//! reaches the client), except the body's own `content-type` and
//! `content-length`. `4xx` responses are the app's answers to the client's
//! mistakes and pass through untouched.
//!
//! A panic while the response *body* streams (after the handler returned,
//! the status line sent) is caught too: recorded like any other panic, and
//! the response aborted, so that the client sees a truncated body and the
//! server carries on (see the `body` module).
//!
//! **Cost.** The layer's own work is a few atomic operations per request
//! and one allocation for the body's panic guard (an extension insert too
//! when its monitor is not the global observer;
//! plus two clock reads and three atomic adds
//! with [metrics](HealLayer::with_metrics)); see the workspace's web
//! benchmark, `cargo run --release -p selfheal-bench --example web_bench`.
//! Note that every `Router::layer` call boxes each route once more, which in
//! axum costs about as much as this layer: put several layers in one
//! `tower::ServiceBuilder` and one `layer` call.
//!
//! Options, off by default: a **request timeout** (`503` with `Retry-After`,
//! recorded as kind `Timeout`), **load shedding** while the monitor's
//! status is critical (`503` with `Retry-After`, not recorded, so that the
//! error rate decays and the service lets traffic back in by itself), and an
//! **adaptive concurrency limit** ([`AdaptiveLimit`], Gradient2: the limit
//! found from latency, the excess answered at once with `503` and
//! `Retry-After`, never probes, `/metrics` or `/admin/`).
//!
//! ```
//! use axum::{Router, routing::get};
//! use selfheal::health::Monitor;
//! use selfheal::web::{self, HealLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let monitor = Monitor::builder().with_global(false).build().unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(HealLayer::new(monitor.clone()))
//!     // Probes sit outside the layer: they are not the users' traffic.
//!     .merge(web::probes(monitor));
//! # let _ = app;
//! # }
//! ```

mod body;
mod bulkhead;
mod client;
mod context;
pub mod csrf;
mod dashboard;
pub mod future;
mod guard;
mod layer;
mod limit;
mod probes;
mod respond;
pub mod throttle;

pub use bulkhead::{LimitLayer, LimitService};
pub use client::ClientKey;
pub use csrf::{CsrfLayer, CsrfToken};
pub use dashboard::{Dashboard, admin_routes, health_json};
pub use guard::{AdminGuard, TokenError};
pub use layer::{HealLayer, HealService};
pub use limit::{AdaptiveLimit, ControlledDelay, LimitFull, Permit, Turn};
pub use probes::probes;
pub use respond::{ErrorCause, ErrorContext, Friendly, FriendlyResponder, Responder, request_id};
pub use throttle::{Attempt, Limit, LimitError, LoginThrottle, Scope, Throttled};

/// The value of the cookie `name` among the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name).then_some(value)
        })
}

pub use crate::redact::redact;
