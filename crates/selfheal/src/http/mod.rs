//! Outbound HTTP that heals itself without doing harm: a
//! [`reqwest_middleware::Middleware`] that retries what is safe to retry,
//! waits as long as the server asks, and stops calling a dependency that is
//! down.
//!
//! # Why a middleware of our own
//!
//! The HTTP client is where a retry costs money. The services an app calls
//! over HTTP charge cards, send emails, open tickets and bill per token, and
//! retrying the wrong request does the thing twice. .NET's standard
//! resilience handler retries every method by default: POSTs to a backend
//! that was merely slow timed out, were sent again and created duplicate
//! messages and tickets (dotnet/extensions#5248); the answer there was an
//! option to turn retries off for unsafe methods. Here it is the default.
//! `reqwest-retry`, the usual choice in Rust,
//! has the same blind spot (its default strategy looks at the status and the
//! error, never at the method) and ignores `Retry-After` altogether (its open
//! issue #146): a rate-limited client retries on its own schedule, earlier
//! than the server asked, and burns its attempts on refusals.
//!
//! This middleware drives selfheal's one [retry engine](crate::retry) (the
//! same policy, backoff, budget and events as every other retrying piece)
//! and adds what is specific to HTTP:
//!
//! **Only what may be repeated is repeated** (RFC 9110 §9.2.2). GET, HEAD,
//! OPTIONS, TRACE, PUT and DELETE are idempotent: several identical requests
//! have the effect of one, so they are retried. POST and PATCH are not: they
//! are retried only when the request carries an `Idempotency-Key`, the
//! convention Stripe popularised (the server runs a key once and answers a
//! repeat with the first answer; IETF `draft-ietf-httpapi-idempotency-key-header`).
//! Ask for a key with [`Idempotency::GenerateKey`] (or for every unsafe
//! request with [`Builder::with_generated_idempotency_keys`]): it is generated
//! once per logical call and sent unchanged on every attempt. Without a key,
//! a POST is retried only when nothing was sent (a connect error: refused,
//! DNS, connect timeout); a timeout or a reset after the request went out is
//! returned to the caller, because the server may have acted on it. A caller
//! who knows better says so per request with [`Idempotency::Idempotent`] or
//! [`Idempotency::NotIdempotent`].
//!
//! **Transient means the dependency may answer differently in a moment**:
//! connect errors, timeouts, connections reset or closed mid-exchange, and
//! the statuses `408 Request Timeout`, `429 Too Many Requests`,
//! `502 Bad Gateway`, `503 Service Unavailable` and `504 Gateway Timeout`.
//! Other `4xx` are permanent (the request itself is wrong and will be wrong
//! again), as are TLS failures (a bad certificate does not fix itself).
//! **`500 Internal Server Error` is not retried by default**: it is the
//! status of an unhandled exception, a bug that a repeat runs into again;
//! retrying it multiplies the load on the failing code path and the time
//! the caller waits, for nothing. Some APIs do document their 500s as
//! transient (OpenAI's does): add it for those clients with
//! [`Builder::with_transient_status`]. The list is configurable both ways.
//! A 500 still counts as a failure for the dependency's circuit breaker.
//!
//! **The server's hints are obeyed**: `Retry-After` (seconds or an HTTP-date),
//! OpenAI's `retry-after-ms` and `x-ratelimit-reset-*` durations, and the
//! IETF `RateLimit` headers (see [`hints`]). The wait is capped by
//! [`Builder::with_max_delay`]; a hint past the call's deadline fails at
//! once with [`Unavailable`], carrying the hint, rather than sleeping into a
//! certain timeout. Malformed hints are ignored (the parsers are
//! property-tested on arbitrary bytes: the header is attacker-controlled).
//!
//! **One throttle, one budget and one breaker per dependency.** A
//! dependency is a host (with its port, unless it is the scheme's default),
//! or a name given with [`Dependency`]. Its
//! [adaptive throttle](crate::throttle) weighs every attempt's answer and
//! sheds retries in proportion once the dependency refuses (a retryable
//! status, a timeout) more than half of what it answers (a flaky
//! dependency keeps being retried, an overloaded one gets no retry storm;
//! first attempts are never refused, so healing never makes fewer calls
//! succeed than no healing); a reset or a refused connect is the link's
//! failure, not counted. Retries also stop while this server sheds its own
//! load. Its [`Budget`](crate::retry::Budget) counts every failure, resets
//! included: it stops retries at once in a full outage (1,000 calls against
//! a host that answers 503 make about 1,006 attempts, not 3,000) and once
//! more than two attempts in three fail. Its circuit breaker, which counts
//! only attempts that got no answer (connect errors, timeouts and
//! connections reset before an answer, eight in a row), fails calls fast with [`Unavailable`]
//! ([`is_circuit_open`]) once the dependency is hard down; a call already
//! under way when it opens waits for its probes instead (up to 5 s, within
//! the deadline), so that a restart's blip is ridden out. The registry is bounded
//! ([`Builder::with_max_dependencies`]): a client calling user-supplied URLs
//! does not grow a breaker per attacker-chosen host.
//!
//! **Everything is reported** through the [observer hook](crate::observe),
//! under the operation `http:<dependency>` with the status code or error
//! class (`connect`, `timeout`, `reset`, `tls`, …) as the failure kind, so
//! the [health monitor](crate::health) groups them as `503@http:api.openai.com`
//! or `timeout@http:api.stripe.com`: every retry, every recovery and every
//! give-up. Each logical call runs in a `DEBUG` `tracing` span named `http`
//! with `method`, `host`, and, once it ends, `attempts`, `elapsed_ms` and
//! `outcome`. Nothing secret is logged: no headers, no body, no query
//! string; errors the middleware returns have the query string and any
//! credentials removed from their URL.
//!
//! **A body that cannot be cloned** (a stream) is sent once, and whatever
//! happens to it is returned as it is.
//!
//! # Cost
//!
//! A successful GET to a server on loopback costs about 77,400 user-space
//! instructions with plain reqwest (client and server together, counted by
//! cachegrind); through this middleware with its defaults, about 82,800
//! (+7.0 %; reqwest-retry: 80,700, +4.2 %). Without its per-attempt timeout
//! and deadline, 80,500 (+3.9 %): below reqwest-retry, which has neither.
//! The rest of what is added is reqwest-middleware's own dispatch (any
//! middleware pays it), the copy of the request kept for a retry
//! (reqwest-retry makes it too), and the engine, budget, breaker, registry
//! and span.
//! Against a real network call that is microseconds against milliseconds.
//! The workspace's bench crate measures it:
//! `cargo bench -p selfheal-bench --bench http` and
//! `crates/bench/benches/http-instructions.sh`.
//!
//! # Errors
//!
//! A call that gives up returns what its last attempt returned: the last
//! response (a `503` after three tries is still a response, with its body and
//! headers) or the last `reqwest` error. The middleware makes one error of
//! its own, [`Unavailable`] inside [`reqwest_middleware::Error::Middleware`],
//! when it fails a call without a useful last answer: the breaker is open, or
//! the server's hint is past the deadline. Find it with [`unavailable`],
//! [`is_circuit_open`] or [`retry_in`].
//!
//! # Example: an OpenAI-style client
//!
//! reqwest is built without a crypto provider of its own (no OpenSSL, no
//! aws-lc): install rustls's ring provider once, before building a client.
//!
//! ```no_run
//! use std::time::Duration;
//! use reqwest::StatusCode;
//! use selfheal::http::{Idempotency, ResilientMiddleware};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! selfheal::tls::install_default_crypto_provider();
//!
//! let openai = reqwest_middleware::ClientBuilder::new(
//!     reqwest::Client::builder()
//!         .connect_timeout(Duration::from_secs(5))
//!         .build()?,
//! )
//! .with(
//!     ResilientMiddleware::builder()
//!         // Completions can take a while; the whole call never more than 3 min.
//!         .with_attempt_timeout(Duration::from_secs(90))
//!         .with_deadline(Duration::from_secs(180))
//!         // OpenAI documents its 500s as transient ("retry after a brief wait").
//!         .with_transient_status(StatusCode::INTERNAL_SERVER_ERROR)
//!         .build()?,
//! )
//! .build();
//!
//! let response = openai
//!     .post("https://api.openai.com/v1/chat/completions")
//!     .bearer_auth(std::env::var("OPENAI_API_KEY")?)
//!     // A completion changes nothing on the server: a repeat costs tokens,
//!     // never a duplicate side effect, so it may be retried like a GET
//!     // (rate limits, overload, a dropped connection).
//!     .with_extension(Idempotency::Idempotent)
//!     .json(&serde_json::json!({
//!         "model": "gpt-4o-mini",
//!         "messages": [{"role": "user", "content": "Explain recursion to a 10-year-old"}],
//!     }))
//!     .send()
//!     .await;
//!
//! match response {
//!     Ok(response) => {
//!         let body: serde_json::Value = response.error_for_status()?.json().await?;
//!         println!("{}", body["choices"][0]["message"]["content"]);
//!     }
//!     // Rate-limited past the deadline, or the breaker is open: tell our own
//!     // user when to come back instead of failing vaguely.
//!     Err(error) if selfheal::http::retry_in(&error).is_some() => {
//!         let after = selfheal::http::retry_in(&error).unwrap();
//!         println!("the tutor is busy, try again in {}s", after.as_secs().max(1));
//!     }
//!     Err(error) => return Err(error.into()),
//! }
//! # Ok(()) }
//! ```

