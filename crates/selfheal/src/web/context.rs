//! What [`HealLayer`](super::HealLayer) and its services share ([`Shared`]:
//! the settings, the monitor, a cached status), and what each request carries
//! from the service to its [future](super::future) ([`RequestContext`]):
//! enough to record the outcome and to answer a failure kindly.
//!
//! Below both the layer and the future, so that the dependency runs one way:
//! the layer builds the future, the future records through the context, and
//! the context knows neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::Response;
// Latency is measured with the OS clock: it is reported, never acted on, so
// it has no reason to follow tokio's (pausable) clock.
use std::time::Instant;

use super::body::{BodyGuard, GuardedBody};
use super::client::{Client, ClientKey};
use super::respond::{self, ErrorCause, ErrorContext, Friendly, Responder};
use crate::health::{Monitor, Status};
use crate::observe::{self, Event, Failure, HealKind};

/// The settings and the monitor of a [`HealLayer`](super::HealLayer), shared
/// by its clones and by every service and request it makes.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) monitor: Monitor,
    pub(super) client_key: ClientKey,
    pub(super) timeout: Option<Duration>,
    pub(super) shed: bool,
    pub(crate) retry_after: Duration,
    pub(crate) responder: Arc<dyn Responder>,
    pub(super) status: Arc<StatusCache>,
    pub(super) limit: Option<super::limit::AdaptiveLimit>,
    #[cfg(feature = "prometheus")]
    pub(crate) metrics: Option<crate::metrics::HttpMetrics>,
}

/// The start of the request, when latency is observed.
#[inline]
fn start_clock(_shared: &Shared) -> Option<Instant> {
    #[cfg(feature = "prometheus")]
    if _shared.metrics.is_some() {
        return Some(Instant::now());
    }
    None
}

/// What the future needs to record and answer, captured before the request
/// is handed to the inner service.
pub(crate) struct RequestContext {
    shared: Arc<Shared>,
    route: Option<MatchedPath>,
    wants_json: bool,
    request_id: Option<HeaderValue>,
    /// When the request started, when latency is observed (metrics).
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    start: Option<Instant>,
    /// Who asked: failures are recorded against this client.
    client: Client,
    /// When it was admitted under the layer's adaptive limit, if it was:
    /// the slot is released when the handler answers (with a latency
    /// sample for a success or a redirect), or when the context is dropped
    /// (abandoned, timed out, panicked: without one). Released through
    /// `shared`, not a clone of the limit: no reference count to touch.
    slot: Option<tokio::time::Instant>,
}

impl Drop for RequestContext {
    #[inline]
    fn drop(&mut self) {
        if let (Some(start), Some(limit)) = (self.slot.take(), &self.shared.limit) {
            limit.release(start, false);
        }
    }
}

impl RequestContext {
    /// Captures what the request says (route, `Accept`, request id, client)
    /// before it is handed to the inner service.
    #[inline]
    pub(super) fn new<B>(shared: Arc<Shared>, req: &Request<B>) -> Self {
        Self {
            route: req.extensions().get::<MatchedPath>().cloned(),
            wants_json: respond::wants_json(req.headers()),
            request_id: req.headers().get(&respond::X_REQUEST_ID).cloned(),
            start: start_clock(&shared),
            client: shared.client_key.capture(req),
            shared,
            slot: None,
        }
    }

    /// Holds a slot under the layer's limit, admitted at `start`, for the
    /// life of the request.
    #[inline]
    pub(super) fn with_slot(mut self, start: tokio::time::Instant) -> Self {
        self.slot = Some(start);
        self
    }

    /// The handler answered with `status`: the slot is released, and its
    /// latency is a sample for the limit when it is a success or a redirect
    /// (a fast error says nothing about capacity, and a warm-up full of
    /// them would set the baseline far too low).
    #[inline]
    pub(crate) fn answered(&mut self, status: StatusCode) {
        if let (Some(start), Some(limit)) = (self.slot.take(), &self.shared.limit) {
            limit.release(start, super::limit::AdaptiveLimit::is_sample(status));
        }
    }

    fn route(&self) -> &str {
        self.route
            .as_ref()
            .map_or("<unmatched>", MatchedPath::as_str)
    }

    fn request_id(&self) -> String {
        let mut headers = axum::http::HeaderMap::new();
        if let Some(id) = &self.request_id {
            headers.insert(respond::X_REQUEST_ID, id.clone());
        }
        respond::request_id(&headers)
    }

    #[inline]
    fn observe(&self, status: StatusCode) {
        let failed = status.is_server_error();
        self.shared
            .monitor
            .record_request_from(failed, failed.then(|| self.client.id()).flatten());
        #[cfg(feature = "prometheus")]
        if let (Some(metrics), Some(start)) = (&self.shared.metrics, self.start) {
            metrics.observe(status, start.elapsed());
        }
    }

    fn answer(
        &self,
        cause: ErrorCause,
        status: StatusCode,
        request_id: &str,
        retry_after: Option<Duration>,
        keep: Option<axum::http::HeaderMap>,
    ) -> Response {
        let context = ErrorContext {
            cause,
            status,
            request_id,
            wants_json: self.wants_json,
            retry_after,
        };
        respond::answer(&*self.shared.responder, &context, keep)
    }

