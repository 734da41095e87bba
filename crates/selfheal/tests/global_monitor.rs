//! A monitor started as the process's global observer (the default): the
//! `HealLayer` does not put it in every request's extensions (an allocation
//! per request), and a session repaired behind it is still recorded on it,
//! through the global observer. Its own process: it installs the global
//! observer.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use selfheal::health::{HealKind, Monitor};
use selfheal::session::{Fields, Healed, SessionData};
use selfheal::web::HealLayer;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_sessions::SessionStore;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    xp: u64,
}

impl SessionData for Progress {
    fn fields(f: &mut Fields<'_, Self>) {
        f.field("xp", |s| &mut s.xp);
    }
}

#[tokio::test]
async fn a_global_monitor_hears_session_repairs_without_the_extension() {
    let monitor = Monitor::builder().start().unwrap();
    let store = tower_sessions::MemoryStore::default();
    let mut record = tower_sessions::session::Record {
        id: Default::default(),
        data: HashMap::from([("xp".to_owned(), serde_json::json!("banana"))]),
        expiry_date: tower_sessions::cookie::time::OffsetDateTime::now_utc()
            + tower_sessions::cookie::time::Duration::hours(1),
    };
    store.create(&mut record).await.unwrap();
    let app = Router::new()
        .route(
            "/show",
            get(|progress: Healed<Progress>| async move { progress.xp.to_string() }),
        )
        .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false))
        .layer(HealLayer::new(monitor.clone()));

    let response = app
        .clone()
        .oneshot(
            Request::get("/show")
                .header(header::COOKIE, format!("id={}", record.id))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let report = monitor.report(Duration::from_secs(900));
    assert_eq!(report.heals.get(&HealKind::SessionRepaired), Some(&1));

    assert!(
        !monitor_in_extensions(&monitor).await,
        "no per-request extension for a global monitor"
    );

    // Once another observer replaces it globally, the layer hands the
    // monitor to the extractors again.
    selfheal::observe::set_global(std::sync::Arc::new(|_: &selfheal::observe::Event<'_>| {}));
    assert!(monitor_in_extensions(&monitor).await);
}

/// Whether a handler behind `HealLayer::new(monitor)` finds the monitor in
/// its request's extensions.
async fn monitor_in_extensions(monitor: &Monitor) -> bool {
    let app = Router::new()
        .route(
            "/extension",
            get(|request: Request<Body>| async move {
                request.extensions().get::<Monitor>().is_some().to_string()
            }),
        )
        .layer(HealLayer::new(monitor.clone()));
    let response = app
        .oneshot(Request::get("/extension").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    &body[..] == b"true"
}
