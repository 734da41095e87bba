//! The axum side: HealLayer, sessions, config, probes, dashboard, metrics.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, Response, StatusCode, header};
use axum::routing::get;
use selfheal::config::{self, Instances, SecretKeyOptions};
use selfheal::health::{HealKind, Monitor, Status, StatusRules};
use selfheal::metrics::Metrics;
use selfheal::session::{Fields, Healed, RepairReason, SessionData};
use selfheal::web::{self, AdminGuard, Dashboard, Friendly, HealLayer};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token-0123456789";

fn monitor() -> Monitor {
    Monitor::builder().with_global(false).build().unwrap()
}

async fn body(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Registers a check `name` that fails with `error`, and runs the checks.
async fn failing_check(
    monitor: &Monitor,
    name: &'static str,
    options: selfheal::health::CheckOptions,
    error: &'static str,
) {
    monitor.register_check(name, options, move || async move { Err(error.to_owned()) });
    monitor.run_checks().await;
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn boom(Path(id): Path<u32>) -> &'static str {
    if id > 0 {
        panic!("secret detail: user {id} broke it");
    }
    "fine"
}

fn app(monitor: &Monitor) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/boom/{id}", get(boom))
        .route(
            "/leaky",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::RETRY_AFTER, "7")],
                    "postgres://app:hunter2@db failed: relation users does not exist",
                )
            }),
        )
        .route(
            "/kind",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, Friendly, "resting") }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such thing") }),
        )
        .layer(HealLayer::new(monitor.clone()))
}

#[tokio::test]
async fn a_panicking_handler_gives_a_friendly_500_and_the_next_request_succeeds() {
    let monitor = monitor();
    let app = app(&monitor);

    let response = app.clone().oneshot(get_req("/boom/7")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = body(response).await;
    assert!(page.contains("Something went wrong"), "{page}");
    assert!(page.contains(&id));
    assert!(!page.contains("secret detail"), "{page}");
    assert!(!page.contains("panicked"), "{page}");

    // The next request on the same app works.
    let response = app.clone().oneshot(get_req("/boom/0")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "fine");

    // Recorded: a Panic error at the route template (not the raw path), a
    // heal, and two requests, one failed.
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.fingerprints.len(), 1);
    assert_eq!(report.fingerprints[0].fingerprint, "Panic@/boom/{id}");
    assert!(report.fingerprints[0].sample.contains("secret detail"));
    assert_eq!(report.heals.get(&HealKind::PanicCaught), Some(&1));
    assert_eq!(report.requests.total, 2);
    assert_eq!(report.requests.failed, 1);
}

/// A body that sends one chunk, waits a little (so that the server sends
/// it), then panics when it is polled again (a streamed export that hits a
/// bug half-way).
struct ExplodingBody {
    polls: u8,
}

impl http_body::Body for ExplodingBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.polls += 1;
        match self.polls {
            1 => std::task::Poll::Ready(Some(Ok(http_body::Frame::data("first half;".into())))),
            2 => {
                let waker = cx.waker().clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    waker.wake();
                });
                std::task::Poll::Pending
            }
            _ => panic!("secret detail: the export broke half-way"),
        }
    }
}

/// A panic while the body streams (the status line is out) is recorded
/// like any other panic and the response is aborted: over real HTTP the
/// client sees the first chunk and then the end of the connection, never
/// the chunked body's last chunk; the server serves the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_panics_while_streaming_is_recorded_and_the_server_serves_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let monitor = monitor();
    let app = Router::new()
        .route(
            "/export/{id}",
            get(|| async { Body::new(ExplodingBody { polls: 0 }) }),
        )
        .route("/", get(|| async { "hello" }))
        .layer(HealLayer::new(monitor.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let exchange = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        // Up to the end of the connection (or 10 s): a healthy keep-alive
        // answer is read by its length instead.
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                if path == "/" && answer.ends_with(b"hello") {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{path}: the connection was not closed");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = exchange("/export/7").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("first half;"), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "truncated, not complete: {answer:?}"
    );
    assert!(!answer.contains("secret detail"));
    let answer = exchange("/").await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK"),
        "the server serves on: {answer}"
    );

    let report = monitor.report(Duration::from_secs(900));
    let panics: Vec<_> = report
        .fingerprints
        .iter()
        .filter(|f| f.fingerprint == "Panic@/export/{id}")
        .collect();
    assert_eq!(panics.len(), 1, "{:?}", report.fingerprints);
    assert_eq!(panics[0].count, 1);
    assert!(panics[0].sample.contains("export broke"));
    assert_eq!(report.heals.get(&HealKind::PanicCaught), Some(&1));
}

#[tokio::test]
async fn json_clients_get_json_and_their_request_id_back() {
    let monitor = monitor();
    let request = Request::get("/boom/1")
        .header(header::ACCEPT, "application/json")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let response = app(&monitor).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
    assert_eq!(json["error"]["status"], 500);
    assert_eq!(json["error"]["request_id"], "abc-123");
    assert!(!json.to_string().contains("secret"));

    // A request id that is not a plain token is not echoed.
    let request = Request::get("/boom/1")
        .header("x-request-id", "<script>")
        .body(Body::empty())
        .unwrap();
    let response = app(&monitor).oneshot(request).await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "<script>");
    assert_eq!(id.len(), 16);
}

