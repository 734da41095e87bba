//! Overhead of the HTTP middleware on a successful GET to a local server:
//! `cargo bench -p selfheal --features reqwest --bench http`.
//!
//! Contenders, all in the same run against the same axum server on
//! 127.0.0.1 (its own thread and runtime), over one kept-alive connection:
//!
//! - `reqwest`: a plain `reqwest::Client`;
//! - `reqwest-middleware (empty)`: the same client in a
//!   `ClientWithMiddleware` with no middleware (the cost of the middleware
//!   crate itself: its boxed futures and extensions);
//! - `reqwest-retry`: `RetryTransientMiddleware` with `ExponentialBackoff`
//!   and 2 retries (reqwest-retry 0.9, built on reqwest-middleware 0.5 /
//!   reqwest 0.13);
//! - `selfheal`: `ResilientMiddleware` with its defaults (3 attempts, 30 s
//!   attempt timeout, 60 s deadline, budget per host).
//!
//! Each round sends `BATCH` requests per contender (reading each body), the
//! contenders interleaved in a different order every round so that a busy
//! neighbour on the shared machine inflates all of them alike. The table
//! shows the median and the best round per contender (µs per request) and
//! the ratio of each to plain reqwest. Set `SELFHEAL_BENCH_ROUNDS` to change
//! the number of rounds (default 21).

use std::net::SocketAddr;
use std::time::Instant;

use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use selfheal::http::ResilientMiddleware;

const BATCH: usize = 2_000;

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

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too:
    // keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let rounds: usize = std::env::var("SELFHEAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 21 });
    let batch = if quick { 10 } else { BATCH };

    selfheal::tls::install_default_crypto_provider();
    let addr = start_server();
    let url = format!("http://{addr}/");
    let client = || reqwest::Client::builder().build().unwrap();

    let contenders: Vec<(&str, Contender)> = vec![
        ("reqwest", Contender::Plain(client())),
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
    ];

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    runtime.block_on(async {
        // Warm-up: connections open, pools and allocators warm.
        for (_, c) in &contenders {
            for _ in 0..batch.min(500) {
                c.get(&url).await;
            }
        }
        for round in 0..rounds {
            let n = contenders.len();
            for k in 0..n {
                let i = (k + round) % n;
                let started = Instant::now();
                for _ in 0..batch {
                    contenders[i].1.get(&url).await;
                }
                let per_call = started.elapsed().as_secs_f64() * 1e6 / batch as f64;
                samples[i].push(per_call);
            }
        }
    });

    let base_median = median(samples[0].clone());
    let base_best = samples[0].iter().copied().fold(f64::INFINITY, f64::min);
    println!();
    println!("successful GET to 127.0.0.1, {rounds} rounds x {batch} requests, µs per request");
    println!();
    println!("| contender | median | vs reqwest | best round | vs reqwest |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _)) in contenders.iter().enumerate() {
        let m = median(samples[i].clone());
        let b = samples[i].iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {name} | {m:.2} | {:+.1}% | {b:.2} | {:+.1}% |",
            (m / base_median - 1.0) * 100.0,
            (b / base_best - 1.0) * 100.0,
        );
    }
}
