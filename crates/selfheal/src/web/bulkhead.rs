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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::limit::AdaptiveLimit;

/// Marks a response as shed by a route's limit: an outer
/// [`HealLayer`](super::HealLayer) answers it as its own shedding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shed;

/// The tower layer of [`AdaptiveLimit::layer`]: requests beyond the limit
/// are answered at once with `503` and `Retry-After: 1`.
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
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LimitFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.limit.try_acquire() {
            Some(start) => LimitFuture {
                future: Some(self.inner.call(req)),
                slot: Some(Slot {
                    limit: self.limit.clone(),
                    start,
                    sample: false,
                }),
            },
            None => LimitFuture {
                future: None,
                slot: None,
            },
        }
    }
}

/// A request's slot, given back once when dropped: with a latency sample
/// when it was answered with a success or a redirect, without one when
/// abandoned or answered with an error.
struct Slot {
    limit: AdaptiveLimit,
    start: tokio::time::Instant,
    sample: bool,
}

impl Slot {
    fn answered(mut self, status: StatusCode) {
        self.sample = AdaptiveLimit::is_sample(status);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.release(self.start, self.sample);
    }
}

pin_project! {
    /// The future of [`LimitService`].
    pub struct LimitFuture<F> {
        #[pin]
        future: Option<F>,
        slot: Option<Slot>,
    }
}

impl<F> fmt::Debug for LimitFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Ok(shed()));
        };
        let output = std::task::ready!(future.poll(cx));
        if let (Some(slot), Ok(response)) = (this.slot.take(), &output) {
            slot.answered(response.status());
        }
        Poll::Ready(output)
    }
}

/// The answer to a request shed here: `503`, `Retry-After: 1`, a short
/// text, and the [`Shed`] mark for an outer `HealLayer`.
#[cold]
fn shed() -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        "Too busy right now: please try again in a moment.",
    )
        .into_response();
    response.extensions_mut().insert(Shed);
    response
}
