//! Helpers shared by cozmic's black-box test binaries: a browser-like
//! client, sign-up, polling, the services the tests need (PostgreSQL and
//! Redis URLs from the environment, failing in CI when absent), a database
//! of one's own that can be closed to connections, and a TCP proxy that can
//! be cut.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of it

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A client that keeps cookies and follows no redirects (so that a logout,
/// a 303 to `/login`, is seen as such).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A browser-like client (cookies, redirects followed) whose connections
/// come from `ip` (any of 127.0.0.0/8 on loopback): another client, as the
/// server tells them apart.
pub fn browser_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .local_address(Some(std::net::IpAddr::from(ip)))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Signs up `email` (password `correct horse battery`): the answer.
pub async fn sign_up(client: &reqwest::Client, base: &str, email: &str) -> reqwest::Response {
    sign_up_as(client, base, "Ada Lovelace", email, "correct horse battery").await
}

/// Signs up with every field given (a sign-up the test expects may be
/// refused): the answer.
pub async fn sign_up_as(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    email: &str,
    password: &str,
) -> reqwest::Response {
    post_form(
        client,
        format!("{base}/signup"),
        &[("name", name), ("email", email), ("password", password)],
    )
    .await
}

/// Posts `fields` as a form to `url`, with the CSRF token a page of the
/// same site gives `client` (a client that keeps cookies: the token's
/// cookie is in its jar), as a browser would.
pub async fn post_form(
    client: &reqwest::Client,
    url: String,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let token = csrf_token(client, &base_of(&url)).await;
    post_form_with_token(client, url, fields, &token).await
}

/// Posts `fields` and the CSRF `token` as a form to `url`.
pub async fn post_form_with_token(
    client: &reqwest::Client,
    url: String,
    fields: &[(&str, &str)],
    token: &str,
) -> reqwest::Response {
    let mut fields = fields.to_vec();
    fields.push(("csrf", token));
    client.post(url).form(&fields).send().await.unwrap()
}

/// `scheme://host:port` of `url`.
pub fn base_of(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    parsed.origin().ascii_serialization()
}

/// The CSRF token `client` (which keeps cookies) is given by the site at
/// `base`: read from the login page, or, signed in, from the dashboard's
/// sign-out form.
pub async fn csrf_token(client: &reqwest::Client, base: &str) -> String {
    for path in ["/login", "/dashboard"] {
        let page = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(token) = try_form_value(&page, "csrf") {
            return token;
        }
    }
    panic!("no page of {base} gave a CSRF token");
}

/// For a client without a cookie jar: (the `name=value` of the CSRF cookie,
/// its token), from a fresh login page.
pub async fn csrf_pair(base: &str) -> (String, String) {
    let response = reqwest::get(format!("{base}/login")).await.unwrap();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.contains("csrf="))
        .expect("the login page sets the CSRF cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let token = form_value(&response.text().await.unwrap(), "csrf");
    (cookie, token)
}

/// The status of the answer to `request`.
pub async fn status_of(request: reqwest::RequestBuilder) -> reqwest::StatusCode {
    request.send().await.unwrap().status()
}

/// Asserts that `response` is a 422 whose page says `message`.
pub async fn assert_unprocessable(response: reqwest::Response, message: &str) {
    assert_eq!(
        response.status(),
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "{message}"
    );
    let page = response.text().await.unwrap();
    assert!(page.contains(message), "{message}: {page}");
}

/// The value of the form field `name` in `page`.
pub fn form_value(page: &str, name: &str) -> String {
    try_form_value(page, name).unwrap_or_else(|| panic!("no {name} in the page: {page}"))
}

/// The value of the form field `name` in `page`, if there is one.
pub fn try_form_value(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    page[start..].split('"').next().map(str::to_owned)
}

/// Polls `condition` every 50 ms for up to `limit`; panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

/// The URL in `variable`, or `None` outside CI (the test is then skipped
/// with a note); in CI (`CI` set) a missing variable fails the test.
pub fn service_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{variable} is not set: in CI this test must run"
            );
            eprintln!("{variable} not set: skipped (it fails in CI)");
            None
        }
    }
}

/// The URL of a fresh schema named `prefix_<random>` in the server at
/// `SELFHEAL_TEST_POSTGRES_URL` (its `search_path`), so that several
/// instances of cozmic can share one database; `None` when the variable
/// is not set outside CI.
pub async fn postgres_schema_url(prefix: &str) -> Option<String> {
    let base = service_url("SELFHEAL_TEST_POSTGRES_URL")?;
    let schema = format!("{prefix}_{:016x}", fastrand::u64(..));
    let pool = sqlx::PgPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at SELFHEAL_TEST_POSTGRES_URL is unreachable: {e}"));
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

/// The `.eml` files in `dir` whose text contains `needle`.
pub fn mails_containing(dir: &std::path::Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                .filter(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(needle))
                })
                .count()
        })
        .unwrap_or(0)
}

/// A PostgreSQL database of the test's own (created on the server of
/// `SELFHEAL_TEST_POSTGRES_URL`, dropped at the end), so that closing it to
/// connections touches no other test.
pub struct OwnDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl OwnDatabase {
    /// Creates it; `None` when the variable is not set outside CI.
    pub async fn create() -> Option<Self> {
        let base = service_url("SELFHEAL_TEST_POSTGRES_URL")?;
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at SELFHEAL_TEST_POSTGRES_URL: {e}"));
        let name = format!("cozmic_outage_{:016x}", fastrand::u64(..));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&name);
        Some(Self {
            admin,
            name,
            url: url.to_string(),
        })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An outage: no new connection is accepted, and every open one is
    /// terminated (`ALLOW_CONNECTIONS false` + `pg_terminate_backend`).
    pub async fn close(&self) {
        sqlx::query(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            self.name
        ))
        .execute(&self.admin)
        .await
        .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&self.admin)
        .await
        .unwrap();
    }

    /// The end of the outage.
    pub async fn open(&self) {
        sqlx::query(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            self.name
        ))
        .execute(&self.admin)
        .await
        .unwrap();
    }

    /// Drops it (whoever is still connected).
    pub async fn drop_database(self) {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&self.admin)
        .await;
        self.admin.close().await;
    }
}

/// A loopback TCP proxy to `upstream` that can be cut: while cut, every
/// open connection is closed and new ones are closed on arrival, as when
/// the server behind it is unreachable.
pub struct CuttableProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl CuttableProxy {
    /// Listens on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (is_cut, generations) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cutting = generations.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cutting.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            generation,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
