//! The breaker as a tower [`Layer`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Breaker, BreakerError, Open, Permit, is_failure};
use crate::retry::{AlwaysTransient, Classify};

/// Applies a [`Breaker`] to a tower service.
///
/// Every request asks the breaker first: when it is open the request is
/// refused with [`BreakerError::Open`] and the inner service is not called.
/// Otherwise the response is classified: by default ([`AlwaysTransient`])
/// every error is a failure and every response a success; with
/// [`BreakerLayer::classified`] a classifier decides, as in
/// [`Breaker::call_classified`] (permanent errors count as successes).
///
/// All services made by one layer share the breaker (and its state).
///
/// ```
/// use selfheal::breaker::{Breaker, BreakerLayer};
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .layer(BreakerLayer::new(Breaker::new("inventory")))
///     .service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id * 2) });
/// # let _ = service;
/// ```
#[derive(Clone, Debug)]
pub struct BreakerLayer<C = AlwaysTransient> {
    breaker: Breaker,
    classifier: C,
}

impl BreakerLayer {
    /// A layer that counts every error as a failure.
    pub const fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: AlwaysTransient,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// A layer that asks `classifier` whether an outcome is a failure.
    ///
    /// The classifier is cloned into every response future: keep it cheap to
    /// clone (a unit struct, a closure, or an `Arc`).
    pub const fn classified(breaker: Breaker, classifier: C) -> Self {
        Self {
            breaker,
            classifier,
        }
    }

    /// The breaker this layer applies.
    pub const fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service guarded by a [`Breaker`]; made by [`BreakerLayer`].
#[derive(Clone, Debug)]
pub struct BreakerService<S, C = AlwaysTransient> {
    inner: S,
    breaker: Breaker,
    classifier: C,
}

impl<S, C> BreakerService<S, C> {
    /// The breaker guarding this service.
    pub const fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes the guard and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Request> Service<Request> for BreakerService<S, C>
where
    S: Service<Request>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = match self.breaker.try_acquire() {
            Ok(permit) => State::Called {
                future: self.inner.call(request),
                permit: Some(permit),
                classifier: self.classifier.clone(),
            },
            Err(open) => State::Refused { open: Some(open) },
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The response future of a [`BreakerService`]: the inner service's future,
    /// recording its outcome on the breaker, or an immediate refusal.
    ///
    /// Dropping it before it completes records nothing and frees a half-open
    /// probe slot.
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
            permit: Option<Permit>,
            classifier: C,
        },
        Refused {
            open: Option<Open>,
        },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                future,
                permit,
                classifier,
            } => {
                let result = std::task::ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    if is_failure(classifier, &result) {
                        permit.failure();
                    } else {
                        permit.success();
                    }
                }
                Poll::Ready(result.map_err(BreakerError::Inner))
            }
            StateProj::Refused { open } => Poll::Ready(Err(BreakerError::Open(
                open.take().expect("ResponseFuture polled after completion"),
            ))),
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { permit, .. } => match permit {
                Some(_) => "called",
                None => "completed",
            },
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use tower::{Service, ServiceExt, service_fn};

    use super::*;
    use crate::observe::BreakerState;
    use crate::retry::Verdict;

    fn breaker(failures: u32) -> Breaker {
        Breaker::builder("inventory")
            .with_consecutive_failures(failures)
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_refuses_without_calling_the_inner_service() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |fail: bool| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { if fail { Err("down") } else { Ok("up") } }
        });
        let breaker = breaker(2);
        let mut service = BreakerLayer::new(breaker.clone()).layer(inner);

        assert_eq!(
            service.ready().await.unwrap().call(false).await.unwrap(),
            "up"
        );
        for _ in 0..2 {
            let error = service.ready().await.unwrap().call(true).await.unwrap_err();
            assert!(matches!(error, BreakerError::Inner("down")));
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let error = service
            .ready()
            .await
            .unwrap()
            .call(false)
            .await
            .unwrap_err();
        let open = error.as_open().expect("refused");
        assert_eq!(open.retry_in(), Duration::from_secs(5));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "the inner service was called"
        );

        // After the break, the request is a probe; its success closes the breaker.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            service.ready().await.unwrap().call(false).await.unwrap(),
            "up"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn classifier_decides_what_counts_as_a_failure() {
        // Status codes: 5xx responses are failures, 4xx errors are not.
        #[derive(Clone)]
        struct Status;
        impl Classify<u16, u16> for Status {
            fn classify_error(&self, _error: &u16) -> Verdict {
                Verdict::Permanent
            }
            fn classify_ok(&self, status: &u16) -> Option<Verdict> {
                (*status >= 500).then_some(Verdict::Transient)
            }
        }
        let inner = service_fn(|status: u16| async move {
            if (400..500).contains(&status) {
                Err(status)
            } else {
                Ok(status)
            }
        });
        let breaker = breaker(3);
        let mut service = BreakerLayer::classified(breaker.clone(), Status).layer(inner);

        for _ in 0..10 {
            let error = service.ready().await.unwrap().call(400).await.unwrap_err();
            assert_eq!(error.into_inner(), Some(400));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        for _ in 0..3 {
            // A 503 is returned as it is, and counted as a failure.
            assert_eq!(service.ready().await.unwrap().call(503).await.unwrap(), 503);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_response_future_frees_the_probe_slot() {
        let inner = service_fn(|fail: bool| async move {
            if fail {
                return Err("down");
            }
            std::future::pending::<()>().await;
            Ok::<_, &str>(())
        });
        let breaker = breaker(1);
        let mut service = BreakerLayer::new(breaker.clone()).layer(inner);
        assert!(service.ready().await.unwrap().call(true).await.is_err());
        tokio::time::advance(Duration::from_secs(5)).await;

        let probe = service.ready().await.unwrap().call(false);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // Refused at once: a call to the inner service would never finish.
        let refused = tokio::time::timeout(
            Duration::from_secs(1),
            service.ready().await.unwrap().call(false),
        )
        .await
        .expect("refused without calling the inner service")
        .unwrap_err();
        assert_eq!(
            refused.as_open().map(Open::state),
            Some(BreakerState::HalfOpen)
        );
        drop(probe);

        let again = service.ready().await.unwrap().call(false);
        assert_eq!(breaker.snapshot().probes_in_flight, 1);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        drop(again);
        assert_eq!(breaker.snapshot().probes_in_flight, 0);
    }

    /// A service that is never ready.
    #[derive(Debug)]
    struct Overloaded;

    impl Service<()> for Overloaded {
        type Response = ();
        type Error = &'static str;
        type Future = std::future::Ready<Result<(), &'static str>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err("overloaded"))
        }

        fn call(&mut self, _request: ()) -> Self::Future {
            unreachable!("never ready")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn poll_ready_is_delegated_and_its_errors_are_not_recorded() {
        let breaker = breaker(1);
        let mut service = BreakerLayer::new(breaker.clone()).layer(Overloaded);
        for _ in 0..3 {
            let error = service.ready().await.unwrap_err();
            assert!(matches!(error, BreakerError::Inner("overloaded")));
        }
        // A service that is not ready was not called: nothing to judge.
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(service.breaker().name(), "inventory");
    }
}
