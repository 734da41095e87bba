//! The fallback as a tower middleware.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::Fallback;
use crate::observe::short_type_name;

/// Answers with a fallback response when the inner service fails.
///
/// `make` builds the response from the error; the error is reported as a
/// fallback event. The service's error type is unchanged (it simply never
/// returns an error), so it composes with any stack.
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use selfheal::fallback::FallbackLayer;
///
/// # async fn demo() {
/// let recommendations = ServiceBuilder::new()
///     .layer(FallbackLayer::new("recommendations", |_err: &std::io::Error| Vec::<String>::new()))
///     .service(service_fn(|_user: u64| async {
///         Err::<Vec<String>, _>(std::io::Error::other("model server down"))
///     }));
/// assert!(recommendations.oneshot(7).await.unwrap().is_empty());
/// # }
/// ```
pub struct FallbackLayer<F> {
    fallback: Fallback,
    make: Arc<F>,
}

impl<F> FallbackLayer<F> {
    /// A layer answering `make(&error)` when the inner service fails; `name`
    /// names the operation in events.
    pub fn new(name: impl Into<std::borrow::Cow<'static, str>>, make: F) -> Self {
        Self {
            fallback: Fallback::new(name),
            make: Arc::new(make),
        }
    }

    /// Reports to `observer` instead of the global observer.
    pub fn with_observer(mut self, observer: Arc<dyn crate::observe::Observer>) -> Self {
        self.fallback = self.fallback.with_observer(observer);
        self
    }
}

impl<F> Clone for FallbackLayer<F> {
    fn clone(&self) -> Self {
        Self {
            fallback: self.fallback.clone(),
            make: self.make.clone(),
        }
    }
}

impl<F> fmt::Debug for FallbackLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl<S, F> Layer<S> for FallbackLayer<F> {
    type Service = FallbackService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`FallbackLayer`].
pub struct FallbackService<S, F> {
    inner: S,
    layer: FallbackLayer<F>,
}

impl<S: Clone, F> Clone for FallbackService<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for FallbackService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, F, Req> Service<Req> for FallbackService<S, F>
where
    S: Service<Req>,
    S::Error: fmt::Display,
    F: Fn(&S::Error) -> S::Response,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = FallbackFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A service that is not ready is a failure too: answer the fallback
        // from `call` rather than failing readiness.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                self.layer
                    .fallback
                    .report(short_type_name::<S::Error>(), &error);
                Poll::Ready(Err(error))
            }
            other => other,
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        FallbackFuture {
            inner: self.inner.call(request),
            layer: self.layer.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`FallbackService`].
    pub struct FallbackFuture<Fut, F> {
        #[pin]
        inner: Fut,
        layer: FallbackLayer<F>,
    }
}

impl<Fut, F> fmt::Debug for FallbackFuture<Fut, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFuture")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<Fut, F, T, E> Future for FallbackFuture<Fut, F>
where
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
    F: Fn(&E) -> T,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        let layer = &*this.layer;
        Poll::Ready(Ok(layer
            .fallback
            .recover(outcome, |error| (layer.make)(&error))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn the_layer_answers_the_fallback_and_reports_it() {
        let used = Arc::new(AtomicU32::new(0));
        let counter = used.clone();
        let svc = FallbackLayer::new("prices", |e: &String| format!("cached ({e})"))
            .with_observer(Arc::new(move |_: &crate::observe::Event<'_>| {
                counter.fetch_add(1, Ordering::SeqCst);
            }))
            .layer(service_fn(|n: u32| async move {
                if n == 0 {
                    Err("upstream down".to_string())
                } else {
                    Ok(format!("live {n}"))
                }
            }));
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "live 1");
        assert_eq!(used.load(Ordering::SeqCst), 0);
        assert_eq!(svc.oneshot(0).await.unwrap(), "cached (upstream down)");
        assert_eq!(used.load(Ordering::SeqCst), 1);
    }
}
