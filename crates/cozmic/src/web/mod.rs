//! Pages and routes.
//!
//! This module holds the router ([`app`]), the admin guard, the handlers'
//! error type ([`AppError`]: a friendly 503 for an infrastructure fault, a
//! 500 otherwise) and the helpers every page uses; the pages live by area:
//! `auth` (home, sign-up, login, logout, the signed-in extractor),
//! `lessons` (dashboard, lesson list, a lesson and its completion), `tutor`
//! and `premium`.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use selfheal::web::csrf::{CsrfReason, CsrfRejection};
use selfheal::web::{AdminGuard, CsrfLayer, Dashboard, Friendly, HealLayer, admin_routes};
use tower_sessions::cookie::Key;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::AppState;
use crate::config::{FaultHooks, Healing};
use crate::session::{StudentSession, Visitor};

mod auth;
mod error;
mod lessons;
mod premium;
mod tutor;

pub(crate) use premium::receipt as premium_receipt;

use auth::{home, login, login_form, logout, signup, signup_form};
use error::{AppError, naive_unavailable, unavailable_response};
use lessons::{complete_lesson, dashboard, lesson, lesson_list};
use premium::{premium_page, subscribe};
use tutor::{ask_tutor, tutor_page};

/// The router: pages, the admin dashboard, probes and metrics, with the
/// session layer and (healing on) selfheal's `HealLayer` around them.
pub fn app(state: AppState) -> Router {
    let monitor = state.monitor().clone();
    let config = state.config();
    let healing = config.healing;

    let guard = state.inner.admin_guard.clone();

    let sessions = SessionManagerLayer::new(state.inner.store.clone())
        .with_name("cozmic_session")
        .with_secure(config.secure_cookies)
        .with_same_site(SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(time::Duration::days(14)))
        .with_signed(Key::from(state.inner.secret.as_bytes()));

    let mut pages = Router::new()
        .route("/", get(home))
        .route("/signup", get(signup_form).post(signup))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/dashboard", get(dashboard))
        .route("/lessons", get(lesson_list))
        .route("/lessons/{id}", get(lesson))
        .route("/lessons/{id}/complete", post(complete_lesson))
        .route("/tutor", get(tutor_page).post(ask_tutor))
        .route("/premium", get(premium_page))
        .route("/premium/subscribe", post(subscribe))
        .fallback(not_found)
        .with_state(state.clone())
        .merge(admin_routes(admin_dashboard(&state, guard)));
    if config.faults.is_armed() {
        pages = pages.layer(axum::middleware::from_fn(panic_on_demand));
    }
    let pages = pages
        .layer(axum::middleware::from_fn(crate::correlate::scope))
        .layer(csrf_layer(&state))
        .layer(sessions)
        .layer(Extension(healing))
        .layer(Extension(selfheal::session::CookieName("cozmic_session")));
    let metrics = selfheal::metrics::Metrics::install().ok();
    let pages = match healing {
        Healing::On => {
            let mut heal = HealLayer::new(monitor.clone()).with_client_key(client_key(config));
            if let Some(metrics) = &metrics {
                heal = heal.with_metrics(metrics);
            }
            // The pages' limit: starts at 64, never below 16 at once.
            if config.concurrency_limit {
                heal = heal.with_adaptive_limit(
                    selfheal::web::AdaptiveLimit::new("cozmic")
                        .with_limits(64, 16, 1000)
                        .expect("valid limits"),
                );
            }
            pages.layer(heal)
        }
        Healing::Off => pages
            .layer(axum::middleware::map_response(naive_unavailable))
            .layer(Extension(monitor.clone())),
    };
    let mut router = pages.merge(selfheal::web::probes(monitor.clone()));
    if let Some(metrics) = &metrics {
        router = router.merge(metrics.routes(monitor));
    }
    router.layer(axum::middleware::map_response_with_state(
        Https(config.https),
        security_headers,
    ))
}

/// Whether the operator said the app is served over HTTPS (`COZMIC_HTTPS`).
#[derive(Clone, Copy, Debug)]
struct Https(bool);