mod builder;
mod classify;
mod error;
pub mod hints;
mod idempotency;
mod registry;
mod wait;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

pub use builder::Builder;
pub use error::{Unavailable, UnavailableReason, is_circuit_open, retry_in, unavailable};
pub use idempotency::{IDEMPOTENCY_KEY, Idempotency};
pub use registry::Dependency;

use crate::observe::GiveUpReason;
use crate::retry::{Run, Step};
use classify::ErrorClass;
use idempotency::Replay;
use registry::Registry;

/// The resilient reqwest middleware; see the [module docs](self).
///
/// Cheap to clone: clones share their dependencies' budgets and breakers.
/// Add one to a `reqwest_middleware::ClientBuilder` with `.with(...)`; build
/// it with [`ResilientMiddleware::builder`] (defaults listed on [`Builder`])
/// or [`ResilientMiddleware::new`].
#[derive(Clone)]
pub struct ResilientMiddleware {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    attempt_timeout: Option<std::time::Duration>,
    generate_keys: bool,
}

impl ResilientMiddleware {
    /// A builder with the defaults listed on [`Builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The middleware with the defaults listed on [`Builder`].
    pub fn new() -> Self {
        Builder::default()
            .build()
            .expect("the default settings are valid")
    }

    /// The number of dependencies that have their own budget and breaker so
    /// far.
    pub fn dependency_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// The circuit breaker of the dependency `name` (its host, with the port
    /// when not the scheme's default, or its [`Dependency`] name), once a
    /// request has created it; `None` also without breakers. For dashboards
    /// and tests: [`Breaker::state`](crate::breaker::Breaker::state),
    /// [`Breaker::snapshot`](crate::breaker::Breaker::snapshot).
    pub fn breaker(&self, name: &str) -> Option<crate::breaker::Breaker> {
        self.inner.registry.find(name)?.gate.breaker().cloned()
    }

