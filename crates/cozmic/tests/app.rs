//! Black-box tests: cozmic on port 0, a fresh database per test, driven
//! over real HTTP like a browser (cookies, form posts, redirects).
//!
//! Every test runs twice: on SQLite (a temp dir) and on PostgreSQL (a fresh
//! schema in `SELFHEAL_TEST_POSTGRES_URL`). Without that variable the
//! PostgreSQL half is skipped locally and FAILS in CI (`CI` set), so a
//! missing database can never pass for a green run.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use cozmic::config::{Config, FaultHooks, OpenAi, Secret, Stripe};
use support::{
    assert_unprocessable, form_value, no_redirects, post_form, post_form_with_token, sign_up_as,
    status_of,
};
use tempfile::TempDir;

mod support;

/// A fresh database: a temp dir (SQLite, mail, key file) and, for
/// PostgreSQL, a schema of its own.
struct Fixture {
    dir: TempDir,
    database_url: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Fixture {
    async fn new(backend: Backend) -> Option<Self> {
        selfheal::tls::install_default_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let Ok(base) = std::env::var("SELFHEAL_TEST_POSTGRES_URL") else {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "SELFHEAL_TEST_POSTGRES_URL is not set: in CI the PostgreSQL tests must run"
                    );
                    eprintln!(
                        "SELFHEAL_TEST_POSTGRES_URL not set: PostgreSQL half skipped (it fails in CI)"
                    );
                    return None;
                };
                let schema = format!("cozmic_test_{:016x}", fastrand::u64(..));
                let pool = sqlx::PgPool::connect(&base).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL at SELFHEAL_TEST_POSTGRES_URL is unreachable: {e}")
                });
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let separator = if base.contains('?') { '&' } else { '?' };
                Some(format!(
                    "{base}{separator}options=-c%20search_path%3D{schema}"
                ))
            }
        };
        Some(Self { dir, database_url })
    }

    fn config(&self) -> Config {
        let mut config = Config::new(self.dir.path());
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = self.database_url.clone().map(Secret::new);
        config.admin_token = Some(Secret::new("test-admin-token-0123456789"));
        config.mail_poll = Duration::from_millis(50);
        config
    }
}

/// Runs `test` on SQLite and on PostgreSQL.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { if let Some(f) = super::Fixture::new(super::Backend::Sqlite).await { super::$name(f).await } })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { if let Some(f) = super::Fixture::new(super::Backend::Postgres).await { super::$name(f).await } })*
        }
    };
}

both_backends!(
    sign_up_then_complete_a_lesson_gives_10_xp_and_one_ledger_row,
    the_tutor_answers_after_two_503s,
    the_tutor_down_is_a_friendly_503_and_the_question_is_kept,
    a_corrupted_session_gives_a_fresh_session_not_an_error,
    the_welcome_email_is_delivered_once_across_restarts,
    admin_pages_need_the_token_or_an_admin_student,
    bad_form_input_is_a_form_error_not_a_500,
    a_purchase_retried_through_503_is_charged_once,
    a_purchase_whose_outcome_is_unknown_keeps_its_key,
    a_purchase_whose_answer_was_lost_is_settled_in_the_background,
    the_panic_hook_is_off_unless_armed_and_a_panic_is_a_friendly_page,
    fifty_anonymous_nul_bytes_are_422s_and_the_instance_stays_ready,
    an_nfd_twin_of_an_email_is_the_same_account,
    names_need_a_visible_character_and_no_control_characters,
    an_invalid_utf8_body_is_a_422_not_a_replacement_character,
    malformed_admin_login_bodies_get_the_login_page,
    an_admin_cookie_replayed_after_logout_is_refused,
    a_completed_lesson_shows_completed_and_pays_once,
    the_data_dir_is_0700_and_the_database_file_0600,
    the_tutor_without_a_key_says_it_is_not_set_up,
    the_admin_page_without_a_token_says_how_to_get_in,
    a_sign_up_sent_again_signs_in_with_the_right_password_only,
    an_unknown_email_costs_a_hash_like_a_wrong_password,
    every_answer_carries_the_security_headers,
    two_outbox_workers_never_claim_the_same_email_and_a_lapsed_claim_is_taken_over,
    a_hundred_wrong_passwords_are_throttled_and_the_owner_still_signs_in,
    forms_without_a_valid_token_or_from_another_site_are_403_and_change_nothing,
    hsts_is_sent_only_when_the_operator_says_https,
);

/// `Strict-Transport-Security` on every answer (pages, a 404, a form
/// error, probes, the admin page, a caught panic) when `COZMIC_HTTPS` says
/// the app is served over HTTPS; never otherwise.
async fn hsts_is_sent_only_when_the_operator_says_https(fixture: Fixture) {
    for https in [false, true] {
        let mut config = fixture.config();
        config.https = https;
        config.faults = FaultHooks::armed();
        let app = cozmic::start(config).await.unwrap();
        let base = app.url();
        let client = reqwest::Client::new();
        let mut answers = Vec::new();
        for path in [
            "/",
            "/login",
            "/nowhere",
            "/healthz",
            "/metrics",
            "/admin/health",
        ] {
            answers.push((
                path,
                client.get(format!("{base}{path}")).send().await.unwrap(),
            ));
        }
        answers.push((
            "a form error",
            client.post(format!("{base}/login")).send().await.unwrap(),
        ));
        answers.push(("a caught panic", panic_probe(format!("{base}/login")).await));
        for (what, response) in answers {
            let hsts = response.headers().get("strict-transport-security");
            if https {
                assert_eq!(
                    hsts.map(|v| v.to_str().unwrap()),
                    Some("max-age=31536000"),
                    "{what}"
                );
            } else {
                assert!(hsts.is_none(), "{what}: no HSTS over plain HTTP");
            }
        }
        app.shutdown().await;
    }
}

/// Name-value pairs: a form's fields, or headers.
type Fields<'a> = Vec<(&'a str, &'a str)>;

