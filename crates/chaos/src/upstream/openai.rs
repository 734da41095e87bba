//! The OpenAI-compatible stand-in: `POST /v1/chat/completions`, answering
//! the tutor's questions with a deterministic hint.
//!
//! Its errors have OpenAI's shapes (`rate_limit_exceeded`, `server_error`,
//! `invalid_request_error`) so that the app's client sees what it would see
//! from the real API; its answers are a pure function of the question so
//! that runs are reproducible.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Common, Served, Upstream, bearer};
use crate::faults::{FaultKind, UpstreamFaults};

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
    served: Served<OpenAiState>,
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

impl Upstream for OpenAiState {
    fn common(&self) -> &Common {
        &self.common
    }
}

impl OpenAiServer {
    /// Starts the server on a free loopback port.
    pub async fn start(faults: Arc<UpstreamFaults>) -> io::Result<Self> {
        let state = OpenAiState {
            common: Common::new(faults),
            completions: AtomicU64::new(0),
        };
        let served = Served::start(state, "/v1/chat/completions", post(chat_completions)).await?;
        Ok(Self { served })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client expects.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr())
    }

    /// When down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.served.set_down(down);
    }

    /// The counters so far.
    pub fn stats(&self) -> OpenAiStats {
        OpenAiStats {
            requests: self.served.requests(),
            completions: self.served.state.completions.load(Ordering::Relaxed),
        }
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.served.shutdown().await;
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
    if let Some(fault) = state.common.gate(&headers, openai_error) {
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
