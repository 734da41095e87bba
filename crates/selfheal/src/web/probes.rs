//! `/healthz` and `/readyz`: for load balancers and orchestrators.
//!
//! Two probes because they answer two questions. Liveness ("should this
//! process be restarted?") is yes as long as it serves HTTP at all: a
//! database outage is no reason to restart the app, and restarting every
//! instance at once because of one would turn an outage into a bigger one.
//! Readiness ("can this instance serve now?") is the monitor's
//! [`is_ready`](crate::health::Monitor::is_ready): the instance is not
//! draining, and every check registered for readiness has run and passes.
//! It answers from the present only: never from error history, alerts or a
//! worker that struggled in the past, so it cannot latch, and a blip of a
//! dependency that every instance shares does not empty the load balancer.
//!
//! Neither needs authentication and neither tells why: the why is on the
//! admin dashboard.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::health::Monitor;

/// A router with `GET /healthz` (always `200 ok` while the process serves)
/// and `GET /readyz` (`200 ready` when [`Monitor::is_ready`], else
/// `503 not ready`). Plain text, `cache-control: no-store`, no details.
///
/// Merge it outside your [`HealLayer`](super::HealLayer) so that probes are
/// neither counted as traffic nor shed.
pub fn probes<S>(monitor: Monitor) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { plain(StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get(move || {
                let ready = monitor.is_ready();
                async move {
                    if ready {
                        plain(StatusCode::OK, "ready")
                    } else {
                        plain(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        super::Friendly,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
