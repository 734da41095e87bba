//! `HealLayer`, the probes and the admin dashboard on a real axum server,
//! called over HTTP: `cargo run -p selfheal --all-features --example heal_layer`.
//!
//! It serves on 127.0.0.1:0, calls itself, prints what it saw and exits.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use selfheal::health::{HealKind, Monitor};
use selfheal::web::{self, AdminGuard, Dashboard, HealLayer};

const ADMIN_TOKEN: &str = "example-admin-token-0123456789";

async fn boom() -> &'static str {
    panic!("a bug: index 7 out of range in grade_quiz");
}

async fn leaky() -> (StatusCode, &'static str) {
    let leak = "postgres://app:hunter2@db: connection refused";
    (StatusCode::INTERNAL_SERVER_ERROR, leak)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The panic hook still runs (the layer catches the unwind after it): one line.
    std::panic::set_hook(Box::new(|info| eprintln!("(panic hook) {info}")));
    let monitor = Monitor::builder().start()?;
    let dashboard = Dashboard::new(monitor.clone(), AdminGuard::token(ADMIN_TOKEN)?);
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/boom", get(boom))
        .route("/leaky", get(leaky))
        .layer(HealLayer::new(monitor.clone()))
        // Probes and the dashboard outside the layer: not the users' traffic.
        .merge(web::probes(monitor.clone()))
        .merge(web::admin_routes(dashboard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    selfheal::tls::install_default_crypto_provider();
    let client = reqwest::Client::new();
    let paths = ["/", "/boom", "/leaky", "/", "/healthz", "/readyz"];
    for (path, expected) in paths.into_iter().zip([200, 500, 500, 200, 200, 200]) {
        let request = client.get(format!("{base}{path}"));
        let response = request.header("accept", "application/json").send().await?;
        let (status, body) = (response.status().as_u16(), response.text().await?);
        println!("GET {path:<8} {status}  {body}");
        assert_eq!(status, expected, "{path}");
        // A 5xx is answered kindly, with a request id, never with its cause.
        assert!(status < 500 || body.contains("request_id"), "{body}");
        assert!(!body.contains("grade_quiz") && !body.contains("hunter2"));
    }

    let admin = format!("{base}/admin/health.json");
    let refused = client.get(&admin).send().await?.status();
    assert_eq!(refused, 403, "the dashboard is for admins only");
    let health = client.get(&admin).bearer_auth(ADMIN_TOKEN).send().await?;
    let health: serde_json::Value = health.json().await?;
    let errors = &health["checks"]["errors:count"][0]["observedValue"];
    println!("{admin}: {refused} without the token; with it, {errors} errors");

    let report = monitor.report(Duration::from_secs(900));
    for e in &report.fingerprints {
        println!("recorded {} x{}: {}", e.fingerprint, e.count, e.sample);
    }
    println!("heals {:?}, requests {:?}", report.heals, report.requests);
    assert_eq!(report.heals.get(&HealKind::PanicCaught), Some(&1));
    let recorded = |fp| report.fingerprints.iter().any(|e| e.fingerprint == fp);
    assert!(recorded("Panic@/boom") && recorded("500@/leaky"));
    assert_eq!((report.requests.total, report.requests.failed), (4, 2));
    Ok(())
}