/// Every state-changing form checked (sign-up, login, logout, lessons, the
/// tutor, the purchase, the admin forms): a token bound to a `__Host-`
/// cookie (see `selfheal::web::csrf`), keyed with `SECRET_KEY`, and the
/// browser's `Origin` / `Sec-Fetch-Site`. Inside the session layer, so that
/// a refused form is shown again with what was typed, for the visitor.
fn csrf_layer(state: &AppState) -> CsrfLayer {
    let config = state.config();
    let responder_state = state.clone();
    let mut layer = CsrfLayer::new(state.inner.secret.as_bytes())
        .with_cookie_name("cozmic_csrf")
        .with_secure_cookie(config.secure_cookies)
        .with_max_body(crate::input::BODY_MAX)
        .with_responder(move |rejection| csrf_refused(responder_state.clone(), rejection));
    if let Some(origin) = &config.public_origin {
        layer = layer.with_allowed_origin(origin.clone());
    }
    layer
}

/// A form the CSRF check refused: nothing was done; the same form again,
/// with what was typed (never a password) and a fresh token, so that
/// pressing the button once more works.
async fn csrf_refused(state: AppState, mut rejection: CsrfRejection) -> Response {
    use axum::extract::FromRequestParts;
    let visitor = match Visitor::from_request_parts(&mut rejection.parts, &state).await {
        Ok(visitor) => visitor,
        Err(response) => return response,
    };
    let status = rejection.reason.status();
    let why = match rejection.reason {
        CsrfReason::TooLarge => crate::input::FormError::TooLarge.message(),
        _ => {
            "This form had expired or was sent from another site, so nothing was saved. \
             Please check it and send it again."
        }
    };
    match rejection.parts.uri.path() {
        "/signup" => auth::signup_error(
            &visitor,
            status,
            why,
            rejection.field("name"),
            rejection.field("email"),
        ),
        "/login" => auth::login_error(&visitor, status, why, rejection.field("email")),
        "/tutor" if visitor.student_id().is_some() => {
            tutor::tutor_error(&state, &visitor, status, why, rejection.field("question"))
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }
        _ => message(
            &visitor,
            status,
            "Please try again",
            "This form had expired or was sent from another site, so nothing was done. \
             Open the page again and press the button once more.",
        ),
    }
}

/// The headers every answer carries (a page that sets its own, like the
/// admin dashboard, keeps them): no scripts, styles only inline, images only
/// `data:`, forms only to this site, never framed, no `<base>`; no MIME
/// sniffing; no referrer sent to other sites; and, only when the operator
/// said the app is served over HTTPS, HSTS for a year (browsers then never
/// try plain HTTP, where a network attacker could strip TLS).
async fn security_headers(
    axum::extract::State(Https(https)): axum::extract::State<Https>,
    mut response: Response,
) -> Response {
    const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// How clients are told apart: the TCP peer, or the header a trusted
/// reverse proxy sets (`COZMIC_CLIENT_IP_HEADER`); never a header the
/// client chooses unless the operator said so.
fn client_key(config: &crate::config::Config) -> selfheal::web::ClientKey {
    match &config.client_ip_header {
        Some(header) => selfheal::web::ClientKey::Header(
            axum::http::HeaderName::from_bytes(header.as_bytes()).expect("validated by Config"),
        ),
        None => selfheal::web::ClientKey::PeerAddress,
    }
}

/// A login throttle named `operation` with the configured budgets and
/// client key, reporting its refusals to `observer` (the monitor).
pub(crate) fn login_throttle(
    operation: &'static str,
    config: &crate::config::Config,
    observer: std::sync::Arc<selfheal::health::Monitor>,
) -> selfheal::web::LoginThrottle {
    let limits = config.login_limits;
    selfheal::web::LoginThrottle::new(operation)
        .with_per_account_and_client(limits.per_account_and_client)
        .with_per_client(limits.per_client)
        .with_per_account(limits.per_account, std::time::Duration::from_secs(2))
        .with_client_key(client_key(config))
        .with_observer(observer)
}

/// The admin dashboard, its token login throttled like the students'
/// (`admin:login`); without `ADMIN_TOKEN`, its 403 page says how to get in.
fn admin_dashboard(state: &AppState, guard: AdminGuard) -> Dashboard {
    let config = state.config();
    let dashboard = Dashboard::new(state.monitor().clone(), guard)
        .with_service_name("cozmic")
        .with_ledger(state.ledger().clone())
        .with_login_throttle(login_throttle(
            "admin:login",
            config,
            state.inner.observer.clone(),
        ));
    if config.admin_token.is_some() {
        return dashboard;
    }
    dashboard.with_access_hint(
        "No ADMIN_TOKEN is set on this server. To get in, set ADMIN_TOKEN (16 characters or more) \
         and restart cozmic, or run `cozmic promote EMAIL` on the server to make your student \
         account an admin, then sign in to cozmic as that student.",
    )
}

/// The admin guard for `config`: `ADMIN_TOKEN` (bearer or login form), or
/// students made admin with `cozmic promote`.
pub(crate) fn admin_guard(config: &crate::config::Config, db: &crate::db::Db) -> AdminGuard {
    let healing = config.healing;
    let admin_db = db.clone();
    let is_admin_student = move |request: axum::http::Request<()>| {
        let db = admin_db.clone();
        async move {
            let Some(session) = request.extensions().get::<Session>().cloned() else {
                return false;
            };
            let id = match healing {
                Healing::On => session.get::<i64>("student_id").await.ok().flatten(),
                Healing::Off => session
                    .get::<StudentSession>("student")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.student_id),
            };
            match id {
                Some(id) => db.is_admin(id).await,
                None => false,
            }
        }
    };
    match &config.admin_token {
        Some(token) => AdminGuard::token(token.expose())
            .expect("validated by Config")
            .with_secure_cookie(config.secure_cookies)
            .or_predicate(is_admin_student),
        None => AdminGuard::predicate(is_admin_student),
    }
}

