//! `selfheal::http::ResilientMiddleware` against a local flaky server that
//! answers the first calls with `503` and `Retry-After: 1`:
//! `cargo run -p selfheal --all-features --example http_middleware`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use selfheal::http::ResilientMiddleware;
use selfheal::observe::Event;

/// Calls the server fails before it recovers.
const FAILURES: u32 = 2;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = move || {
        let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let busy = [(header::RETRY_AFTER, "1")];
        async move {
            println!("server: call {call}");
            if call <= FAILURES {
                return Err((StatusCode::SERVICE_UNAVAILABLE, busy, "come back in 1 s"));
            }
            Ok(format!("quote of the day (call {call})"))
        }
    };
    let app = Router::new().route("/quote", get(flaky));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/quote", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Every retry and recovery is an event: print them as they happen.
    let started = Instant::now();
    let report = move |event: &Event<'_>| {
        let ms = started.elapsed().as_millis();
        if let Event::Retry { attempt, delay, .. } = event {
            println!("{ms:>5} ms  attempt {attempt} failed, the next in {delay:?}");
        } else if let Event::Recovered { attempts, .. } = event {
            println!("{ms:>5} ms  recovered after {attempts} attempts");
        }
    };
    selfheal::tls::install_default_crypto_provider();
    let middleware = ResilientMiddleware::builder()
        .with_max_attempts(4)
        .with_deadline(Duration::from_secs(10))
        .with_observer(Arc::new(report))
        .build()?;
    let client = reqwest::Client::new();
    let client = reqwest_middleware::ClientBuilder::new(client);
    let client = client.with(middleware).build();

    let response = client.get(&url).send().await?;
    let (status, body) = (response.status(), response.text().await?);
    let (elapsed, calls) = (started.elapsed(), calls.load(Ordering::SeqCst));
    println!("{status} {body:?} after {elapsed:.2?} and {calls} calls");
    assert_eq!(status, 200, "recovered");
    assert_eq!(calls, FAILURES + 1, "one call per attempt, no more");
    let asked = Duration::from_secs(u64::from(FAILURES));
    assert!(elapsed >= asked, "waited as long as the server asked");
    Ok(())
}
