//! The server's own adaptive concurrency limits, through a real axum
//! server: the excess shed early with the friendly 503, probes never shed,
//! a route limit as a bulkhead.
//!
//! Apart from `tests/adaptive.rs` on purpose: a limit that sheds marks the
//! whole process as shedding (`throttle::server_is_shedding`, for one
//! window), which suppresses outbound retries, so a test that sheds must
//! not share a process with tests that count what retries heal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use tokio::net::TcpListener;

/// A burst of 60 concurrent requests (30 to a slow handler, 30 to probes
/// and the admin page) against a slow handler (two workers,
/// 50 ms each) behind `HealLayer` with an adaptive limit (initially 4,
/// between 2 and 8): the excess is answered at once with the friendly 503
/// and `Retry-After`; the handler never sees more requests at once than the
/// limit's maximum (so an accepted request waits at most 4 service times);
/// probes and admin paths mounted *inside* the layer are never shed; the
/// monitor's status and error rate do not move.
#[tokio::test(start_paused = true)]
async fn the_server_sheds_the_excess_early_and_never_its_probes() {
    use selfheal::health::{Monitor, Status};
    use selfheal::web::{AdaptiveLimit, HealLayer};

    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let limit = AdaptiveLimit::new("web")
        .with_limits(4, 2, 8)
        .unwrap()
        .with_window(std::time::Duration::from_millis(10), 2)
        .unwrap();
    let workers = Arc::new(tokio::sync::Semaphore::new(2));
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (w, i, m) = (workers.clone(), inside.clone(), most.clone());
    let app = Router::new()
        .route(
            "/slow",
            axum::routing::get(move || {
                let (w, i, m) = (w.clone(), i.clone(), m.clone());
                async move {
                    let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let _worker = w.acquire().await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    i.fetch_sub(1, Ordering::SeqCst);
                    "done"
                }
            }),
        )
        .route("/admin/health", axum::routing::get(|| async { "admin" }))
        .merge(selfheal::web::probes(monitor.clone()))
        .layer(HealLayer::new(monitor.clone()).with_adaptive_limit(limit.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    selfheal::tls::install_default_crypto_provider();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for n in 0..60 {
        let http = http.clone();
        let path = match n % 6 {
            0 => "/healthz",
            1 => "/readyz",
            2 => "/admin/health",
            _ => "/slow",
        };
        tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let response = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let body = response.text().await.unwrap();
            (path, status, retry_after, body, started.elapsed())
        }));
    }
    let (mut ok, mut shed, mut probes) = (0, 0, 0);
    let (mut slowest_ok, mut slowest_shed) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for task in tasks {
        let (path, status, retry_after, body, took) = task.await.unwrap();
        if path != "/slow" {
            assert_eq!(status, 200, "{path} was shed");
            probes += 1;
            continue;
        }
        match status {
            200 => {
                ok += 1;
                slowest_ok = slowest_ok.max(took);
            }
            503 => {
                shed += 1;
                slowest_shed = slowest_shed.max(took);
                assert!(
                    retry_after.is_some(),
                    "a shed answer says when to come back"
                );
                assert!(body.contains("We are busy right now"), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    println!(
        "burst of 30 slow requests: {ok} served (slowest {slowest_ok:?}), {shed} shed (slowest {slowest_shed:?}), {probes} probes all served; limit now {}, {} shed",
        limit.limit(),
        limit.shed()
    );
    assert_eq!(probes, 30);
    assert!(shed > 0 && ok > 0, "{ok} served, {shed} shed");
    assert_eq!(ok + shed, 30);
    assert!(
        most.load(Ordering::SeqCst) <= 8,
        "{}",
        most.load(Ordering::SeqCst)
    );
    // Shedding moved nothing on the monitor.
    monitor.evaluate();
    assert_eq!(monitor.status(), Status::Healthy);
    let report = monitor.report(std::time::Duration::from_secs(60));
    assert_eq!(report.total_errors, 0);
    assert_eq!(report.requests.failed, 0);
    // The limit reported its windows: the dashboard and /metrics read them.
    assert_eq!(report.limiters.len(), 1, "{report:?}");
    assert_eq!(report.limiters[0].name, "web");
    assert!(
        report.notes.iter().any(|n| n.starts_with("web sheds load")),
        "{:?}",
        report.notes
    );
}

/// A route limit is a bulkhead: a rush on the expensive route (30 password
/// checks at once, 2 "hashing threads") is held to that route's own limit,
/// and takes no slot from the app-wide limit, so the few page views that
/// arrive in the middle of it are all served.
#[tokio::test(start_paused = true)]
async fn a_rush_on_an_expensive_route_is_held_to_its_own_limit() {
    use axum::http::Method;
    use selfheal::health::Monitor;
    use selfheal::web::{AdaptiveLimit, HealLayer};

    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let app_wide = AdaptiveLimit::new("web").with_limits(4, 4, 4).unwrap();
    let hashing = AdaptiveLimit::new("passwords")
        .with_limits(2, 1, 2)
        .unwrap()
        .with_queue(1.0)
        .unwrap()
        .for_route(Method::POST, "/login");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (i, m) = (inside.clone(), most.clone());
    let app = Router::new()
        .route(
            "/login",
            axum::routing::post(move || {
                let (i, m) = (i.clone(), m.clone());
                async move {
                    let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    i.fetch_sub(1, Ordering::SeqCst);
                    "signed in"
                }
            }),
        )
        .route(
            "/lessons",
            axum::routing::get(|| async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                "lessons"
            }),
        )
        .layer(
            HealLayer::new(monitor.clone())
                .with_adaptive_limit(app_wide)
                .with_adaptive_limit(hashing.clone()),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    selfheal::tls::install_default_crypto_provider();
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for n in 0..33 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let request = if n % 11 == 5 {
                http.get(format!("http://{addr}/lessons"))
            } else {
                http.post(format!("http://{addr}/login"))
            };
            let status = request.send().await.unwrap().status().as_u16();
            (n % 11 == 5, status)
        }));
    }
    let (mut pages, mut logins, mut shed) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (true, status) => {
                assert_eq!(status, 200, "a page was shed during the login rush");
                pages += 1;
            }
            (false, 200) => logins += 1,
            (false, 503) => shed += 1,
            (false, other) => panic!("unexpected {other}"),
        }
    }
    println!("login rush: {logins} served, {shed} shed; {pages} pages served");
    assert_eq!(pages, 3);
    assert_eq!(logins + shed, 30);
    assert!(logins >= 2 && shed > 0, "{logins} served, {shed} shed");
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{}",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(hashing.shed(), shed as u64);
}