/// The chaos hook: a request with the panic header panics before its
/// handler, one with the panic-after header once its handler has answered
/// (its writes committed). Armed hooks only: this layer is not even
/// installed otherwise.
async fn panic_on_demand(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.headers().contains_key(FaultHooks::PANIC_HEADER) {
        std::panic::panic_any(FaultHooks::PANIC_MESSAGE);
    }
    let after = request
        .headers()
        .contains_key(FaultHooks::PANIC_AFTER_HEADER);
    let response = next.run(request).await;
    if after {
        std::panic::panic_any(FaultHooks::PANIC_MESSAGE);
    }
    response
}

/// What every page needs for its header (the sign-out form's token too).
struct Chrome {
    signed_in: bool,
    theme: String,
    csrf: Csrf,
}

impl Chrome {
    fn of(visitor: &Visitor) -> Self {
        Self {
            signed_in: visitor.student_id().is_some(),
            theme: visitor.data.theme.clone(),
            csrf: Csrf::of(visitor),
        }
    }
}

/// A page's CSRF form token, for the hidden `csrf` field of its forms:
/// rendered only where a form is (the cookie is set then), empty where no
/// CSRF layer runs.
#[derive(Clone, Default)]
struct Csrf(Option<selfheal::web::CsrfToken>);

impl Csrf {
    fn of(visitor: &Visitor) -> Self {
        Self(visitor.csrf().cloned())
    }
}

impl std::fmt::Display for Csrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(token) => token.fmt(f),
            None => Ok(()),
        }
    }
}

type Page = Result<Response, AppError>;

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = fastrand::u128(..).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_token(value: &str) -> bool {
    (8..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Template, WebTemplate)]
#[template(path = "message.html")]
struct MessagePage {
    signed_in: bool,
    theme: String,
    csrf: Csrf,
    heading: String,
    message: String,
}

fn message(visitor: &Visitor, status: StatusCode, heading: &str, text: &str) -> Response {
    let Chrome {
        signed_in,
        theme,
        csrf,
    } = Chrome::of(visitor);
    (
        status,
        MessagePage {
            signed_in,
            theme,
            csrf,
            heading: heading.to_owned(),
            message: text.to_owned(),
        },
    )
        .into_response()
}

async fn not_found(visitor: Visitor) -> Response {
    message(
        &visitor,
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is nothing at this address.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_tokens_are_checked() {
        assert!(is_token(&random_token()));
        for bad in ["", "short", "has space here", "<script>alert(1)</script>"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}
