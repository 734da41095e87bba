//! The link-fault proxy seen by real clients: a TCP echo server, a real
//! PostgreSQL and a real Redis behind it; and short chaos runs whose
//! database and Redis links are faulted (and whose SQLite lock is held past
//! the app's busy timeout), with the faults in the ledger's counts.
//!
//! PostgreSQL and Redis come from `SELFHEAL_TEST_POSTGRES_URL` and
//! `SELFHEAL_TEST_REDIS_URL`: skipped locally when unset, a failure in CI.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos::driver::{self, RunOptions};
use chaos::ledger::{FaultLedger, Target};
use chaos::link::{LinkKinds, LinkProxy, RESET_WINDOW};
use chaos::plan::{DurationRange, LinkPlan, LinkWeights, Plan};
use chaos::progress::Progress;
use chaos::report::{Recorder, RunSummary, counters, runs};
use cozmic::config::Healing;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

mod support;

use support::echo_server;

const BOUND: Duration = Duration::from_secs(5);

/// Sends `msg` and reads it back within `within`.
async fn echo(stream: &mut TcpStream, msg: &[u8], within: Duration) -> io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    timeout(within, stream.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
    Ok(back)
}

/// What the next read on `stream` gives (bounded): the error kind, or
/// `Ok(n)` bytes.
async fn next_read(stream: &mut TcpStream) -> io::Result<usize> {
    let mut buf = [0u8; 64];
    timeout(BOUND, stream.read(&mut buf))
        .await
        .expect("the read ended within 5 s")
}

#[tokio::test]
async fn a_reset_resets_every_open_connection_and_new_ones_work() {
    let proxy = LinkProxy::start(echo_server().await).await.unwrap();
    let mut open = Vec::new();
    for i in 0..3u8 {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(echo(&mut s, &[i; 10], BOUND).await.unwrap(), vec![i; 10]);
        open.push(s);
    }
    assert_eq!(proxy.stats().open, 3);
    assert_eq!(proxy.reset_all(), 3);
    for mut s in open {
        let err = next_read(&mut s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }
    let stats = proxy.stats();
    assert_eq!((stats.reset, stats.open, stats.connections), (3, 0, 3));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut s, b"again", BOUND).await.unwrap(), b"again");
}

#[tokio::test]
async fn a_stall_holds_every_byte_until_it_ends_then_delivers_them() {
    let proxy = LinkProxy::start(echo_server().await).await.unwrap();
    let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut before, b"one", BOUND).await.unwrap(), b"one");
    proxy.set_stalled(true);
    // Open before the stall, and opened during it: nothing comes back.
    let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
    for s in [&mut before, &mut during] {
        let err = echo(s, b"held", Duration::from_millis(400))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
    let resumed = Instant::now();
    proxy.set_stalled(false);
    // What was sent during the stall arrives now, unchanged, on both.
    for s in [&mut before, &mut during] {
        let mut back = [0u8; 4];
        timeout(BOUND, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"held");
    }
    assert!(resumed.elapsed() < Duration::from_secs(1));
    assert_eq!(proxy.stats().reset, 0);
}

#[tokio::test]
async fn a_partition_resets_open_connections_and_black_holes_new_ones() {
    let proxy = LinkProxy::start(echo_server().await).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut open, b"up", BOUND).await.unwrap(), b"up");
    assert_eq!(proxy.set_partitioned(true), 1);
    let err = next_read(&mut open).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // A new connection is accepted, then never answered.
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    let err = echo(&mut new, b"anyone?", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(proxy.stats().blackholed, 1);
    // The link comes back: the black-holed connection is reset, a new one works.
    proxy.set_partitioned(false);
    let err = next_read(&mut new).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(echo(&mut s, b"back", BOUND).await.unwrap(), b"back");
}