    /// The inner service answered.
    #[inline]
    pub(crate) fn finish(&self, response: Response) -> Response {
        if response
            .extensions()
            .get::<super::bulkhead::Shed>()
            .is_some()
        {
            // A route's own limit shed it: the same friendly answer as
            // this layer's, and no more recorded than this layer's.
            return self.overloaded();
        }
        let status = response.status();
        self.observe(status);
        if !status.is_server_error() {
            return self.guard_body(response);
        }
        self.server_error(response)
    }

    /// The response with its body guarded against a panic while it
    /// streams (see [`body`](super::body)).
    #[inline]
    fn guard_body(&self, response: Response) -> Response {
        let guard = BodyGuard {
            shared: self.shared.clone(),
            route: self.route.clone(),
            client: self.client.clone(),
            request_id: self.request_id.clone(),
        };
        response.map(|body| GuardedBody::wrap(body, guard))
    }

    #[cold]
    #[inline(never)]
    fn server_error(&self, response: Response) -> Response {
        let status = response.status();
        let route = self.route();
        let reason = status.canonical_reason().unwrap_or("server error");
        self.report_error(
            status.as_str(),
            route,
            &format_args!("the handler answered {} {reason}", status.as_str()),
        );
        let request_id = self.request_id();
        if response.extensions().get::<Friendly>().is_some() {
            tracing::warn!(
                target: "selfheal",
                request_id,
                route,
                status = status.as_u16(),
                "request failed (friendly answer from the app)"
            );
            return self.guard_body(response);
        }
        tracing::error!(
            target: "selfheal",
            request_id,
            route,
            status = status.as_u16(),
            "request failed; body replaced with a friendly answer"
        );
        let (parts, _body) = response.into_parts();
        self.answer(
            ErrorCause::Status(status),
            status,
            &request_id,
            None,
            Some(parts.headers),
        )
    }

    /// Reports an error of this request (with its client) to the monitor,
    /// through the one channel.
    fn report_error(&self, kind: &str, route: &str, message: &dyn std::fmt::Display) {
        observe::emit(
            Some(&self.shared.monitor),
            &Event::Error {
                operation: route,
                failure: Failure { kind, message },
                client: self.client.id(),
            },
        );
    }

    /// The handler panicked.
    #[cold]
    #[inline(never)]
    pub(crate) fn panicked(&self, payload: Box<dyn std::any::Any + Send>) -> Response {
        let message = respond::panic_message(&*payload);
        let route = self.route();
        let request_id = self.request_id();
        tracing::error!(
            target: "selfheal",
            request_id,
            route,
            panic = message,
            "handler panicked; answered with a friendly 500"
        );
        self.report_error("Panic", route, &message);
        observe::emit(
            Some(&self.shared.monitor),
            &Event::Heal {
                kind: HealKind::PanicCaught,
                operation: route,
            },
        );
        self.observe(StatusCode::INTERNAL_SERVER_ERROR);
        // A panic payload whose own drop panics would unwind out of here;
        // forget such payloads rather than risk it (a few bytes, rare).
        std::mem::forget(payload);
        self.answer(
            ErrorCause::Panic,
            StatusCode::INTERNAL_SERVER_ERROR,
            &request_id,
            None,
            None,
        )
    }

    /// The timeout elapsed before the handler answered.
    #[cold]
    #[inline(never)]
    pub(crate) fn timed_out(&self) -> Response {
        let route = self.route();
        let request_id = self.request_id();
        let timeout = self.shared.timeout.unwrap_or_default();
        tracing::warn!(
            target: "selfheal",
            request_id,
            route,
            timeout_ms = timeout.as_millis() as u64,
            "request timed out; answered 503"
        );
        self.report_error(
            "Timeout",
            route,
            &format_args!("no answer within {timeout:?}"),
        );
        self.observe(StatusCode::SERVICE_UNAVAILABLE);
        self.answer(
            ErrorCause::Timeout,
            StatusCode::SERVICE_UNAVAILABLE,
            &request_id,
            Some(self.shared.retry_after),
            None,
        )
    }

    /// Load is shed: `503` with `Retry-After`, not recorded.
    #[cold]
    #[inline(never)]
    pub(super) fn overloaded(&self) -> Response {
        let request_id = self.request_id();
        self.answer(
            ErrorCause::Overloaded,
            StatusCode::SERVICE_UNAVAILABLE,
            &request_id,
            Some(self.shared.retry_after),
            None,
        )
    }
}

/// The monitor's status, read at most once a second.
///
/// One word: bit 0 is "critical", bit 1 "has been read", the rest the
/// milliseconds (since `origin`) of the read.
pub(super) struct StatusCache {
    /// Tokio's clock: the status follows the monitor's time.
    origin: tokio::time::Instant,
    word: AtomicU64,
}

impl StatusCache {
    const FRESH_MS: u64 = 1000;

    pub(super) fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            word: AtomicU64::new(0),
        }
    }

    pub(super) fn is_critical(&self, monitor: &Monitor) -> bool {
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let word = self.word.load(Ordering::Relaxed);
        if word & 2 != 0 && now_ms < (word >> 2) + Self::FRESH_MS {
            return word & 1 != 0;
        }
        let critical = monitor.status() == Status::Critical;
        self.word
            .store((now_ms << 2) | 2 | u64::from(critical), Ordering::Relaxed);
        critical
    }
}
