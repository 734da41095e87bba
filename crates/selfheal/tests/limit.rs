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

    let _serial = SERIAL.lock().await;
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

/// A route's own limit is a bulkhead: a rush on the expensive route (30
/// password checks at once against a limit of 2) is held to that limit (the
/// excess answered with the friendly page, unrecorded), so the rush keeps
/// only 2 of the app-wide limit's 4 slots and the pages asked for during it
/// are served; and a bulkhead's sheds do not mark the server as shedding
/// (outbound retries go on). With the app-wide limit alone, 4 logins would
/// hold all 4 slots and the pages would be shed.
#[tokio::test]
async fn a_rush_on_an_expensive_route_is_held_to_its_own_limit() {
    use axum::handler::Handler;
    use selfheal::health::Monitor;
    use selfheal::web::{AdaptiveLimit, HealLayer};

    let _serial = SERIAL.lock().await;
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let app_wide = AdaptiveLimit::new("web").with_limits(4, 4, 4).unwrap();
    let passwords = AdaptiveLimit::new("passwords")
        .with_limits(2, 2, 2)
        .unwrap()
        .with_queue(1.0)
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (i, r) = (inside.clone(), release.clone());
    let login = move || {
        let (i, r) = (i.clone(), r.clone());
        async move {
            i.fetch_add(1, Ordering::SeqCst);
            r.notified().await;
            "signed in"
        }
    };
    let app = Router::new()
        .route(
            "/login",
            axum::routing::post(login.layer(passwords.layer())),
        )
        .route("/lessons", axum::routing::get(|| async { "lessons" }))
        .layer(HealLayer::new(monitor.clone()).with_adaptive_limit(app_wide));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    selfheal::tls::install_default_crypto_provider();
    let http = reqwest::Client::new();
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..30 {
        let (http, done) = (http.clone(), done.clone());
        tokio::spawn(async move {
            let answer = http
                .post(format!("http://{addr}/login"))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let _ = done.send((status, answer.text().await.unwrap()));
        });
    }
    // Every login but the two admitted is answered at once.
    let (mut shed, mut friendly) = (0, 0);
    for _ in 0..28 {
        let wait = std::time::Duration::from_secs(10);
        let (status, body) = tokio::time::timeout(wait, answers.recv())
            .await
            .expect("a shed login is answered at once")
            .unwrap();
        assert_eq!(status, 503, "{body}");
        shed += 1;
        friendly += usize::from(body.contains("We are busy right now"));
    }
    for _ in 0..500 {
        if inside.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(inside.load(Ordering::SeqCst), 2, "admitted logins");
    assert_eq!((shed, friendly), (28, 28), "shed with the friendly page");
    assert_eq!(passwords.shed(), 28);
    // During the rush, pages are served: the rush holds 2 of the 4 slots.
    for _ in 0..2 {
        let page = http
            .get(format!("http://{addr}/lessons"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "a page was shed during the login rush");
    }
    assert!(
        !selfheal::throttle::server_is_shedding(),
        "a bulkhead's sheds marked the server as shedding"
    );
    // Nothing recorded: shedding is not an error.
    let report = monitor.report(std::time::Duration::from_secs(60));
    assert_eq!(report.requests.failed, 0);
    release.notify_waiters();
    for _ in 0..2 {
        assert_eq!(answers.recv().await.unwrap().0, 200);
    }
}

/// A route limit that lets requests wait (`with_wait`) absorbs a burst:
/// 12 sign-ups at once on a limit of 2 (each 150 ms) are all served, never
/// more than 2 in the handler at once, none shed; the same burst on the
/// same limit without the wait sheds all but 2.
#[tokio::test]
async fn a_burst_on_a_route_waits_for_its_slots_instead_of_being_shed() {
    use axum::handler::Handler;
    use selfheal::health::Monitor;
    use selfheal::web::{AdaptiveLimit, HealLayer};
    use std::time::Duration;

    let _serial = SERIAL.lock().await;
    selfheal::tls::install_default_crypto_provider();
    let burst = async |limit: AdaptiveLimit| -> (Vec<u16>, usize) {
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (i, m) = (inside.clone(), most.clone());
        let signup = move || {
            let (i, m) = (i.clone(), m.clone());
            async move {
                m.fetch_max(i.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                i.fetch_sub(1, Ordering::SeqCst);
                "welcome"
            }
        };
        let app = Router::new()
            .route("/signup", axum::routing::post(signup.layer(limit.layer())))
            .layer(HealLayer::new(monitor));
        let (addr, server) = serve(app).await;
        let http = reqwest::Client::new();
        let answers: Vec<_> = (0..12)
            .map(|_| {
                let http = http.clone();
                tokio::spawn(async move {
                    let answer = http.post(format!("http://{addr}/signup")).send().await;
                    answer.unwrap().status().as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for answer in answers {
            statuses.push(answer.await.unwrap());
        }
        server.abort();
        (statuses, most.load(Ordering::SeqCst))
    };
    let two = || AdaptiveLimit::new("signups").with_limits(2, 2, 2).unwrap();
    let waiting = two()
        .with_wait(Duration::from_millis(20), Duration::from_secs(5))
        .unwrap();
    let (statuses, most) = burst(waiting.clone()).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!((most, waiting.shed(), waiting.in_flight()), (2, 0, 0));

    let shedding = two();
    let (statuses, most) = burst(shedding.clone()).await;
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!((served, most, shedding.shed()), (2, 2, 10), "{statuses:?}");
}

/// Work shed by `AdaptiveLimit::acquire` inside a handler (a limit around
/// one resource, not the route) is answered like a route limit's shed:
/// `HealLayer`'s friendly 503 with `Retry-After`, not recorded; once the
/// slot is back, the same request is served.
#[tokio::test]
async fn work_shed_inside_a_handler_is_answered_as_shedding_and_not_recorded() {
    use selfheal::health::Monitor;
    use selfheal::web::{AdaptiveLimit, HealLayer, LimitFull};

    let _serial = SERIAL.lock().await;
    selfheal::tls::install_default_crypto_provider();
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let hashing = AdaptiveLimit::new("hashing").with_limits(1, 1, 1).unwrap();
    let held = hashing.acquire().await.unwrap();
    let h = hashing.clone();
    let login = move || {
        let h = h.clone();
        async move {
            let mut permit = h.acquire().await?;
            permit.succeeded();
            Ok::<_, LimitFull>("signed in")
        }
    };
    let app = Router::new()
        .route("/login", axum::routing::post(login))
        .layer(HealLayer::new(monitor.clone()));
    let (addr, server) = serve(app).await;
    let http = reqwest::Client::new();
    let sign_in = || http.post(format!("http://{addr}/login")).send();
    let shed = sign_in().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert!(shed.headers().contains_key("retry-after"));
    let body = shed.text().await.unwrap();
    assert!(body.contains("We are busy right now"), "{body}");
    let report = monitor.report(std::time::Duration::from_secs(60));
    assert_eq!(report.requests.failed, 0, "a shed was recorded as an error");
    drop(held);
    let served = sign_in().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!((hashing.shed(), hashing.in_flight()), (1, 0));
    server.abort();
}

/// Serves `app` on a loopback port: its address, and the server's task.
async fn serve(app: Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

/// The tests of this binary that shed run one at a time: shedding marks
/// the process (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