/// Posts `fields` (as they are: no token added) to `url` with `headers`.
async fn post_with(
    client: &reqwest::Client,
    url: String,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client.post(url).form(fields);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// CSRF: a sign-up, a login, a lesson completion, a question and a logout
/// without a valid token (none, another browser's, a forged one), or with
/// one but sent from another site (`Origin`, `Sec-Fetch-Site`), are a 403
/// and change nothing; the 403 page keeps what was typed (never the
/// password) with a fresh token, so that sending it again works.
async fn forms_without_a_valid_token_or_from_another_site_are_403_and_change_nothing(
    fixture: Fixture,
) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let db = app.state().db();
    let attacker = browser();
    let attackers_token = support::csrf_token(&attacker, &base).await;

    // Sign-up.
    let visitor = browser();
    let token = support::csrf_token(&visitor, &base).await;
    let signup = [
        ("name", "Ada Lovelace"),
        ("email", "ada@example.com"),
        ("password", "correct horse battery"),
    ];
    fn with<'a>(signup: &[(&'a str, &'a str)], token: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut fields = signup.to_vec();
        fields.push(("csrf", token));
        fields
    }
    let forged = "0".repeat(64);
    let origin = base.clone();
    let cases: Vec<(&str, Fields, Fields)> = vec![
        ("no token", signup.to_vec(), vec![]),
        (
            "another browser's token",
            with(&signup, &attackers_token),
            vec![],
        ),
        ("a forged token", with(&signup, &forged), vec![]),
        (
            "a foreign Origin",
            with(&signup, &token),
            vec![("origin", "https://evil.example")],
        ),
        (
            "Origin: null",
            with(&signup, &token),
            vec![("origin", "null")],
        ),
        (
            "Sec-Fetch-Site: cross-site",
            with(&signup, &token),
            vec![
                ("origin", origin.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
    ];
    let mut last_page = String::new();
    for (what, fields, headers) in &cases {
        let response = post_with(&visitor, format!("{base}/signup"), fields, headers).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "sign-up with {what}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("nothing was saved"), "{what}: {page}");
        assert!(
            page.contains("value=\"Ada Lovelace\"") && page.contains("value=\"ada@example.com\""),
            "{what}: what was typed is kept: {page}"
        );
        assert!(
            !page.contains("correct horse battery"),
            "{what}: never the password"
        );
        last_page = page;
    }
    // Without any cookie (a first visit), even with someone's token.
    let response = post_with(
        &reqwest::Client::new(),
        format!("{base}/signup"),
        &with(&signup, &attackers_token),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "no cookie");
    assert!(db.students().await.unwrap().is_empty(), "nothing written");
    // Sent again from the 403 page, with its fresh token and the same
    // origin: it goes through.
    let response = post_with(
        &visitor,
        format!("{base}/signup"),
        &with(&signup, &form_value(&last_page, "csrf")),
        &[
            ("origin", origin.as_str()),
            ("sec-fetch-site", "same-origin"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.url().path().ends_with("/dashboard"));
    assert_eq!(db.students().await.unwrap().len(), 1);

    // Login (login CSRF: the attacker's own token, in the victim's browser).
    let victim = browser();
    support::csrf_token(&victim, &base).await;
    let login = [
        ("email", "ada@example.com"),
        ("password", "correct horse battery"),
    ];
    for (what, token, headers) in [
        ("no token", None, vec![]),
        (
            "another browser's token",
            Some(attackers_token.as_str()),
            vec![],
        ),
        (
            "a foreign Origin",
            Some(token.as_str()),
            vec![("origin", "https://evil.example")],
        ),
    ] {
        let mut fields = login.to_vec();
        if let Some(token) = token {
            fields.push(("csrf", token));
        }
        let response = post_with(&victim, format!("{base}/login"), &fields, &headers).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "login with {what}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("value=\"ada@example.com\""), "{what}: {page}");
        assert!(!page.contains("correct horse battery"));
        let dashboard = victim
            .get(format!("{base}/dashboard"))
            .send()
            .await
            .unwrap();
        assert!(
            dashboard.url().path().ends_with("/login"),
            "{what}: not signed in"
        );
    }

    // A lesson, a question and the logout of the signed-in student.
    let (id, _) = db.students().await.unwrap()[0].clone();
    let lesson = fetch_page(&visitor, &format!("{base}/lessons/seasons")).await;
    let nonce = form_value(&lesson, "nonce");
    let token = form_value(&lesson, "csrf");
    for (what, fields, headers) in [
        ("no token", vec![("nonce", nonce.as_str())], vec![]),
        (
            "another browser's token",
            vec![
                ("nonce", nonce.as_str()),
                ("csrf", attackers_token.as_str()),
            ],
            vec![],
        ),
        (
            "a foreign Origin",
            vec![("nonce", nonce.as_str()), ("csrf", token.as_str())],
            vec![("origin", "https://evil.example")],
        ),
        (
            "Sec-Fetch-Site: same-site (a sibling subdomain)",
            vec![("nonce", nonce.as_str()), ("csrf", token.as_str())],
            vec![("sec-fetch-site", "same-site")],
        ),
    ] {
        let response = post_with(
            &visitor,
            format!("{base}/lessons/seasons/complete"),
            &fields,
            &headers,
        )
        .await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "lesson with {what}"
        );
        assert!(response.text().await.unwrap().contains("nothing was done"));
    }
    let integrity = db.integrity(id).await.unwrap();
    assert_eq!((integrity.xp, integrity.ledger_rows), (0, 0), "no XP");
    let response = post_with(
        &visitor,
        format!("{base}/tutor"),
        &[("question", "Why are there seasons?")],
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Why are there seasons?"),
        "kept"
    );
    assert!(no_questions_asked(&app).await);
    let response = post_with(&visitor, format!("{base}/logout"), &[], &[]).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let dashboard = visitor
        .get(format!("{base}/dashboard"))
        .send()
        .await
        .unwrap();
    assert!(
        dashboard.url().path().ends_with("/dashboard"),
        "still signed in"
    );
    // With the token, the lesson pays once, as always.
    let response = post_with(
        &visitor,
        format!("{base}/lessons/seasons/complete"),
        &[("nonce", nonce.as_str()), ("csrf", token.as_str())],
        &[("origin", origin.as_str())],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(db.integrity(id).await.unwrap().xp, 10);
    app.shutdown().await;
}

/// A hundred wrong passwords for one account from one client within a
/// minute: the first five are checked (422), the other 95 are refused
/// before any password work (429 with `Retry-After`, the email kept, never
/// the password), counted on the monitor without moving its status; the
/// owner, from another address, signs in with the right password.
async fn a_hundred_wrong_passwords_are_throttled_and_the_owner_still_signs_in(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    sign_up(&browser(), &base, "ada@example.com").await;
    let attacker = support::browser_from([127, 0, 0, 2]);
    let hashes = app.state().password_work().completed();
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for n in 0..100 {
        let password = format!("guess number {n}");
        let response = post_form(
            &attacker,
            format!("{base}/login"),
            &[("email", "ada@example.com"), ("password", &password)],
        )
        .await;
        let status = response.status();
        statuses.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "Retry-After {wait}");
            let page = response.text().await.unwrap();
            assert!(page.contains("Too many failed sign-ins"), "{page}");
            assert!(
                page.contains("value=\"ada@example.com\""),
                "the email is kept"
            );
            assert!(!page.contains(&password), "never the password");
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "within a minute"
    );
    assert_eq!(statuses[..5], [StatusCode::UNPROCESSABLE_ENTITY; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 95]);
    assert_eq!(
        app.state().password_work().completed(),
        hashes + 5,
        "a refused guess costs no hash"
    );
    // The right password from the attacker's address waits too...
    let response = post_form(
        &attacker,
        format!("{base}/login"),
        &[
            ("email", "ada@example.com"),
            ("password", "correct horse battery"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...but the owner, from their own address, signs in.
    let owner = support::browser_from([127, 0, 0, 3]);
    let response = post_form(
        &owner,
        format!("{base}/login"),
        &[
            ("email", "ada@example.com"),
            ("password", "correct horse battery"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.url().path().ends_with("/dashboard"));
    let report = app.state().monitor().report(Duration::from_secs(900));
    assert_eq!(report.throttled, 96);
    assert_eq!(report.total_errors, 0, "{report:?}");
    assert_eq!(
        app.state().monitor().status(),
        selfheal::health::Status::Healthy
    );
    app.shutdown().await;
}

/// A sign-up whose answer was lost (the session store failed after the
/// account was made, a timeout) is sent again: the right password signs in
/// as the first answer would have; another password is told the address
/// is taken.
async fn a_sign_up_sent_again_signs_in_with_the_right_password_only(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    sign_up(&browser(), &base, "ada@example.com").await;
    let again = browser();
    let response = sign_up(&again, &base, "ada@example.com").await;
    assert!(response.url().path().ends_with("/dashboard"));
    let thief = browser();
    let response = sign_up_as(
        &thief,
        &base,
        "Not Ada",
        "ada@example.com",
        "a different password",
    )
    .await;
    assert_unprocessable(response, "already exists").await;
    assert_eq!(app.state().db().students().await.unwrap().len(), 1);
    app.shutdown().await;
}

/// An unknown email costs what a wrong password costs: one verification
/// each (counted exactly), and the same time, measured over 41 pairs of
/// logins sent over HTTP, alternately first, the median of the per-pair
/// ratios within 10 % (pairs cancel the drift of a shared machine's load;
/// no single timing decides). The table is printed for the record.
async fn an_unknown_email_costs_a_hash_like_a_wrong_password(fixture: Fixture) {
    let mut config = fixture.config();
    config.login_limits = generous_login_limits();
    let app = cozmic::start(config).await.unwrap();
    let base = app.url();
    sign_up(&browser(), &base, "ada@example.com").await;
    let client = browser();
    let token = support::csrf_token(&client, &base).await;
    let login = |email: String| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let app = &app;
        async move {
            let hashes = app.state().password_work().completed();
            let started = std::time::Instant::now();
            let response = post_form_with_token(
                &client,
                format!("{base}/login"),
                &[("email", email.as_str()), ("password", "wrong password 1")],
                &token,
            )
            .await;
            let took = started.elapsed();
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(
                app.state().password_work().completed(),
                hashes + 1,
                "one verification for {email}"
            );
            took.as_secs_f64() * 1000.0
        }
    };
    let (mut known, mut unknown, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..41 {
        let stranger = format!("nobody{n}@example.com");
        let (k, u) = if n % 2 == 0 {
            let k = login("ada@example.com".to_owned()).await;
            (k, login(stranger).await)
        } else {
            let u = login(stranger).await;
            (login("ada@example.com".to_owned()).await, u)
        };
        known.push(k);
        unknown.push(u);
        ratios.push(u / k);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let quantile = |values: &[f64], q: f64| values[((values.len() - 1) as f64 * q) as usize];
    let (known_median, unknown_median, ratio) = (
        median(&mut known),
        median(&mut unknown),
        median(&mut ratios),
    );
    eprintln!(
        "login with a wrong password, 41 each (ms):\n\
         | email | min | p25 | median | p75 | max |\n\
         | known (wrong password) | {:.1} | {:.1} | {known_median:.1} | {:.1} | {:.1} |\n\
         | unknown | {:.1} | {:.1} | {unknown_median:.1} | {:.1} | {:.1} |\n\
         median of per-pair ratios unknown/known: {ratio:.3}",
        known[0],
        quantile(&known, 0.25),
        quantile(&known, 0.75),
        known[40],
        unknown[0],
        quantile(&unknown, 0.25),
        quantile(&unknown, 0.75),
        unknown[40],
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "an unknown email answers in {ratio:.3}x the time of a wrong password"
    );
    app.shutdown().await;
}

/// Budgets no test of timing reaches: every wrong password is checked.
fn generous_login_limits() -> cozmic::config::LoginLimits {
    let plenty = selfheal::web::Limit::new(10_000, Duration::from_millis(1)).unwrap();
    cozmic::config::LoginLimits {
        per_account_and_client: plenty,
        per_client: plenty,
        per_account: plenty,
    }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn sign_up(client: &reqwest::Client, base: &str, email: &str) -> reqwest::Response {
    let response = support::sign_up(client, base, email).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "sign-up lands on the dashboard"
    );
    response
}

/// Opens `page_url` and submits its form to `action_url` with the hidden
/// field `field` as served: (the field's value, the answer).
async fn submit_form(
    client: &reqwest::Client,
    page_url: String,
    action_url: String,
    field: &str,
) -> (String, reqwest::Response) {
    let page = fetch_page(client, &page_url).await;
    let value = form_value(&page, field);
    let response = post_form_with_token(
        client,
        action_url,
        &[(field, value.as_str())],
        &form_value(&page, "csrf"),
    )
    .await;
    (value, response)
}

/// The body of the page at `url`.
async fn fetch_page(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

async fn complete(
    client: &reqwest::Client,
    base: &str,
    lesson: &str,
) -> (String, reqwest::Response) {
    let lesson_url = format!("{base}/lessons/{lesson}");
    submit_form(
        client,
        lesson_url.clone(),
        format!("{lesson_url}/complete"),
        "nonce",
    )
    .await
}

/// Polls `condition` for up to 10 s.
async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    support::eventually(what, Duration::from_secs(10), condition).await;
}

/// A local OpenAI-compatible server answering with `statuses` in turn
/// (then 200), counting calls.
async fn ai_server(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<serde_json::Value>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            async move {
                let question = body["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
                if status == 200 {
                    let answer = format!("Great question about {question}: it is the tilt.");
                    (StatusCode::OK, Json(serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})))
                } else {
                    (StatusCode::from_u16(status).unwrap(), Json(serde_json::json!({"error": {"message": "overloaded"}})))
                }
            }
        }),
    );
    let addr = serve(app).await;
    (format!("http://{addr}/v1"), calls)
}

/// Opens the premium page and submits its purchase form: (the purchase
/// nonce, the answer).
async fn subscribe(client: &reqwest::Client, base: &str) -> (String, reqwest::Response) {
    submit_form(
        client,
        format!("{base}/premium"),
        format!("{base}/premium/subscribe"),
        "purchase",
    )
    .await
}

/// Serves `router` on a free loopback port.
/// The `Idempotency-Key` a request to a Stripe-like server carried (empty
/// when none).
fn idempotency_key(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn with_stripe(config: &mut Config, addr: SocketAddr) {
    config.stripe = Some(Stripe {
        api_key: Secret::new("sk_test_123"),
        base_url: format!("http://{addr}"),
    });
}

fn with_ai(config: &mut Config, base_url: String) {
    config.openai = Some(OpenAi {
        api_key: Secret::new("sk-test-key"),
        base_url,
        model: "test-model".into(),
    });
    // Short waits: these tests use real time.
    config.upstream.attempt_timeout = Duration::from_secs(2);
    config.upstream.deadline = Duration::from_secs(8);
}

async fn sign_up_then_complete_a_lesson_gives_10_xp_and_one_ledger_row(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = browser();
    let dashboard = sign_up(&client, &base, "ada@example.com")
        .await
        .text()
        .await
        .unwrap();
    assert!(dashboard.contains("Hi Ada Lovelace!"));
    assert!(dashboard.contains("<b id=\"xp\">0</b>"));

    let (nonce, response) = complete(&client, &base, "seasons").await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains("<b id=\"xp\">10</b>"), "{page}");
    assert!(page.contains("Lesson complete: What causes the seasons"));

    // The same form sent again (a double click, a retry) is not applied twice.
    let again = post_form(
        &client,
        format!("{base}/lessons/seasons/complete"),
        &[("nonce", nonce.as_str())],
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);

    let db = app.state().db();
    let (id, _) = db.students().await.unwrap()[0].clone();
    let integrity = db.integrity(id).await.unwrap();
    assert_eq!(
        (integrity.xp, integrity.ledger_sum, integrity.ledger_rows),
        (10, 10, 1)
    );
    app.shutdown().await;
}

async fn the_tutor_answers_after_two_503s(fixture: Fixture) {
    let (ai, calls) = ai_server(vec![503, 503]).await;
    let mut config = fixture.config();
    with_ai(&mut config, ai);
    let app = cozmic::start(config).await.unwrap();
    let client = browser();
    sign_up(&client, &app.url(), "ada@example.com").await;
    let response = ask_tutor(&client, &app.url(), "Why are there seasons?").await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("Great question about Why are there seasons?: it is the tilt."),
        "{page}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two 503s, then the answer");
    // The retries and the recovery reached Prometheus through the monitor's
    // one channel, as they reached the dashboard.
    let metrics = client
        .get(format!("{}/metrics", app.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |metric: &str, label: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(metric) && l.contains(label))
    };
    assert!(line("selfheal_retries_total", "http:"), "{metrics}");
    assert!(
        line("selfheal_heals_total", "kind=\"retry_recovered\""),
        "{metrics}"
    );
    app.shutdown().await;
}

async fn the_tutor_down_is_a_friendly_503_and_the_question_is_kept(fixture: Fixture) {
    let (ai, calls) = ai_server(vec![503; 1000]).await;
    let mut config = fixture.config();
    with_ai(&mut config, ai);
    config.upstream.max_attempts = 3;
    let app = cozmic::start(config).await.unwrap();
    let client = browser();
    sign_up(&client, &app.url(), "ada@example.com").await;
    let response = ask_tutor(&client, &app.url(), "What is a black hole?").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("The AI tutor is temporarily unavailable."),
        "{page}"
    );
    assert!(page.contains("data-friendly"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "tried three times, no more"
    );
    // The fallback is reported to the app's monitor.
    let report = app.state().monitor().report(Duration::from_secs(300));
    assert_eq!(
        report
            .heals
            .get(&selfheal::health::HealKind::FallbackUsed)
            .copied(),
        Some(1),
        "{:?}",
        report.heals
    );
    // The question is kept, and shown with its missing answer.
    let page = fetch_page(&client, &format!("{}/tutor", app.url())).await;
    assert!(
        page.contains("What is a black hole?") && page.contains("the tutor was unavailable"),
        "{page}"
    );
    app.shutdown().await;
}

async fn a_corrupted_session_gives_a_fresh_session_not_an_error(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = browser();
    sign_up(&client, &base, "ada@example.com").await;

    // Every stored session record becomes garbage.
    let table = app.state().sessions().table().unwrap();
    let garbage = format!("UPDATE {table} SET data = $1");
    let garbage = garbage.as_str();
    let bytes: Vec<u8> = vec![0xc1, 0xff, 0x00, 0x13, 0x37];
    match (app.state().db().sqlite(), app.state().db().postgres()) {
        (Some(pool), _) => sqlx::query(garbage)
            .bind(bytes)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        (_, Some(pool)) => sqlx::query(garbage)
            .bind(bytes)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()),
        _ => unreachable!(),
    }
    .map(|rows| assert!(rows >= 1, "a session row was corrupted"))
    .unwrap();
    let response = client
        .get(format!("{base}/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a fresh session, not a 500"
    );
    assert!(
        response.url().path().ends_with("/login"),
        "signed out, at the login page"
    );

    // A tampered cookie: the same.
    let tampered = no_redirects();
    let response = tampered
        .get(format!("{base}/dashboard"))
        .header(
            "cookie",
            "cozmic_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.bm90LWEtcmVhbC1pZA",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let report = app.state().monitor().report(Duration::from_secs(300));
    let repaired = report
        .heals
        .get(&selfheal::health::HealKind::SessionRepaired)
        .copied()
        .unwrap_or(0);
    assert!(repaired >= 2, "both repairs reported: {:?}", report.heals);
    app.shutdown().await;
}

fn mail_files(fixture: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture.dir.path().join("mail"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".eml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn the_welcome_email_is_delivered_once_across_restarts(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    sign_up(&browser(), &app.url(), "ada@example.com").await;
    eventually("the welcome email in the mail directory", || async {
        mail_files(&fixture).len() == 1
    })
    .await;
    let file = fixture
        .dir
        .path()
        .join("mail")
        .join(&mail_files(&fixture)[0]);
    let message = std::fs::read_to_string(&file).unwrap();
    assert!(
        message.contains("Subject: Welcome to CozmicLearning!")
            && message.contains("To: ada@example.com")
    );
    assert!(message.contains("Message-ID: <outbox-1."), "{message}");
    // The crash window: delivered, but the process died before marking it sent.
    let unmark = "UPDATE outbox SET sent_at = NULL";
    match (app.state().db().sqlite(), app.state().db().postgres()) {
        (Some(pool), _) => sqlx::query(unmark).execute(pool).await.map(drop),
        (_, Some(pool)) => sqlx::query(unmark).execute(pool).await.map(drop),
        _ => unreachable!(),
    }
    .unwrap();
    app.shutdown().await;

    let app = cozmic::start(fixture.config()).await.unwrap();
    eventually("the restarted worker marks it sent", || async {
        app.state().db().outbox_counts().await.unwrap() == (0, 1, 0)
    })
    .await;
    assert_eq!(mail_files(&fixture).len(), 1, "not delivered twice");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        message,
        "the file is the first delivery"
    );
    app.shutdown().await;
}

async fn admin_pages_need_the_token_or_an_admin_student(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let anonymous = reqwest::Client::new();
    for path in ["/admin/health", "/admin/health.json"] {
        let status = status_of(anonymous.get(format!("{base}{path}"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let status = status_of(
            anonymous
                .get(format!("{base}{path}"))
                .bearer_auth("wrong-token-0123456789"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let response = anonymous
        .get(format!("{base}/admin/health.json"))
        .bearer_auth("test-admin-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json: serde_json::Value = response.json().await.unwrap();
    assert!(json["status"].is_string(), "{json}");

    // A student is not an admin; a student flagged admin is.
    let student = browser();
    sign_up(&student, &base, "ada@example.com").await;
    assert_eq!(
        status_of(student.get(format!("{base}/admin/health"))).await,
        StatusCode::FORBIDDEN
    );
    let admin = browser();
    sign_up(&admin, &base, "root@example.com").await;
    assert_eq!(
        status_of(admin.get(format!("{base}/admin/health"))).await,
        StatusCode::FORBIDDEN
    );
    // What `cozmic promote root@example.com` does.
    assert!(
        app.state()
            .db()
            .set_admin("root@example.com", true)
            .await
            .unwrap()
    );
    assert!(
        !app.state()
            .db()
            .set_admin("nobody@example.com", true)
            .await
            .unwrap()
    );
    let response = admin
        .get(format!("{base}/admin/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("cozmic"));
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            status_of(anonymous.get(format!("{base}{probe}"))).await,
            StatusCode::OK,
            "{probe}"
        );
    }
    app.shutdown().await;
}

async fn bad_form_input_is_a_form_error_not_a_500(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = browser();
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("name", "Ada"),
                ("email", "ada@b@example.com"),
                ("password", "correct horse"),
            ],
            "valid email",
        ),
        (
            &[
                ("name", ""),
                ("email", "ada@example.com"),
                ("password", "correct horse"),
            ],
            "enter your name",
        ),
        (
            &[
                ("name", "Ada"),
                ("email", "not-an-email"),
                ("password", "correct horse"),
            ],
            "valid email",
        ),
        (
            &[
                ("name", "Ada"),
                ("email", "ada@example.com"),
                ("password", "short"),
            ],
            "8 to 128",
        ),
        (&[("email", "ada@example.com")], "enter your name"),
    ];
    for (form, message) in cases {
        let response = post_form(&client, format!("{base}/signup"), form).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{form:?}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains(message), "{form:?}: {page}");
        assert!(
            page.contains("value=\"Ada\"")
                || !form.iter().any(|(k, v)| *k == "name" && *v == "Ada"),
            "the name is kept"
        );
    }
    // Not even a form.
    let response = post_raw(&client, format!("{base}/signup"), [0xff, 0xfe, 0x00]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A taken email.
    sign_up(&client, &base, "ada@example.com").await;
    let other = browser();
    let response = sign_up_as(&other, &base, "Ada", "ADA@example.com", "correct horse").await;
    assert_unprocessable(response, "already exists").await;
    // Wrong password; an absurdly long one.
    for password in ["wrong password", &"x".repeat(10_000)] {
        let response = post_form(
            &other,
            format!("{base}/login"),
            &[("email", "ada@example.com"), ("password", password)],
        )
        .await;
        assert_unprocessable(response, "do not match").await;
    }
    // A lesson form without its nonce, an unknown lesson, an empty question.
    let send_nonce = |lesson: &str, nonce: &str| {
        let (client, url, nonce) = (
            client.clone(),
            format!("{base}/lessons/{lesson}/complete"),
            nonce.to_owned(),
        );
        async move {
            post_form(&client, url, &[("nonce", nonce.as_str())])
                .await
                .status()
        }
    };
    assert_eq!(send_nonce("seasons", "").await, StatusCode::BAD_REQUEST);
    // A forged nonce, and a real one for another lesson: no XP for either.
    let forged = "0".repeat(64);
    let for_rockets = form_value(
        &fetch_page(&client, &format!("{base}/lessons/rockets")).await,
        "nonce",
    );
    for nonce in [forged.as_str(), for_rockets.as_str()] {
        assert_eq!(
            send_nonce("seasons", nonce).await,
            StatusCode::BAD_REQUEST,
            "{nonce}"
        );
    }
    assert_eq!(
        send_nonce("no-such", "abcdefgh12").await,
        StatusCode::NOT_FOUND
    );
    let response = ask_tutor(&client, &base, "   ").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Nothing was written by the bad input.
    let (id, _) = app.state().db().students().await.unwrap()[0].clone();
    assert_eq!(app.state().db().integrity(id).await.unwrap().ledger_rows, 0);
    app.shutdown().await;
}

async fn a_purchase_retried_through_503_is_charged_once(fixture: Fixture) {
    // A Stripe-like server: 503 on the first call, then a payment intent;
    // it records the Idempotency-Key of every call.
    let keys = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = keys.clone();
    let stripe = Router::new().route(
        "/v1/payment_intents",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let key = idempotency_key(&headers);
                let mut seen = seen.lock().unwrap();
                seen.push(key);
                if seen.len() == 1 {
                    return (StatusCode::SERVICE_UNAVAILABLE, String::new());
                }
                assert!(body.contains("amount=900"));
                (
                    StatusCode::OK,
                    serde_json::json!({"id": "pi_123", "status": "succeeded"}).to_string(),
                )
            }
        }),
    );
    let addr = serve(stripe).await;
    let mut config = fixture.config();
    with_stripe(&mut config, addr);
    let app = cozmic::start(config).await.unwrap();
    let base = app.url();
    let client = browser();
    sign_up(&client, &base, "ada@example.com").await;
    let (_, response) = subscribe(&client, &base).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("welcome to Premium")
    );
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert!(
        !keys[0].is_empty() && keys[0] == keys[1],
        "one key for both attempts: {keys:?}"
    );
    app.shutdown().await;
}

async fn a_purchase_whose_outcome_is_unknown_keeps_its_key(fixture: Fixture) {
    // The payment API is down: the purchase stays pending, and the next
    // visit to the premium page offers the same purchase (same key).
    let down = Router::new().route(
        "/v1/payment_intents",
        post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    );
    let addr = serve(down).await;
    let mut config = fixture.config();
    with_stripe(&mut config, addr);
    config.upstream.max_attempts = 2;
    let app = cozmic::start(config).await.unwrap();
    let base = app.url();
    let client = browser();
    sign_up(&client, &base, "ada@example.com").await;
    let (purchase, response) = subscribe(&client, &base).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains("will not be charged twice") && page.contains("data-friendly"),
        "{page}"
    );
    let again = fetch_page(&client, &format!("{base}/premium")).await;
    assert_eq!(
        form_value(&again, "purchase"),
        purchase,
        "the pending purchase keeps its key"
    );
    app.shutdown().await;
}

async fn a_purchase_whose_answer_was_lost_is_settled_in_the_background(fixture: Fixture) {
    // A Stripe-like server that charges on the first call but whose answers
    // to the student's request never arrive (503 twice), then answers the
    // same key with the charge it made (what Stripe's idempotency does).
    // A second student's purchase is declined once the provider answers.
    let calls = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = calls.clone();
    let stripe = Router::new().route(
        "/v1/payment_intents",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let key = idempotency_key(&headers);
                let mut seen = seen.lock().unwrap();
                seen.push(key.clone());
                if seen.iter().filter(|k| **k == key).count() <= 2 {
                    return (StatusCode::SERVICE_UNAVAILABLE, String::new());
                }
                let status = if body.contains("metadata%5Bstudent_id%5D=1") {
                    "succeeded"
                } else {
                    "requires_payment_method"
                };
                (
                    StatusCode::OK,
                    serde_json::json!({"id": "pi_lost", "status": status}).to_string(),
                )
            }
        }),
    );
    let addr = serve(stripe).await;
    let mut config = fixture.config();
    with_stripe(&mut config, addr);
    config.upstream.max_attempts = 2;
    config.payment_check = Duration::from_millis(300);
    let app = cozmic::start(config).await.unwrap();
    let base = app.url();
    let (ada, bob) = (browser(), browser());
    sign_up(&ada, &base, "ada@example.com").await;
    sign_up(&bob, &base, "bob@example.com").await;
    for client in [&ada, &bob] {
        // Both students give up after the friendly 503: nobody presses again.
        let (_, response) = subscribe(client, &base).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let db = app.state().db().clone();
    let students = db.students().await.unwrap();
    let ids: Vec<i64> = students.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2], "{students:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db.pending_payments().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "purchases still pending after 20 s: {:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ada was charged and is Premium, with her receipt on its way; Bob's
    // declined purchase is failed, and he is not Premium.
    assert_eq!(db.student(1).await.unwrap().unwrap().premium, 1);
    assert_eq!(db.student(2).await.unwrap().unwrap().premium, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, sent, _) = db.outbox_counts().await.unwrap();
        // Two welcome emails and one receipt.
        if sent == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{sent} emails sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = fetch_page(&ada, &format!("{base}/premium")).await;
    assert!(!page.contains("name=\"purchase\""), "{page}");
    // Every call about one purchase carried that purchase's key.
    let calls = calls.lock().unwrap().clone();
    let keys: std::collections::BTreeSet<_> = calls.iter().collect();
    assert_eq!(keys.len(), 2, "{calls:?}");
    assert!(calls.len() >= 6, "{calls:?}");
    app.shutdown().await;
}

