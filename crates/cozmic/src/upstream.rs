//! The two flaky upstreams the guide names: the AI tutor (any
//! OpenAI-compatible chat-completions API) and payments (a Stripe-compatible
//! API), both called through selfheal's reqwest middleware.
//!
//! Why the middleware and not a loop around `send()`: it knows which
//! requests may be repeated. A chat completion has no side effect, so it is
//! marked [`Idempotency::Idempotent`] and retried like a GET; a payment is
//! not, so it carries one `Idempotency-Key` per purchase and the provider
//! (Stripe honours the header) replays the first result instead of charging
//! twice. `Retry-After` and OpenAI's rate-limit headers are obeyed, a retry
//! budget per host stops retries from tripling the load during an outage,
//! and a circuit breaker answers at once while the provider is down. When
//! healing cannot help, the caller gets [`UpstreamError::Unavailable`] with
//! the time to wait, and the page says so kindly.

use std::time::Duration;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use selfheal::health::Monitor;
use selfheal::http::{Dependency, Idempotency, ResilientMiddleware};
use selfheal::retry::Backoff;
use serde::Deserialize;
use serde_json::json;

use crate::config::{Healing, OpenAi, Stripe, UpstreamPolicy};

/// A call to an upstream that did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The provider is not configured (no API key).
    #[error("not configured")]
    NotConfigured,
    /// The provider failed, still after the retries; try again after
    /// `retry_after`.
    #[error("temporarily unavailable (retry after {retry_after:?})")]
    Unavailable {
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The provider refused the request (a 4xx other than 408/429): not
    /// worth retrying.
    #[error("the provider refused the request (HTTP {0})")]
    Refused(u16),
    /// The answer was not what the API promises.
    #[error("unexpected answer from the provider")]
    Malformed,
}

impl UpstreamError {
    /// When trying again makes sense: the provider's hint when it gave one,
    /// else a minute.
    pub fn retry_after(&self) -> Duration {
        match self {
            UpstreamError::Unavailable { retry_after } => *retry_after,
            _ => Duration::from_secs(60),
        }
    }
}

/// The wait between two attempts when the provider gives no hint:
/// exponential from 100 ms, doubling, **capped at 1 s**, full jitter.
///
/// Why 1 s rather than the engine's 10 s: a call has 15 s in all (the
/// [deadline](UpstreamPolicy::deadline)), and what bounds the load retries
/// add to a struggling provider is the throttle and the budget, not the
/// wait. Measured on the harsh chaos plan (well over half of all attempts
/// faulted): with the 10 s cap, every call that gave up ran out of its 15 s
/// (or of its ten attempts), and one payment call spent 3.6 s of it in
/// backoff alone (a sixth retry waits up to 3.2 s, a seventh up to 6.4 s):
/// time for attempts it did not make. A server's own hint (`Retry-After`)
/// is still honoured, up to 5 s. Shorter waits bring a lone call's eight
/// attempts within about 2 s, so a restarting provider opens the breaker
/// mid-call; the middleware then waits for the breaker's probes (up to
/// 5 s) rather than failing the call.
fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(1))
        .expect("a valid backoff")
}

/// Builds the HTTP client for one upstream: with healing, selfheal's
/// middleware with `policy`; without, a bare client (one attempt, the same
/// per-attempt timeout).
pub fn client(
    healing: Healing,
    policy: UpstreamPolicy,
    monitor: &Monitor,
) -> anyhow::Result<ClientWithMiddleware> {
    let http = reqwest::Client::builder()
        .timeout(policy.attempt_timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    // The page's request id goes with every attempt (healing or not).
    let mut builder = ClientBuilder::new(http).with(crate::correlate::Propagate);
    if healing == Healing::On {
        let mut middleware = ResilientMiddleware::builder()
            .with_max_attempts(policy.max_attempts)
            .with_attempt_timeout(policy.attempt_timeout)
            .with_deadline(policy.deadline)
            .with_backoff(backoff())
            .with_max_delay(Duration::from_secs(5))
            .with_observer(monitor.observer());
        if !policy.budget {
            middleware = middleware.without_budget();
        }
        if !policy.breaker {
            middleware = middleware.without_breaker();
        }
        if !policy.throttle {
            middleware = middleware.without_throttle();
        }
        builder = builder.with(middleware.build()?);
    }
    Ok(builder.build())
}

fn unavailable(error: &reqwest_middleware::Error) -> UpstreamError {
    let retry_after = selfheal::http::retry_in(error)
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_secs(1));
    UpstreamError::Unavailable { retry_after }
}

