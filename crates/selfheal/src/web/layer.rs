use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::Response;
// Latency is measured with the OS clock: it is reported, never acted on, so
// it has no reason to follow tokio's (pausable) clock.
use std::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::future::ResponseFuture;
use super::respond::{self, ErrorCause, ErrorContext, Friendly, FriendlyResponder, Responder};
use crate::health::{ClientId, Monitor, Status};
use crate::observe::{self, Event, Failure, HealKind};

/// How [`HealLayer`] tells a request's client apart, so that failures
/// caused by one client (its input) do not move the monitor's status or fire
/// alerts: see [`ClientId`](crate::health::ClientId).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientKey {
    /// The TCP peer's IP address (an IPv6 address's /64), from axum's `ConnectInfo<SocketAddr>`
    /// (serve with `into_make_service_with_connect_info::<SocketAddr>()`).
    /// Without it, requests have no client and every failure counts. The
    /// default.
    PeerAddress,
    /// The last value of this header, as set by a reverse proxy you trust
    /// (`x-real-ip`, or the last hop of `x-forwarded-for`): behind a load
    /// balancer every peer address is the balancer's. Falls back to the
    /// peer address when the header is absent.
    Header(axum::http::HeaderName),
    /// No client: every failure counts for the status (the behaviour before
    /// client keys).
    None,
}

impl ClientKey {
    /// What the request says about its client, kept as it is (an address,
    /// a header value's bytes): hashed into a [`ClientId`] only when the
    /// request fails, so a request that succeeds pays an extension lookup
    /// and nothing else.
    fn capture<B>(&self, req: &Request<B>) -> Client {
        let peer = || {
            req.extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip())
        };
        match self {
            Self::PeerAddress => Client::Peer(peer()),
            Self::Header(name) => match req.headers().get_all(name).iter().next_back() {
                Some(value) => Client::Forwarded(value.clone()),
                None => Client::Peer(peer()),
            },
            Self::None => Client::Peer(None),
        }
    }
}

/// A request's client as captured by [`ClientKey::capture`].
#[derive(Clone, Debug)]
pub(crate) enum Client {
    Peer(Option<std::net::IpAddr>),
    Forwarded(HeaderValue),
}

impl Client {
    /// The client's id (on the failure path only).
    fn id(&self) -> Option<ClientId> {
        match self {
            Self::Peer(ip) => ip.map(|ip| ClientId::of(network(ip))),
            Self::Forwarded(value) => {
                let value = value.as_bytes();
                // x-forwarded-for: the last hop is the one our proxy added.
                let last = value.rsplit(|b| *b == b',').next().unwrap_or(value);
                let last = last.trim_ascii();
                Some(
                    match std::str::from_utf8(last)
                        .ok()
                        .and_then(|s| s.parse::<std::net::IpAddr>().ok())
                    {
                        Some(ip) => ClientId::of(network(ip)),
                        None => ClientId::of(last),
                    },
                )
            }
        }
    }
}

/// The network a client address stands for: an IPv4 address itself, an
/// IPv6 address's /64 (one subscriber's prefix: an attacker holds a whole
/// /64 and can draw a new address for every request).
fn network(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4(v4),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A tower [`Layer`] for axum that catches panics, records every 5xx and
/// every request outcome on a [`Monitor`], and answers failures with a
/// friendly page or JSON. See the [module docs](super) for what it does and
/// why.
///
/// Defaults: no timeout, no load shedding, `Retry-After: 5`,
/// [`FriendlyResponder`].
///
/// It also puts a clone of the monitor into each request's extensions, where
/// the [session extractor](crate::session) finds it to report repairs.
#[derive(Clone)]
pub struct HealLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) monitor: Monitor,
    client_key: ClientKey,
    timeout: Option<Duration>,
    shed: bool,
    pub(crate) retry_after: Duration,
    pub(crate) responder: Arc<dyn Responder>,
    status: Arc<StatusCache>,
    #[cfg(feature = "prometheus")]
    pub(crate) metrics: Option<crate::metrics::HttpMetrics>,
}

