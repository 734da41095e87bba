//! Throughput of a hello route on loopback, measured with `wrk`
//! (`apt-get install -y wrk`): what the web layer costs.
//!
//! ```text
//! cargo run --release -p selfheal-bench --example web_bench
//! ```
//!
//! Each variant is served in this process by a one-worker tokio runtime on
//! its own port, and `wrk` (one thread, another process) loads it; variants
//! are interleaved over several rounds (the machine is shared) and the
//! median is reported, relative to its baseline:
//!
//! - `bare`: axum alone (twice, on two servers: the second shows the noise);
//! - `identity layer`: axum + a layer that does nothing (what
//!   `Router::layer` itself costs: each route is boxed once more);
//! - `tower-http`: axum + tower-http `CatchPanicLayer` + `TraceLayer`;
//! - `selfheal`: axum + `HealLayer` with Prometheus metrics;
//! - `sessions`: tower-sessions with its memory store, a handler reading
//!   three keys of an existing session;
//! - `sessions+heal`: the same three fields through `Healed<T>`.
//!
//! Options (environment): `ROUNDS` (5), `SECS` per run (5), `CONNS` (32).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
        f.checked(
            "level",
            |s| &mut s.level,
            "within 1..=100",
            |l| (1..=100).contains(l),
        );
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
        // The same as `bare`, on its own server: the noise floor.
        ("bare (again)", Router::new().route("/", get(hello))),
        (
            // A layer that does nothing: what `Router::layer` itself costs.
            "identity layer",
            Router::new()
                .route("/", get(hello))
                .layer(tower::layer::util::Identity::new()),
        ),
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
            "selfheal, no metrics",
            Router::new()
                .route("/", get(hello))
                .layer(HealLayer::new(monitor.clone())),
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
                // One `layer` call for both (each call boxes every route
                // once more); `HealLayer` would put the monitor there too.
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(axum::Extension(monitor.clone()))
                        .layer(SessionManagerLayer::new(store).with_secure(false)),
                ),
        ),
    ]
}

/// Serves `app` on a current-thread runtime on its own thread; returns its
/// address and the thread's `/proc` stat file (for its CPU time).
fn spawn_server(app: Router) -> (SocketAddr, PathBuf) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stat = std::fs::read_link("/proc/thread-self")
            .map(|task| PathBuf::from("/proc").join(task).join("stat"))
            .unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((listener.local_addr().unwrap(), stat)).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// CPU time (user + system) of a thread so far, in clock ticks (1/100 s).
fn cpu_ticks(stat: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); `rest` starts at field 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
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

/// Requests per second and total requests of one `wrk` run.
fn wrk(addr: SocketAddr, cookie: Option<&str>, secs: u64, conns: u32) -> (f64, u64) {
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
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in\n{text}"));
    let total = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rps, total)
}

