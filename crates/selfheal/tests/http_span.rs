//! The `tracing` span of `selfheal::http`, in a test binary of its own.
//!
//! Observed in the shared `http` binary: a subscriber installed with
//! `set_default` for this test saw the engine's events but not the call's
//! span when other tests had run the same code on other threads first
//! (tracing caches each callsite's interest process-wide). An application
//! installs its subscriber once at start-up, before any call, and is not
//! affected; the test gets a process of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use selfheal::http::{Idempotency, ResilientMiddleware};
use selfheal::retry::Backoff;

/// A writer for the test subscriber: appends to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Requests counted, and the last idempotency key seen.
type Seen = (Arc<AtomicUsize>, Arc<Mutex<Option<String>>>);

/// 503, 503, then 200; remembers the idempotency key it saw.
async fn flaky(State((hits, key)): State<Seen>, headers: HeaderMap) -> StatusCode {
    *key.lock().unwrap() = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned());
    match hits.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

/// The span of a logical call carries method, host, attempts, elapsed time
/// and outcome; the engine's events are inside it; nothing in the logs
/// shows the bearer token, the idempotency key or the query string.
#[tokio::test(flavor = "current_thread")]
async fn the_call_span_has_method_host_attempts_and_no_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let hits = Arc::new(AtomicUsize::new(0));
    let key = Arc::new(Mutex::new(None));
    let app = Router::new()
        .fallback(flaky)
        .with_state((hits.clone(), key.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    selfheal::tls::install_default_crypto_provider();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            ResilientMiddleware::builder()
                .with_backoff(Backoff::constant(Duration::from_millis(1)))
                .build()
                .unwrap(),
        )
        .build();
    let response = client
        .post(format!("http://{addr}/v1/charges?api_key=SECRET-QUERY"))
        .bearer_auth("sk-SECRET-TOKEN")
        .with_extension(Idempotency::GenerateKey)
        .body("amount=100")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let key = key.lock().unwrap().clone().expect("a generated key");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let close = logs
        .lines()
        .find(|l| l.contains("http{") && l.contains("close"))
        .unwrap_or_else(|| panic!("no closed call span in:\n{logs}"));
    for field in [
        "method=POST".to_owned(),
        format!("host={addr}"),
        "attempts=3".to_owned(),
        "outcome=200".to_owned(),
        "elapsed_ms=".to_owned(),
    ] {
        assert!(close.contains(&field), "{field} missing in {close}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("http{") && l.contains("transient failure, retrying")),
        "retry events are inside the span:\n{logs}"
    );
    for secret in ["sk-SECRET-TOKEN", "SECRET-QUERY", key.as_str()] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}
