//! Adaptive throttling through the HTTP middleware, against real local
//! servers: a flaky upstream (a seeded share of requests answered 503 at
//! random), an upstream that answers 503 to everything, and a port nobody
//! listens on. Deterministic: requests are sent one after the other, the
//! upstream draws from a seeded generator, and backoff is immediate.
//!
//! Measured and printed (`cargo test --test adaptive -- --nocapture`):
//! success with no healing, with today's defaults (throttle, generous
//! budget, a breaker for "no answer" only) and with the previous defaults
//! (a failure-ratio breaker, budget 20/0.5); upstream calls per request in
//! outages.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use selfheal::http::{ResilientMiddleware, is_circuit_open};
use selfheal::observe::testing::Recorder;
use selfheal::retry::Backoff;
use tokio::net::TcpListener;

/// An upstream that fails `fail_percent` % of requests at random with 503.
struct Flaky {
    rng: Mutex<fastrand::Rng>,
    fail_percent: u8,
    hits: AtomicUsize,
}

async fn flaky(State(s): State<Arc<Flaky>>) -> StatusCode {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if s.rng.lock().unwrap().u8(0..100) < s.fail_percent {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn serve(fail_percent: u8, seed: u64) -> (SocketAddr, Arc<Flaky>) {
    let state = Arc::new(Flaky {
        rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        fail_percent,
        hits: AtomicUsize::new(0),
    });
    let app = Router::new().fallback(flaky).with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

fn client(middleware: Option<ResilientMiddleware>) -> ClientWithMiddleware {
    selfheal::tls::install_default_crypto_provider();
    let mut builder = ClientBuilder::new(reqwest::Client::new());
    if let Some(middleware) = middleware {
        builder = builder.with(middleware);
    }
    builder.build()
}

/// Today's defaults, with immediate backoff (no real waits) and a recorder.
fn healing(events: &Recorder) -> selfheal::http::Builder {
    ResilientMiddleware::builder()
        .with_backoff(Backoff::immediate())
        .with_observer(events.observer())
        .with_random(Arc::new(selfheal::retry::SeededRandom::new(7)))
}

/// The defaults before issue 15: a failure-ratio breaker (50 % over 20
/// calls), budget 20 tokens / 0.5, no throttle.
fn previous(events: &Recorder) -> ResilientMiddleware {
    let observer = events.observer();
    healing(events)
        .without_throttle()
        .with_budget(20, 0.5)
        .with_breaker(move |name: &str| {
            selfheal::breaker::Breaker::builder(name.to_owned())
                .with_observer(observer.clone())
                .build()
        })
        .build()
        .unwrap()
}

/// Sends `n` GETs one after the other: (successes, upstream calls).
async fn drive(
    client: &ClientWithMiddleware,
    addr: SocketAddr,
    upstream: &Flaky,
    n: usize,
) -> (usize, usize) {
    let before = upstream.hits.load(Ordering::SeqCst);
    let mut ok = 0;
    for _ in 0..n {
        if let Ok(response) = client.get(format!("http://{addr}/")).send().await
            && response.status().is_success()
        {
            ok += 1;
        }
    }
    (ok, upstream.hits.load(Ordering::SeqCst) - before)
}

const REQUESTS: usize = 600;

/// Healing never hurts: with 60 % (and 50 %, 80 %) of upstream calls
/// failing at random, the middleware's defaults succeed at least as often as
/// no middleware at all, on the same sequence of upstream answers.
#[tokio::test]
async fn with_random_failures_healing_does_at_least_as_well_as_none() {
    println!(
        "| failing | no healing | previous defaults | adaptive, budget 20/0.5 | adaptive defaults (budget 50/2) | calls/request (adaptive) |"
    );
    for fail in [50u8, 60, 80] {
        let (addr, up) = serve(fail, 15).await;
        let (plain, _) = drive(&client(None), addr, &up, REQUESTS).await;

        let (addr, up) = serve(fail, 15).await;
        let events = Recorder::new();
        let (old, _) = drive(&client(Some(previous(&events))), addr, &up, REQUESTS).await;

        let (addr, up) = serve(fail, 15).await;
        let events = Recorder::new();
        let stingy = healing(&events).with_budget(20, 0.5).build().unwrap();
        let (stingy, _) = drive(&client(Some(stingy)), addr, &up, REQUESTS).await;

        let (addr, up) = serve(fail, 15).await;
        let events = Recorder::new();
        let middleware = healing(&events).build().unwrap();
        let (new, calls) = drive(&client(Some(middleware.clone())), addr, &up, REQUESTS).await;
        let pct = |n: usize| 100.0 * n as f64 / REQUESTS as f64;
        println!(
            "| {fail} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.2} |",
            pct(plain),
            pct(old),
            pct(stingy),
            pct(new),
            calls as f64 / REQUESTS as f64
        );
        assert!(new >= plain, "{fail} %: healing {new} < no healing {plain}");
        // The breaker never opens for a dependency that answers.
        assert!(
            !events.lines().iter().any(|l| l.starts_with("breaker")),
            "{:?}",
            events.lines()
        );
        // At 60 % the retries heal: clearly better than no healing.
        if fail == 60 {
            assert!(new as f64 >= plain as f64 * 1.2, "{new} vs {plain}");
            // Retries are amplification, bounded by the throttle: at most
            // about K = 2 sends per accept.
            assert!(calls <= 2 * REQUESTS, "{calls}");
        }
    }
}

/// A flaky *link* in front of a capable dependency: 30 % of connections
/// reset before any answer, 30 % of requests answered 503, the rest 200. The
/// throttle weighs refusals among the answers (30 of every 70, under one in
/// `K = 2`), not failures of the link, so it never refuses a retry;
/// counting the resets as refusals (60 %) would shed retries in
/// proportion. Neither does the breaker open: resets at
/// random are never 8 in a row here.
#[tokio::test]
async fn a_flaky_link_is_healed_not_throttled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(3)));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let draw = rng.lock().unwrap().u8(0..100);
            tokio::spawn(async move {
                // Read the request head, so that what follows answers it.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if draw < 30 {
                    // SO_LINGER 0: closing sends RST instead of an answer.
                    stream.set_zero_linger().unwrap();
                    return;
                }
                let status = if draw < 60 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let events = Recorder::new();
    let client = client(Some(healing(&events).build().unwrap()));
    let mut ok = 0;
    for _ in 0..REQUESTS {
        if let Ok(response) = client.get(format!("http://{addr}/")).send().await
            && response.status().is_success()
        {
            ok += 1;
        }
    }
    let lines = events.lines();
    let throttled = lines.iter().filter(|l| l.ends_with("(throttled)")).count();
    let calls = hits.load(Ordering::SeqCst);
    println!(
        "flaky link (30 % resets, 30 % 503): {ok} of {REQUESTS} ok, {calls} connections, {throttled} retries throttled"
    );
    assert_eq!(throttled, 0, "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("breaker")), "{lines:?}");
    // Three attempts at 60 % failure: 1 - 0.6^3 = 78.4 % expected.
    assert!(ok >= REQUESTS * 72 / 100, "{ok} of {REQUESTS}");
}

/// A full outage that still answers (503 to everything): at most 1.1
/// upstream calls per request, and after the first few, every call is
/// answered by one attempt, with no wait (retries cut by the budget and the
/// throttle, each with its reason).
#[tokio::test]
async fn an_outage_that_answers_costs_at_most_one_tenth_extra() {
    let (addr, up) = serve(100, 1).await;
    let events = Recorder::new();
    let client = client(Some(healing(&events).build().unwrap()));
    let (ok, calls) = drive(&client, addr, &up, 1000).await;
    assert_eq!(ok, 0);
    println!("outage (503): 1000 requests -> {calls} upstream calls");
    assert!(calls <= 1100, "{calls}");
    let lines = events.lines();
    let throttled = lines.iter().filter(|l| l.ends_with("(throttled)")).count();
    let budget = lines.iter().filter(|l| l.ends_with("(budget)")).count();
    println!("  gave up: {budget} by the budget, {throttled} by the throttle");
    assert!(budget + throttled >= 990, "{budget} + {throttled}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("throttle ") && l.ends_with(" on"))
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("breaker")),
        "it answers: no breaker"
    );

    // For the record: the throttle alone (no budget) and neither.
    for (name, builder) in [
        ("throttle, no budget", healing(&events).without_budget()),
        (
            "no throttle, no budget",
            healing(&events).without_budget().without_throttle(),
        ),
    ] {
        let (addr, up) = serve(100, 1).await;
        let client = self::client(Some(builder.build().unwrap()));
        let (_, calls) = drive(&client, addr, &up, 1000).await;
        println!("outage (503), {name}: 1000 requests -> {calls} upstream calls");
    }
}

/// Sends `n` requests one after the other to `addr` (which never answers)
/// through selfheal's defaults; returns how many failed fast with the
/// circuit open, and the events.
async fn hammer(addr: SocketAddr, n: usize) -> (usize, Recorder) {
    let events = Recorder::new();
    let client = client(Some(healing(&events).build().unwrap()));
    let mut refused = 0;
    for _ in 0..n {
        let error = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        if is_circuit_open(&error) {
            refused += 1;
        }
    }
    assert!(events.lines().iter().any(|l| l.ends_with("closed->open")));
    (refused, events)
}

/// A dependency that is hard down (nobody listens): the breaker opens after
/// eight attempts that got no answer, and every later call fails fast without
/// an attempt.
#[tokio::test]
async fn a_dependency_that_is_down_fails_fast_once_the_breaker_opens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let n = 200;
    let (refused, events) = hammer(addr, n).await;
    let attempts = events
        .lines()
        .iter()
        .filter(|l| l.starts_with("retry ") || l.starts_with("gave_up "))
        .count();
    println!("down: {n} requests -> {attempts} attempts, {refused} failed fast");
    assert!(attempts <= n / 10, "{attempts} attempts");
    assert!(refused >= n - 10, "{refused}");
}