/// The same routers, called in-process (no network, no HTTP parsing): what
/// each variant's layers cost per request on one core, without the noise of
/// a shared machine's network stack.
type Served = (&'static str, SocketAddr, PathBuf, Option<String>);

fn servers_apps(
    monitor: &Monitor,
    metrics: &Metrics,
    servers: &[Served],
) -> Vec<(&'static str, Router, Option<String>)> {
    let mut apps = variants(monitor, metrics);
    servers
        .iter()
        .filter_map(|(name, _, _, cookie)| {
            let index = apps.iter().position(|(n, _)| n == name)?;
            let (name, app) = apps.swap_remove(index);
            Some((name, app, cookie.clone()))
        })
        .collect()
}

fn in_process(apps: &[(&'static str, Router, Option<String>)], rounds: u64) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::Service;
    const CALLS: u32 = 50_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); apps.len()];
    runtime.block_on(async {
        // Sessions variants need a session in *this* router's store.
        let mut apps: Vec<_> = apps
            .iter()
            .map(|(name, app, _)| (*name, app.clone(), None::<String>))
            .collect();
        for (name, app, cookie) in apps.iter_mut() {
            if name.starts_with("sessions") {
                let response = app
                    .call(Request::get("/init").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                *cookie = response
                    .headers()
                    .get("set-cookie")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .map(str::to_owned);
            }
        }
        for round in 0..rounds * 2 {
            for k in 0..apps.len() {
                let i = (k + round as usize) % apps.len();
                let (_, app, cookie) = &mut apps[i];
                let started = std::time::Instant::now();
                for _ in 0..CALLS {
                    let mut request = Request::get("/");
                    if let Some(cookie) = cookie.as_deref() {
                        request = request.header("cookie", cookie);
                    }
                    let response = app
                        .call(request.body(Body::empty()).unwrap())
                        .await
                        .unwrap();
                    assert!(response.status().is_success());
                    let _ = axum::body::to_bytes(response.into_body(), 1024).await;
                }
                ns[i].push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
            }
        }
    });
    println!(
        "\nIn-process (`Router::call`, no network), {CALLS} calls x {} interleaved rounds, medians:\n",
        rounds * 2
    );
    println!("| variant | ns/request | overhead vs baseline | throughput vs baseline |");
    println!("|---|---:|---:|---:|");
    let medians: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    for (i, (name, _, _)) in apps.iter().enumerate() {
        let base = apps
            .iter()
            .position(|(n, _, _)| {
                if name.starts_with("sessions") {
                    *n == "sessions"
                } else {
                    *n == "bare"
                }
            })
            .unwrap_or(i);
        println!(
            "| {name} | {:.0} | {:+.0} ns | {:.1}% |",
            medians[i],
            medians[i] - medians[base],
            medians[base] / medians[i] * 100.0
        );
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
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
    // Kept alive for the whole run: the monitor's background task (its
    // coarse clock) and the metrics upkeep run here, as in a service.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (monitor, metrics) = background.block_on(async {
        (
            Monitor::builder().start().unwrap(),
            Metrics::install().unwrap(),
        )
    });
    // ONLY=name serves one variant (for profiling).
    let only = std::env::var("ONLY").ok();
    let servers: Vec<_> = variants(&monitor, &metrics)
        .into_iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name))
        .map(|(name, app)| {
            let (addr, stat) = spawn_server(app);
            let cookie = name.starts_with("sessions").then(|| session_cookie(addr));
            (name, addr, stat, cookie)
        })
        .collect();
    // WRK=0 skips the loopback runs (the in-process table only).
    let rounds_wrk = if env("WRK", 1) == 0 { 0 } else { rounds };
    // Warm-up.
    for (_, addr, _, cookie) in servers.iter().filter(|_| rounds_wrk > 0) {
        wrk(*addr, cookie.as_deref(), 1, conns);
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds_wrk {
        // Rotate the order each round: no variant always runs first.
        for k in 0..servers.len() {
            let i = (k + round as usize) % servers.len();
            let (name, addr, stat, cookie) = &servers[i];
            let before = cpu_ticks(stat);
            let (rps, total) = wrk(*addr, cookie.as_deref(), secs, conns);
            let ticks = cpu_ticks(stat) - before;
            let us_per_request = ticks as f64 * 10_000.0 / total.max(1) as f64;
            eprintln!(
                "round {round}: {name:<14} {rps:>10.0} req/s {us_per_request:>6.2} us CPU/request"
            );
            rates[i].push(rps);
            cpu[i].push(us_per_request);
        }
    }
    let rate: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    if rounds_wrk == 0 {
        in_process(&servers_apps(&monitor, &metrics, &servers), rounds);
        return;
    }
    let per_request: Vec<f64> = cpu.iter_mut().map(|r| median(r)).collect();
    println!(
        "\nwrk -t1 -c{conns} -d{secs}s, {rounds} interleaved rounds (order rotated), medians; \
         server: one current-thread tokio runtime\n"
    );
    println!(
        "| variant | req/s | min..max | throughput vs baseline | server CPU/request | CPU-bound throughput vs baseline |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (name, _, _, _)) in servers.iter().enumerate() {
        let base = if only.is_some() {
            i
        } else if name.starts_with("sessions") {
            servers.iter().position(|s| s.0 == "sessions").unwrap_or(i)
        } else {
            0
        };
        let min = rates[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates[i].iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.0} | {min:.0}..{max:.0} | {:.1}% | {:.2} us | {:.1}% |",
            rate[i],
            rate[i] / rate[base] * 100.0,
            per_request[i],
            per_request[base] / per_request[i] * 100.0,
        );
    }
    in_process(&servers_apps(&monitor, &metrics, &servers), rounds);
    let report = monitor.report(Duration::from_secs(60));
    println!(
        "\nmonitor: {} requests recorded in the last minute, {} failed",
        report.requests.total, report.requests.failed
    );
}