    /// The adaptive throttle of the dependency `name`, once a request has
    /// created it; `None` also without throttles.
    pub fn throttle(&self, name: &str) -> Option<crate::throttle::AdaptiveThrottle> {
        self.inner.registry.find(name)?.policy.throttle().cloned()
    }

    /// The retry budget of the dependency `name`, once a request has created
    /// it; `None` also without budgets.
    pub fn budget(&self, name: &str) -> Option<Arc<crate::retry::Budget>> {
        self.inner.registry.find(name)?.policy.budget().cloned()
    }
}

impl Default for ResilientMiddleware {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ResilientMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientMiddleware")
            .field("attempt_timeout", &self.inner.attempt_timeout)
            .field("generate_idempotency_keys", &self.inner.generate_keys)
            .field("registry", &self.inner.registry)
            .finish()
    }
}

/// Written out rather than with `#[async_trait]`: the macro moves every
/// argument into a second local, and the boxed future (allocated on every
/// call) would carry the request twice.
impl Middleware for ResilientMiddleware {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.inner.call(request, extensions, next))
    }
}

impl Inner {
    /// One logical call: asks the breaker before each attempt, makes it,
    /// and lets the retry engine classify, record, report and decide.
    ///
    /// The set-up runs before the future is made; the future is one flat
    /// loop that keeps a single request across its awaits (the copy for the
    /// next attempt) and drops each attempt's outcome before waiting. It is
    /// boxed on every call, so its size is part of the overhead: about half
    /// a kilobyte.
    fn call<'a>(
        &'a self,
        mut request: Request,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = reqwest_middleware::Result<Response>> + Send + 'a {
        let dep = self
            .registry
            .get(request.url(), extensions.get::<Dependency>());
        let replay = idempotency::prepare(
            &mut request,
            extensions.get::<Idempotency>().copied(),
            self.generate_keys,
        );
        let span = tracing::debug_span!(
            target: "selfheal",
            "http",
            method = %request.method(),
            host = %dep.name,
            attempts = Empty,
            elapsed_ms = Empty,
            outcome = Empty,
        );
        let traced = !span.is_disabled();
        // One clock read per call, and none when neither the deadline nor a
        // subscriber needs it.
        let started = (traced || dep.policy.deadline().is_some()).then(Instant::now);
        let mut keep = Some(request);
        async move {
            let policy = &dep.policy;
            let mut run = Run::new(started);
            let mut breaker_waited = Duration::ZERO;
            let result = loop {
                if let Some(check) = &dep.check
                    && check.fails_fast(&dep.name, policy.observer())
                {
                    break Err(reqwest_middleware::Error::middleware(
                        Unavailable::reported_down(
                            Arc::clone(&dep.name),
                            check.watch.name(),
                            check.watch.interval(),
                            run.attempts,
                        ),
                    ));
                }
                let pass = match dep.gate.try_acquire() {
                    Ok(pass) => pass,
                    Err(retry_in) => {
                        // A call already under way when the breaker opened
                        // waits for its probes rather than failing: a
                        // restart's blip is ridden out (see
                        // `MAX_BREAKER_WAIT`). New calls still fail fast.
                        if run.attempts > 0
                            && let Some(wait) = wait::breaker_wait(
                                &run,
                                policy.deadline(),
                                self.attempt_timeout,
                                retry_in,
                                breaker_waited,
                            )
                        {
                            breaker_waited += wait;
                            run.waited += wait;
                            Box::pin(tokio::time::sleep(wait)).await;
                            continue;
                        }
                        break Err(reqwest_middleware::Error::middleware(
                            Unavailable::circuit_open(
                                Arc::clone(&dep.name),
                                retry_in,
                                run.attempts,
                            ),
                        ));
                    }
                };
                let sent = {
                    // A retry is planned only when a copy was kept (the
                    // engine is told otherwise), so there always is one.
                    let Some(mut request) = keep.take() else {
                        unreachable!("an attempt without a request")
                    };
                    // A copy for the next attempt, unless this is the last.
                    if run.attempts + 1 < policy.max_attempts() {
                        keep = request.try_clone();
                    }
                    self.bound_attempt(&mut request, &run, policy.deadline());
                    next.clone().run(request, extensions)
                };
                let outcome = if traced {
                    sent.instrument(span.clone()).await
                } else {
                    sent.await
                };
                // Decide inside a block that ends the outcome's life before
                // any wait; the engine's events belong to the call's span.
                let wait = {
                    let _entered = span.enter();
                    let step = policy.after_attempt_with(
                        &mut run,
                        outcome,
                        &dep.operation,
                        |run, outcome, verdict| {
                            // The breaker answers "does it answer at all?"
                            // only: no connection, no answer in time, or the
                            // connection reset before any answer (a host
                            // whose port is up but whose server is gone, a
                            // proxy whose backend is down).
                            pass.record(matches!(
                                &*outcome,
                                Err(e) if matches!(
                                    ErrorClass::of(e),
                                    ErrorClass::Connect | ErrorClass::Timeout | ErrorClass::Reset
                                )
                            ));
                            let Some(verdict) = verdict else { return };
                            if let Err(error) = outcome {
                                redact(error);
                            }
                            let nothing_sent = matches!(
                                &*outcome,
                                Err(e) if ErrorClass::of(e) == ErrorClass::Connect
                            );
                            // A stream body cannot be sent again; an unkeyed
                            // POST that may have reached the server must not be.
                            if verdict.is_retryable()
                                && (keep.is_none()
                                    || (replay == Replay::IfNothingSent && !nothing_sent))
                            {
                                run.no_more_attempts();
                            }
                        },
                    );
                    match step {
                        // Dropping the outcome freed the connection. The
                        // engine plans a retry only while a copy was kept.
                        Step::Retry(delay) => delay,
                        Step::GiveUp {
                            outcome: Ok(response),
                            reason: GiveUpReason::Deadline,
                            hint: Some(hint),
                        } => {
                            break Err(reqwest_middleware::Error::middleware(
                                Unavailable::beyond_deadline(
                                    Arc::clone(&dep.name),
                                    hint,
                                    response.status(),
                                    run.attempts,
                                ),
                            ));
                        }
                        Step::Done(outcome) | Step::GiveUp { outcome, .. } => break outcome,
                    }
                };
                if !wait.is_zero() {
                    // Boxed: only retries pay for the timer's space.
                    Box::pin(tokio::time::sleep(wait)).await;
                }
            };
            if let (true, Some(started)) = (traced, started) {
                span.record("attempts", run.attempts);
                record_outcome(&span, started, &result);
            }
            result
        }
    }
}

