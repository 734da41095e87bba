//! End to end in a real browser: headless Chromium signs in through the
//! login form, loads the admin dashboard, and no script from an error sample
//! runs.
//!
//! Runs when `chromium` is installed; in CI (`CI` set) its absence is a
//! failure, not a skip. Set `SELFHEAL_UPDATE_SCREENSHOT=1` to copy the
//! screenshot to `docs/screenshots/admin-health.png`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use selfheal::health::{CheckOptions, HealKind, Monitor};
use selfheal::web::{self, AdminGuard, Dashboard, HealLayer};

const TOKEN: &str = "browser-test-admin-token-0123456789";
const PAYLOAD: &str = "<script>document.title='pwned'</script>";

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .find(|path| path.is_file())
}

/// Runs headless Chromium with `args`, killed after 90 s; returns stdout.
fn run_chromium(binary: &Path, profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("chromium output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The test's own sign-in helper (not part of selfheal): a page that posts
/// the token to the login form by itself, as a person typing it would.
async fn sign_in() -> Html<String> {
    Html(format!(
        "<!doctype html><form method=post action=/admin/login>\
         <input name=token value={TOKEN}></form>\
         <script>document.forms[0].submit()</script>"
    ))
}

fn monitor_with_history() -> Monitor {
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    monitor.record_error("Panic", "/lessons/{id}", &PAYLOAD);
    for _ in 0..3 {
        monitor.record_error(
            "OperationalError",
            "save_progress",
            &"database is locked (postgres://cozmic:hunter2@db/cozmic)",
        );
    }
    monitor.record_error("503", "http:api.openai.com", &"Service Unavailable");
    monitor.record_heal(HealKind::PanicCaught, "/lessons/{id}");
    monitor.record_heal(HealKind::SessionRepaired, "session:xp");
    monitor.record_heal(HealKind::RetryRecovered, "save_progress");
    for failed in [false, false, false, true, false, false, false, false] {
        monitor.record_request(failed);
    }
    monitor.register_check("database", CheckOptions::default(), || async { Ok(()) });
    monitor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_chromium_and_no_sample_script_runs() {
    let Some(binary) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed, and CI must run the browser test");
        }
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let monitor = monitor_with_history();
    monitor.run_checks().await;
    let guard = AdminGuard::token(TOKEN).unwrap().with_secure_cookie(false);
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(HealLayer::new(monitor.clone()))
        .merge(web::admin_routes(
            Dashboard::new(monitor.clone(), guard).with_service_name("cozmic"),
        ))
        .route("/test-sign-in", get(sign_in));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Without signing in, the dashboard is closed.
    let url = format!("http://{addr}/test-sign-in");
    let profile = std::env::temp_dir().join(format!("selfheal-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);

    let closed = {
        let binary = binary.clone();
        let profile = profile.join("closed");
        let url = format!("http://{addr}/admin/health");
        tokio::task::spawn_blocking(move || run_chromium(&binary, &profile, &["--dump-dom", &url]))
            .await
            .unwrap()
    };
    assert!(closed.contains("Admins only"), "{closed}");

    let dom = {
        let binary = binary.clone();
        let profile = profile.join("dom");
        let url = url.clone();
        tokio::task::spawn_blocking(move || run_chromium(&binary, &profile, &["--dump-dom", &url]))
            .await
            .unwrap()
    };
    assert!(
        dom.contains("id=\"total-errors\""),
        "not the dashboard:\n{dom}"
    );
    assert!(
        dom.contains("<title>cozmic · health</title>"),
        "the title changed: a script ran\n{dom}"
    );
    assert!(!dom.contains("pwned</title>"));
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the sample is shown as text\n{dom}"
    );
    assert!(!dom.contains(PAYLOAD), "the sample became a script element");
    assert!(!dom.contains("hunter2"), "a password reached the page");

    let shot_dir = profile.join("shot-out");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("admin-health.png");
    {
        let binary = binary.clone();
        let profile = profile.join("shot");
        let arg = format!("--screenshot={}", shot.display());
        tokio::task::spawn_blocking(move || {
            run_chromium(&binary, &profile, &[&arg, "--window-size=412,1400", &url])
        })
        .await
        .unwrap();
    }
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    if std::env::var_os("SELFHEAL_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&shot, docs.join("admin-health.png")).unwrap();
    }
    let _ = std::fs::remove_dir_all(&profile);
}
