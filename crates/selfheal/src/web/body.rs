//! The response body [`HealLayer`](super::HealLayer) hands on: the
//! handler's own, guarded against a panic while it streams.
//!
//! ## Why a body of its own
//!
//! A handler may return before its answer is made: a streamed body (a
//! large export, a server-sent event stream, a template rendered in
//! pieces) runs its code when the server polls it, after the status line
//! and the headers have gone out. A panic there is outside the handler's
//! future, so the layer's `catch_unwind` around that future never sees it;
//! left alone, it unwinds through the connection's task: the panic goes
//! unrecorded (the dashboard shows nothing, no alert can fire) and the
//! client gets whatever the connection's death looks like.
//!
//! So the layer wraps the body: each poll runs inside `catch_unwind`, and
//! a panic is recorded like any other (an error of kind `Panic` on the
//! route, a [`PanicCaught`](crate::health::HealKind::PanicCaught) heal, a
//! log line with the request id), then the body ends with an error. It is
//! too late for a friendly page (the status was sent), so that error is
//! the honest answer: the server aborts the response, and the client sees
//! a truncated body (an HTTP/1.1 chunked body without its last chunk, a
//! body shorter than its `content-length`), never a complete-looking one.
//! The server and its other connections carry on. The inner body is never
//! polled again after its panic.
//!
//! Cost: one allocation per response (axum's body is a boxed body, so the
//! guard is boxed once more) and a `catch_unwind` per frame, which costs
//! nothing unless a panic unwinds. Empty bodies are not wrapped.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::MatchedPath;
use axum::http::HeaderValue;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use super::client::Client;
use super::context::Shared;
use super::respond;
use crate::observe::{self, Event, Failure, HealKind};

/// What a guarded body needs to record a panic: the request's route,
/// client and id, and the layer's monitor.
pub(crate) struct BodyGuard {
    pub(crate) shared: Arc<Shared>,
    pub(crate) route: Option<MatchedPath>,
    pub(crate) client: Client,
    pub(crate) request_id: Option<HeaderValue>,
}

impl BodyGuard {
    /// The body panicked while streaming: recorded like a handler's panic
    /// (it cannot be answered any more).
    #[cold]
    #[inline(never)]
    fn panicked(self, payload: Box<dyn std::any::Any + Send>) {
        let message = respond::panic_message(&*payload);
        let route = self
            .route
            .as_ref()
            .map_or("<unmatched>", MatchedPath::as_str);
        let mut headers = axum::http::HeaderMap::new();
        if let Some(id) = self.request_id {
            headers.insert(respond::X_REQUEST_ID, id);
        }
        let request_id = respond::request_id(&headers);
        tracing::error!(
            target: "selfheal",
            request_id,
            route,
            panic = message,
            "response body panicked while streaming; the response was aborted"
        );
        observe::emit(
            Some(&self.shared.monitor),
            &Event::Error {
                operation: route,
                failure: Failure {
                    kind: "Panic",
                    message: &message,
                },
                client: self.client.id(),
            },
        );
        observe::emit(
            Some(&self.shared.monitor),
            &Event::Heal {
                kind: HealKind::PanicCaught,
                operation: route,
            },
        );
        // As in the layer: a payload whose drop panics must not unwind
        // out of here.
        std::mem::forget(payload);
    }
}

pin_project! {
    /// A response body whose panics are caught, recorded, and turned into
    /// the end of the response (an error the server answers by aborting it).
    pub(crate) struct GuardedBody {
        #[pin]
        inner: Body,
        // `None` once the inner body panicked: it is never polled again.
        guard: Option<BodyGuard>,
    }
}

impl GuardedBody {
    /// `body`, guarded; an empty body is handed on as it is.
    pub(crate) fn wrap(body: Body, guard: BodyGuard) -> Body {
        if http_body::Body::is_end_stream(&body) {
            return body;
        }
        Body::new(Self {
            inner: body,
            guard: Some(guard),
        })
    }
}

/// The error that ends a body that panicked.
#[derive(Debug, thiserror::Error)]
#[error("the response body panicked while streaming")]
struct BodyPanicked;

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        let inner = this.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                if let Some(guard) = this.guard.take() {
                    guard.panicked(payload);
                }
                Poll::Ready(Some(Err(axum::Error::new(BodyPanicked))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.guard.is_none() {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}
