//! Overhead of the HTTP middleware on a successful GET:
//! `cargo bench -p selfheal-bench --bench http`.
//!
//! Two tables, all contenders in the same run:
//!
//! 1. **End to end**: a successful GET to an axum server on 127.0.0.1 (its
//!    own thread and runtime), over one kept-alive connection, body read.
//!    - `reqwest`: a plain `reqwest::Client`;
//!    - `reqwest-middleware (empty)`: the same client in a
//!      `ClientWithMiddleware` with no middleware (the cost of the middleware
//!      crate itself: its boxed futures and extensions);
//!    - `reqwest-retry`: `RetryTransientMiddleware` with `ExponentialBackoff`
//!      and 2 retries (reqwest-retry 0.9, on reqwest-middleware 0.5 /
//!      reqwest 0.13);
//!    - `selfheal`: `ResilientMiddleware::new()` (3 attempts, 30 s attempt
//!      timeout, 60 s deadline, a budget and a breaker per host).
//!
//!    Each round sends `BATCH` requests per contender, back to back, in a
//!    rotating order. On a shared 2-core machine whole rounds speed up and
//!    slow down together, so each contender's ratio to plain reqwest is
//!    taken *within* each round (paired), and the table shows the median of
//!    those ratios next to the median time per request.
//!
//! 2. **The middleware alone**: the same middleware stacks in front of a
//!    terminal middleware that answers `200` at once without any network,
//!    so the nanoseconds each middleware adds are visible rather than lost
//!    in the noise of a loopback round trip.
//!
//! `SELFHEAL_BENCH_ROUNDS` changes the number of rounds (default 41),
//! `SELFHEAL_BENCH_BATCH` the requests per round in table 1 (default 500);
//! `SELFHEAL_BENCH_ONLY=<contender>` runs one contender of table 1 alone
//! (for `perf stat -e instructions`).
//!
//! Note: the bench crate does not turn on tokio's `test-util` (selfheal's
//! own dev-dependencies do; with it every `tokio::time::Instant::now` goes
//! through the runtime's mockable clock, a thread-local and a mutex, a few
//! tens of nanoseconds more), so selfheal is measured as an application
//! builds it. selfheal reads tokio's clock (the deadline, the breaker's
//! window); the peers do not.

use std::net::SocketAddr;
use std::time::Instant;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use selfheal::http::ResilientMiddleware;

const BATCH: usize = 500;
const ALONE_BATCH: usize = 20_000;

enum Contender {
    Plain(reqwest::Client),
    Middleware(ClientWithMiddleware),
}

impl Contender {
    async fn get(&self, url: &str) {
        let response = match self {
            Self::Plain(c) => c.get(url).send().await.unwrap(),
            Self::Middleware(c) => c.get(url).send().await.unwrap(),
        };
        assert!(response.status().is_success());
        std::hint::black_box(response.bytes().await.unwrap());
    }
}

/// Answers `200 ok` without calling anything.
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

fn start_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn stacks(client: impl Fn() -> reqwest::Client) -> Vec<(&'static str, Contender)> {
    vec![
        ("reqwest", Contender::Plain(client())),
        (
            "reqwest, 30 s timeout",
            Contender::Plain(
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(30))
                    .build()
                    .unwrap(),
            ),
        ),
        (
            "reqwest-middleware (empty)",
            Contender::Middleware(reqwest_middleware::ClientBuilder::new(client()).build()),
        ),
        (
            "reqwest-retry",
            Contender::Middleware(
                reqwest_middleware::ClientBuilder::new(client())
                    .with(RetryTransientMiddleware::new_with_policy(
                        ExponentialBackoff::builder().build_with_max_retries(2),
                    ))
                    .build(),
            ),
        ),
        (
            "selfheal",
            Contender::Middleware(
                reqwest_middleware::ClientBuilder::new(client())
                    .with(ResilientMiddleware::new())
                    .build(),
            ),
        ),
        (
            "selfheal, no timeout or deadline",
            Contender::Middleware(
                reqwest_middleware::ClientBuilder::new(client())
                    .with(
                        ResilientMiddleware::builder()
                            .without_attempt_timeout()
                            .without_deadline()
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ),
        ),
    ]
}