impl Inner {
    /// Sets the attempt's timeout: the shortest of the request's own, the
    /// middleware's per-attempt timeout, and what is left of the deadline
    /// (all of it for the first attempt, which needs no clock read).
    #[inline]
    fn bound_attempt(
        &self,
        request: &mut Request,
        run: &Run<Instant>,
        deadline: Option<std::time::Duration>,
    ) {
        let left = match (deadline, run.started) {
            (Some(deadline), _) if run.attempts == 0 => Some(deadline),
            (Some(deadline), Some(started)) => Some(deadline.saturating_sub(started.elapsed())),
            _ => None,
        };
        let bound = [self.attempt_timeout, left, request.timeout().copied()]
            .into_iter()
            .flatten()
            .min();
        if bound.is_some() && bound != request.timeout().copied() {
            *request.timeout_mut() = bound;
        }
    }
}

/// Fills the call span's closing fields.
fn record_outcome(
    span: &tracing::Span,
    started: Instant,
    result: &reqwest_middleware::Result<Response>,
) {
    span.record("elapsed_ms", started.elapsed().as_millis() as u64);
    match result {
        Ok(response) => span.record("outcome", response.status().as_u16()),
        Err(error) => match unavailable(error) {
            Some(u) if u.is_circuit_open() => span.record("outcome", "circuit_open"),
            Some(_) => span.record("outcome", "retry_after_beyond_deadline"),
            None => span.record("outcome", ErrorClass::of(error).as_str()),
        },
    };
}

