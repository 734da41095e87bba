//! The retry engine as a tower middleware.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::{Classify, Policy, Run, Step};

/// Applies a [`Policy`] to every request of a tower service: the same engine
/// as [`Policy::retry`], for services whose requests can be cloned.
///
/// With a classifier that looks at responses ([`Classify::classify_ok`]), a
/// `503` response can count as transient and be retried; once the policy gives
/// up, the last response (or error) is returned as it is.
///
/// ```
/// use std::convert::Infallible;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use selfheal::retry::{Policy, RetryLayer};
///
/// # async fn demo() {
/// let service = ServiceBuilder::new()
///     .layer(RetryLayer::new(Policy::default().with_name("inventory")))
///     .service(service_fn(|sku: u32| async move { Ok::<_, Infallible>(sku * 2) }));
/// assert_eq!(service.oneshot(21).await.unwrap(), 42);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<C> {
    policy: Arc<Policy<C>>,
}

impl<C> RetryLayer<C> {
    /// A layer applying `policy`.
    pub fn new(policy: Policy<C>) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct RetryService<S, C> {
    inner: S,
    policy: Arc<Policy<C>>,
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    S::Error: fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The service that was driven to readiness makes this call; a clone
        // takes its place for the next request (tower's usual dance).
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let future = service.call(request.clone());
        let started = self.policy.deadline.map(|_| Instant::now());
        ResponseFuture {
            state: State::Calling { future },
            service,
            request,
            policy: self.policy.clone(),
            run: Run::new(started),
        }
    }
}

pin_project! {
    /// The response future of [`RetryService`].
    pub struct ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: Req,
        policy: Arc<Policy<C>>,
        run: Run<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Sleeping { #[pin] sleep: Sleep },
        Readying,
    }
}

impl<S, Req, C> fmt::Debug for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.run.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    S::Error: fmt::Display,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let outcome = ready!(future.poll(cx));
                    let policy = &**this.policy;
                    match policy.after_attempt(this.run, outcome, policy.name()) {
                        // Giving up returns the last response or error as it is.
                        Step::Done(outcome) | Step::GiveUp { outcome, .. } => {
                            return Poll::Ready(outcome);
                        }
                        Step::Retry(delay) if delay.is_zero() => this.state.set(State::Readying),
                        Step::Retry(delay) => this.state.set(State::Sleeping {
                            sleep: tokio::time::sleep(delay),
                        }),
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(error));
                    }
                    let future = this.service.call(this.request.clone());
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}
