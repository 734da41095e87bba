//! Infrastructure faults, black-box: the database or the session store
//! unreachable, a write lock held past the runner's deadline. During the
//! fault, a signed-in student gets a friendly 503 with `Retry-After` (never
//! a logout, never a generic 500) and `/readyz` stays 200; after it, the
//! same process serves again and the email outbox delivers, with no
//! restart.
//!
//! PostgreSQL outages close a database of the test's own to connections
//! (`ALLOW_CONNECTIONS false`) and terminate its backends; Redis outages cut
//! a TCP proxy in front of the real Redis; the SQLite lock is a second
//! connection holding `BEGIN EXCLUSIVE`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use cozmic::config::{Config, Secret};
use support::{
    CuttableProxy, OwnDatabase, eventually, form_value, mails_containing, no_redirects, post_form,
    post_form_with_token, sign_up,
};

fn config(dir: &std::path::Path) -> Config {
    selfheal::tls::install_default_crypto_provider();
    let mut config = Config::new(dir);
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin_token = Some(Secret::new("test-admin-token-0123456789"));
    config.mail_poll = Duration::from_millis(50);
    config
}

/// A 503 with `Retry-After` and a page that says to try again.
async fn assert_friendly_503(response: reqwest::Response, what: &str) {
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let page = response.text().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {page}");
    assert!(retry_after.is_some(), "{what}: no Retry-After");
    assert!(page.contains("try again"), "{what}: {page}");
}

async fn get(client: &reqwest::Client, url: String) -> reqwest::Response {
    client.get(url).send().await.unwrap()
}

/// Submits the "seasons" lesson form as served (its nonce and CSRF token,
/// read before any outage began).
async fn complete(client: &reqwest::Client, base: &str, form: &LessonForm) -> reqwest::Response {
    post_form_with_token(
        client,
        format!("{base}/lessons/seasons/complete"),
        &[("nonce", &form.nonce)],
        &form.csrf,
    )
    .await
}

/// The XP and ledger of the student signed up as `email`.
async fn progress_of(app: &cozmic::Running, email: &str) -> cozmic::db::Integrity {
    let (id, _, _) = app
        .state()
        .db()
        .login_record(email)
        .await
        .unwrap()
        .expect("a student");
    app.state().db().integrity(id).await.unwrap()
}

/// The "seasons" lesson form as served: its nonce and its CSRF token.
struct LessonForm {
    nonce: String,
    csrf: String,
}

/// The "seasons" lesson form, as served to `client`.
async fn lesson_nonce(client: &reqwest::Client, base: &str) -> LessonForm {
    let page = get(client, format!("{base}/lessons/seasons"))
        .await
        .text()
        .await
        .unwrap();
    LessonForm {
        nonce: form_value(&page, "nonce"),
        csrf: form_value(&page, "csrf"),
    }
}

/// cozmic on a PostgreSQL database of its own, its data in a temp dir;
/// `None` when PostgreSQL is not configured outside CI.
async fn start_on_own_database() -> Option<(OwnDatabase, tempfile::TempDir, cozmic::Running)> {
    let database = OwnDatabase::create().await?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.database_url = Some(Secret::new(database.url()));
    let app = cozmic::start(config).await.unwrap();
    Some((database, dir, app))
}

/// A client that signed up as `email` (the sign-up redirects).
async fn signed_up(base: &str, email: &str) -> reqwest::Client {
    let client = no_redirects();
    assert_eq!(
        sign_up(&client, base, email).await.status(),
        StatusCode::SEE_OTHER
    );
    client
}

