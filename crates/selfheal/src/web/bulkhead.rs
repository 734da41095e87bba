//! A route's own adaptive limit as a tower layer ([`LimitLayer`], from
//! [`AdaptiveLimit::layer`]): a bulkhead for an expensive route.
//!
//! Why a layer on the route rather than a rule inside
//! [`HealLayer`](super::HealLayer): the router has already decided which
//! handler runs (methods, `HEAD` served by a `GET` handler, nested
//! prefixes: no second matcher to disagree with it), and the layers
//! outside the route (a CSRF check that reads the form, a session load) are
//! done, so a client trickling a request body holds no slot, and the
//! latency samples are the handler's. `HealLayer` stays the one place that
//! answers and records: a shed request leaves here as a bare `503` marked
//! [`Shed`], which it turns into its friendly page without recording.
//!
//! A limit that [waits](AdaptiveLimit::with_wait) lets a request beyond it
//! wait for a slot (a burst) before it is shed (a standing queue); only
//! those requests pay for a boxed future, the others none.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::limit::{AdaptiveLimit, Permit};

/// Marks a response as shed by a route's limit: an outer
/// [`HealLayer`](super::HealLayer) answers it as its own shedding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shed;

/// The tower layer of [`AdaptiveLimit::layer`]: requests beyond the limit
/// are answered with `503` and `Retry-After: 1`, at once or, when the limit
/// [waits](AdaptiveLimit::with_wait), once their wait gives up.
#[derive(Clone, Debug)]
pub struct LimitLayer {
    limit: AdaptiveLimit,
}

impl LimitLayer {
    pub(crate) fn new(limit: AdaptiveLimit) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitService {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service made by [`LimitLayer`].
#[derive(Clone, Debug)]
pub struct LimitService<S> {
    inner: S,
    limit: AdaptiveLimit,
}

impl<S, B> Service<Request<B>> for LimitService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LimitFuture<S::Future, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let waits = self.limit.waits();
        // A limit that lets requests wait counts a shed only when the wait
        // gives up.
        let admitted = if waits {
            self.limit.try_admit()
        } else {
            self.limit.try_acquire()
        };
        if let Some(start) = admitted {
            return LimitFuture {
                future: Some(self.inner.call(req)),
                slot: Some(Permit::new(self.limit.clone(), start)),
                waiting: None,
            };
        }
        if !waits {
            return LimitFuture {
                future: None,
                slot: None,
                waiting: None,
            };
        }
        // The slow path: wait for a slot, then make a clone of the service
        // ready and call it. The clone, not the service made ready for this
        // call: an inner service that reserves capacity in `poll_ready` (a
        // tower `ConcurrencyLimit`, a `Buffer`) would hold it for the whole
        // wait; `self.inner` stays ready for the next call.
        let mut inner = self.inner.clone();
        let limit = self.limit.clone();
        let waiting = async move {
            let Ok(mut slot) = limit.acquire().await else {
                return Ok(shed());
            };
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let response = inner.call(req).await?;
            slot.set_sample(AdaptiveLimit::is_sample(response.status()));
            Ok(response)
        };
        LimitFuture {
            future: None,
            slot: None,
            waiting: Some(Box::pin(waiting)),
        }
    }
}

/// A request waiting for a slot, then served (the wait path only).
type Waiting<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

pin_project! {
    /// The future of [`LimitService`].
    pub struct LimitFuture<F, E> {
        #[pin]
        future: Option<F>,
        slot: Option<Permit>,
        waiting: Option<Waiting<E>>,
    }
}

impl<F, E> fmt::Debug for LimitFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for LimitFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(waiting) = this.waiting {
            return waiting.as_mut().poll(cx);
        }
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Ok(shed()));
        };
        let output = std::task::ready!(future.poll(cx));
        if let (Some(slot), Ok(response)) = (this.slot.as_mut(), &output) {
            slot.set_sample(AdaptiveLimit::is_sample(response.status()));
        }
        // Given back now, not when the future is dropped.
        this.slot.take();
        Poll::Ready(output)
    }
}

/// The answer to a request shed here: `503`, `Retry-After: 1`, a short
/// text, and the [`Shed`] mark for an outer `HealLayer`.
#[cold]
pub(super) fn shed() -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        "Too busy right now: please try again in a moment.",
    )
        .into_response();
    response.extensions_mut().insert(Shed);
    response
}