impl fmt::Debug for HealLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealLayer")
            .field("timeout", &self.shared.timeout)
            .field("load_shedding", &self.shared.shed)
            .field("retry_after", &self.shared.retry_after)
            .finish_non_exhaustive()
    }
}

impl HealLayer {
    /// A layer recording on `monitor`, with the defaults.
    pub fn new(monitor: Monitor) -> Self {
        Self {
            shared: Arc::new(Shared {
                monitor,
                client_key: ClientKey::PeerAddress,
                timeout: None,
                shed: false,
                retry_after: Duration::from_secs(5),
                responder: Arc::new(FriendlyResponder),
                status: Arc::new(StatusCache::new()),
                #[cfg(feature = "prometheus")]
                metrics: None,
            }),
        }
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// How a request's client is told apart, so that one client's failures
    /// do not move the monitor's status (see
    /// [`ClientId`](crate::health::ClientId)). Default
    /// [`ClientKey::PeerAddress`].
    pub fn with_client_key(mut self, key: ClientKey) -> Self {
        self.shared_mut().client_key = key;
        self
    }

    /// Answers `503` with `Retry-After` when a request takes longer than
    /// `timeout` (the handler's future is dropped), recorded as an error of
    /// kind `Timeout`. Default: no timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.shared_mut().timeout = Some(timeout);
        self
    }

    /// While the monitor's status is critical, answers every request with
    /// `503` and `Retry-After` without calling the handler. Default off.
    ///
    /// The status is read at most once a second (a status is computed from
    /// every window and check, too much for every request). Shed requests
    /// are not recorded: the error rate that made the status critical then
    /// decays, and traffic is let back in by itself. Keep probes and admin
    /// routes outside the layer so that they still answer.
    pub fn with_load_shedding(mut self, on: bool) -> Self {
        self.shared_mut().shed = on;
        self
    }

    /// The `Retry-After` of timeout and load-shedding answers. Default 5 s.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.shared_mut().retry_after = after;
        self
    }

    /// Replaces the [`FriendlyResponder`].
    pub fn with_responder(mut self, responder: impl Responder) -> Self {
        self.shared_mut().responder = Arc::new(responder);
        self
    }

    /// Also counts requests by outcome and observes their latency in
    /// Prometheus metrics (`selfheal_http_requests_total{outcome}`,
    /// `selfheal_http_request_duration_seconds`) with plain atomics: no
    /// lock, no lookup, no allocation per request.
    #[cfg(feature = "prometheus")]
    pub fn with_metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.shared_mut().metrics = Some(metrics.http());
        self
    }
}

impl<S> Layer<S> for HealLayer {
    type Service = HealService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`HealLayer`].
#[derive(Clone)]
pub struct HealService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for HealService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for HealService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let ctx = RequestContext {
            shared: shared.clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
            wants_json: respond::wants_json(req.headers()),
            request_id: req.headers().get(&respond::X_REQUEST_ID).cloned(),
            start: start_clock(shared),
            client: shared.client_key.capture(&req),
        };
        if shared.shed && shared.status.is_critical(&shared.monitor) {
            return ResponseFuture::ready(ctx.overloaded());
        }
        req.extensions_mut().insert(shared.monitor.clone());
        let sleep = shared.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        // A service may panic in `call` itself (not only in its future).
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture::running(future, sleep, ctx),
            Err(payload) => ResponseFuture::ready(ctx.panicked(payload)),
        }
    }
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
}

impl RequestContext {
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
        let status = response.status();
        self.observe(status);
        if !status.is_server_error() {
            return response;
        }
        self.server_error(response)
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
            return response;
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

    /// Reports an error of this request (with its client) to the monitor.
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
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic with a non-string payload");
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

    #[cold]
    #[inline(never)]
    fn overloaded(&self) -> Response {
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
struct StatusCache {
    /// Tokio's clock: the status follows the monitor's time.
    origin: tokio::time::Instant,
    word: AtomicU64,
}

impl StatusCache {
    const FRESH_MS: u64 = 1000;

    fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            word: AtomicU64::new(0),
        }
    }

    fn is_critical(&self, monitor: &Monitor) -> bool {
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