fn from_status(status: reqwest::StatusCode, retry_after: Option<Duration>) -> UpstreamError {
    if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        UpstreamError::Unavailable {
            retry_after: retry_after.unwrap_or(Duration::from_secs(30)),
        }
    } else {
        UpstreamError::Refused(status.as_u16())
    }
}

/// The JSON body of a successful answer, or why there is none.
async fn decode<T: serde::de::DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest_middleware::Error>,
) -> Result<T, UpstreamError> {
    let response = sent.map_err(|e| unavailable(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(from_status(
            status,
            selfheal::http::hints::from_headers(response.headers(), std::time::SystemTime::now()),
        ));
    }
    response.json().await.map_err(|_| UpstreamError::Malformed)
}

/// The AI tutor's client.
#[derive(Clone, Debug)]
pub struct Tutor {
    client: ClientWithMiddleware,
    config: Option<OpenAi>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

const SYSTEM_PROMPT: &str = "You are Cozmic, a friendly tutor for curious students. \
Answer in at most three short paragraphs, plainly, and end with one question that makes the student think.";

impl Tutor {
    /// A tutor on `client`; `config` is `None` when no key is configured.
    pub fn new(client: ClientWithMiddleware, config: Option<OpenAi>) -> Self {
        Self { client, config }
    }

    /// Whether a provider is configured.
    pub fn is_configured(&self) -> bool {
        self.config.is_some()
    }

    /// Asks the tutor.
    pub async fn ask(&self, question: &str) -> Result<String, UpstreamError> {
        let config = self.config.as_ref().ok_or(UpstreamError::NotConfigured)?;
        let response = self
            .client
            .post(format!("{}/chat/completions", config.base_url))
            .bearer_auth(config.api_key.expose())
            .json(&json!({
                "model": config.model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": question},
                ],
            }))
            // A completion changes nothing on the provider's side.
            .with_extension(Idempotency::Idempotent)
            .with_extension(Dependency::new("openai"))
            .send()
            .await;
        let completion: Completion = decode(response).await?;
        completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .filter(|c| !c.trim().is_empty())
            .ok_or(UpstreamError::Malformed)
    }
}

/// The payment client.
#[derive(Clone, Debug)]
pub struct Payments {
    client: ClientWithMiddleware,
    config: Option<Stripe>,
}

#[derive(Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
}

/// The premium plan's price, in cents.
pub const PREMIUM_PRICE_CENTS: i64 = 900;

impl Payments {
    /// A payment client on `client`; `config` is `None` when no key is
    /// configured.
    pub fn new(client: ClientWithMiddleware, config: Option<Stripe>) -> Self {
        Self { client, config }
    }

    /// Whether a provider is configured.
    pub fn is_configured(&self) -> bool {
        self.config.is_some()
    }

    /// Charges the premium plan for `student_id` as purchase `key` (the same
    /// key every time this purchase is tried, so it is charged at most
    /// once). Returns the provider's payment id.
    pub async fn charge_premium(
        &self,
        student_id: i64,
        key: &str,
    ) -> Result<String, UpstreamError> {
        let config = self.config.as_ref().ok_or(UpstreamError::NotConfigured)?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("amount", &PREMIUM_PRICE_CENTS.to_string())
            .append_pair("currency", "usd")
            .append_pair("confirm", "true")
            .append_pair("metadata[student_id]", &student_id.to_string())
            .finish();
        let response = self
            .client
            .post(format!("{}/v1/payment_intents", config.base_url))
            .bearer_auth(config.api_key.expose())
            .header(selfheal::http::IDEMPOTENCY_KEY, key)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .with_extension(Dependency::new("stripe"))
            .send()
            .await;
        let intent: PaymentIntent = decode(response).await?;
        if intent.status == "succeeded" || intent.status == "processing" {
            Ok(intent.id)
        } else {
            Err(UpstreamError::Refused(402))
        }
    }
}