/// A provider restarting: its port refuses connections for 1.5 s (bound,
/// not listening: kept for the test, so no one else takes it), then it
/// answers after `delay`. Returns its address.
fn restarting(delay: std::time::Duration) -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let listener = socket.listen(64).unwrap();
        let app = Router::new().fallback(move || async move {
            tokio::time::sleep(delay).await;
            StatusCode::OK
        });
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// One call (immediate backoff, 20 attempts allowed) to a restarting
/// provider trips the breaker within milliseconds (eight refused connects in
/// a row); being under way, it waits for the breaker's probes instead of
/// failing with the circuit open, and succeeds once the provider is back.
#[tokio::test]
async fn a_call_under_way_rides_out_a_restart_behind_the_open_breaker() {
    let addr = restarting(std::time::Duration::ZERO);
    let events = Recorder::new();
    let client = client(Some(
        healing(&events).with_max_attempts(20).build().unwrap(),
    ));
    let started = std::time::Instant::now();
    let answer = client.get(format!("http://{addr}/")).send().await;
    let lines = events.lines();
    println!(
        "restart (1.5 s): answered {} after {:?}",
        answer.as_ref().map_or(0, |r| r.status().as_u16()),
        started.elapsed()
    );
    assert!(
        lines.iter().any(|l| l.ends_with("closed->open")),
        "{lines:?}"
    );
    assert_eq!(answer.unwrap().status(), StatusCode::OK, "{lines:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Eight calls under way when the breaker opens, the provider back after
/// 1.5 s and slow to answer (800 ms): one of them gets the probe, the others
/// find the breaker half-open while it is answered and look again shortly;
/// all eight are served.
#[tokio::test]
async fn every_call_under_way_rides_out_the_restart_not_only_the_probe() {
    let addr = restarting(std::time::Duration::from_millis(800));
    let events = Recorder::new();
    let client = client(Some(
        healing(&events).with_max_attempts(20).build().unwrap(),
    ));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(format!("http://{addr}/")).send().await })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        if let Ok(response) = call.await.unwrap()
            && response.status().is_success()
        {
            ok += 1;
        }
    }
    let lines = events.lines();
    println!("restart (1.5 s), 8 calls under way: {ok} answered");
    assert!(
        lines.iter().any(|l| l.ends_with("closed->open")),
        "{lines:?}"
    );
    assert_eq!(ok, 8, "{lines:?}");
}