#[tokio::test]
async fn a_5xx_body_is_replaced_unless_marked_friendly_and_4xx_pass_through() {
    let monitor = monitor();
    let app = app(&monitor);

    let response = app.clone().oneshot(get_req("/leaky")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()[header::RETRY_AFTER], "7", "headers kept");
    let page = body(response).await;
    assert!(!page.contains("hunter2"), "{page}");
    assert!(!page.contains("relation"), "{page}");

    let response = app.clone().oneshot(get_req("/kind")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(response).await, "resting");

    let response = app.clone().oneshot(get_req("/missing")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body(response).await, "no such thing");

    let report = monitor.report(Duration::from_secs(900));
    let keys: Vec<_> = report
        .fingerprints
        .iter()
        .map(|f| f.fingerprint.as_str())
        .collect();
    assert_eq!(keys, ["500@/leaky", "503@/kind"]);
    assert_eq!(report.requests.total, 3);
    assert_eq!(report.requests.failed, 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_times_out_with_503_and_retry_after() {
    let monitor = monitor();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .layer(
            HealLayer::new(monitor.clone())
                .with_timeout(Duration::from_secs(2))
                .with_retry_after(Duration::from_secs(3)),
        );
    let response = app.oneshot(get_req("/slow")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.fingerprints[0].fingerprint, "Timeout@/slow");
}

#[tokio::test(start_paused = true)]
async fn load_is_shed_only_when_asked_and_while_critical() {
    let monitor = Monitor::builder()
        .with_global(false)
        .with_status_rules(StatusRules {
            min_requests: 1,
            ..StatusRules::default()
        })
        .build()
        .unwrap();
    let routes = || {
        Router::new()
            .route("/", get(|| async { "hello" }))
            .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
    };
    let shedding = routes().layer(HealLayer::new(monitor.clone()).with_load_shedding(true));
    let plain = routes().layer(HealLayer::new(monitor.clone()));

    let response = shedding.clone().oneshot(get_req("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..3 {
        plain.clone().oneshot(get_req("/fail")).await.unwrap();
    }
    assert_eq!(monitor.status(), selfheal::health::Status::Critical);
    // The cached status is at most a second old.
    tokio::time::advance(Duration::from_millis(1100)).await;
    let response = shedding.clone().oneshot(get_req("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    // Off by default.
    let response = plain.clone().oneshot(get_req("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// One client's failing requests (its input) are recorded and shown but move
/// neither the status nor the alerts; three clients' do.
#[tokio::test]
async fn one_peer_address_failing_does_not_move_the_status() {
    let monitor = monitor();
    let app = Router::new()
        .route(
            "/login",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "invalid byte sequence 0x00",
                )
            }),
        )
        .layer(HealLayer::new(monitor.clone()));
    let from =
        |ip: [u8; 4]| {
            let mut request = get_req("/login");
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                std::net::SocketAddr::from((ip, 40000)),
            ));
            request
        };
    for _ in 0..50 {
        let response = app.clone().oneshot(from([203, 0, 113, 9])).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    monitor.evaluate();
    assert_eq!(
        monitor.status(),
        Status::Healthy,
        "{:?}",
        monitor.status_with_reasons()
    );
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.fingerprints[0].count, 50);

    for ip in [[198, 51, 100, 1], [198, 51, 100, 2]] {
        app.clone().oneshot(from(ip)).await.unwrap();
    }
    monitor.evaluate();
    assert_eq!(
        monitor.status(),
        Status::Critical,
        "{:?}",
        monitor.status_with_reasons()
    );
}

// --- probes -------------------------------------------------------------

#[tokio::test]
async fn probes_answer_without_details() {
    let monitor = monitor();
    let app: Router = web::probes(monitor.clone());
    let response = app.clone().oneshot(get_req("/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.clone().oneshot(get_req("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A shared dependency's check (the default) moves the status, not
    // readiness.
    failing_check(
        &monitor,
        "db",
        Default::default(),
        "postgres://u:pw@db down",
    )
    .await;
    let response = app.clone().oneshot(get_req("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A readiness check does.
    let readiness = selfheal::health::CheckOptions {
        readiness: true,
        ..Default::default()
    };
    failing_check(&monitor, "warm_up", readiness, "postgres://u:pw@db down").await;
    let response = app.clone().oneshot(get_req("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(response).await, "not ready");
    let response = app.clone().oneshot(get_req("/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

// --- admin dashboard ----------------------------------------------------

fn admin(monitor: &Monitor) -> Router {
    let guard = AdminGuard::token(TOKEN).unwrap().with_secure_cookie(false);
    web::admin_routes(Dashboard::new(monitor.clone(), guard).with_service_name("cozmic"))
}

fn with_bearer(uri: &str, token: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn admin_routes_are_403_without_the_right_token_and_200_with_it() {
    let monitor = monitor();
    let app = admin(&monitor);
    for uri in ["/admin/health", "/admin/health.json"] {
        let none = app.clone().oneshot(get_req(uri)).await.unwrap();
        assert_eq!(
            none.status(),
            StatusCode::FORBIDDEN,
            "{uri} without a token"
        );
        let wrong = app
            .clone()
            .oneshot(with_bearer(uri, "wrong-token-0123456789"))
            .await
            .unwrap();
        assert_eq!(
            wrong.status(),
            StatusCode::FORBIDDEN,
            "{uri} with a wrong token"
        );
        let query = app
            .clone()
            .oneshot(get_req(&format!("{uri}?token={TOKEN}")))
            .await
            .unwrap();
        assert_eq!(query.status(), StatusCode::FORBIDDEN, "{uri} with ?token=");
        let right = app.clone().oneshot(with_bearer(uri, TOKEN)).await.unwrap();
        assert_eq!(right.status(), StatusCode::OK, "{uri} with the token");
    }
    let json = app
        .clone()
        .oneshot(get_req("/admin/health.json"))
        .await
        .unwrap();
    assert_eq!(
        json.headers()[header::CONTENT_TYPE],
        "application/health+json"
    );
}

#[tokio::test]
async fn the_login_form_sets_an_http_only_cookie_that_opens_the_dashboard() {
    let monitor = monitor();
    let app = admin(&monitor);
    let form = |token: &str| {
        Request::post("/admin/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    let wrong = app
        .clone()
        .oneshot(form("nope-nope-nope-nope"))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert!(!wrong.headers().contains_key(header::SET_COOKIE));

    let right = app.clone().oneshot(form(TOKEN)).await.unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let cookie = right.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let pair = cookie.split(';').next().unwrap().to_owned();

    let page = Request::get("/admin/health")
        .header(header::COOKIE, &pair)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(page).await.unwrap().status(),
        StatusCode::OK
    );
    // A forged cookie does not.
    let last = if pair.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &pair[..pair.len() - 1]);
    let page = Request::get("/admin/health")
        .header(header::COOKIE, forged)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(page).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

/// Wrong admin tokens spend the login throttle's budgets: past five from
/// one address, a `429` with `Retry-After` (counted on the monitor, the
/// status untouched), while the right token from another address still
/// signs in.
#[tokio::test]
async fn wrong_admin_tokens_are_throttled_per_client_and_the_admin_still_gets_in() {
    let monitor = monitor();
    let app = admin(&monitor);
    let form =
        |token: &str, from: [u8; 4]| {
            let mut request = Request::post("/admin/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={token}")))
                .unwrap();
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                std::net::SocketAddr::from((from, 40000)),
            ));
            request
        };
    let attacker = [203, 0, 113, 9];
    let mut statuses = Vec::new();
    for n in 0..20 {
        let response = app
            .clone()
            .oneshot(form(&format!("guess-number-{n:04}-abcdef"), attacker))
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()[header::RETRY_AFTER], "60");
            let page = body(response).await;
            assert!(page.contains("Too many wrong tokens"), "{page}");
            assert!(page.contains("name=\"token\""), "the form is still there");
        }
    }
    assert_eq!(statuses[..5], [StatusCode::FORBIDDEN; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 15]);
    // Even the right token waits, from the guessing address.
    let status = app
        .clone()
        .oneshot(form(TOKEN, attacker))
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let right = app
        .clone()
        .oneshot(form(TOKEN, [198, 51, 100, 7]))
        .await
        .unwrap();
    assert_eq!(
        right.status(),
        StatusCode::SEE_OTHER,
        "the admin, elsewhere"
    );
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.throttled, 16);
    assert_eq!(report.total_errors, 0);
    assert_eq!(monitor.status(), Status::Healthy);
}

/// The CSRF layer: a page that renders a token sets its `__Host-` cookie
/// (one without a form sets none); a POST passes with the cookie and its
/// token (field or header), and is refused without them, from another
/// origin, or past the body limit, before the handler runs.
#[tokio::test]
async fn the_csrf_layer_sets_its_cookie_with_a_form_and_refuses_forged_posts() {
    use axum::response::Html;
    use selfheal::web::{CsrfLayer, CsrfToken};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let handled = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let app: Router = Router::new()
        .route(
            "/form",
            get(|token: CsrfToken| async move {
                Html(format!("<input type=hidden name=csrf value={token}>"))
            }),
        )
        .route("/plain", get(|| async { "no form here" }))
        .route(
            "/submit",
            axum::routing::post(move |body: String| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { body }
            }),
        )
        .layer(CsrfLayer::new("a-secret-key-of-enough-length-0123").with_max_body(1024));
    let plain = app.clone().oneshot(get_req("/plain")).await.unwrap();
    assert!(!plain.headers().contains_key(header::SET_COOKIE));
    let form = app.clone().oneshot(get_req("/form")).await.unwrap();
    let set_cookie = form.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in [
        "__Host-selfheal_csrf=",
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = body(form).await;
    let token = page
        .rsplit('=')
        .next()
        .unwrap()
        .trim_end_matches('>')
        .to_owned();
    assert_eq!(token.len(), 64);
    // Rendered again for a visitor with the cookie: the same token, no new cookie.
    let again = Request::get("/form")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let again = app.clone().oneshot(again).await.unwrap();
    assert!(!again.headers().contains_key(header::SET_COOKIE));
    assert!(body(again).await.contains(&token));

    let post = |cookie: Option<&str>, body: String, extra: &[(&str, &str)]| {
        let mut request = Request::post("/submit")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let app = app.clone();
        async move {
            app.oneshot(request.body(Body::from(body)).unwrap())
                .await
                .unwrap()
        }
    };
    let ok = post(Some(&cookie), format!("note=hi&csrf={token}"), &[]).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        body(ok).await,
        format!("note=hi&csrf={token}"),
        "the body is handed on"
    );
    let by_header = post(Some(&cookie), "note=hi".into(), &[("x-csrf-token", &token)]).await;
    assert_eq!(by_header.status(), StatusCode::OK);
    let same_origin = post(
        Some(&cookie),
        format!("csrf={token}"),
        &[("host", "app.example"), ("origin", "https://app.example")],
    )
    .await;
    assert_eq!(same_origin.status(), StatusCode::OK);
    assert_eq!(handled.load(Ordering::SeqCst), 3);

    type Case<'a> = (
        Option<&'a str>,
        String,
        &'a [(&'a str, &'a str)],
        StatusCode,
    );
    let refused: [Case<'_>; 6] = [
        (Some(&cookie), "note=hi".into(), &[], StatusCode::FORBIDDEN),
        (None, format!("csrf={token}"), &[], StatusCode::FORBIDDEN),
        (
            Some(&cookie),
            format!("csrf={}", "0".repeat(64)),
            &[],
            StatusCode::FORBIDDEN,
        ),
        (
            Some(&cookie),
            format!("csrf={token}"),
            &[("host", "app.example"), ("origin", "https://evil.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            Some(&cookie),
            format!("csrf={token}"),
            &[("sec-fetch-site", "cross-site")],
            StatusCode::FORBIDDEN,
        ),
        (
            Some(&cookie),
            format!("csrf={token}&note={}", "x".repeat(2000)),
            &[],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (cookie, form, extra, status) in refused {
        let response = post(cookie, form.clone(), extra).await;
        assert_eq!(response.status(), status, "{cookie:?} {extra:?}");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert!(body(response).await.contains("send it again"));
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        3,
        "no refused form reached the handler"
    );
}

#[tokio::test]
async fn every_malformed_login_body_gets_the_login_page() {
    let app = admin(&monitor());
    let cases: [(Option<&str>, &str, StatusCode); 4] = [
        (None, "token=x", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            Some("text/plain"),
            "token=x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("application/x-www-form-urlencoded"),
            "other=1",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("application/x-www-form-urlencoded"),
            "token=%FF",
            StatusCode::FORBIDDEN,
        ),
    ];
    for (content_type, form, status) in cases {
        let mut request = Request::post("/admin/login");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(form)).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{content_type:?} {form}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(body(response).await.contains("name=\"token\""), "{form}");
    }
}

#[tokio::test]
async fn logout_revokes_the_cookie_on_the_server_and_only_an_admin_can() {
    let app = admin(&monitor());
    let login = Request::post("/admin/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={TOKEN}")))
        .unwrap();
    let response = app.clone().oneshot(login).await.unwrap();
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let status = |request: Request<Body>| {
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap().status() }
    };
    let logout = |cookie: Option<&str>| {
        let mut request = Request::post("/admin/logout");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.body(Body::empty()).unwrap()
    };
    assert_eq!(
        status(with_cookie("/admin/health", &pair)).await,
        StatusCode::OK
    );
    assert_eq!(status(logout(None)).await, StatusCode::SEE_OTHER);
    assert_eq!(
        status(with_cookie("/admin/health", &pair)).await,
        StatusCode::OK,
        "an anonymous logout revokes nothing"
    );
    assert_eq!(status(logout(Some(&pair))).await, StatusCode::SEE_OTHER);
    assert_eq!(
        status(with_cookie("/admin/health", &pair)).await,
        StatusCode::FORBIDDEN,
        "the cookie replayed after its logout"
    );
}

#[tokio::test]
async fn a_predicate_guard_decides_with_the_request() {
    let monitor = monitor();
    let guard = AdminGuard::predicate(|request: Request<()>| async move {
        request
            .headers()
            .get("x-role")
            .is_some_and(|v| v == "admin")
    });
    let app: Router = web::admin_routes(Dashboard::new(monitor, guard));
    let response = app
        .clone()
        .oneshot(get_req("/admin/health.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let request = Request::get("/admin/health")
        .header("x-role", "admin")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
    // No login form for a predicate guard.
    assert_eq!(
        app.oneshot(get_req("/admin/login")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn error_samples_are_escaped_and_secrets_redacted_in_the_html() {
    let monitor = monitor();
    monitor.record_error("Boom", "/x", &"<script>alert(1)</script>");
    monitor.record_error(
        "OperationalError",
        "db",
        &"cannot connect to postgres://app:hunter2@db/main",
    );
    monitor.record_heal(HealKind::SessionRepaired, "session:<b>xp</b>");
    let response = admin(&monitor)
        .oneshot(with_bearer("/admin/health?window=1h", TOKEN))
        .await
        .unwrap();
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"));
    let page = body(response).await;
    assert!(!page.contains("<script>alert(1)</script>"), "not escaped");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<b>xp</b>"));
    assert!(!page.contains("hunter2"), "password shown");
    assert!(page.contains("postgres://app:***@db/main"));
    assert!(!page.contains("<script"), "no script at all on the page");
    assert!(page.contains("<svg"), "a sparkline");
    assert!(page.contains("http-equiv=\"refresh\""));
    assert!(page.contains("name=\"viewport\""));
    assert!(page.contains("Last hour"));
    assert!(page.contains("session_repaired"));
}

#[tokio::test]
async fn the_json_has_the_health_json_shape() {
    let monitor = monitor();
    monitor.record_error("Boom", "/x", &"token=abc123 leaked");
    let not_critical = selfheal::health::CheckOptions {
        critical: false,
        ..Default::default()
    };
    failing_check(&monitor, "database", not_critical, "down").await;
    let response = admin(&monitor)
        .oneshot(with_bearer("/admin/health.json", TOKEN))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/health+json"
    );
    let text = body(response).await;
    assert!(!text.contains("abc123"), "redacted");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["status"], "warn");
    assert!(!json["notes"].as_array().unwrap().is_empty());
    assert!(json["output"].is_string());
    let checks = json["checks"].as_object().unwrap();
    assert!(!checks.is_empty());
    for (key, entries) in checks {
        assert!(key.contains(':'), "{key} is component:measurement");
        for entry in entries.as_array().unwrap() {
            let status = entry["status"].as_str().unwrap();
            assert!(
                ["pass", "warn", "fail"].contains(&status),
                "{key}: {status}"
            );
            assert!(entry.get("time").is_some(), "{key} has a time");
            assert!(entry.get("observedValue").is_some(), "{key}");
        }
    }
    assert_eq!(checks["errors:count"][0]["observedValue"], 1);
    assert_eq!(checks["errors:count"][0]["observedUnit"], "errors");
    assert_eq!(checks["database:responseTime"][0]["status"], "warn");
    let time = checks["errors:count"][0]["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 20, "{time}");
}

// --- metrics --------------------------------------------------------------

/// Every non-comment line is `name{labels} value` or `name value`.
fn assert_prometheus_text(text: &str) {
    let mut samples = 0;
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split(' ').nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value in {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "metric name in {line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            let inner = &labels[1..labels.len() - 1];
            // label="value" pairs; values may contain escaped quotes.
            let mut rest = inner;
            while !rest.is_empty() {
                let (label, after) = rest.split_once("=\"").expect(line);
                assert!(
                    label
                        .trim_start_matches(',')
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "label name in {line}"
                );
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            end = Some(i);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                let end = end.expect(line);
                rest = &after[end + 1..];
            }
        }
        samples += 1;
    }
    assert!(samples > 0, "no samples");
}

#[tokio::test]
async fn metrics_render_as_prometheus_text() {
    let monitor = monitor();
    let metrics = Metrics::install().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/boom/{id}", get(boom))
        .layer(HealLayer::new(monitor.clone()).with_metrics(&metrics))
        .merge(metrics.routes(monitor.clone()));
    app.clone().oneshot(get_req("/")).await.unwrap();
    app.clone().oneshot(get_req("/boom/3")).await.unwrap();
    monitor.record_error("Weird\"Kind", "op\nname", &"x");
    let response = app.clone().oneshot(get_req("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = body(response).await;
    assert_prometheus_text(&text);
    for expected in [
        "selfheal_http_requests_total{outcome=\"ok\"}",
        "selfheal_http_requests_total{outcome=\"server_error\"}",
        "selfheal_http_request_duration_seconds_bucket",
        "selfheal_errors_total{kind=\"Panic\",operation=\"/boom/{id}\"}",
        "selfheal_heals_total{kind=\"panic_caught\"}",
        "selfheal_status ",
        "selfheal_fingerprint_errors{fingerprint=\"Panic@/boom/{id}\"}",
    ] {
        assert!(text.contains(expected), "{expected} missing in\n{text}");
    }
}

/// One channel: every kind of heal and every error path, each produced by
/// the real component that reports it (the web layer, a session extractor
/// over a corrupt record and over a store that is down, a supervised worker,
/// the retry engine, a fallback, a circuit breaker that opens and closes,
/// the db runner on a real SQLite write lock, schema healing on a real
/// SQLite database missing a column, an alert sink that refuses), is
/// counted in `/metrics`. The dashboard and `/metrics` cannot disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_heal_kind_and_error_path_from_the_components_that_report_them() {
    use selfheal::breaker::{Breaker, TripMode};
    use selfheal::fallback::Fallback;
    use selfheal::health::{Alert, AlertRule, AlertSink, Severity, SinkFuture};
    use selfheal::retry::{Backoff, Policy};
    use selfheal::supervise::Supervisor;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    struct Refusing;
    impl AlertSink for Refusing {
        fn name(&self) -> &str {
            "refusing"
        }
        fn deliver<'a>(&'a self, _: &'a Alert) -> SinkFuture<'a> {
            Box::pin(async { Err("the pager refused".into()) })
        }
    }

    let monitor = Monitor::builder()
        .with_global(false)
        .with_rule(AlertRule::RepeatedError {
            name: "channel".into(),
            threshold: 0,
            window: Duration::from_secs(60),
            severity: Severity::Warning,
        })
        .with_evaluation_interval(Duration::from_millis(20))
        .with_sink(std::sync::Arc::new(Refusing))
        .with_sink_policy(Policy::default().with_max_attempts(1).unwrap())
        .start()
        .unwrap();
    let metrics = Metrics::install().unwrap();
    let observer = monitor.observer();
    let flaky_store = store::Flaky::default();
    let app = Router::new()
        .route(
            "/channel/fail",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/channel/boom/{id}", get(boom))
        .layer(HealLayer::new(monitor.clone()).with_metrics(&metrics))
        .merge(metrics.routes(monitor.clone()));
    let down_app = session_app(&monitor, flaky_store.clone());

    // The web layer: a 5xx, and a panic caught.
    app.clone().oneshot(get_req("/channel/fail")).await.unwrap();
    app.clone()
        .oneshot(get_req("/channel/boom/1"))
        .await
        .unwrap();
    // Sessions: a corrupt field repaired; a store that is down.
    let store = tower_sessions::MemoryStore::default();
    let id = stored_record(&store, serde_json::json!({"xp": "banana"})).await;
    visit(&session_app(&monitor, store), "/show", id).await;
    let id = stored_record(&flaky_store, serde_json::json!({"xp": 1})).await;
    flaky_store
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    visit(&down_app, "/show", id).await;
    // A supervised worker that fails once: an error and a restart.
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = Supervisor::new("channel-worker")
        .with_monitor(monitor.clone())
        .with_backoff(Backoff::constant(Duration::from_millis(1)))
        .spawn(move |mut shutdown| {
            let first = !failed.swap(true, std::sync::atomic::Ordering::SeqCst);
            async move {
                if first {
                    return Err("channel worker broke");
                }
                shutdown.recv().await;
                Ok(())
            }
        });
    // The retry engine: one call recovers, one gives up.
    let policy = Policy::default()
        .with_max_attempts(2)
        .unwrap()
        .with_backoff(Backoff::constant(Duration::from_millis(1)))
        .without_budget()
        .with_observer(observer.clone());
    let mut calls = 0;
    let _ = policy
        .retry_named("channel_recover", || {
            calls += 1;
            let fail = calls == 1;
            async move {
                if fail {
                    Err(std::io::Error::other("blip"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
    let _ = policy
        .retry_named("channel_retry", || async {
            Err::<(), _>(std::io::Error::other("down"))
        })
        .await;
    // A fallback.
    let _: Vec<u8> = Fallback::new("channel_fallback")
        .with_observer(observer.clone())
        .or_default(async { Err::<Vec<u8>, _>(std::io::Error::other("gone")) })
        .await;
    // A breaker that opens on a failure and closes after a good probe.
    let breaker = Breaker::builder("channel-breaker")
        .with_trip_mode(TripMode::ConsecutiveFailures)
        .with_consecutive_failures(1)
        .with_break_duration(Duration::from_millis(20))
        .with_observer(observer.clone())
        .build()
        .unwrap();
    let _ = breaker.call(|| async { Err::<(), _>("refused") }).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let _ = breaker.call(|| async { Ok::<_, &str>(()) }).await;
    // The db runner on a real SQLite write lock, and schema healing.
    let dir = std::env::temp_dir().join(format!("selfheal-channel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.join("channel.db"))
        .create_if_missing(true)
        .busy_timeout(Duration::ZERO);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let schema = selfheal::db::schema::Schema::new().table(
        selfheal::db::schema::Table::new("notes")
            .column(selfheal::db::schema::Column::new("id", "INTEGER"))
            .column(selfheal::db::schema::Column::new("body", "TEXT").default("''")),
    );
    selfheal::db::schema::Startup::new(&pool)
        .with_declare(schema)
        .with_monitor(monitor.clone())
        .run()
        .await
        .unwrap();
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("COMMIT").execute(&mut *holder).await.unwrap();
    });
    selfheal::db::Runner::new(pool.clone())
        .with_observer(observer.clone())
        .run("channel_write", async |tx| {
            sqlx::query("INSERT INTO notes (body) VALUES ('x')")
                .execute(&mut **tx)
                .await?;
            Ok::<_, sqlx::Error>(())
        })
        .await
        .unwrap();
    release.await.unwrap();
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    // The alert rule fired on the errors above; its sink refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    worker.shutdown().await;

    let text = body(app.clone().oneshot(get_req("/metrics")).await.unwrap()).await;
    let has = |metric: &str, labels: &[&str]| {
        text.lines().any(|line| {
            line.starts_with(&format!("{metric}{{")) && labels.iter().all(|l| line.contains(l))
        })
    };
    for kind in HealKind::ALL {
        let label = format!("kind=\"{}\"", kind.as_str());
        assert!(
            has("selfheal_heals_total", &[&label]),
            "{label} missing in\n{text}"
        );
    }
    for (kind, operation) in [
        ("500", "/channel/fail"),
        ("Panic", "/channel/boom/{id}"),
        ("SessionStoreError", "session"),
        ("str", "worker:channel-worker"),
        ("Error", "channel_retry"),
        ("Error", "channel_fallback"),
        ("AlertSinkError", "alert_sink:refusing"),
    ] {
        let (kind, operation) = (
            format!("kind=\"{kind}\""),
            format!("operation=\"{operation}\""),
        );
        assert!(
            has("selfheal_errors_total", &[&kind, &operation]),
            "{kind} {operation} missing in\n{text}"
        );
    }
    for operation in ["channel_retry", "channel_recover"] {
        let label = format!("operation=\"{operation}\"");
        assert!(has("selfheal_retries_total", &[&label]), "{label}: {text}");
    }
    assert!(
        has("selfheal_gave_up_total", &["operation=\"channel_retry\""]),
        "{text}"
    );
    // And the dashboard's report agrees with every heal counted.
    let report = monitor.report(Duration::from_secs(900));
    for kind in HealKind::ALL {
        assert!(
            report.heals.get(&kind).copied().unwrap_or(0) > 0,
            "{kind} not on the dashboard"
        );
    }
}

// --- sessions -------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, PartialEq)]
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

async fn show(progress: Healed<Progress>) -> String {
    serde_json::to_string(&*progress).unwrap()
}

async fn gain(mut progress: Healed<Progress>) -> String {
    progress.xp += 10;
    progress.save().await.unwrap();
    serde_json::to_string(&*progress).unwrap()
}

mod store {
    use async_trait::async_trait;
    use tower_sessions::MemoryStore;
    use tower_sessions::session::{Id, Record};
    use tower_sessions::session_store::{self, SessionStore};

    /// A memory store whose record `poisoned` cannot be decoded, as a SQL
    /// store's row written by an incompatible version could not.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Poisoned {
        pub(crate) inner: MemoryStore,
        pub(crate) poisoned: std::sync::Arc<std::sync::Mutex<Option<Id>>>,
    }

    #[async_trait]
    impl SessionStore for Poisoned {
        async fn create(&self, record: &mut Record) -> session_store::Result<()> {
            self.inner.create(record).await
        }
        async fn save(&self, record: &Record) -> session_store::Result<()> {
            self.inner.save(record).await
        }
        async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
            if *self.poisoned.lock().unwrap() == Some(*id) {
                return Err(session_store::Error::Decode(
                    "unexpected end of input".into(),
                ));
            }
            self.inner.load(id).await
        }
        async fn delete(&self, id: &Id) -> session_store::Result<()> {
            {
                let mut poisoned = self.poisoned.lock().unwrap();
                if *poisoned == Some(*id) {
                    *poisoned = None;
                }
            }
            self.inner.delete(id).await
        }
    }

    /// A memory store that fails like an unreachable database while `down`.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Flaky {
        pub(crate) inner: MemoryStore,
        pub(crate) down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> session_store::Result<()> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(session_store::Error::Backend(
                    "connection refused (os error 111)".into(),
                ));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl SessionStore for Flaky {
        async fn create(&self, record: &mut Record) -> session_store::Result<()> {
            self.check()?;
            self.inner.create(record).await
        }
        async fn save(&self, record: &Record) -> session_store::Result<()> {
            self.check()?;
            self.inner.save(record).await
        }
        async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
            self.check()?;
            self.inner.load(id).await
        }
        async fn delete(&self, id: &Id) -> session_store::Result<()> {
            self.check()?;
            self.inner.delete(id).await
        }
    }
}

async fn stored_record(
    store: &impl tower_sessions::SessionStore,
    data: serde_json::Value,
) -> tower_sessions::session::Id {
    use tower_sessions::cookie::time::{Duration as TimeDuration, OffsetDateTime};
    let mut record = tower_sessions::session::Record {
        id: Default::default(),
        data: serde_json::from_value::<HashMap<String, serde_json::Value>>(data).unwrap(),
        expiry_date: OffsetDateTime::now_utc() + TimeDuration::hours(1),
    };
    store.create(&mut record).await.unwrap();
    record.id
}

fn session_app<St: tower_sessions::SessionStore + Clone>(monitor: &Monitor, store: St) -> Router {
    Router::new()
        .route("/show", get(show))
        .route("/gain", get(gain))
        .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false))
        .layer(HealLayer::new(monitor.clone()))
}

/// A `GET` of `path` on `app` with the session cookie of `id`.
async fn visit(app: &Router, path: &str, id: tower_sessions::session::Id) -> Response<Body> {
    app.clone()
        .oneshot(with_cookie(path, &format!("id={id}")))
        .await
        .unwrap()
}

/// The [`Progress`] a session app answered with.
async fn progress_in(response: Response<Body>) -> Progress {
    serde_json::from_str(&body(response).await).unwrap()
}

fn with_cookie(uri: &str, cookie: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_bad_field_is_reset_and_the_others_are_kept() {
    let monitor = monitor();
    let store = tower_sessions::MemoryStore::default();
    let id = stored_record(
        &store,
        serde_json::json!({"xp": "banana", "level": 7, "name": "ada", "other": true}),
    )
    .await;
    let app = session_app(&monitor, store.clone());
    let response = visit(&app, "/show", id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let progress = progress_in(response).await;
    assert_eq!(
        progress,
        Progress {
            xp: 0,
            level: 7,
            name: "ada".into()
        }
    );
    // The repaired value was written back; other keys are untouched.
    use tower_sessions::SessionStore;
    let record = store.load(&id).await.unwrap().unwrap();
    assert_eq!(record.data["xp"], 0);
    assert_eq!(record.data["name"], "ada");
    assert_eq!(record.data["other"], true);
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.heals.get(&HealKind::SessionRepaired), Some(&1));
    assert_eq!(report.recent_heals[0].operation, "session:xp");

    // A value failing its check is reset too; a missing key gets its default.
    let id = stored_record(&store, serde_json::json!({"xp": 5, "level": 0})).await;
    let response = visit(&app, "/show", id).await;
    let progress = progress_in(response).await;
    assert_eq!(
        progress,
        Progress {
            xp: 5,
            level: 1,
            name: String::new()
        }
    );
}

#[tokio::test]
async fn the_extractor_reports_its_repairs() {
    let store = tower_sessions::MemoryStore::default();
    let id = stored_record(
        &store,
        serde_json::json!({"xp": 3, "level": 500, "name": 9}),
    )
    .await;
    let session = tower_sessions::Session::new(Some(id), std::sync::Arc::new(store), None);
    let healed = Healed::<Progress>::load(session, None, true).await;
    let reasons: Vec<_> = healed
        .repairs()
        .iter()
        .map(|r| (r.field, r.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("level", RepairReason::Invalid("within 1..=100")),
            ("name", RepairReason::Undecodable)
        ]
    );
    assert_eq!(healed.xp, 3);
}

#[tokio::test]
async fn an_unreadable_record_gives_a_fresh_session_with_a_new_id() {
    let monitor = monitor();
    let store = store::Poisoned::default();
    let id = stored_record(&store, serde_json::json!({"xp": 42})).await;
    *store.poisoned.lock().unwrap() = Some(id);
    let app = session_app(&monitor, store.clone());
    let response = visit(&app, "/gain", id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let progress = progress_in(response).await;
    assert_eq!(progress.xp, 10, "started from the defaults");
    assert!(
        !cookie.contains(&id.to_string()),
        "a new id: {cookie} vs {id}"
    );
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.recent_heals[0].operation, "session:record");
}

#[tokio::test]
async fn a_store_that_is_down_is_a_503_with_retry_after_never_a_logout() {
    use std::sync::atomic::Ordering;
    let monitor = monitor();
    let store = store::Flaky::default();
    let id = stored_record(&store, serde_json::json!({"xp": 42, "name": "ada"})).await;
    let app = session_app(&monitor, store.clone());

    store.down.store(true, Ordering::SeqCst);
    let response = visit(&app, "/gain", id).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    assert!(
        response.headers().get(header::SET_COOKIE).is_none(),
        "the cookie is neither replaced nor removed"
    );
    let page = body(response).await;
    assert!(page.contains("Temporarily unavailable"), "{page}");
    let report = monitor.report(Duration::from_secs(900));
    assert!(
        report
            .fingerprints
            .iter()
            .any(|f| f.fingerprint == "SessionStoreError@session"),
        "{:?}",
        report.fingerprints
    );

    // Back: the same cookie still holds the user's session, untouched.
    store.down.store(false, Ordering::SeqCst);
    let response = visit(&app, "/show", id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let progress = progress_in(response).await;
    assert_eq!((progress.xp, progress.name.as_str()), (42, "ada"));

    // Without a cookie the store is never asked: anonymous pages work.
    store.down.store(true, Ordering::SeqCst);
    let response = app.clone().oneshot(get_req("/show")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

// A real server: cookies go through hyper and tower-cookies as in production.

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A minimal HTTP/1.1 GET: status, headers (lowercase names), body.
async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn set_cookie(headers: &[(String, String)]) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
}

#[tokio::test]
async fn a_tampered_cookie_gives_a_fresh_session_and_200() {
    let monitor = monitor();
    let key = tower_sessions::cookie::Key::generate();
    let app = Router::new()
        .route("/gain", get(gain))
        .layer(
            tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
                .with_secure(false)
                .with_signed(key),
        )
        .layer(HealLayer::new(monitor.clone()));
    let addr = serve(app).await;

    let (status, headers, body) = http_get(addr, "/gain", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"xp\":10"));
    let cookie = set_cookie(&headers).expect("a session cookie");
    let (status, _, body) = http_get(addr, "/gain", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"xp\":20"),
        "the signed session works: {body}"
    );

    // Flip one character of the signed value.
    let (name, value) = cookie.split_once('=').unwrap();
    let mut chars: Vec<char> = value.chars().collect();
    chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
    let tampered = format!("{name}={}", chars.into_iter().collect::<String>());
    let (status, headers, body) = http_get(addr, "/gain", Some(&tampered)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"xp\":10"), "a fresh session: {body}");
    let fresh = set_cookie(&headers).expect("a new session cookie");
    assert_ne!(fresh, cookie);
    assert_ne!(fresh, tampered);
    let report = monitor.report(Duration::from_secs(900));
    assert!(
        report
            .recent_heals
            .iter()
            .any(|h| h.operation == "session:cookie" && h.kind == HealKind::SessionRepaired)
    );

    // Garbage that is not even a signed value: the same.
    let (status, _, body) = http_get(addr, "/gain", Some("id=%%%garbage")).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"xp\":10"));
}

// --- config ---------------------------------------------------------------

#[test]
fn missing_variables_are_named_all_at_once_without_values() {
    let vars: HashMap<&str, &str> = [("DATABASE_URL", "postgres://u:hunter2@db"), ("EMPTY", " ")]
        .into_iter()
        .collect();
    let lookup = |name: &str| vars.get(name).map(|v| (*v).to_owned());
    let error = config::require_from(
        &["DATABASE_URL", "SMTP_HOST", "EMPTY", "ADMIN_TOKEN"],
        lookup,
    )
    .unwrap_err();
    assert_eq!(error.names, ["SMTP_HOST", "EMPTY", "ADMIN_TOKEN"]);
    let message = error.to_string();
    assert!(
        message.contains("SMTP_HOST, EMPTY, ADMIN_TOKEN"),
        "{message}"
    );
    assert!(!message.contains("hunter2"));

    let env = config::require_from(&["DATABASE_URL"], lookup).unwrap();
    assert_eq!(env.get("DATABASE_URL"), "postgres://u:hunter2@db");
    assert!(!format!("{env:?}").contains("hunter2"));
}

#[test]
fn the_key_file_is_created_0600_and_reused() {
    let dir = std::env::temp_dir().join(format!("selfheal-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret_key");
    let _ = std::fs::remove_file(&path);
    let options = SecretKeyOptions::new().with_key_file(&path);
    let unset = |_: &str| None;

    let first = options.load_from(unset).unwrap();
    assert!(first.is_generated());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(std::fs::read(&path).unwrap().len(), 64);
    let second = options.load_from(unset).unwrap();
    assert_eq!(first.as_bytes(), second.as_bytes(), "reused on restart");
    assert!(format!("{first:?}").contains("redacted"));

    // Several instances: never generate.
    let error = SecretKeyOptions::new()
        .with_key_file(dir.join("other"))
        .with_instances(Instances::Several)
        .load_from(unset)
        .unwrap_err();
    assert!(error.message().contains("several instances"));
    assert!(!dir.join("other").exists());

    // From the environment: used (stretched to 64 bytes), never shown.
    let secret = "a-very-long-secret-key-from-the-environment-42";
    let from_env = SecretKeyOptions::new()
        .with_key_file(dir.join("unused"))
        .load_from(|_| Some(secret.to_owned()))
        .unwrap();
    assert!(!from_env.is_generated());
    assert_ne!(from_env.as_bytes(), first.as_bytes());
    let error = SecretKeyOptions::new()
        .load_from(|_| Some("short-secret".to_owned()))
        .unwrap_err();
    assert!(!error.message().contains("short-secret"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_critical_health_json_is_503_and_survives_a_heal_layer_around_it() {
    let monitor = monitor();
    monitor.set_critical("worker", "the mailer gave up");
    let app = admin(&monitor).layer(HealLayer::new(monitor.clone()));
    let response = app
        .clone()
        .oneshot(with_bearer("/admin/health.json", TOKEN))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/health+json"
    );
    let json: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
    assert_eq!(json["status"], "fail");
    assert_eq!(json["notes"][0], "the mailer gave up");

    let login = app.oneshot(get_req("/admin/login")).await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert!(body(login).await.contains("type=\"password\""));
}

/// Behind a proxy every peer is the proxy: the client is the header's last
/// hop, and an IPv6 client is its /64 (a new address per request is still
/// one client).
#[tokio::test]
async fn the_client_is_the_trusted_header_and_an_ipv6_prefix() {
    let monitor = monitor();
    let app = Router::new()
        .route(
            "/login",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .layer(
            HealLayer::new(monitor.clone()).with_client_key(web::ClientKey::Header(
                header::HeaderName::from_static("x-forwarded-for"),
            )),
        );
    for n in 0..30u16 {
        let request = Request::get("/login")
            .header("x-forwarded-for", format!("10.0.0.1, 2001:db8:1:2::{n:x}"))
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();
    }
    monitor.evaluate();
    assert_eq!(
        monitor.status(),
        Status::Healthy,
        "one /64 behind the proxy: {:?}",
        monitor.status_with_reasons()
    );
    for hop in ["192.0.2.1", "192.0.2.2"] {
        let request = Request::get("/login")
            .header("x-forwarded-for", format!("10.0.0.1, {hop}"))
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();
    }
    monitor.evaluate();
    assert_eq!(monitor.status(), Status::Critical);
}
