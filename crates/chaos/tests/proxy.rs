//! The TCP fault proxy, seen by real clients on loopback.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::faults::{FaultKind, UpstreamFaults};
use chaos::plan::{DurationRange, UpstreamPlan};
use chaos::proxy::{FaultProxy, Mode};
use chaos::upstream::OpenAiServer;
use support::{Conn, echo_server, weights_only};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(5);

fn only(kind: FaultKind) -> UpstreamPlan {
    UpstreamPlan {
        fault_probability: 1.0,
        weights: weights_only(kind),
        latency: DurationRange::new(Duration::from_millis(300), Duration::from_millis(300)),
        stall: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn normal_mode_passes_bytes_unchanged() {
    let upstream = echo_server().await;
    let proxy = FaultProxy::start(upstream, Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    timeout(BOUND, r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back, payload);
    assert_eq!(proxy.stats().connections, 1);
    assert_eq!(proxy.stats().injected.total(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn keep_alive_requests_are_counted_one_by_one() {
    let faults = Arc::new(UpstreamFaults::disabled());
    let server = OpenAiServer::start(Arc::clone(&faults)).await.unwrap();
    let proxy = FaultProxy::start(server.addr(), faults).await.unwrap();
    let mut conn = Conn::open(proxy.addr()).await.unwrap();
    for _ in 0..3 {
        let r = timeout(BOUND, conn.chat()).await.unwrap().unwrap();
        assert_eq!(r.status, 200);
    }
    let stats = proxy.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.requests, 3);
    assert_eq!(server.stats().requests, 3);
}

#[tokio::test]
async fn reset_is_a_real_connection_reset() {
    let upstream = echo_server().await;
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::Reset), 1));
    let proxy = FaultProxy::start(upstream, Arc::clone(&faults))
        .await
        .unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let err = timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(proxy.stats().injected.reset, 1);
    assert_eq!(faults.injected().reset, 1);
}

#[tokio::test]
async fn stall_makes_the_client_time_out() {
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::Stall), 1));
    let server = OpenAiServer::start(Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    let proxy = FaultProxy::start(server.addr(), Arc::clone(&faults))
        .await
        .unwrap();
    let mut conn = Conn::open(proxy.addr()).await.unwrap();
    let waited = timeout(Duration::from_millis(500), conn.chat()).await;
    assert!(waited.is_err(), "the client should have timed out");
    assert_eq!(proxy.stats().injected.stall, 1);
    // Nothing was forwarded.
    assert_eq!(server.stats().requests, 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn latency_delays_then_answers_normally() {
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::Latency), 1));
    let server = OpenAiServer::start(Arc::clone(&faults)).await.unwrap();
    let proxy = FaultProxy::start(server.addr(), faults).await.unwrap();
    let start = Instant::now();
    let r = support::chat(proxy.addr()).await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(proxy.stats().injected.latency, 1);
}

#[tokio::test]
async fn http_faults_drawn_by_the_proxy_are_answered_by_the_server() {
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::Unavailable), 1));
    let server = OpenAiServer::start(Arc::clone(&faults)).await.unwrap();
    let proxy = FaultProxy::start(server.addr(), Arc::clone(&faults))
        .await
        .unwrap();
    for _ in 0..3 {
        let r = support::chat(proxy.addr()).await;
        assert_eq!(r.status, 503);
    }
    assert_eq!(faults.injected().unavailable, 3);
    assert_eq!(faults.decisions(), 3);
}

#[tokio::test]
async fn planned_mix_through_proxy_and_server_matches_the_plan() {
    // The default plan (30 %), with short latency and stall so the test is quick.
    let plan = UpstreamPlan {
        latency: DurationRange::new(Duration::from_millis(1), Duration::from_millis(5)),
        stall: Duration::from_millis(200),
        ..UpstreamPlan::default()
    };
    let faults = Arc::new(UpstreamFaults::new(&plan, 99));
    let server = OpenAiServer::start(Arc::clone(&faults)).await.unwrap();
    let proxy = FaultProxy::start(server.addr(), Arc::clone(&faults))
        .await
        .unwrap();
    let n = 300u32;
    let mut failed = 0;
    for _ in 0..n {
        let r = timeout(Duration::from_millis(150), support::try_chat(proxy.addr())).await;
        match r {
            Ok(Ok(r)) if r.status == 200 => {}
            _ => failed += 1,
        }
    }
    let injected = faults.injected();
    // Everything but latency is a failure the client sees.
    assert_eq!(failed, injected.total() - injected.latency);
    let rate = injected.total() as f64 / f64::from(n);
    assert!(
        (0.2..=0.4).contains(&rate),
        "fault rate {rate} ({injected:?})"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn down_mode_resets_every_connection_until_normal_again() {
    let upstream = echo_server().await;
    let proxy = FaultProxy::start(upstream, Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    proxy.set_mode(Mode::Down);
    for _ in 0..3 {
        let outcome = timeout(BOUND, async {
            let mut s = TcpStream::connect(proxy.addr()).await?;
            s.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            s.read(&mut buf).await
        })
        .await
        .unwrap();
        match outcome {
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::BrokenPipe
                ),
                "{e:?}"
            ),
            Ok(n) => panic!("read {n} bytes through a down proxy"),
        }
    }
    assert_eq!(proxy.stats().refused, 3);
    proxy.set_mode(Mode::Normal);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(BOUND, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
}

/// A charge through the proxy: `POST /v1/payment_intents` tagged `tag`.
async fn charge(proxy: SocketAddr, tag: &str) -> Result<reqwest::Response, reqwest::Error> {
    selfheal::tls::install_default_crypto_provider();
    reqwest::Client::new()
        .post(format!("http://{proxy}/v1/payment_intents"))
        .bearer_auth("sk_test")
        .header("x-request-id", tag)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=900&currency=usd&metadata[student_id]=7")
        .timeout(Duration::from_secs(2))
        .send()
        .await
}

#[tokio::test]
async fn a_lost_response_comes_after_the_upstream_acted_and_is_linked_to_its_request() {
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::LostResponse), 1));
    let server = chaos::upstream::StripeServer::start(Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    let proxy = FaultProxy::start(server.addr(), Arc::clone(&faults))
        .await
        .unwrap();
    let result = timeout(BOUND, charge(proxy.addr(), "try-1")).await.unwrap();
    assert!(result.is_err(), "the answer should be lost: {result:?}");
    // The upstream acted: the student was charged.
    assert_eq!(server.stats().created, 1);
    assert_eq!(proxy.stats().injected.lost_response, 1);
    let ledger = faults.ledger().faults();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].kind, "upstream_lost_response");
    assert_eq!(
        ledger[0].target,
        chaos::ledger::Target::Request("try-1".into())
    );
}

#[tokio::test]
async fn a_late_response_is_held_past_the_client_timeout_after_the_upstream_acted() {
    let faults = Arc::new(UpstreamFaults::new(&only(FaultKind::LateResponse), 1));
    let server = chaos::upstream::StripeServer::start(Arc::new(UpstreamFaults::disabled()))
        .await
        .unwrap();
    let proxy = FaultProxy::start(server.addr(), Arc::clone(&faults))
        .await
        .unwrap();
    let result = timeout(BOUND, charge(proxy.addr(), "try-2")).await.unwrap();
    let error = result.expect_err("the client should time out");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(server.stats().created, 1);
    assert_eq!(faults.ledger().count("upstream_late_response"), 1);
}