async fn the_panic_hook_is_off_unless_armed_and_a_panic_is_a_friendly_page(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let response = panic_probe(format!("{}/login", app.url())).await;
    assert_eq!(response.status(), StatusCode::OK, "no hook unless armed");
    app.shutdown().await;

    let mut config = fixture.config();
    config.faults = FaultHooks::armed();
    let app = cozmic::start(config).await.unwrap();
    let response = panic_probe(format!("{}/login", app.url())).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("Request id") && !page.contains("chaos: panic"),
        "{page}"
    );
    app.shutdown().await;
}

/// Sessions in Redis (`REDIS_URL`): sign in, the session survives a restart
/// of the app (it lives in Redis), and a corrupted record there gives a
/// fresh session. Fails in CI when `SELFHEAL_TEST_REDIS_URL` is not set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_live_in_redis_when_configured() {
    let Ok(redis) = std::env::var("SELFHEAL_TEST_REDIS_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "SELFHEAL_TEST_REDIS_URL is not set: in CI the Redis test must run"
        );
        eprintln!("SELFHEAL_TEST_REDIS_URL not set: skipped (it fails in CI)");
        return;
    };
    let fixture = Fixture::new(Backend::Sqlite).await.unwrap();
    let mut config = fixture.config();
    config.redis_url = Some(Secret::new(redis));
    // A fixed key, so that the cookie verifies across the restart.
    config.secret_key = Some(Secret::new(
        "a-test-secret-key-that-is-long-enough-0123456789",
    ));
    let app = cozmic::start(config.clone()).await.unwrap();
    let client = browser();
    sign_up(
        &client,
        &app.url(),
        &format!("redis-{:x}@example.com", fastrand::u64(..)),
    )
    .await;
    app.shutdown().await;
    // The same database and Redis, a new process: still signed in.

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.bind = listener.local_addr().unwrap();
    drop(listener);
    let app = cozmic::start(config).await.unwrap();
    let response = client
        .get(format!("{}/dashboard", app.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.url().path().ends_with("/dashboard"),
        "still signed in: {}",
        response.url()
    );
    assert!(response.text().await.unwrap().contains("Hi Ada Lovelace!"));
    app.shutdown().await;
}

