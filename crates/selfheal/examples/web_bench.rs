//! Throughput of a hello route on loopback, measured with `wrk`
//! (`apt-get install -y wrk`): what the web layer costs.
//!
//! ```text
//! cargo run --release -p selfheal --example web_bench --features axum,sessions,prometheus
//! ```
//!
//! Each variant is served in this process by a one-worker tokio runtime on
//! its own port, and `wrk` (one thread, another process) loads it; variants
//! are interleaved over several rounds (the machine is shared) and the
//! median is reported, relative to its baseline:
//!
//! - `bare`: axum alone;
//! - `tower-http`: axum + tower-http `CatchPanicLayer` + `TraceLayer`;
//! - `selfheal`: axum + `HealLayer` with Prometheus metrics;
//! - `sessions`: tower-sessions with its memory store, a handler reading
//!   three keys of an existing session;
//! - `sessions+heal`: the same three fields through `Healed<T>`.
//!
//! Options (environment): `ROUNDS` (5), `SECS` per run (5), `CONNS` (32).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use selfheal::health::Monitor;
use selfheal::metrics::Metrics;
use selfheal::session::{Fields, Healed, SessionData};
use selfheal::web::HealLayer;
use serde::{Deserialize, Serialize};
use tower_sessions::{MemoryStore, Session, SessionManagerLayer};

#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    xp: u64,
    level: u32,
    name: String,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            xp: 0,
            level: 1,
            name: String::new(),
        }
    }
}

impl SessionData for Progress {
    fn fields(f: &mut Fields<'_, Self>) {
        f.field("xp", |s| &mut s.xp);
        f.checked("level", |s| &mut s.level, "within 1..=100", |l| {
            (1..=100).contains(l)
        });
        f.field("name", |s| &mut s.name);
    }
}

async fn hello() -> &'static str {
    "hello"
}

async fn init(session: Session) -> &'static str {
    session.insert("xp", 10u64).await.unwrap();
    session.insert("level", 3u32).await.unwrap();
    session.insert("name", "ada").await.unwrap();
    "ok"
}

async fn plain_session(session: Session) -> String {
    let xp: u64 = session.get("xp").await.ok().flatten().unwrap_or(0);
    let level: u32 = session.get("level").await.ok().flatten().unwrap_or(1);
    let name: String = session.get("name").await.ok().flatten().unwrap_or_default();
    format!("{name} {xp} {level}")
}

async fn healed_session(progress: Healed<Progress>) -> String {
    format!("{} {} {}", progress.name, progress.xp, progress.level)
}

fn variants(monitor: &Monitor, metrics: &Metrics) -> Vec<(&'static str, Router)> {
    let store = MemoryStore::default();
    vec![
        ("bare", Router::new().route("/", get(hello))),
        (
            "tower-http",
            Router::new()
                .route("/", get(hello))
                .layer(tower_http::catch_panic::CatchPanicLayer::new())
                .layer(tower_http::trace::TraceLayer::new_for_http()),
        ),
        (
            "selfheal",
            Router::new()
                .route("/", get(hello))
                .layer(HealLayer::new(monitor.clone()).with_metrics(metrics))
                .merge(metrics.routes(monitor.clone())),
        ),
        (
            "sessions",
            Router::new()
                .route("/", get(plain_session))
                .route("/init", get(init))
                .layer(SessionManagerLayer::new(store.clone()).with_secure(false)),
        ),
        (
            "sessions+heal",
            Router::new()
                .route("/", get(healed_session))
                .route("/init", get(init))
                .layer(SessionManagerLayer::new(store).with_secure(false))
                .layer(axum::Extension(monitor.clone())),
        ),
    ]
}

/// Serves `app` on its own one-worker runtime (on its own thread).
fn spawn_server(app: Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The session cookie of a fresh session with three keys.
fn session_cookie(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /init HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn wrk(addr: SocketAddr, cookie: Option<&str>, secs: u64, conns: u32) -> f64 {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        &format!("http://{addr}/"),
    ]);
    if let Some(cookie) = cookie {
        command.args(["-H", &format!("Cookie: {cookie}")]);
    }
    let output = command.output().expect("wrk (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        panic!("non-2xx responses:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in\n{text}"))
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let rounds = env("ROUNDS", 5);
    let secs = env("SECS", 5);
    let conns = env("CONNS", 32) as u32;
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (monitor, metrics) = setup.block_on(async {
        (
            Monitor::builder().global(false).start().unwrap(),
            Metrics::install().unwrap(),
        )
    });
    let servers: Vec<_> = variants(&monitor, &metrics)
        .into_iter()
        .map(|(name, app)| {
            let addr = spawn_server(app);
            let cookie = name.starts_with("sessions").then(|| session_cookie(addr));
            (name, addr, cookie)
        })
        .collect();
    // Warm-up.
    for (_, addr, cookie) in &servers {
        wrk(*addr, cookie.as_deref(), 1, conns);
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        for (i, (name, addr, cookie)) in servers.iter().enumerate() {
            let rps = wrk(*addr, cookie.as_deref(), secs, conns);
            eprintln!("round {round}: {name:<14} {rps:>10.0} req/s");
            results[i].push(rps);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    println!(
        "\nwrk -t1 -c{conns} -d{secs}s, {rounds} interleaved rounds, median (min-max); server: 1 tokio worker\n"
    );
    println!("| variant | req/s | min | max | vs baseline |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _, _)) in servers.iter().enumerate() {
        let baseline = if name.starts_with("sessions") {
            medians[3]
        } else {
            medians[0]
        };
        let min = results[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = results[i].iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.0} | {min:.0} | {max:.0} | {:.1}% |",
            medians[i],
            medians[i] / baseline * 100.0
        );
    }
    let report = monitor.report(Duration::from_secs(60));
    println!(
        "\nmonitor: {} requests recorded in the last minute, {} failed",
        report.requests.total, report.requests.failed
    );
}