/// Removes the query string, fragment and credentials from the URL of an
/// error, so that logging it (here or by the caller) leaks no API key passed
/// as `?key=...` and no password.
fn redact(error: &mut reqwest_middleware::Error) {
    if let Some(url) = error.url_mut() {
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_password(None);
        let _ = url.set_username("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measures the boxed future of the middleware it wraps.
    struct Probe(ResilientMiddleware, Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait::async_trait]
    impl Middleware for Probe {
        async fn handle(
            &self,
            request: Request,
            extensions: &mut Extensions,
            next: Next<'_>,
        ) -> reqwest_middleware::Result<Response> {
            let future = self.0.handle(request, extensions, next);
            self.1.store(
                std::mem::size_of_val(&*future),
                std::sync::atomic::Ordering::Relaxed,
            );
            future.await
        }
    }

    /// Answers 200 without any network.
    struct Terminal;

    #[async_trait::async_trait]
    impl Middleware for Terminal {
        async fn handle(
            &self,
            _request: Request,
            _extensions: &mut Extensions,
            _next: Next<'_>,
        ) -> reqwest_middleware::Result<Response> {
            Ok(Response::from(http::Response::new("ok")))
        }
    }

    /// The future is allocated on every call: it must stay small enough for
    /// the allocator's fast path (glibc serves up to 1,032 bytes from its
    /// per-thread cache; a 2 KiB future, as `#[async_trait]` and nested
    /// async fns made it, costs a slower path and extra copies per call).
    #[tokio::test]
    async fn the_boxed_future_stays_under_a_kilobyte() {
        crate::tls::install_default_crypto_provider();
        let size = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(Probe(ResilientMiddleware::new(), size.clone()))
            .with(Terminal)
            .build();
        client.get("http://127.0.0.1:1/").send().await.unwrap();
        let size = size.load(std::sync::atomic::Ordering::Relaxed);
        assert!(size > 0 && size <= 1024, "{size} bytes");
    }
}