/// Asks the tutor `question`: the answer.
async fn ask_tutor(client: &reqwest::Client, base: &str, question: &str) -> reqwest::Response {
    post_form(client, format!("{base}/tutor"), &[("question", question)]).await
}

/// Whether the first student has asked no question.
async fn no_questions_asked(app: &cozmic::Running) -> bool {
    let (id, _) = app.state().db().students().await.unwrap()[0].clone();
    app.state()
        .db()
        .recent_questions(id, 5)
        .await
        .unwrap()
        .is_empty()
}

/// The answer to a `GET` of `url` with the panic hook's header.
async fn panic_probe(url: String) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header(FaultHooks::PANIC_HEADER, "1")
        .send()
        .await
        .unwrap()
}

/// The `name=value` of a response's `Set-Cookie`.
fn cookie_pair(response: &reqwest::Response) -> String {
    let header = response.headers()["set-cookie"].to_str().unwrap();
    header.split(';').next().unwrap().to_owned()
}

/// A form post with a raw (possibly invalid) URL-encoded body, and the
/// client's CSRF token after it (a field of its own).
async fn post_raw(
    client: &reqwest::Client,
    url: String,
    body: impl AsRef<[u8]>,
) -> reqwest::Response {
    let token = support::csrf_token(client, &support::base_of(&url)).await;
    let mut body = body.as_ref().to_vec();
    body.extend_from_slice(format!("&csrf={token}").as_bytes());
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn fifty_anonymous_nul_bytes_are_422s_and_the_instance_stays_ready(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let student = browser();
    sign_up(&student, &base, "ada@example.com").await;
    let mut statuses = Vec::new();
    for i in 0..50 {
        let anonymous = browser();
        let (client, url, fields) = match i % 5 {
            0 | 1 => (
                &anonymous,
                format!("{base}/login"),
                vec![
                    ("email", "ada\0@example.com".to_owned()),
                    ("password", "correct horse".to_owned()),
                ],
            ),
            2 | 3 => (
                &anonymous,
                format!("{base}/signup"),
                vec![
                    ("name", "Ada\0Lovelace".to_owned()),
                    ("email", format!("nul{i}@example.com")),
                    ("password", "correct horse".to_owned()),
                ],
            ),
            _ => (
                &student,
                format!("{base}/tutor"),
                vec![("question", "Why\0 are there seasons?".to_owned())],
            ),
        };
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = post_form(client, url, &fields).await;
        let status = response.status();
        let page = response.text().await.unwrap();
        if status == StatusCode::UNPROCESSABLE_ENTITY && i % 5 >= 2 {
            assert!(page.contains("cannot be used"), "{page}");
        }
        statuses.push(status);
    }
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNPROCESSABLE_ENTITY),
        "every NUL is a 422: {statuses:?}"
    );
    // Nothing was written, and the instance is still in rotation.
    assert_eq!(app.state().db().students().await.unwrap().len(), 1);
    assert!(no_questions_asked(&app).await);
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let report = app.state().monitor().report(Duration::from_secs(300));
    assert_eq!(report.total_errors, 0, "{:?}", report.errors_by_type);
    app.shutdown().await;
}