/// Runs every contender `rounds` times, `batch` calls each, in rotating
/// order; returns microseconds per call, per contender and round.
async fn measure(
    contenders: &[(&str, Contender)],
    url: &str,
    rounds: usize,
    batch: usize,
) -> Vec<Vec<f64>> {
    for (_, c) in contenders {
        for _ in 0..batch.min(500) {
            c.get(url).await;
        }
    }
    let n = contenders.len();
    let mut samples = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let started = Instant::now();
            for _ in 0..batch {
                contenders[i].1.get(url).await;
            }
            samples[i].push(started.elapsed().as_secs_f64() * 1e6 / batch as f64);
        }
    }
    samples
}

fn main() {
    // `cargo test --benches` runs this too: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let rounds: usize = std::env::var("SELFHEAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 41 });
    let batch: usize = std::env::var("SELFHEAL_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH);
    let (batch, alone_batch) = if quick {
        (10, 10)
    } else {
        (batch, ALONE_BATCH)
    };

    selfheal::tls::install_default_crypto_provider();
    let addr = start_server();
    let url = format!("http://{addr}/");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut e2e = stacks(|| reqwest::Client::builder().build().unwrap());
    // `SELFHEAL_BENCH_ONLY=<contender>`: run that one alone and stop, for
    // `perf stat` (instructions per request do not depend on the load of a
    // shared machine the way wall time does).
    if let Ok(only) = std::env::var("SELFHEAL_BENCH_ONLY") {
        e2e.retain(|(name, _)| *name == only);
        assert!(!e2e.is_empty(), "no contender named {only:?}");
        let samples = runtime.block_on(measure(&e2e, &url, rounds, batch));
        println!(
            "{only}: median {:.2} µs/request",
            median(samples[0].clone())
        );
        return;
    }
    let samples = runtime.block_on(measure(&e2e, &url, rounds, batch));
    println!();
    println!("1. successful GET to 127.0.0.1: {rounds} rounds x {batch} requests per contender");
    println!();
    println!("| contender | median µs/request | median paired ratio to reqwest |");
    println!("|---|---:|---:|");
    for (i, (name, _)) in e2e.iter().enumerate() {
        let ratios: Vec<f64> = samples[i]
            .iter()
            .zip(&samples[0])
            .map(|(x, b)| x / b)
            .collect();
        println!(
            "| {name} | {:.2} | {:.3} ({:+.1}%) |",
            median(samples[i].clone()),
            median(ratios.clone()),
            (median(ratios) - 1.0) * 100.0
        );
    }

    // The same stacks in front of `Terminal`: no network at all.
    let alone: Vec<(&str, Contender)> = {
        let terminal = || reqwest_middleware::ClientBuilder::new(reqwest::Client::new());
        vec![
            (
                "Terminal only",
                Contender::Middleware(terminal().with(Terminal).build()),
            ),
            (
                "reqwest-retry + Terminal",
                Contender::Middleware(
                    terminal()
                        .with(RetryTransientMiddleware::new_with_policy(
                            ExponentialBackoff::builder().build_with_max_retries(2),
                        ))
                        .with(Terminal)
                        .build(),
                ),
            ),
            (
                "selfheal without breaker + Terminal",
                Contender::Middleware(
                    terminal()
                        .with(
                            ResilientMiddleware::builder()
                                .without_breaker()
                                .build()
                                .unwrap(),
                        )
                        .with(Terminal)
                        .build(),
                ),
            ),
            (
                "selfheal + Terminal",
                Contender::Middleware(
                    terminal()
                        .with(ResilientMiddleware::new())
                        .with(Terminal)
                        .build(),
                ),
            ),
        ]
    };
    let samples = runtime.block_on(measure(&alone, &url, rounds, alone_batch));
    println!();
    println!(
        "2. the middleware alone (a terminal middleware answers 200 without network): ns per call"
    );
    println!();
    println!("| stack | median ns/call | added by the middleware |");
    println!("|---|---:|---:|");
    let base = median(samples[0].clone()) * 1000.0;
    for (i, (name, _)) in alone.iter().enumerate() {
        let m = median(samples[i].clone()) * 1000.0;
        println!("| {name} | {m:.0} | {:+.0} ns |", m - base);
    }
}