/// Keeps one connection open through `addr`, reconnecting whenever it is
/// reset.
fn keep_connected(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let mut buf = [0u8; 16];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn dense_plan() -> LinkPlan {
    LinkPlan {
        enabled: true,
        every: DurationRange::new(Duration::from_millis(300), Duration::from_millis(400)),
        weights: LinkWeights {
            reset: 1.0,
            stall: 1.0,
            partition: 1.0,
        },
        stall: DurationRange::new(Duration::from_millis(150), Duration::from_millis(200)),
        partition: DurationRange::new(Duration::from_millis(250), Duration::from_millis(300)),
    }
}

/// The kinds of a ledger's faults, in order.
fn kinds(ledger: &FaultLedger) -> Vec<&'static str> {
    ledger.faults().iter().map(|f| f.kind).collect()
}

#[tokio::test]
async fn the_schedule_draws_from_its_seed_and_writes_every_fault_to_the_ledger() {
    let upstream = echo_server().await;
    let plan = dense_plan();
    // Two links, the same seed, side by side: the same faults in the same order.
    let mut scheduled = Vec::new();
    for _ in 0..2 {
        let proxy = LinkProxy::start(upstream).await.unwrap();
        let keeper = keep_connected(proxy.addr());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ledger = Arc::new(FaultLedger::new());
        let faults = proxy.start_faults(&plan, 99, LinkKinds::DATABASE, Some(ledger.clone()));
        scheduled.push((proxy, keeper, ledger, faults));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut sequences = Vec::new();
    for (proxy, keeper, ledger, faults) in scheduled {
        let stats = faults.stop().await;
        keeper.abort();
        // Every fault in the ledger, under its kind, with its window.
        assert_eq!(ledger.count("db_reset"), stats.resets, "{stats:?}");
        assert_eq!(ledger.count("db_stall"), stats.stalls, "{stats:?}");
        assert_eq!(ledger.count("db_partition"), stats.partitions, "{stats:?}");
        assert!(
            stats.resets >= 1 && stats.stalls >= 1 && stats.partitions >= 1,
            "{stats:?}"
        );
        assert_eq!(stats.idle_resets, 0, "a connection was always open");
        for fault in ledger.faults() {
            let Target::Window { from, to, steps } = fault.target else {
                panic!("{fault:?} is not a window");
            };
            assert!(steps.is_empty(), "all steps");
            let length = to - from;
            let expected = match fault.kind {
                "db_reset" => RESET_WINDOW..=RESET_WINDOW,
                // Timers on a loaded machine fire late, never early.
                "db_stall" => plan.stall.min..=plan.stall.max + Duration::from_secs(1),
                "db_partition" => plan.partition.min..=plan.partition.max + Duration::from_secs(1),
                other => panic!("unexpected kind {other}"),
            };
            // The last one may have been cut short by the stop.
            let last = fault.id == ledger.faults().len() as u64;
            assert!(
                expected.contains(&length) || (last && length <= *expected.end()),
                "{fault:?}: {length:?} not in {expected:?}"
            );
        }
        // Resets and partitions reset the connection that was open.
        assert!(proxy.stats().reset >= stats.resets + stats.partitions);
        assert!(proxy.stats().blackholed >= 1, "{:?}", proxy.stats());
        sequences.push(kinds(&ledger));
        proxy.shutdown().await;
    }
    let common = sequences[0].len().min(sequences[1].len());
    assert!(common >= 4, "{sequences:?}");
    assert_eq!(sequences[0][..common], sequences[1][..common]);
}

#[tokio::test]
async fn a_disabled_plan_injects_nothing() {
    let proxy = LinkProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let ledger = Arc::new(FaultLedger::new());
    let plan = LinkPlan {
        enabled: false,
        ..dense_plan()
    };
    let faults = proxy.start_faults(&plan, 1, LinkKinds::REDIS, Some(ledger.clone()));
    for _ in 0..10 {
        assert_eq!(echo(&mut s, b"ok", BOUND).await.unwrap(), b"ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(faults.stop().await, Default::default());
    assert!(ledger.faults().is_empty());
    assert_eq!(proxy.stats().reset, 0);
}

/// The URL of a test service: `None` (skipped) locally when unset, a
/// failure in CI.
fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!("CI is set but {var} is not"),
        _ => {
            eprintln!("{var} unset: skipped");
            None
        }
    }
}

/// `url` with its host and port replaced by the proxy's.
fn through(url: &str, proxy: &LinkProxy) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr().port())).unwrap();
    url.into()
}