/// Without a deadline nothing bounds a wait: a call under way fails with
/// the circuit open, as a new one does.
#[tokio::test]
async fn without_a_deadline_a_call_does_not_wait_for_the_breaker() {
    let addr = restarting(std::time::Duration::ZERO);
    let events = Recorder::new();
    let client = client(Some(
        healing(&events)
            .with_max_attempts(20)
            .without_deadline()
            .build()
            .unwrap(),
    ));
    let error = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap_err();
    assert!(is_circuit_open(&error), "{error}");
}

/// A dependency whose port is up but that resets every connection before
/// any answer (a proxy whose backend is gone, a crashing server): as hard
/// down as a closed port, so the breaker opens the same way and later calls
/// fail fast without an attempt.
#[tokio::test]
async fn a_dependency_that_resets_every_connection_fails_fast_too() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            // SO_LINGER 0: closing sends RST, before any byte of answer.
            stream.set_zero_linger().unwrap();
            drop(stream);
        }
    });
    let n = 200;
    let (refused, _) = hammer(addr, n).await;
    let connections = accepted.load(Ordering::SeqCst);
    println!("resets: {n} requests -> {connections} connections, {refused} failed fast");
    assert!(connections <= n / 10, "{connections} connections");
    assert!(refused >= n - 10, "{refused}");
}

