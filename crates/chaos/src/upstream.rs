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

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::faults::{FaultKind, UpstreamFaults};

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
    fn gate(&self, error_body: fn(FaultKind) -> Value) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Some(fault_response(FaultKind::Unavailable, error_body));
        }
        self.faults
            .take_http_fault()
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

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

// ---------------------------------------------------------------- OpenAI --

/// Counters of the OpenAI-compatible server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenAiStats {
    /// Every request received (faulted and unauthorised ones too).
    pub requests: u64,
    /// Completions answered with 200.
    pub completions: u64,
}

#[derive(Debug)]
struct OpenAiState {
    common: Common,
    completions: AtomicU64,
}

/// An OpenAI-compatible `POST /v1/chat/completions` on 127.0.0.1.
#[derive(Debug)]
pub struct OpenAiServer {
    state: Arc<OpenAiState>,
    running: Running,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

fn openai_error(kind: FaultKind) -> Value {
    match kind {
        FaultKind::RateLimit => json!({"error": {
            "message": "Rate limit reached for requests. Please try again in 1s.",
            "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        _ => json!({"error": {
            "message": "The server is overloaded or not ready yet.",
            "type": "server_error", "param": null, "code": null}}),
    }
}

fn openai_invalid(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
        ),
    )
        .into_response()
}

impl OpenAiServer {
    /// Starts the server on a free loopback port.
    pub async fn start(faults: Arc<UpstreamFaults>) -> io::Result<Self> {
        let state = Arc::new(OpenAiState {
            common: Common::new(faults),
            completions: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Arc::clone(&state));
        let running = Running::spawn(router).await?;
        Ok(Self { state, running })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client expects.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.running.addr)
    }

    /// When down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.common.down.store(down, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn stats(&self) -> OpenAiStats {
        OpenAiStats {
            requests: self.state.common.requests.load(Ordering::Relaxed),
            completions: self.state.completions.load(Ordering::Relaxed),
        }
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
    }
}

/// The deterministic tutor answer for a question.
pub fn tutor_answer(question: &str) -> String {
    const HINTS: [&str; 4] = [
        "Start from the definition and work through one small example.",
        "Break it into smaller steps and check each one.",
        "Compare it with a case you already know well.",
        "Write down what you know and what you need, then connect them.",
    ];
    let question: String = question.trim().chars().take(120).collect();
    let hash = question
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!(
        "About \"{question}\": {}",
        HINTS[(hash % HINTS.len() as u32) as usize]
    )
}

async fn chat_completions(
    State(state): State<Arc<OpenAiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bearer(&headers).is_none() {
        state.common.requests.fetch_add(1, Ordering::Relaxed);
        return openai_invalid(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key.",
            "invalid_request_error",
        );
    }
    if let Some(fault) = state.common.gate(openai_error) {
        return fault;
    }
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return openai_invalid(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
                "invalid_request_error",
            );
        }
    };
    let Some(question) = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
    else {
        return openai_invalid(
            StatusCode::BAD_REQUEST,
            "messages must contain a user message",
            "invalid_request_error",
        );
    };
    let n = state.completions.fetch_add(1, Ordering::Relaxed) + 1;
    axum::Json(json!({
        "id": format!("chatcmpl-{n:08}"),
        "object": "chat.completion",
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": tutor_answer(question)},
            "finish_reason": "stop"
        }]
    }))
    .into_response()
}

// ---------------------------------------------------------------- Stripe --

/// One payment intent the Stripe-compatible server created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// `pi_…`
    pub id: String,
    /// `metadata[student_id]`.
    pub student_id: String,
    /// Amount in the smallest currency unit.
    pub amount: u64,
    /// Lower-case ISO currency code.
    pub currency: String,
    /// The `Idempotency-Key` header it was created with, if any.
    pub idempotency_key: Option<String>,
}

/// Counters of the Stripe-compatible server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StripeStats {
    /// Every request received.
    pub requests: u64,
    /// Payment intents created (each one is a charge).
    pub created: u64,
    /// Requests answered by replaying a stored idempotent response.
    pub replays: u64,
}

#[derive(Debug)]
struct StoredResponse {
    params: BTreeMap<String, String>,
    status: StatusCode,
    body: Value,
}

#[derive(Debug, Default)]
struct Ledger {
    payments: Vec<PaymentRecord>,
    idempotency: HashMap<String, StoredResponse>,
}

#[derive(Debug)]
struct StripeState {
    common: Common,
    ledger: Mutex<Ledger>,
    replays: AtomicU64,
}

/// A Stripe-compatible `POST /v1/payment_intents` on 127.0.0.1.
#[derive(Debug)]
pub struct StripeServer {
    state: Arc<StripeState>,
    running: Running,
}

