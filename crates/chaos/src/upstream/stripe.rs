//! The Stripe-compatible stand-in: `POST /v1/payment_intents`, with
//! Stripe's idempotency keys and a ledger of every intent it created.
//!
//! The ledger is the point: a payment retried without a working idempotency
//! key creates a second intent, and the harness counts a student charged
//! twice from here. Idempotency follows Stripe's rules (the same key with
//! the same parameters replays the stored response, with other parameters
//! it is an error), under one lock so that concurrent retries cannot both
//! create an intent.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Common, Served, Upstream, bearer};
use crate::faults::{FaultKind, UpstreamFaults};

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
    served: Served<StripeState>,
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

/// A JSON answer with its status.
fn reply((status, body): (StatusCode, Value)) -> Response {
    (status, axum::Json(body)).into_response()
}

fn stripe_invalid(status: StatusCode, kind: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"type": kind, "message": message}}))
}

impl Upstream for StripeState {
    fn common(&self) -> &Common {
        &self.common
    }
}

impl StripeServer {
    /// Starts the server on a free loopback port.
    pub async fn start(faults: Arc<UpstreamFaults>) -> io::Result<Self> {
        let state = StripeState {
            common: Common::new(faults),
            ledger: Mutex::new(Ledger::default()),
            replays: AtomicU64::new(0),
        };
        let served = Served::start(state, "/v1/payment_intents", post(payment_intents)).await?;
        Ok(Self { served })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT`, the API base (paths start with `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// When down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.served.set_down(down);
    }

    /// The counters so far.
    pub fn stats(&self) -> StripeStats {
        StripeStats {
            requests: self.served.requests(),
            created: self.ledger().payments.len() as u64,
            replays: self.served.state.replays.load(Ordering::Relaxed),
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
    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.served.shutdown().await;
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.served.state.ledger.lock().expect("ledger lock")
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
        return reply(stripe_invalid(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided.",
        ));
    }
    if let Some(fault) = state.common.gate(&headers, stripe_error) {
        return fault;
    }
    let params: BTreeMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(params) => params,
        Err(e) => {
            return reply(stripe_invalid(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid form body: {e}"),
            ));
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
            return reply(stripe_invalid(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            ));
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
    reply((status, body))
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
