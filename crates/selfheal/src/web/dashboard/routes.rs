//! The admin routes and their handlers: the admin check in front of every
//! page, the sign-in and sign-out, and the headers every admin answer
//! carries.
//!
//! What a page shows is not decided here: the handlers fetch a report and
//! hand it to [`view`](super::view) or [`json`](super::json).

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::Dashboard;
use super::json::health_json;
use super::view::HealthPage;
use crate::health::Status;
use crate::web::Friendly;
use crate::web::csrf::CsrfToken;

impl Dashboard {
    /// The sign-in page with `message`, answered with `status`.
    fn login_page(
        &self,
        status: StatusCode,
        message: &'static str,
        csrf: Option<&CsrfToken>,
    ) -> Response {
        let page = LoginPage {
            has_login: self.guard.has_login(),
            message,
            hint: self.hint.as_deref(),
            csrf: csrf.map(CsrfToken::value),
        };
        secured(
            status,
            "text/html; charset=utf-8",
            page.render().unwrap_or_default(),
        )
    }
}

/// The admin routes:
///
/// | route | what |
/// |---|---|
/// | `GET /admin/health[?window=15m\|1h]` | the dashboard (HTML) |
/// | `GET /admin/health.json[?window=15m\|1h]` | `application/health+json` |
/// | `GET /admin/login`, `POST /admin/login` | the login form of a token guard (sets the admin cookie) |
/// | `POST /admin/logout` | removes the admin cookie and revokes every one issued before (see [`AdminGuard`](crate::web::AdminGuard)) |
///
/// Every route but the login form answers `403` to non-admins. Merge these
/// routes outside your [`HealLayer`](crate::web::HealLayer) (they are not users'
/// traffic, and must answer while load is shed).
pub fn admin_routes<S>(dashboard: Dashboard) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/admin/health", get(html))
        .route("/admin/health.json", get(json))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .with_state(dashboard)
}

/// The window asked for in the query string: `15m` (default) or `1h`.
#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
    /// The history period (`24h`, `7d`, `30d`), with a ledger.
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    history: Option<String>,
}

impl WindowQuery {
    fn window(&self) -> (Duration, &'static str) {
        match self.window.as_deref() {
            Some("1h") => (Duration::from_secs(3600), "1h"),
            _ => (Duration::from_secs(900), "15m"),
        }
    }
}

/// Extracts nothing; rejects non-admins with a 403 (HTML or JSON).
struct Admin;

impl FromRequestParts<Dashboard> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Dashboard,
    ) -> Result<Self, Self::Rejection> {
        if dashboard.guard.allows(parts).await {
            return Ok(Admin);
        }
        if parts.uri.path().ends_with(".json") {
            let body = json!({"status": "fail", "output": "forbidden"});
            return Err(secured(
                StatusCode::FORBIDDEN,
                "application/health+json",
                body.to_string(),
            ));
        }
        let message = if dashboard.guard.has_login() {
            "Admins only. Sign in to see this page."
        } else {
            "Admins only."
        };
        let csrf = CsrfToken::of(&parts.extensions);
        Err(dashboard.login_page(StatusCode::FORBIDDEN, message, csrf.as_ref()))
    }
}

/// A response with the admin pages' headers: no caching, no sniffing, no
/// framing, no scripts, no referrer.
fn secured(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Ours and safe to show: a `HealLayer` around these routes keeps them.
    response.extensions_mut().insert(Friendly);
    response
}

async fn html(
    _: Admin,
    State(dashboard): State<Dashboard>,
    csrf: Option<CsrfToken>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (window, key) = query.window();
    let report = dashboard.monitor.report(window);
    #[allow(unused_mut)]
    let mut page = HealthPage::new(&dashboard, &report, key, csrf.as_ref());
    #[cfg(feature = "sqlx")]
    if let Some(ledger) = &dashboard.ledger {
        let period = query.history.as_deref().unwrap_or("24h");
        page.fleet = Some(super::fleet::read(ledger, period).await.0);
    }
    match page.render() {
        Ok(body) => secured(StatusCode::OK, "text/html; charset=utf-8", body),
        Err(error) => {
            tracing::error!(target: "selfheal", %error, "cannot render the health page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn json(
    _: Admin,
    State(dashboard): State<Dashboard>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (window, _) = query.window();
    let report = dashboard.monitor.report(window);
    #[allow(unused_mut)]
    let mut body = health_json(&report, &dashboard.service);
    #[cfg(feature = "sqlx")]
    if let Some(ledger) = &dashboard.ledger {
        let period = query.history.as_deref().unwrap_or("24h");
        let (_, read) = super::fleet::read(ledger, period).await;
        let (fleet, history) = super::fleet::to_json(&read);
        body["fleet"] = fleet;
        body["history"] = history;
    }
    let status = if report.status == Status::Critical {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    secured(status, "application/health+json", body.to_string())
}

async fn login_form(State(dashboard): State<Dashboard>, csrf: Option<CsrfToken>) -> Response {
    if !dashboard.guard.has_login() {
        return StatusCode::NOT_FOUND.into_response();
    }
    dashboard.login_page(StatusCode::OK, "Enter the admin token.", csrf.as_ref())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The client of a request, as the dashboard's login throttle tells them
/// apart.
struct ClientOf(Option<crate::health::ClientId>);

impl FromRequestParts<Dashboard> for ClientOf {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Dashboard,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(dashboard.throttle.client_of(parts)))
    }
}

/// A sign-in. Every body that is not a form with a `token` field (no or
/// another content type, a missing field, too large) gets the sign-in page
/// with a sentence and the status axum's rejection carries (415, 422, 413),
/// never axum's plain-text message. Wrong tokens spend the login
/// throttle's budgets (the admin is one account); past them, a `429` with
/// `Retry-After`, before the token is even compared.
async fn login(
    State(dashboard): State<Dashboard>,
    ClientOf(client): ClientOf,
    csrf: Option<CsrfToken>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let csrf = csrf.as_ref();
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            tracing::warn!(target: "selfheal", status = %rejection.status(), "admin login with an unreadable form");
            return dashboard.login_page(
                rejection.status(),
                "The sign-in form could not be read. Enter the admin token and press Sign in.",
                csrf,
            );
        }
    };
    let attempt = match dashboard.throttle.begin("admin", client).await {
        Ok(attempt) => attempt,
        Err(throttled) => {
            let mut response = dashboard.login_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong tokens from your address. Please wait a minute and try again.",
                csrf,
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(throttled.retry_after_secs()),
            );
            return response;
        }
    };
    match dashboard.guard.login(form.token.trim()) {
        Some(cookie) => {
            attempt.succeeded();
            let mut response =
                (StatusCode::SEE_OTHER, [(header::LOCATION, "/admin/health")]).into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        None => {
            attempt.failed();
            tracing::warn!(target: "selfheal", "admin login with a wrong token");
            dashboard.login_page(StatusCode::FORBIDDEN, "That token is not right.", csrf)
        }
    }
}

async fn logout(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    let mut response =
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/admin/login")]).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, dashboard.guard.logout(&headers));
    response
}

#[derive(Template)]
#[template(path = "selfheal/login.html")]
struct LoginPage<'a> {
    has_login: bool,
    message: &'static str,
    hint: Option<&'a str>,
    /// The form token, when a `CsrfLayer` runs.
    csrf: Option<String>,
}