async fn an_nfd_twin_of_an_email_is_the_same_account(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    // "zoë" with a precomposed ë (NFC) ...
    sign_up(&browser(), &base, "zo\u{eb}@example.com").await;
    // ... and with e + U+0308 (NFD), in capitals: the same address.
    let twin = browser();
    let twin_sign_up = |email: String| {
        let (twin, base) = (&twin, &base);
        async move { sign_up_as(twin, base, "Zoe Twin", &email, "another horse battery").await }
    };
    let response = twin_sign_up("ZOE\u{308}@example.com".to_owned()).await;
    assert_unprocessable(response, "already exists").await;
    assert_eq!(app.state().db().students().await.unwrap().len(), 1);
    // Look-alikes: a fullwidth letter is the same address (NFKC); invisible
    // characters (zero-width space, joiner, direction mark) are refused.
    let response = twin_sign_up("\u{ff5a}o\u{eb}@example.com".to_owned()).await;
    assert!(response.text().await.unwrap().contains("already exists"));
    for invisible in ["\u{200b}", "\u{200d}", "\u{200e}"] {
        let response = twin_sign_up(format!("zo{invisible}e@example.com")).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{invisible:?}"
        );
    }
    assert_eq!(app.state().db().students().await.unwrap().len(), 1);
    // Logging in with the NFD spelling finds the account.
    let response = post_form(
        &twin,
        format!("{base}/login"),
        &[
            ("email", "zoe\u{308}@EXAMPLE.com"),
            ("password", "correct horse battery"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.url().path().ends_with("/dashboard"));
    app.shutdown().await;
}

async fn names_need_a_visible_character_and_no_control_characters(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let cases = [
        ("\u{200B}\u{200B}", "visible character", "\u{200B}\u{200B}"),
        ("\u{202E}\u{200B}", "cannot be used", "\u{200B}"),
        ("Ada\u{1b}[31m", "cannot be used", "Ada[31m"),
        ("Ada\u{7}", "cannot be used", "Ada"),
        ("Ada\r\nLovelace", "cannot be used", "AdaLovelace"),
        ("\u{202E}ecalevoL adA", "cannot be used", "ecalevoL adA"),
    ];
    for (name, message, kept) in cases {
        let response =
            sign_up_as(&browser(), &base, name, "ada@example.com", "correct horse").await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name:?}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains(message), "{name:?}: {page}");
        assert!(
            page.contains(&format!("name=\"name\" value=\"{kept}\"")),
            "{name:?} shown back as {kept:?}: {page}"
        );
        assert!(
            page.contains("value=\"ada@example.com\""),
            "the email is kept"
        );
    }
    assert!(app.state().db().students().await.unwrap().is_empty());
    app.shutdown().await;
}

