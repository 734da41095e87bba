//! The database away, and back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use selfheal::health::ledger::Ledger;
use sqlx::postgres::PgPoolOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::support::{Alerts, BUCKET, eventually, monitor, postgres};

/// A TCP proxy to PostgreSQL that can be cut: while down it drops every
/// connection, open or new.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                conns2.lock().unwrap().spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.conns.lock().unwrap().abort_all();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// While the database is away, recording costs what it always does, closed
/// buckets wait in the bounded buffer and the oldest are dropped and
/// counted, alerts fall back to the local view and the monitor says so;
/// when it is back, the flushes resume and the condition clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_delays_flushes_never_a_request() {
    let Some(options) = postgres("outage").await else {
        return;
    };
    let upstream: SocketAddr = {
        let host = options.get_host();
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        format!("{host}:{}", options.get_port()).parse().unwrap()
    };
    let proxy = Proxy::start(upstream).await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(options.clone().host("127.0.0.1").port(proxy.addr.port()))
        .await
        .unwrap();
    let sink = Alerts::default();
    let monitor = monitor(&sink);
    let ledger = Ledger::builder(pool.clone(), &monitor)
        .with_instance("lonely")
        .with_flush_every(BUCKET)
        .with_buffer(3)
        .build()
        .unwrap();
    ledger.install().await.unwrap();
    let worker = ledger.start();
    assert!(
        eventually(Duration::from_secs(3), async || {
            monitor
                .report(Duration::from_secs(1))
                .ledger
                .is_some_and(|l| l.fleet_alerts)
        })
        .await
    );

    proxy.cut();
    // Eight buckets with one error each, while the database is away.
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let t = Instant::now();
        monitor.record_error("Timeout", "send_email", &"smtp timed out");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(BUCKET + Duration::from_millis(20)).await;
    }
    assert!(
        slowest < Duration::from_millis(5),
        "recording waited {slowest:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            let l = monitor.report(Duration::from_secs(1)).ledger.unwrap();
            l.failed_flushes > 0 && l.dropped_buckets >= 1 && !l.fleet_alerts
        })
        .await,
        "{:?}",
        monitor.report(Duration::from_secs(1)).ledger
    );
    let report = monitor.report(Duration::from_secs(1));
    let stats = report.ledger.clone().unwrap();
    assert!(stats.pending_buckets <= 3, "bounded: {stats:?}");
    assert!(stats.last_error.is_some());
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("database unreachable")),
        "{:?}",
        report.reasons
    );

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let l = monitor.report(Duration::from_secs(1)).ledger.unwrap();
            l.pending_buckets == 0 && l.last_error.is_none() && l.fleet_alerts
        })
        .await,
        "flushes resume: {:?}",
        monitor.report(Duration::from_secs(1)).ledger
    );
    let report = monitor.report(Duration::from_secs(1));
    assert!(
        !report
            .reasons
            .iter()
            .any(|r| r.contains("database unreachable"))
    );
    let stats = report.ledger.unwrap();
    // Every bucket is either in the database or counted as dropped.
    let written: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM selfheal_health_errors \
         WHERE scale = $1",
    )
    .bind(BUCKET.as_millis() as i64)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(stats.dropped_buckets >= 4, "8 buckets, 3 kept: {stats:?}");
    assert_eq!(written as u64 + stats.dropped_buckets, 8, "{stats:?}");
    let _ = worker.shutdown().await;
}
