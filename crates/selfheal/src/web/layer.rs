//! [`HealLayer`] and the [`HealService`] it wraps each route in: settings,
//! then per request the admission (load shedding), the timeout and the
//! catch of a panic in `call`; the rest happens in the [future](super::future).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use tower_layer::Layer;
use tower_service::Service;

use super::client::ClientKey;
use super::context::{RequestContext, Shared, StatusCache};
use super::future::ResponseFuture;
use super::limit::AdaptiveLimit;
use super::respond::{FriendlyResponder, Responder};
use crate::health::Monitor;

/// A tower [`Layer`] for axum that catches panics, records every 5xx and
/// every request outcome on a [`Monitor`], and answers failures with a
/// friendly page or JSON. See the [module docs](super) for what it does and
/// why.
///
/// Defaults: no timeout, no load shedding, `Retry-After: 5`,
/// [`FriendlyResponder`].
///
/// When the monitor is not the process's global observer, it also puts a
/// clone of it into each request's extensions, where the
/// [session extractor](crate::session) finds it to report repairs (a global
/// monitor hears them through the global observer, without that per-request
/// allocation). Handlers that need the monitor itself should take it from
/// their state or an `Extension` of their own.
#[derive(Clone)]
pub struct HealLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for HealLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealLayer")
            .field("timeout", &self.shared.timeout)
            .field("load_shedding", &self.shared.shed)
            .field("adaptive_limit", &self.shared.limit)
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
                limit: None,
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

    /// Limits the requests in flight adaptively (see [`AdaptiveLimit`]):
    /// the excess is answered at once with `503` and `Retry-After` (not
    /// recorded: shedding is the server protecting itself, and moves no
    /// status), except probes, `/metrics` and `/admin/` (and the limit's
    /// other exempt paths). The limit reports its windows to this layer's
    /// monitor unless it has an observer of its own. Default off.
    ///
    /// For an expensive route, give its handler a limit of its own with
    /// [`AdaptiveLimit::layer`] (a bulkhead); this layer answers what that
    /// one sheds with the same friendly `503`, unrecorded.
    pub fn with_adaptive_limit(mut self, limit: AdaptiveLimit) -> Self {
        limit.serve_app_wide(self.shared.monitor.observer());
        self.shared_mut().limit = Some(limit);
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
        let ctx = RequestContext::new(shared.clone(), &req);
        if shared.shed && shared.status.is_critical(&shared.monitor) {
            return ResponseFuture::ready(ctx.overloaded());
        }
        let ctx = match &shared.limit {
            Some(limit) if !limit.is_exempt(req.uri().path()) => match limit.try_acquire() {
                Some(start) => ctx.with_slot(start),
                None => return ResponseFuture::ready(ctx.overloaded()),
            },
            _ => ctx,
        };
        // For the session extractor: needed only when the monitor is not the
        // global observer (else the extractor reports there anyway), and an
        // extension insert is an allocation per request.
        if !shared.monitor.is_global() {
            req.extensions_mut().insert(shared.monitor.clone());
        }
        let sleep = shared.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        // A service may panic in `call` itself (not only in its future).
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture::running(future, sleep, ctx),
            Err(payload) => ResponseFuture::ready(ctx.panicked(payload)),
        }
    }
}
