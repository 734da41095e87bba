//! `selfheal::http` against real local servers and real TCP faults: an axum
//! server on 127.0.0.1:0 answering from a script, a listener that reads the
//! request and then resets the connection (SO_LINGER 0), one that accepts
//! and never answers, and a port nobody listens on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest_middleware::ClientWithMiddleware;
use selfheal::health::Monitor;
use selfheal::http::{
    Dependency, IDEMPOTENCY_KEY, Idempotency, ResilientMiddleware, UnavailableReason,
};
use selfheal::observe::BreakerState;
use selfheal::observe::testing::Recorder;
use selfheal::retry::Backoff;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- servers

/// One scripted answer.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// A `Retry-After` HTTP-date this many seconds from now (wall clock),
    /// computed when the answer is sent.
    retry_after_date_in: Option<u64>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        retry_after_date_in: None,
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Answers from `script` in order, then `then` forever; records every
/// request's method and `Idempotency-Key`.
#[derive(Debug)]
struct Script {
    script: Mutex<VecDeque<Reply>>,
    then: Reply,
    hits: AtomicUsize,
    seen: Mutex<Vec<(String, Option<String>)>>,
}

impl Script {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn scripted(
    State(s): State<Arc<Script>>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, &'static str) {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned());
    s.seen.lock().unwrap().push((method.to_string(), key));
    let r = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| s.then.clone());
    let mut out = HeaderMap::new();
    for (name, value) in &r.headers {
        out.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    if let Some(secs) = r.retry_after_date_in {
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs));
        out.insert("retry-after", HeaderValue::from_str(&date).unwrap());
    }
    (StatusCode::from_u16(r.status).unwrap(), out, "body")
}

/// An axum server on 127.0.0.1:0 answering `script`, then `then`.
async fn serve(script: Vec<Reply>, then: Reply) -> (SocketAddr, Arc<Script>) {
    let state = Arc::new(Script {
        script: Mutex::new(script.into()),
        then,
        hits: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
    });
    let app = Router::new().fallback(scripted).with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

/// Reads one request (head, and a body of `Content-Length` bytes).
async fn read_request(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return String::from_utf8_lossy(&buf).into_owned();
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    head
}

/// The header `name` of a raw request head.
fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// A listener that reads each request fully, then resets the connection
/// (SO_LINGER 0: the close sends RST). Returns the request heads it read.
async fn reset_after_read() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let head = read_request(&mut stream).await;
                if !head.is_empty() {
                    seen.lock().unwrap().push(head);
                }
                stream.set_zero_linger().unwrap();
                drop(stream);
            });
        }
    });
    (addr, heads)
}

/// A listener that accepts, reads the request, and never answers (the
/// connection stays open until the test ends). Counts requests read.
async fn black_hole() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let head = read_request(&mut stream).await;
            if !head.is_empty() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            open.push(stream);
        }
    });
    (addr, count)
}

/// A port on 127.0.0.1 with nothing listening: connections are refused.
async fn refused_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

// ----------------------------------------------------------------- client

/// A middleware builder for tests: its own observer, 1 ms backoff.
fn builder(events: &Recorder) -> selfheal::http::Builder {
    ResilientMiddleware::builder()
        .with_observer(events.observer())
        .with_backoff(Backoff::constant(Duration::from_millis(1)))
}

/// A recording client whose middleware is [`builder`] as `configure`
/// leaves it: (its events, the client).
fn recorded(
    configure: impl FnOnce(selfheal::http::Builder) -> selfheal::http::Builder,
) -> (Recorder, ClientWithMiddleware) {
    let events = Recorder::new();
    let client = client(configure(builder(&events)).build().unwrap());
    (events, client)
}

/// A `GET /` to `addr` and how long it took in tokio time.
async fn timed_get(
    client: &ClientWithMiddleware,
    addr: SocketAddr,
) -> (reqwest::Response, Duration) {
    let started = tokio::time::Instant::now();
    let response = client.get(url(addr, "/")).send().await.unwrap();
    (response, started.elapsed())
}

