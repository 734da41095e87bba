//! Local stand-ins for the two upstream APIs the app calls: an
//! OpenAI-compatible chat endpoint and a Stripe-compatible payment endpoint.
//!
//! Why local servers instead of mocks inside the app: the app must go through
//! its real HTTP client, real sockets and (with the [`proxy`](crate::proxy) in
//! front) real network faults, and the harness must be able to count what the
//! upstream actually received: retries multiply upstream calls, and a retried
//! payment without a working idempotency key charges a student twice. So both
//! servers count every request, and the Stripe one keeps a ledger of every
//! payment intent it created.
//!
//! HTTP-level faults (429 with `Retry-After: 1`, 503) are decided by the
//! shared [`UpstreamFaults`]; each server also has a `down` switch (503 to
//! everything) besides the proxy's storm mode.
//!
//! This file holds what both servers share: the request gate (counting,
//! the `down` switch, the drawn fault), the fault responses, the spawned
//! HTTP server and the bearer-token check; `openai` and `stripe` hold each
//! API's routes, state and counters.

mod openai;
mod stripe;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::faults::{FaultKind, UpstreamFaults};

pub use openai::{OpenAiServer, OpenAiStats, tutor_answer};
pub use stripe::{PaymentRecord, StripeServer, StripeStats};

/// Request counters and switches shared by both servers.
#[derive(Debug)]
struct Common {
    requests: AtomicU64,
    down: AtomicBool,
    faults: Arc<UpstreamFaults>,
}

impl Common {
    fn new(faults: Arc<UpstreamFaults>) -> Self {
        Self {
            requests: AtomicU64::new(0),
            down: AtomicBool::new(false),
            faults,
        }
    }

    /// Counts the request; answers 503 when down, or the fault the shared
    /// decision-maker picks.
    fn gate(&self, headers: &HeaderMap, error_body: fn(FaultKind) -> Value) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Some(fault_response(FaultKind::Unavailable, error_body));
        }
        let tag = headers
            .get(crate::ledger::REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        self.faults
            .take_http_fault(tag)
            .map(|kind| fault_response(kind, error_body))
    }
}

fn fault_response(kind: FaultKind, error_body: fn(FaultKind) -> Value) -> Response {
    let body = axum::Json(error_body(kind));
    match kind {
        FaultKind::RateLimit => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            body,
        )
            .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, body).into_response(),
    }
}

/// A server's state: whatever it keeps, around the shared [`Common`].
trait Upstream: Send + Sync + 'static {
    /// The shared counters and switches.
    fn common(&self) -> &Common;
}

/// One upstream server while it runs: its state and its HTTP server.
#[derive(Debug)]
struct Served<S> {
    state: Arc<S>,
    running: Running,
}

impl<S: Upstream> Served<S> {
    /// Serves `route` at `path` over `state` on a free loopback port.
    async fn start(state: S, path: &str, route: MethodRouter<Arc<S>>) -> io::Result<Self> {
        let state = Arc::new(state);
        let router = Router::new()
            .route(path, route)
            .with_state(Arc::clone(&state));
        let running = Running::spawn(router).await?;
        Ok(Self { state, running })
    }

    /// The listening address.
    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// When down, every request is answered 503.
    fn set_down(&self, down: bool) {
        self.state.common().down.store(down, Ordering::Relaxed);
    }

    /// Every request received so far.
    fn requests(&self) -> u64 {
        self.state.common().requests.load(Ordering::Relaxed)
    }

    /// Stops the server.
    async fn shutdown(&mut self) {
        self.running.shutdown().await;
    }
}

/// A spawned axum server with graceful shutdown.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    async fn spawn(router: Router) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Signals shutdown, waits up to a second for open connections, then aborts.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The bearer token of the `Authorization` header, if there is one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
}