fn stripe_error(kind: FaultKind) -> Value {
    match kind {
        FaultKind::RateLimit => json!({"error": {
            "type": "invalid_request_error", "code": "rate_limit",
            "message": "Too many requests hit the API too quickly."}}),
        _ => json!({"error": {"type": "api_error",
            "message": "The service is temporarily unavailable."}}),
    }
}

fn stripe_invalid(status: StatusCode, kind: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"type": kind, "message": message}}))
}

impl StripeServer {
    /// Starts the server on a free loopback port.
    pub async fn start(faults: Arc<UpstreamFaults>) -> io::Result<Self> {
        let state = Arc::new(StripeState {
            common: Common::new(faults),
            ledger: Mutex::new(Ledger::default()),
            replays: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/payment_intents", post(payment_intents))
            .with_state(Arc::clone(&state));
        let running = Running::spawn(router).await?;
        Ok(Self { state, running })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// `http://127.0.0.1:PORT`, the API base (paths start with `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// When down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.common.down.store(down, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn stats(&self) -> StripeStats {
        StripeStats {
            requests: self.state.common.requests.load(Ordering::Relaxed),
            created: self.ledger().payments.len() as u64,
            replays: self.state.replays.load(Ordering::Relaxed),
        }
    }

    /// Every payment intent created, in order.
    pub fn payments(&self) -> Vec<PaymentRecord> {
        self.ledger().payments.clone()
    }

    /// The payment intents created, grouped by `metadata[student_id]`: a
    /// student with more intents than purchases was charged twice.
    pub fn payments_by_student(&self) -> BTreeMap<String, Vec<PaymentRecord>> {
        let mut by_student: BTreeMap<String, Vec<PaymentRecord>> = BTreeMap::new();
        for p in &self.ledger().payments {
            by_student
                .entry(p.student_id.clone())
                .or_default()
                .push(p.clone());
        }
        by_student
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state.ledger.lock().expect("ledger lock")
    }
}

async fn payment_intents(
    State(state): State<Arc<StripeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorised = bearer(&headers).is_some_and(|key| key.starts_with("sk_"));
    if !authorised {
        state.common.requests.fetch_add(1, Ordering::Relaxed);
        let (status, body) = stripe_invalid(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided.",
        );
        return (status, axum::Json(body)).into_response();
    }
    if let Some(fault) = state.common.gate(stripe_error) {
        return fault;
    }
    let params: BTreeMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(params) => params,
        Err(e) => {
            let (status, body) = stripe_invalid(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid form body: {e}"),
            );
            return (status, axum::Json(body)).into_response();
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|k| !k.is_empty());

    // One lock over check, create and store: concurrent retries with the
    // same key cannot both create an intent.
    let mut ledger = state.ledger.lock().expect("ledger lock");
    if let Some(key) = &key
        && let Some(stored) = ledger.idempotency.get(key)
    {
        if stored.params != params {
            let (status, body) = stripe_invalid(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            );
            return (status, axum::Json(body)).into_response();
        }
        state.replays.fetch_add(1, Ordering::Relaxed);
        return (
            stored.status,
            [("idempotent-replayed", "true")],
            axum::Json(stored.body.clone()),
        )
            .into_response();
    }
    let (status, body) = create_intent(&mut ledger, &params, key.clone());
    if let Some(key) = key {
        ledger.idempotency.insert(
            key,
            StoredResponse {
                params,
                status,
                body: body.clone(),
            },
        );
    }
    (status, axum::Json(body)).into_response()
}

fn create_intent(
    ledger: &mut Ledger,
    params: &BTreeMap<String, String>,
    idempotency_key: Option<String>,
) -> (StatusCode, Value) {
    let invalid =
        |message: &str| stripe_invalid(StatusCode::BAD_REQUEST, "invalid_request_error", message);
    let Some(amount) = params
        .get("amount")
        .and_then(|a| a.parse::<u64>().ok())
        .filter(|a| *a > 0)
    else {
        return invalid("amount must be a positive integer");
    };
    let Some(currency) = params
        .get("currency")
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(|c| c.to_ascii_lowercase())
    else {
        return invalid("currency must be a three-letter ISO code");
    };
    let Some(student_id) = params
        .get("metadata[student_id]")
        .filter(|s| !s.is_empty())
        .cloned()
    else {
        return invalid("metadata[student_id] is required");
    };
    let id = format!("pi_chaos{:010}", ledger.payments.len() + 1);
    ledger.payments.push(PaymentRecord {
        id: id.clone(),
        student_id: student_id.clone(),
        amount,
        currency: currency.clone(),
        idempotency_key,
    });
    (
        StatusCode::OK,
        json!({
            "id": id,
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "status": "succeeded",
            "metadata": {"student_id": student_id}
        }),
    )
}