/// The event of a call that gave up with `cause` at its first attempt,
/// having no more attempts allowed.
fn gave_up_at_once(cause: &str, addr: SocketAddr) -> [String; 1] {
    [format!("gave_up {cause}@{} #1 (max_attempts)", op(addr))]
}

/// The events of a call that failed with `cause` at all three attempts.
fn three_attempts(cause: &str, op: &str) -> [String; 3] {
    [
        format!("retry {cause}@{op} #1"),
        format!("retry {cause}@{op} #2"),
        format!("gave_up {cause}@{op} #3 (max_attempts)"),
    ]
}

fn client(middleware: ResilientMiddleware) -> ClientWithMiddleware {
    selfheal::tls::install_default_crypto_provider();
    // No pooled connections: each attempt is a fresh connection, as in an
    // outage, and no idle-pool timer runs (which matters under paused time).
    let inner = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    reqwest_middleware::ClientBuilder::new(inner)
        .with(middleware)
        .build()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

fn op(addr: SocketAddr) -> String {
    format!("http:{addr}")
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn transient_statuses_then_success_after_three_attempts() {
    let (addr, server) = serve(vec![reply(503), reply(503)], reply(200)).await;
    let (events, client) = recorded(|b| b);

    let response = client.get(url(addr, "/items")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 3);
    let op = op(addr);
    assert_eq!(
        events.lines(),
        [
            format!("retry 503@{op} #1"),
            format!("retry 503@{op} #2"),
            format!("recovered {op} #3"),
        ]
    );
}

/// `Retry-After: 2` is waited out exactly, under paused time: the only timer
/// pending while sockets are in use is the retry's own sleep (no attempt
/// timeout, no deadline, no connection pool), so tokio's auto-advance cannot
/// fire a timeout while a request is in flight.
#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_out_in_paused_time() {
    let (addr, server) = serve(vec![reply(429).header("retry-after", "2")], reply(200)).await;
    let (events, client) = recorded(|b| b.without_attempt_timeout().without_deadline());

    let wall = std::time::Instant::now();
    let (response, waited) = timed_get(&client, addr).await;

    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 2);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "waited {waited:?} of tokio time"
    );
    assert!(
        wall.elapsed() < Duration::from_secs(2),
        "paused time did not skip the wait"
    );
    assert_eq!(events.lines()[0], format!("retry 429@{} #1", op(addr)));
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_waited_out() {
    let mut first = reply(503);
    first.retry_after_date_in = Some(3);
    let (addr, server) = serve(vec![first], reply(200)).await;
    let (_events, client) = recorded(|b| b.without_attempt_timeout().without_deadline());

    let (response, waited) = timed_get(&client, addr).await;

    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 2);
    // An HTTP-date has one-second resolution: "now + 3 s" is 2 to 3 s away.
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_millis(3100),
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn openai_rate_limit_reset_is_waited_out() {
    let (addr, server) = serve(
        vec![
            reply(429)
                .header("x-ratelimit-remaining-requests", "0")
                .header("x-ratelimit-reset-requests", "1.5s")
                .header("x-ratelimit-remaining-tokens", "9000")
                .header("x-ratelimit-reset-tokens", "6m0s"),
        ],
        reply(200),
    )
    .await;
    let (_events, client) = recorded(|b| b.without_attempt_timeout().without_deadline());
    let started = tokio::time::Instant::now();
    let response = client
        .post(url(addr, "/v1/chat/completions"))
        .with_extension(Idempotency::Idempotent)
        .body("{}")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 2);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(1600),
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn garbage_retry_after_falls_back_to_the_backoff() {
    let (addr, server) = serve(
        vec![
            reply(503).header("retry-after", "soon™ish"),
            reply(503).header("retry-after", "-5"),
            reply(503).header("retry-after", "99999999999999999999999999999"),
        ],
        reply(200),
    )
    .await;
    let (_events, client) = recorded(|b| {
        b.with_max_attempts(3)
            .with_max_delay(Duration::from_millis(10))
    });
    let started = std::time::Instant::now();
    let response = client.get(url(addr, "/")).send().await.unwrap();
    // Three 503s: the third is returned as it is.
    assert_eq!(response.status(), 503);
    assert_eq!(server.hits(), 3);
    // The absurd hint was capped by max delay (10 ms), not slept.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_fails_at_once_with_the_hint() {
    let (addr, server) = serve(vec![], reply(429).header("retry-after", "120")).await;
    let (events, client) = recorded(|b| b.with_deadline(Duration::from_secs(10)));

    let started = std::time::Instant::now();
    let error = client.get(url(addr, "/")).send().await.unwrap_err();

    assert!(started.elapsed() < Duration::from_secs(1), "it waited");
    assert_eq!(server.hits(), 1);
    let unavailable = selfheal::http::unavailable(&error).expect("an Unavailable error");
    assert_eq!(
        unavailable.reason(),
        UnavailableReason::RetryAfterBeyondDeadline
    );
    assert_eq!(unavailable.retry_after(), Duration::from_secs(120));
    assert_eq!(
        unavailable.status(),
        Some(reqwest::StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(unavailable.attempts(), 1);
    assert_eq!(
        selfheal::http::retry_in(&error),
        Some(Duration::from_secs(120))
    );
    assert!(!selfheal::http::is_circuit_open(&error));
    assert!(error.to_string().contains("retry after 120.0s"), "{error}");
    assert_eq!(
        events.lines(),
        [format!("gave_up 429@{} #1 (deadline)", op(addr))]
    );
}

#[tokio::test]
async fn post_without_key_after_reset_after_send_is_sent_once() {
    let (addr, heads) = reset_after_read().await;
    let (events, client) = recorded(|b| b);

    let error = client
        .post(url(addr, "/v1/tickets"))
        .json(&serde_json::json!({"subject": "printer on fire"}))
        .send()
        .await
        .unwrap_err();

    assert_eq!(
        heads.lock().unwrap().len(),
        1,
        "the server saw the POST once"
    );
    assert!(!error.is_connect(), "{error:?}");
    assert_eq!(events.lines(), gave_up_at_once("reset", addr));
}

#[tokio::test]
async fn get_after_reset_after_send_is_retried() {
    let (addr, heads) = reset_after_read().await;
    let (events, client) = recorded(|b| b);

    client.get(url(addr, "/")).send().await.unwrap_err();

    assert_eq!(heads.lock().unwrap().len(), 3);
    let op = op(addr);
    assert_eq!(events.lines(), three_attempts("reset", &op));
}

#[tokio::test]
async fn post_with_generated_key_is_retried_with_the_same_key() {
    let (addr, heads) = reset_after_read().await;
    let (_events, client) = recorded(|b| b);

    client
        .post(url(addr, "/v1/refunds"))
        .with_extension(Idempotency::GenerateKey)
        .json(&serde_json::json!({"charge": "ch_123"}))
        .send()
        .await
        .unwrap_err();

    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 3, "retried");
    let keys: Vec<String> = heads
        .iter()
        .map(|h| header_of(h, "idempotency-key").expect("every attempt has the key"))
        .collect();
    assert_eq!(keys[0].len(), 36, "a UUID: {}", keys[0]);
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn generated_keys_differ_per_logical_call_and_a_callers_key_is_kept() {
    let (addr, server) = serve(vec![reply(503)], reply(201)).await;
    let (_events, client) = recorded(|b| b.with_generated_idempotency_keys(true));
    client.post(url(addr, "/a")).body("1").send().await.unwrap();
    client.post(url(addr, "/b")).body("2").send().await.unwrap();
    client
        .patch(url(addr, "/c"))
        .header(IDEMPOTENCY_KEY, "caller-key-1")
        .body("3")
        .send()
        .await
        .unwrap();
    client.get(url(addr, "/d")).send().await.unwrap();

    let seen = server.seen.lock().unwrap().clone();
    // Call 1: 503 then 201 with the same key; call 2: another key.
    assert_eq!(seen.len(), 5);
    let key = |i: usize| seen[i].1.clone().unwrap();
    assert_eq!(key(0), key(1));
    assert_ne!(key(1), key(2));
    assert_eq!(key(3), "caller-key-1");
    assert_eq!(seen[4], ("GET".to_owned(), None), "GETs need no key");
}

#[tokio::test]
async fn post_without_key_is_retried_when_nothing_was_sent() {
    let addr = refused_port().await;
    let (events, client) = recorded(|b| b);

    let error = client
        .post(url(addr, "/v1/tickets"))
        .body("{}")
        .send()
        .await
        .unwrap_err();

    assert!(error.is_connect(), "{error:?}");
    let op = op(addr);
    assert_eq!(events.lines(), three_attempts("connect", &op));
}

#[tokio::test]
async fn post_without_key_is_not_retried_on_a_transient_status() {
    let (addr, server) = serve(vec![], reply(503)).await;
    let (events, client) = recorded(|b| b);

    let response = client.post(url(addr, "/")).body("x").send().await.unwrap();

    assert_eq!(response.status(), 503, "the last response is returned");
    assert_eq!(server.hits(), 1);
    assert_eq!(events.lines(), gave_up_at_once("503", addr));
}

#[tokio::test]
async fn timeouts_retry_a_get_but_not_an_unkeyed_post() {
    let (addr, requests) = black_hole().await;
    let (events, client) = recorded(|b| b.with_attempt_timeout(Duration::from_millis(200)));

    let started = std::time::Instant::now();
    let error = client.get(url(addr, "/")).send().await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_millis(600));
    let op = op(addr);
    assert_eq!(events.lines(), three_attempts("timeout", &op));

    let error = client
        .post(url(addr, "/"))
        .body("x")
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    assert_eq!(requests.load(Ordering::SeqCst), 4, "the POST was sent once");
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_call() {
    let (addr, _requests) = black_hole().await;
    let (_events, client) = recorded(|b| {
        b.with_max_attempts(10)
            .with_attempt_timeout(Duration::from_secs(30))
            .with_deadline(Duration::from_millis(300))
    });
    let started = std::time::Instant::now();
    let error = client.get(url(addr, "/")).send().await.unwrap_err();
    let took = started.elapsed();
    assert!(error.is_timeout());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn permanent_statuses_and_500_are_not_retried_by_default() {
    let (addr, server) = serve(vec![reply(404), reply(400), reply(500)], reply(200)).await;
    let (events, client) = recorded(|b| b);
    for expected in [404, 400, 500] {
        let response = client.get(url(addr, "/")).send().await.unwrap();
        assert_eq!(response.status(), expected);
    }
    assert_eq!(server.hits(), 3);

    // Opting in to 500 (an API that documents its 500s as transient).
    let (addr, server) = serve(vec![reply(500), reply(500)], reply(200)).await;
    let client = client_with_500(&events);
    let response = client.get(url(addr, "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 3);
}

fn client_with_500(events: &Recorder) -> ClientWithMiddleware {
    client(
        builder(events)
            .with_transient_status(reqwest::StatusCode::INTERNAL_SERVER_ERROR)
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_streaming_body_is_sent_once() {
    let (addr, server) = serve(vec![], reply(503)).await;
    let (events, client) = recorded(|b| b);

    // PUT is idempotent, but a streamed body cannot be replayed.
    let body = reqwest::Body::wrap(String::from("streamed upload"));
    let response = client
        .put(url(addr, "/upload"))
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(server.hits(), 1);
    assert_eq!(events.lines(), gave_up_at_once("503", addr));
}

/// The outage case: 1,000 logical calls against a dependency that
/// answers 503 to everything. With the budget: at most 1,100 upstream calls
/// (about 1,010); without it: 3,000.
#[tokio::test]
async fn an_outage_costs_at_most_ten_percent_extra_calls_with_the_budget() {
    let (addr, server) = serve(vec![], reply(503)).await;
    let (events, with) = recorded(|b| b.with_backoff(Backoff::immediate()).without_breaker());
    for _ in 0..1000 {
        let response = with.get(url(addr, "/")).send().await.unwrap();
        assert_eq!(response.status(), 503);
    }
    let with_budget = server.hits();
    println!("outage, budget on: 1000 logical calls -> {with_budget} upstream calls");
    assert!(with_budget <= 1100, "{with_budget} upstream calls");
    assert!(
        with_budget > 1000,
        "the budget allowed the first few retries"
    );

    let (addr, server) = serve(vec![], reply(503)).await;
    let client_without = client(
        builder(&events)
            .with_backoff(Backoff::immediate())
            .without_breaker()
            .without_budget()
            .without_throttle()
            .build()
            .unwrap(),
    );
    for _ in 0..1000 {
        client_without.get(url(addr, "/")).send().await.unwrap();
    }
    println!(
        "outage, budget off: 1000 logical calls -> {} upstream calls",
        server.hits()
    );
    assert_eq!(server.hits(), 3000);

    // The throttle alone does as well: it sheds the retries in proportion.
    let (addr, server) = serve(vec![], reply(503)).await;
    let throttle_only = client(
        builder(&events)
            .with_backoff(Backoff::immediate())
            .without_breaker()
            .without_budget()
            .build()
            .unwrap(),
    );
    for _ in 0..1000 {
        throttle_only.get(url(addr, "/")).send().await.unwrap();
    }
    println!(
        "outage, throttle only: 1000 logical calls -> {} upstream calls",
        server.hits()
    );
    assert!(server.hits() <= 1100, "{}", server.hits());

    // With the defaults, the breaker stays closed: the dependency answers
    // (a dependency that does not is `adaptive.rs`'s).
    let (addr, server) = serve(vec![], reply(503)).await;
    let defaults = client(
        builder(&events)
            .with_backoff(Backoff::immediate())
            .build()
            .unwrap(),
    );
    for _ in 0..1000 {
        assert_eq!(
            defaults.get(url(addr, "/")).send().await.unwrap().status(),
            503
        );
    }
    assert!(server.hits() <= 1100, "{}", server.hits());
}

#[tokio::test]
async fn budgets_are_per_dependency() {
    let (down, down_server) = serve(vec![], reply(503)).await;
    let (flaky, flaky_server) = serve(vec![reply(503)], reply(200)).await;
    let (events, client) = recorded(|b| b.with_backoff(Backoff::immediate()).without_breaker());
    for _ in 0..100 {
        client.get(url(down, "/")).send().await.unwrap();
    }
    assert!(down_server.hits() < 120);
    // The dead host spent its own budget, not the flaky one's.
    let response = client.get(url(flaky, "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(flaky_server.hits(), 2);

    // A named dependency spans hosts: both servers share "billing".
    let (a, a_server) = serve(vec![], reply(503)).await;
    let (b, b_server) = serve(vec![reply(503)], reply(200)).await;
    for _ in 0..100 {
        client
            .get(url(a, "/"))
            .with_extension(Dependency::new("billing"))
            .send()
            .await
            .unwrap();
    }
    let response = client
        .get(url(b, "/"))
        .with_extension(Dependency::new("billing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "billing's budget is spent");
    assert!(a_server.hits() < 120);
    assert_eq!(b_server.hits(), 1);
    assert!(events.lines().iter().any(|e| e.contains("@http:billing")));
}

/// The breaker opens at its failure ratio (not before), counting attempts
/// that got no answer (here: a port nobody listens on, sharing the
/// dependency `svc` with a server that answers), fails calls fast
/// with a distinct error, half-opens after its break, reopens on a failed
/// probe and closes on a good one. Paused time: no timer is pending while a
/// request is in flight (one attempt per call, no timeouts, no pool), so the
/// clock moves only when the test advances it.
#[tokio::test(start_paused = true)]
async fn the_breaker_opens_at_its_failure_ratio_then_half_opens() {
    let (good, server) = serve(vec![], reply(200)).await;
    let down = refused_port().await;
    let events = Recorder::new();
    let observer = events.observer();
    let middleware = builder(&events)
        .with_max_attempts(1)
        .without_attempt_timeout()
        .without_deadline()
        .with_breaker(move |name: &str| {
            selfheal::breaker::Breaker::builder(name.to_owned())
                .with_minimum_throughput(10)
                .with_failure_ratio(0.5)
                .with_break_duration(Duration::from_secs(5))
                .with_observer(observer.clone())
                .build()
        })
        .build()
        .unwrap();
    let client = client(middleware.clone());
    let name = "svc".to_string();
    let call = |addr| {
        client
            .get(url(addr, "/"))
            .with_extension(Dependency::new("svc"))
            .send()
    };
    // 4 failures in 10 calls: 40 %, below the ratio; then 5 in 11 (45 %).
    for addr in [
        down, good, down, good, down, good, down, good, good, good, down,
    ] {
        let _ = call(addr).await;
    }
    let breaker = middleware.breaker(&name).expect("created on first use");
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "45 % is below the ratio"
    );
    // 6 in 12: 50 %, open.
    assert!(call(down).await.is_err());
    assert_eq!(breaker.state(), BreakerState::Open, "50 % opens it");
    assert_eq!(server.hits(), 6);

    // Open: fails fast, distinctly, without calling the server.
    let error = call(good).await.unwrap_err();
    assert!(selfheal::http::is_circuit_open(&error), "{error}");
    let unavailable = selfheal::http::unavailable(&error).unwrap();
    assert_eq!(unavailable.reason(), UnavailableReason::CircuitOpen);
    assert_eq!(unavailable.dependency(), name);
    assert_eq!(unavailable.retry_after(), Duration::from_secs(5));
    assert_eq!(server.hits(), 6);

    // After the break: one probe. It fails, and the breaker opens again.
    tokio::time::advance(Duration::from_secs(5)).await;
    let error = call(down).await.unwrap_err();
    assert!(
        !selfheal::http::is_circuit_open(&error),
        "the probe was made"
    );
    assert_eq!(breaker.state(), BreakerState::Open);
    assert!(selfheal::http::is_circuit_open(
        &call(good).await.unwrap_err()
    ));

    // The next probe succeeds: closed, traffic flows.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(call(good).await.unwrap().status(), 200);
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(call(good).await.unwrap().status(), 200);
    assert_eq!(server.hits(), 8);

    let transitions: Vec<String> = events
        .lines()
        .into_iter()
        .filter(|e| e.starts_with("breaker") || e.starts_with("rejected"))
        .collect();
    assert_eq!(
        transitions,
        [
            format!("breaker {name} closed->open"),
            format!("rejected {name}"),
            format!("breaker {name} open->half_open"),
            format!("breaker {name} half_open->open"),
            format!("rejected {name}"),
            format!("breaker {name} open->half_open"),
            format!("breaker {name} half_open->closed"),
        ]
    );
}

/// Any answer (a 404, a 500) says the dependency is there: the breaker
/// stays closed; attempts that reach nobody open it.
#[tokio::test]
async fn answers_are_successes_for_the_breaker_and_no_answer_a_failure() {
    let (addr, _server) = serve(vec![], reply(404)).await;
    let events = Recorder::new();
    let breaker = |name: &str| {
        selfheal::breaker::Breaker::builder(name.to_owned())
            .with_trip_mode(selfheal::breaker::TripMode::ConsecutiveFailures)
            .with_consecutive_failures(3)
            .build()
    };
    let middleware = builder(&events).with_breaker(breaker).build().unwrap();
    let client = client(middleware.clone());
    for _ in 0..5 {
        assert_eq!(
            client.get(url(addr, "/")).send().await.unwrap().status(),
            404
        );
    }
    let state = middleware.breaker(&addr.to_string()).unwrap().state();
    assert_eq!(state, BreakerState::Closed);

    let (addr, _server) = serve(vec![], reply(500)).await;
    for _ in 0..3 {
        assert_eq!(
            client.get(url(addr, "/")).send().await.unwrap().status(),
            500
        );
    }
    let state = middleware.breaker(&addr.to_string()).unwrap().state();
    assert_eq!(state, BreakerState::Closed);

    let down = refused_port().await;
    for _ in 0..3 {
        assert!(client.get(url(down, "/")).send().await.is_err());
    }
    let state = middleware.breaker(&down.to_string()).unwrap().state();
    assert_eq!(state, BreakerState::Open);
}

#[tokio::test]
async fn failures_reach_the_health_monitor_with_per_dependency_fingerprints() {
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let (addr, _server) = serve(vec![], reply(503)).await;
    let refused = refused_port().await;
    let client = client(
        ResilientMiddleware::builder()
            .with_observer(monitor.observer())
            .with_backoff(Backoff::immediate())
            .build()
            .unwrap(),
    );
    client.get(url(addr, "/")).send().await.unwrap();
    client.get(url(refused, "/")).send().await.unwrap_err();

    let report = monitor.report(Duration::from_secs(60));
    let fingerprints: Vec<&str> = report
        .fingerprints
        .iter()
        .map(|f| f.fingerprint.as_str())
        .collect();
    assert!(
        fingerprints.contains(&format!("503@http:{addr}").as_str()),
        "{fingerprints:?}"
    );
    assert!(
        fingerprints.contains(&format!("connect@http:{refused}").as_str()),
        "{fingerprints:?}"
    );
    assert_eq!(report.retries, 4);
}

#[tokio::test]
async fn errors_carry_no_query_string_or_credentials() {
    let addr = refused_port().await;
    let (events, client) = recorded(|b| b.with_max_attempts(1));
    let error = client
        .get(format!("http://user:hunter2@{addr}/v1?api_key=SECRET"))
        .send()
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains(&addr.to_string()), "{shown}");
    // Every event in full, messages included.
    let logged = format!("{:?}", events.events());
    assert!(!logged.contains("SECRET"), "{logged}");
}

#[tokio::test]
async fn a_call_that_succeeds_at_once_reports_nothing() {
    let (addr, _server) = serve(vec![], reply(200)).await;
    let events = Recorder::new();
    let middleware = builder(&events).build().unwrap();
    let client = client(middleware.clone());
    for _ in 0..10 {
        client.get(url(addr, "/")).send().await.unwrap();
    }
    assert!(events.lines().is_empty());
    assert_eq!(middleware.dependency_count(), 1);
    assert!(!format!("{middleware:?}").is_empty());
}

#[test]
fn misconfiguration_is_rejected_at_build() {
    assert!(
        ResilientMiddleware::builder()
            .with_max_attempts(0)
            .build()
            .is_err()
    );
    assert!(
        ResilientMiddleware::builder()
            .with_deadline(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        ResilientMiddleware::builder()
            .with_attempt_timeout(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        ResilientMiddleware::builder()
            .with_budget(0, 0.5)
            .build()
            .is_err()
    );
    assert!(
        ResilientMiddleware::builder()
            .with_max_dependencies(0)
            .build()
            .is_err()
    );
}