async fn postgres_outage(outage: Duration) {
    let Some((database, dir, app)) = start_on_own_database().await else {
        return;
    };
    let base = app.url();
    let mail = dir.path().join("mail");

    let ada = signed_up(&base, "ada@example.com").await;
    assert_eq!(get(&ada, format!("{base}/dashboard")).await.status(), 200);
    eventually("Ada's welcome email", Duration::from_secs(10), || async {
        mails_containing(&mail, "To: ada@example.com") == 1
    })
    .await;

    database.close().await;
    let started = Instant::now();
    // Writes during the outage (sent alongside the probes below): re-run
    // until the runner's deadline, then a friendly 503, nothing written.
    let grace = no_redirects();
    let writes = {
        let (grace, base) = (grace.clone(), base.clone());
        // Each answer is read as it comes (the client's timeout covers the
        // body too, and the outage may outlast it).
        tokio::spawn(async move {
            let signup = sign_up(&grace, &base, "grace@example.com").await;
            assert_friendly_503(signup, "sign-up during the outage").await;
            let login = post_form(
                &no_redirects(),
                format!("{base}/login"),
                &[("email", "ada@example.com"), ("password", "x")],
            )
            .await;
            assert_friendly_503(login, "login during the outage").await;
        })
    };
    let mut probes = 0;
    while started.elapsed() < outage {
        // Still signed in: a 503 (not a 303 to /login, not a 500).
        assert_friendly_503(
            get(&ada, format!("{base}/dashboard")).await,
            "dashboard during the outage",
        )
        .await;
        let ready = get(&ada, format!("{base}/readyz")).await.status();
        assert_eq!(ready, 200, "/readyz during a shared database's outage");
        probes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    writes
        .await
        .expect("the writes during the outage were friendly 503s");
    assert!(probes >= 3, "{probes} probes during the outage");
    let errors = app.state().monitor().report(Duration::from_secs(900));
    assert!(
        errors
            .fingerprints
            .iter()
            .any(|f| f.operation == "worker:outbox"),
        "the outbox worker met the outage: {:?}",
        errors.fingerprints
    );

    database.open().await;
    let back = Instant::now();
    eventually("Ada's dashboard again", Duration::from_secs(10), || async {
        get(&ada, format!("{base}/dashboard")).await.status() == 200
    })
    .await;
    let recovered_in = back.elapsed();
    assert_eq!(get(&ada, format!("{base}/readyz")).await.status(), 200);

    // The outbox worker is alive: an email queued now goes out, once.
    let response = sign_up(&grace, &base, "grace@example.com").await;
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "sign-up after the outage"
    );
    eventually("Grace's welcome email", Duration::from_secs(15), || async {
        mails_containing(&mail, "To: grace@example.com") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mails_containing(&mail, "To: grace@example.com"),
        1,
        "exactly once"
    );
    assert_eq!(
        mails_containing(&mail, "To: ada@example.com"),
        1,
        "exactly once"
    );
    assert_eq!(
        app.state().db().outbox_counts().await.unwrap().0,
        0,
        "nothing pending"
    );
    // The worker's condition goes once it has run for a while (10 s).
    eventually("no worker condition", Duration::from_secs(20), || async {
        let (_, reasons) = app.state().monitor().status_with_reasons();
        !reasons.iter().any(|r| r.contains("worker 'outbox'"))
    })
    .await;
    eprintln!(
        "PostgreSQL outage of {outage:?}: {probes} probes answered 503 + Retry-After, /readyz 200 throughout; \
         dashboard back {recovered_in:?} after the database"
    );
    app.shutdown().await;
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_s_postgres_outage_is_friendly_and_heals_without_a_restart() {
    postgres_outage(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_minute_postgres_outage_is_friendly_and_heals_without_a_restart() {
    postgres_outage(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_lock_held_15_s_is_a_friendly_503_and_nothing_half_written() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let app = cozmic::start(config(dir.path())).await.unwrap();
    let base = app.url();
    let ada = signed_up(&base, "ada@example.com").await;
    let nonce = lesson_nonce(&ada, &base).await;

    // Another process's connection (a backup, a migration) holds the write
    // lock for 15 s, past the runner's 10 s deadline.
    let path = dir.path().join("cozmic.db");
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let held = Instant::now();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    });

    let grace = no_redirects();
    let (completion, signup) = tokio::join!(
        complete(&ada, &base, &nonce),
        sign_up(&grace, &base, "grace@example.com")
    );
    assert!(
        held.elapsed() < Duration::from_secs(15),
        "answered while the lock was held"
    );
    let completion_page_says_busy = {
        let status = completion.status();
        let retry = completion.headers().contains_key("retry-after");
        let page = completion.text().await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
        assert!(retry);
        page.contains("busy")
    };
    assert!(completion_page_says_busy);
    assert_friendly_503(signup, "sign-up while locked").await;
    // Reads still work (WAL), and nothing was half-written.
    assert_eq!(get(&ada, format!("{base}/dashboard")).await.status(), 200);
    let integrity = progress_of(&app, "ada@example.com").await;
    assert_eq!((integrity.xp, integrity.ledger_rows), (0, 0));
    assert!(
        app.state()
            .db()
            .login_record("grace@example.com")
            .await
            .unwrap()
            .is_none(),
        "no half-made account"
    );

    release.await.unwrap();
    // Pressed again, the same form applies once.
    assert_eq!(
        complete(&ada, &base, &nonce).await.status(),
        StatusCode::SEE_OTHER
    );
    let integrity = progress_of(&app, "ada@example.com").await;
    assert_eq!((integrity.xp, integrity.ledger_rows), (10, 1));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_for_10_s_is_a_friendly_503_not_a_logout() {
    let Some(redis) = support::service_url("SELFHEAL_TEST_REDIS_URL") else {
        return;
    };
    let redis = url::Url::parse(&redis).unwrap();
    let upstream =
        tokio::net::lookup_host((redis.host_str().unwrap(), redis.port().unwrap_or(6379)))
            .await
            .unwrap()
            .next()
            .unwrap();
    let proxy = CuttableProxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.redis_url = Some(Secret::new(format!("redis://{}", proxy.addr())));
    let app = cozmic::start(config).await.unwrap();
    let base = app.url();
    let email = format!("ada-{:x}@example.com", fastrand::u64(..));
    let ada = signed_up(&base, &email).await;
    assert_eq!(get(&ada, format!("{base}/dashboard")).await.status(), 200);

    proxy.cut();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let asked = Instant::now();
        assert_friendly_503(
            get(&ada, format!("{base}/dashboard")).await,
            "dashboard while Redis is unreachable",
        )
        .await;
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "answered promptly"
        );
        assert_eq!(get(&ada, format!("{base}/readyz")).await.status(), 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    proxy.restore();
    eventually(
        "the dashboard, still signed in",
        Duration::from_secs(10),
        || async { get(&ada, format!("{base}/dashboard")).await.status() == 200 },
    )
    .await;
    app.shutdown().await;
}

/// A migration (or an administrator's open transaction) holds
/// `ACCESS EXCLUSIVE` on a table for 20 s: requests that touch it answer a
/// friendly 503 within the lock timeout and the runner's deadline instead
/// of hanging until the lock goes (and exhausting the pool meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_lock_held_20_s_is_a_friendly_503_not_a_hang() {
    use sqlx::Connection;
    let Some((database, _dir, app)) = start_on_own_database().await else {
        return;
    };
    let base = app.url();
    let ada = signed_up(&base, "ada@example.com").await;
    let nonce = lesson_nonce(&ada, &base).await;

    let mut holder = sqlx::PgConnection::connect(database.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE students IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let held = Instant::now();

    let asked = Instant::now();
    assert_friendly_503(get(&ada, format!("{base}/dashboard")).await, "dashboard").await;
    let read_took = asked.elapsed();
    let asked = Instant::now();
    let completion = complete(&ada, &base, &nonce).await;
    let write_took = asked.elapsed();
    assert_friendly_503(completion, "lesson completion").await;
    assert!(
        held.elapsed() < Duration::from_secs(20),
        "answered while locked"
    );
    eprintln!(
        "PostgreSQL table lock: a read answered 503 in {read_took:?}, a write in {write_took:?}"
    );
    assert!(read_took < Duration::from_secs(8), "{read_took:?}");

    tokio::time::sleep(Duration::from_secs(20).saturating_sub(held.elapsed())).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    assert_eq!(get(&ada, format!("{base}/dashboard")).await.status(), 200);
    let again = complete(&ada, &base, &nonce).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let integrity = progress_of(&app, "ada@example.com").await;
    assert_eq!((integrity.xp, integrity.ledger_rows), (10, 1));
    app.shutdown().await;
    database.drop_database().await;
}