/// A payment provider with a health endpoint: while in maintenance,
/// `/health` answers 503 and every other request hangs (a dependency that
/// accepts connections and never answers: the worst kind to wait for).
struct Provider {
    maintenance: std::sync::atomic::AtomicBool,
    calls: AtomicUsize,
}

async fn provider_health(State(p): State<Arc<Provider>>) -> StatusCode {
    if p.maintenance.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn provider_call(State(p): State<Arc<Provider>>) -> StatusCode {
    p.calls.fetch_add(1, Ordering::SeqCst);
    if p.maintenance.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
    StatusCode::OK
}

/// Health steers policy: while the provider's own health check fails, calls
/// to it fail fast with `ReportedDown` (the caller's fallback answers at
/// once) and none reaches it; each change is one `Steered` event; the
/// monitor says so in its notes while the check fails; calls resume when
/// the check passes. Without the check the same call waits out its attempt
/// timeout against the hung provider.
#[tokio::test]
async fn a_dependency_its_health_check_reports_down_is_not_called() {
    use selfheal::health::{CheckOptions, Monitor};
    use selfheal::http::{UnavailableReason, unavailable};

    let state = Arc::new(Provider {
        maintenance: std::sync::atomic::AtomicBool::new(true),
        calls: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/health", axum::routing::get(provider_health))
        .fallback(provider_call)
        .with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let monitor = Monitor::builder().with_global(false).build().unwrap();
    selfheal::tls::install_default_crypto_provider();
    let probe = reqwest::Client::new();
    monitor.register_check("provider", CheckOptions::default(), move || {
        let probe = probe.clone();
        async move {
            let answer = probe
                .get(format!("http://{addr}/health"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(format!("health endpoint answered {}", answer.status()))
            }
        }
    });
    let watch = monitor.watch_check("provider").unwrap();
    let events = Recorder::new();
    let observer = Arc::new(selfheal::observe::Fanout::new(vec![
        monitor.observer(),
        events.observer(),
    ]));
    let timeout = std::time::Duration::from_millis(300);
    let steered = client(Some(
        healing(&events)
            .with_observer(observer)
            .with_attempt_timeout(timeout)
            .with_check(&addr.to_string(), watch.clone())
            .build()
            .unwrap(),
    ));

    // No verdict yet: calls go out (no verdict is not "down").
    assert!(!watch.is_failing());
    assert!(!monitor.run_checks().await);
    assert!(watch.is_failing());

    let n = 50;
    for _ in 0..n {
        let error = steered
            .post(format!("http://{addr}/v1/charges"))
            .send()
            .await
            .unwrap_err();
        let unavailable = unavailable(&error).expect("the middleware's own error");
        assert_eq!(unavailable.reason(), UnavailableReason::ReportedDown);
        assert_eq!(unavailable.check(), Some("provider"));
        assert_eq!(unavailable.attempts(), 0);
        assert_eq!(unavailable.retry_after(), CheckOptions::default().interval);
    }
    assert_eq!(state.calls.load(Ordering::SeqCst), 0, "nothing was sent");
    let fail_fast = |events: &Recorder| {
        events
            .lines()
            .iter()
            .filter(|l| l.starts_with("steered "))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        fail_fast(&events),
        vec![format!("steered {addr} fail-fast")]
    );
    let note = format!("calls to {addr} fail fast");
    assert!(
        monitor
            .report(std::time::Duration::from_secs(900))
            .notes
            .iter()
            .any(|n| n.starts_with(&note)),
        "{:?}",
        monitor.report(std::time::Duration::from_secs(900)).notes
    );

    // The control: the same call without the check reaches the hung
    // provider and waits out its attempt timeout (no retries).
    let unsteered = client(Some(
        healing(&Recorder::new())
            .with_attempt_timeout(timeout)
            .with_max_attempts(1)
            .build()
            .unwrap(),
    ));
    assert!(
        unsteered
            .post(format!("http://{addr}/v1/charges"))
            .send()
            .await
            .is_err()
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);

    // Back: once the check passes, calls go out again.
    state.maintenance.store(false, Ordering::SeqCst);
    assert!(monitor.run_checks().await);
    let answer = steered
        .post(format!("http://{addr}/v1/charges"))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        fail_fast(&events),
        vec![
            format!("steered {addr} fail-fast"),
            format!("steered {addr} resumed")
        ]
    );
    assert!(
        !monitor
            .report(std::time::Duration::from_secs(900))
            .notes
            .iter()
            .any(|n| n.starts_with(&note)),
        "{:?}",
        monitor.report(std::time::Duration::from_secs(900)).notes
    );
}