async fn an_invalid_utf8_body_is_a_422_not_a_replacement_character(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = browser();
    let response = post_raw(
        &client,
        format!("{base}/signup"),
        "name=Ad%FFa&email=ada%40example.com&password=correct+horse",
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = response.text().await.unwrap();
    assert!(page.contains("invalid UTF-8"), "{page}");
    assert!(
        page.contains("value=\"Ada\"") && !page.contains('\u{FFFD}'),
        "{page}"
    );
    let raw: &'static [u8] = b"email=ada\xff%40example.com&password=correct+horse";
    let response = post_raw(&client, format!("{base}/login"), raw).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.unwrap().contains("invalid UTF-8"));
    assert!(app.state().db().students().await.unwrap().is_empty());

    sign_up(&client, &base, "ada@example.com").await;
    let response = post_raw(&client, format!("{base}/tutor"), "question=Why%C3%28%3F").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = response.text().await.unwrap();
    assert!(page.contains("invalid UTF-8"), "{page}");
    assert!(no_questions_asked(&app).await);
    app.shutdown().await;
}

async fn malformed_admin_login_bodies_get_the_login_page(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let url = format!("{}/admin/login", app.url());
    let client = reqwest::Client::new();
    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode)> = vec![
        (
            None,
            b"token=x".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("application/json"),
            br#"{"token":"x"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"nothing=here".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("application/x-www-form-urlencoded"),
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"token=%FF%00\xfe".to_vec(),
            StatusCode::FORBIDDEN,
        ),
    ];
    // The CSRF token in its header (the bodies cannot carry it), so that
    // what is tested is the admin form's own answer.
    let (cookie, token) = support::csrf_pair(&app.url()).await;
    for (content_type, body, status) in cases {
        let mut request = client
            .post(&url)
            .header("cookie", &cookie)
            .header("x-csrf-token", &token)
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{content_type:?} {body:?}");
        assert_eq!(
            response.headers()["content-type"],
            "text/html; charset=utf-8",
            "{content_type:?} {body:?}"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains("<h1>Admin</h1>") && page.contains("name=\"token\""),
            "{content_type:?} {body:?}: {page}"
        );
    }
    app.shutdown().await;
}