/// The server address a `host:port` URL names.
async fn server_of(url: &str, default_port: u16) -> SocketAddr {
    let url = reqwest::Url::parse(url).unwrap();
    let host = url.host_str().unwrap().to_owned();
    tokio::net::lookup_host((host.as_str(), url.port().unwrap_or(default_port)))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// `SELECT 1` (bounded).
async fn select_one(conn: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
    timeout(
        BOUND,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(conn),
    )
    .await
    .expect("the query ended within 5 s")
}

/// A Redis `PING` in RESP's inline form; the answer within 1 s.
async fn ping(s: &mut TcpStream) -> io::Result<[u8; 7]> {
    s.write_all(b"PING\r\n").await?;
    let mut back = [0u8; 7];
    timeout(Duration::from_secs(1), s.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PONG"))??;
    Ok(back)
}

#[tokio::test]
async fn postgres_through_the_link_fails_on_each_fault_and_recovers() {
    let Some(url) = service_url("SELFHEAL_TEST_POSTGRES_URL") else {
        return;
    };
    let proxy = LinkProxy::start(server_of(&url, 5432).await).await.unwrap();
    let proxied = through(&url, &proxy);
    let mut conn = sqlx::PgConnection::connect(&proxied).await.unwrap();
    assert_eq!(select_one(&mut conn).await.unwrap(), 1);

    // Reset: the open connection's next query fails; a new one works.
    assert_eq!(proxy.reset_all(), 1);
    let err = select_one(&mut conn).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err:?}");
    let mut conn = sqlx::PgConnection::connect(&proxied).await.unwrap();
    assert_eq!(select_one(&mut conn).await.unwrap(), 1);

    // Stall: a query waits for the link, then succeeds.
    proxy.set_stalled(true);
    let started = Instant::now();
    let query = tokio::spawn(async move {
        let n = select_one(&mut conn).await;
        (n, conn)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set_stalled(false);
    let (n, mut conn) = query.await.unwrap();
    assert_eq!(n.unwrap(), 1);
    assert!(started.elapsed() >= Duration::from_millis(700));

    // Partition: the open connection is reset, a new one cannot log in.
    assert_eq!(proxy.set_partitioned(true), 1);
    assert!(select_one(&mut conn).await.is_err());
    let login = timeout(
        Duration::from_secs(1),
        sqlx::PgConnection::connect(&proxied),
    )
    .await;
    assert!(login.is_err(), "logged in during a partition");
    proxy.set_partitioned(false);
    let mut conn = sqlx::PgConnection::connect(&proxied).await.unwrap();
    assert_eq!(select_one(&mut conn).await.unwrap(), 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn redis_through_the_link_is_unreachable_during_a_partition() {
    let Some(url) = service_url("SELFHEAL_TEST_REDIS_URL") else {
        return;
    };
    let proxy = LinkProxy::start(server_of(&url, 6379).await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(&ping(&mut s).await.unwrap(), b"+PONG\r\n");
    proxy.set_partitioned(true);
    assert!(ping(&mut s).await.is_err());
    let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
    let err = ping(&mut during).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    proxy.set_partitioned(false);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(&ping(&mut s).await.unwrap(), b"+PONG\r\n");
}

/// A short heal-on run; returns its summary and integrity problems.
async fn short_run(
    plan: Plan,
    seconds: u64,
    database_url: Option<String>,
    redis_url: Option<String>,
) -> (RunSummary, Vec<String>) {
    let recorder = Recorder::new();
    let outcome = driver::run(
        RunOptions {
            name: runs::HEAL_ON,
            healing: Healing::On,
            storm: None,
            duration: Duration::from_secs(seconds),
            users: 4,
            plan,
            seed: 14,
            database_url,
            redis_url,
            app: Default::default(),
        },
        &recorder,
        &Progress::hidden(),
    )
    .await
    .unwrap();
    (recorder.summary(runs::HEAL_ON), outcome.problems)
}

fn counter(summary: &RunSummary, name: &str) -> u64 {
    summary.counters.get(name).copied().unwrap_or(0)
}

fn injected(summary: &RunSummary, kind: &str) -> u64 {
    counter(summary, &counters::faults_injected(kind))
}

/// Link faults every 0.7–1.2 s, short enough for a 6 s run.
fn dense_link_plan() -> LinkPlan {
    LinkPlan {
        enabled: true,
        every: DurationRange::new(Duration::from_millis(700), Duration::from_millis(1200)),
        weights: LinkWeights::default(),
        stall: DurationRange::new(Duration::from_millis(300), Duration::from_millis(600)),
        partition: DurationRange::new(Duration::from_secs(1), Duration::from_millis(1500)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_on_postgres_records_database_faults_and_keeps_integrity() {
    let Some(url) = service_url("SELFHEAL_TEST_POSTGRES_URL") else {
        return;
    };
    let plan = Plan {
        database: dense_link_plan(),
        ..Plan::default()
    };
    let (summary, problems) = short_run(plan, 6, Some(url), None).await;
    println!("{:#?}", summary.counters);
    let db_faults: u64 = LinkKinds::DATABASE
        .all()
        .iter()
        .map(|kind| injected(&summary, kind))
        .sum();
    assert!(db_faults >= 3, "{:?}", summary.counters);
    assert!(counter(&summary, "db_link.connections") >= 1);
    assert!(counter(&summary, "db_link.connections_reset") >= 1);
    // No Redis link without --redis-url, no SQLite lock on PostgreSQL.
    assert!(!summary.counters.contains_key("redis_link.connections"));
    assert_eq!(
        injected(&summary, "db_lock") + injected(&summary, "db_lock_long"),
        0
    );
    assert!(
        summary.overall.total > 20,
        "users acted: {:?}",
        summary.overall
    );
    assert!(problems.is_empty(), "integrity: {problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_with_sessions_in_redis_records_redis_faults() {
    let Some(redis) = service_url("SELFHEAL_TEST_REDIS_URL") else {
        return;
    };
    let plan = Plan {
        redis: dense_link_plan(),
        ..Plan::default()
    };
    let (summary, problems) = short_run(plan, 6, None, Some(redis)).await;
    println!("{:#?}", summary.counters);
    let redis_faults: u64 = LinkKinds::REDIS
        .all()
        .iter()
        .map(|kind| injected(&summary, kind))
        .sum();
    assert!(redis_faults >= 3, "{:?}", summary.counters);
    // The sessions really went through the link.
    assert!(counter(&summary, "redis_link.connections") >= 1);
    assert!(counter(&summary, "redis_link.connections_reset") >= 1);
    assert!(
        summary.overall.total > 20,
        "users acted: {:?}",
        summary.overall
    );
    assert!(problems.is_empty(), "integrity: {problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lock_bursts_past_the_busy_timeout_are_db_lock_long() {
    let mut plan = Plan::default();
    // Bursts of 6 s (past the app's 5 s busy timeout), held 90 % of the
    // time: pauses of 0–1.3 s, so the first burst ends within 7.3 s of a
    // 9 s run; one in progress at the end is cut short (and judged by its
    // real length).
    plan.sqlite_lock.held_fraction = 0.9;
    plan.sqlite_lock.burst = DurationRange::new(Duration::from_secs(6), Duration::from_secs(6));
    let (summary, problems) = short_run(plan, 9, None, None).await;
    println!("{:#?}", summary.counters);
    assert!(
        injected(&summary, "db_lock_long") >= 1,
        "{:?}",
        summary.counters
    );
    // Every burst is in the ledger, under one kind or the other.
    assert_eq!(
        injected(&summary, "db_lock") + injected(&summary, "db_lock_long"),
        counter(&summary, "sqlite_lock_bursts")
    );
    assert!(problems.is_empty(), "integrity: {problems:#?}");
}
