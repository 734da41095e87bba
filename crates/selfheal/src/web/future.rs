//! The future returned by [`HealService`](super::HealService).

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::Response;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::context::RequestContext;

pin_project! {
    /// The response future of [`HealService`](super::HealService): polls the
    /// handler's future inside `catch_unwind`, races it against the optional
    /// timeout, and records the outcome. No boxing.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            future: F,
            // Boxed: a `Sleep` is larger than the rest of this future, and
            // most services run without a timeout.
            sleep: Option<Pin<Box<Sleep>>>,
            ctx: RequestContext,
        },
        Ready {
            response: Option<Response>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn running(future: F, sleep: Option<Pin<Box<Sleep>>>, ctx: RequestContext) -> Self {
        Self {
            state: State::Running { future, sleep, ctx },
        }
    }

    pub(crate) fn ready(response: Response) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let response = match state.as_mut().project() {
            StateProj::Ready { response } => {
                return Poll::Ready(Ok(response
                    .take()
                    .expect("ResponseFuture polled after completion")));
            }
            StateProj::Running { future, sleep, ctx } => {
                // The handler's state is abandoned after a panic (it is never
                // polled again), so observing it broken is impossible.
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => {
                        ctx.answered(response.status());
                        ctx.finish(response)
                    }
                    Ok(Poll::Ready(Err(error))) => return Poll::Ready(Err(error)),
                    Ok(Poll::Pending) => {
                        let elapsed = sleep
                            .as_mut()
                            .is_some_and(|s| s.as_mut().poll(cx).is_ready());
                        if !elapsed {
                            return Poll::Pending;
                        }
                        ctx.timed_out()
                    }
                    Err(payload) => ctx.panicked(payload),
                }
            }
        };
        // Drop the handler's future (and its captured state) now.
        state.set(State::Ready { response: None });
        Poll::Ready(Ok(response))
    }
}