async fn an_admin_cookie_replayed_after_logout_is_refused(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // No cookie jar: the admin cookie is handled by hand, and so is the
    // CSRF cookie.
    let (csrf_cookie, csrf) = support::csrf_pair(&base).await;
    let admin_form = |path: &str, cookie: Option<&str>, fields: &[(&str, &str)]| {
        let mut fields = fields.to_vec();
        fields.push(("csrf", &csrf));
        let cookies = match cookie {
            Some(admin) => format!("{admin}; {csrf_cookie}"),
            None => csrf_cookie.clone(),
        };
        client
            .post(format!("{base}{path}"))
            .header("cookie", cookies)
            .form(&fields)
            .send()
    };
    let response = admin_form(
        "/admin/login",
        None,
        &[("token", "test-admin-token-0123456789")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = cookie_pair(&response);
    let health = |cookie: Option<String>| {
        let mut request = client.get(format!("{base}/admin/health"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(health(Some(cookie.clone())).await, StatusCode::OK);
    // A second instance on the same database accepts the same cookie.
    let other = cozmic::start(fixture.config()).await.unwrap();
    let on_other = |cookie: String| {
        let request = client
            .get(format!("{}/admin/health", other.url()))
            .header("cookie", cookie);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(on_other(cookie.clone()).await, StatusCode::OK);
    // An anonymous logout revokes nothing.
    let response = admin_form("/admin/logout", None, &[]).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(health(Some(cookie.clone())).await, StatusCode::OK);
    // The admin's logout does: the same cookie, replayed, is refused.
    let response = admin_form("/admin/logout", Some(&cookie), &[])
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(health(Some(cookie.clone())).await, StatusCode::FORBIDDEN);
    // The logout reaches the other instance through the database (synced
    // every 5 s), and an instance started later (a restart) at once.
    let mut refused = false;
    for _ in 0..100 {
        if on_other(cookie.clone()).await == StatusCode::FORBIDDEN {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "the other instance still accepts the revoked cookie"
    );
    other.shutdown().await;
    let restarted = cozmic::start(fixture.config()).await.unwrap();
    let status = client
        .get(format!("{}/admin/health", restarted.url()))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a restart remembers the logout"
    );
    restarted.shutdown().await;
    // Signing in again works.
    let response = admin_form(
        "/admin/login",
        None,
        &[("token", "test-admin-token-0123456789")],
    )
    .await
    .unwrap();
    let fresh = cookie_pair(&response);
    assert_eq!(health(Some(fresh)).await, StatusCode::OK);
    assert_eq!(health(None).await, StatusCode::FORBIDDEN);
    app.shutdown().await;
}

async fn a_completed_lesson_shows_completed_and_pays_once(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = browser();
    sign_up(&client, &base, "ada@example.com").await;
    let lesson_url = format!("{base}/lessons/seasons");
    // Two tabs opened before the lesson was completed, and one after.
    let first = form_value(&fetch_page(&client, &lesson_url).await, "nonce");
    let second = form_value(&fetch_page(&client, &lesson_url).await, "nonce");
    for nonce in [&first, &second, &second] {
        let response = post_form(
            &client,
            format!("{lesson_url}/complete"),
            &[("nonce", nonce.as_str())],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let page = fetch_page(&client, &lesson_url).await;
    assert!(page.contains("Completed."), "{page}");
    assert!(!page.contains("name=\"nonce\""), "no form to pay again");
    let db = app.state().db();
    let (id, _) = db.students().await.unwrap()[0].clone();
    let integrity = db.integrity(id).await.unwrap();
    assert_eq!(
        (integrity.xp, integrity.ledger_sum, integrity.ledger_rows),
        (10, 10, 1),
        "one lesson, 10 XP"
    );
    // Another lesson still pays.
    let (_, response) = complete(&client, &base, "rockets").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(db.integrity(id).await.unwrap().xp, 20);
    app.shutdown().await;
}

async fn the_data_dir_is_0700_and_the_database_file_0600(fixture: Fixture) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let mut config = fixture.config();
    let data = fixture.dir.path().join("new").join("data");
    config.data_dir = data.clone();
    let app = cozmic::start(config).await.unwrap();
    sign_up(&browser(), &app.url(), "ada@example.com").await;
    assert_eq!(mode(&data), 0o700, "the data dir");
    assert_eq!(mode(&data.join("mail")), 0o700, "the mail dir");
    assert_eq!(mode(&data.join("secret_key")), 0o600, "the key file");
    if app.state().db().sqlite().is_some() {
        assert_eq!(mode(&data.join("cozmic.db")), 0o600, "the database");
        let wal = data.join("cozmic.db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600, "its WAL");
        }
    }
    app.shutdown().await;
}

async fn the_tutor_without_a_key_says_it_is_not_set_up(fixture: Fixture) {
    let app = cozmic::start(fixture.config()).await.unwrap();
    let base = app.url();
    let client = browser();
    sign_up(&client, &base, "ada@example.com").await;
    let response = ask_tutor(&client, &base, "Why are there seasons?").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("not set up"));
    let page = fetch_page(&client, &format!("{base}/tutor")).await;
    assert!(
        page.contains("Why are there seasons?")
            && page.contains("No answer: the AI tutor is not set up on this server.")
            && !page.contains("the tutor was unavailable"),
        "{page}"
    );
    let (id, _) = app.state().db().students().await.unwrap()[0].clone();
    let questions = app.state().db().recent_questions(id, 5).await.unwrap();
    assert_eq!(questions[0].status, "unconfigured");
    app.shutdown().await;
}

async fn the_admin_page_without_a_token_says_how_to_get_in(fixture: Fixture) {
    let mut config = fixture.config();
    config.admin_token = None;
    let app = cozmic::start(config).await.unwrap();
    let response = reqwest::get(format!("{}/admin/health", app.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("ADMIN_TOKEN") && page.contains("cozmic promote EMAIL"),
        "{page}"
    );
    app.shutdown().await;

    // With a token, no such hint (the login form is the way in).
    let app = cozmic::start(fixture.config()).await.unwrap();
    let page = reqwest::get(format!("{}/admin/health", app.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("No ADMIN_TOKEN"), "{page}");
    app.shutdown().await;
}

/// Every answer — pages for anonymous and signed-in students, a form error,
/// the 404, a caught panic, the admin page, the probes — says: no scripts,
/// never framed, no MIME sniffing, no referrer to other sites.
async fn every_answer_carries_the_security_headers(fixture: Fixture) {
    let mut config = fixture.config();
    config.faults = FaultHooks::armed();
    let app = cozmic::start(config).await.unwrap();
    let base = app.url();
    let check = |what: &str, response: &reqwest::Response| {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{what}: CSP {csp:?}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
        // `same-origin`, never `no-referrer`: from a `no-referrer` page
        // Chromium sends a form's POST with `Origin: null`, which the CSRF
        // layer refuses as foreign, so the admin sign-in form could not
        // sign anyone in from a browser.
        assert_eq!(header("referrer-policy"), "same-origin", "{what}");
    };
    let anonymous = reqwest::Client::new();
    for path in [
        "/",
        "/signup",
        "/login",
        "/nowhere",
        "/healthz",
        "/admin/health",
        "/admin/login",
    ] {
        let response = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        check(path, &response);
    }
    let (cookie, token) = support::csrf_pair(&base).await;
    let response = anonymous
        .post(format!("{base}/signup"))
        .header("cookie", cookie)
        .form(&[
            ("name", ""),
            ("email", "x"),
            ("password", ""),
            ("csrf", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    check("a form error", &response);
    let response = panic_probe(format!("{base}/login")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    check("a caught panic", &response);
    let student = browser();
    sign_up(&student, &base, "ada@example.com").await;
    for path in ["/dashboard", "/lessons", "/tutor", "/premium"] {
        let response = student.get(format!("{base}{path}")).send().await.unwrap();
        check(path, &response);
    }
    app.shutdown().await;
}

/// Two workers on one database (two pools, as two instances have) claim
/// every due email between them, none twice; a claim whose lease ran out is
/// taken over.
async fn two_outbox_workers_never_claim_the_same_email_and_a_lapsed_claim_is_taken_over(
    fixture: Fixture,
) {
    let monitor = selfheal::health::Monitor::builder()
        .with_global(false)
        .build()
        .unwrap();
    let config = fixture.config();
    let a = cozmic::db::Db::open(&config, &monitor).await.unwrap();
    let b = cozmic::db::Db::open(&config, &monitor).await.unwrap();
    let insert = "INSERT INTO outbox (recipient, subject, body, kind, created_at, next_attempt_at) \
                  VALUES ('s@example.com', 'hi', 'body', 'welcome', 0, 0)";
    for _ in 0..40 {
        match (a.sqlite(), a.postgres()) {
            (Some(pool), _) => drop(sqlx::query(insert).execute(pool).await.unwrap()),
            (_, Some(pool)) => drop(sqlx::query(insert).execute(pool).await.unwrap()),
            _ => unreachable!(),
        }
    }
    let lease = Duration::from_secs(60);
    let drain = |db: cozmic::db::Db| async move {
        let mut ids = Vec::new();
        while let Some(email) = db.claim_due_email(lease).await.unwrap() {
            ids.push(email.id);
        }
        ids
    };
    let (mut first, second) = tokio::join!(drain(a.clone()), drain(b.clone()));
    let both = first.len() + second.len();
    first.extend(second);
    first.sort_unstable();
    first.dedup();
    assert_eq!(both, 40, "every email claimed once");
    assert_eq!(first.len(), 40, "no email claimed twice");
    // Live leases: nothing left to claim.
    assert!(a.claim_due_email(lease).await.unwrap().is_none());
    // A lapsed lease (a worker that died): the email is taken over.
    let id = first[0];
    let lapse = format!("UPDATE outbox SET claimed_until = 1 WHERE id = {id}");
    match (a.sqlite(), a.postgres()) {
        (Some(pool), _) => drop(sqlx::query(&lapse).execute(pool).await.unwrap()),
        (_, Some(pool)) => drop(sqlx::query(&lapse).execute(pool).await.unwrap()),
        _ => unreachable!(),
    }
    let taken = b.claim_due_email(lease).await.unwrap().expect("taken over");
    assert_eq!(taken.id, id);
    // Sent: never claimed again.
    b.mark_sent(id).await.unwrap();
    let lapse_all = "UPDATE outbox SET claimed_until = 1";
    match (a.sqlite(), a.postgres()) {
        (Some(pool), _) => drop(sqlx::query(lapse_all).execute(pool).await.unwrap()),
        (_, Some(pool)) => drop(sqlx::query(lapse_all).execute(pool).await.unwrap()),
        _ => unreachable!(),
    }
    let mut again = Vec::new();
    while let Some(email) = a.claim_due_email(lease).await.unwrap() {
        again.push(email.id);
    }
    assert_eq!(again.len(), 39);
    assert!(!again.contains(&id));
}
