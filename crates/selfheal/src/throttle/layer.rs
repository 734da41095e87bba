//! The throttle as a tower [`Layer`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{AdaptiveThrottle, ThrottleError, Throttled};
use crate::retry::{AlwaysTransient, Classify};

/// Applies an [`AdaptiveThrottle`] to a tower service: every request asks
/// the throttle first (refused with [`ThrottleError::Throttled`], the inner
/// service not called), and every outcome is recorded: by default every
/// error is a refusal by the dependency; with [`ThrottleLayer::classified`]
/// a classifier decides (permanent errors are accepts).
///
/// ```
/// use selfheal::throttle::{AdaptiveThrottle, ThrottleLayer};
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .layer(ThrottleLayer::new(AdaptiveThrottle::new("inventory")))
///     .service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id * 2) });
/// # let _ = service;
/// ```
#[derive(Clone, Debug)]
pub struct ThrottleLayer<C = AlwaysTransient> {
    throttle: AdaptiveThrottle,
    classifier: C,
}

impl ThrottleLayer {
    /// A layer that counts every error as a refusal.
    pub const fn new(throttle: AdaptiveThrottle) -> Self {
        Self {
            throttle,
            classifier: AlwaysTransient,
        }
    }
}

impl<C> ThrottleLayer<C> {
    /// A layer that asks `classifier` which outcomes are refusals (cloned
    /// into every response future: keep it cheap to clone).
    pub const fn classified(throttle: AdaptiveThrottle, classifier: C) -> Self {
        Self {
            throttle,
            classifier,
        }
    }

    /// The throttle this layer applies.
    pub const fn throttle(&self) -> &AdaptiveThrottle {
        &self.throttle
    }
}

impl<S, C: Clone> Layer<S> for ThrottleLayer<C> {
    type Service = ThrottleService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            throttle: self.throttle.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service behind an [`AdaptiveThrottle`]; made by [`ThrottleLayer`].
#[derive(Clone, Debug)]
pub struct ThrottleService<S, C = AlwaysTransient> {
    inner: S,
    throttle: AdaptiveThrottle,
    classifier: C,
}

impl<S, C> ThrottleService<S, C> {
    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the service and returns the inner one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Request> Service<Request> for ThrottleService<S, C>
where
    S: Service<Request>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = ThrottleError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ThrottleError::Inner)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = if self.throttle.admit() {
            State::Called {
                future: self.inner.call(request),
                throttle: Some(self.throttle.clone()),
                classifier: self.classifier.clone(),
            }
        } else {
            State::Refused {
                refused: Some(self.throttle.throttled()),
            }
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The response future of a [`ThrottleService`]: the inner service's
    /// future, recording its outcome, or an immediate refusal. Dropped
    /// before it completes, it records nothing.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Called {
            #[pin]
            future: F,
            throttle: Option<AdaptiveThrottle>,
            classifier: C,
        },
        Refused {
            refused: Option<Throttled>,
        },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, ThrottleError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                throttle,
                classifier,
            } => {
                let result = std::task::ready!(future.poll(cx));
                if let Some(throttle) = throttle.take() {
                    throttle.observe(super::signal(classifier, &result));
                }
                Poll::Ready(result.map_err(ThrottleError::Inner))
            }
            StateProj::Refused { refused } => Poll::Ready(Err(ThrottleError::Throttled(
                refused
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ))),
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { throttle, .. } => match throttle {
                Some(_) => "called",
                None => "completed",
            },
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
