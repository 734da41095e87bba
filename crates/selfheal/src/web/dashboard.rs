//! The admin health dashboard: `/admin/health` (HTML) and
//! `/admin/health.json` (`application/health+json`).
//!
//! One page an operator can open on a phone at 3 a.m.: the status and why,
//! errors by type for the last 15 minutes or hour, errors per minute as a
//! sparkline, what healed, breakers and budgets, checks, alerts. It refreshes
//! itself (a meta refresh: no JavaScript at all, and the page's
//! Content-Security-Policy forbids scripts outright, so even an escaping bug
//! could not run one). Every user-influenced text (error samples, operation
//! names, check messages) is escaped by askama, and was
//! [redacted](crate::redact) when it entered the monitor, so a database URL
//! quoted in an error does not show its password.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Friendly;
use super::guard::AdminGuard;
use crate::health::{Monitor, Report, Status};

/// The dashboard's settings: the monitor it shows and the guard in front.
///
/// Defaults: refresh every 30 s, service name `"service"`, no access hint.
#[derive(Clone, Debug)]
pub struct Dashboard {
    monitor: Monitor,
    guard: AdminGuard,
    refresh: Duration,
    service: String,
    hint: Option<String>,
}

impl Dashboard {
    /// A dashboard of `monitor` behind `guard`.
    pub fn new(monitor: Monitor, guard: AdminGuard) -> Self {
        Self {
            monitor,
            guard,
            refresh: Duration::from_secs(30),
            service: "service".to_owned(),
            hint: None,
        }
    }

    /// How often the page reloads itself. Default 30 s.
    pub fn with_refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// The service's name, shown in the title and the JSON. Default `"service"`.
    pub fn with_service_name(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// A sentence shown to those the guard turns away (and on the login
    /// form): how an operator gets in, e.g. "Set ADMIN_TOKEN and restart".
    /// Plain text (escaped); say how, never a secret. Default: none.
    pub fn with_access_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The sign-in page with `message`, answered with `status`.
    fn login_page(&self, status: StatusCode, message: &'static str) -> Response {
        let page = LoginPage {
            has_login: self.guard.has_login(),
            message,
            hint: self.hint.as_deref(),
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
/// | `POST /admin/logout` | removes the admin cookie and revokes every one issued before (see [`AdminGuard`]) |
///
/// Every route but the login form answers `403` to non-admins. Merge these
/// routes outside your [`HealLayer`](super::HealLayer) (they are not users'
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
        Err(dashboard.login_page(StatusCode::FORBIDDEN, message))
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
        HeaderValue::from_static("no-referrer"),
    );
    // Ours and safe to show: a `HealLayer` around these routes keeps them.
    response.extensions_mut().insert(Friendly);
    response
}

async fn html(
    _: Admin,
    State(dashboard): State<Dashboard>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let (window, key) = query.window();
    let report = dashboard.monitor.report(window);
    let page = HealthPage::new(&dashboard, &report, key);
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
    let body = health_json(&report, &dashboard.service);
    let status = if report.status == Status::Critical {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    secured(status, "application/health+json", body.to_string())
}

async fn login_form(State(dashboard): State<Dashboard>) -> Response {
    if !dashboard.guard.has_login() {
        return StatusCode::NOT_FOUND.into_response();
    }
    dashboard.login_page(StatusCode::OK, "Enter the admin token.")
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// A sign-in. Every body that is not a form with a `token` field (no or
/// another content type, a missing field, too large) gets the sign-in page
/// with a sentence and the status axum's rejection carries (415, 422, 413),
/// never axum's plain-text message.
async fn login(
    State(dashboard): State<Dashboard>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            tracing::warn!(target: "selfheal", status = %rejection.status(), "admin login with an unreadable form");
            return dashboard.login_page(
                rejection.status(),
                "The sign-in form could not be read. Enter the admin token and press Sign in.",
            );
        }
    };
    match dashboard.guard.login(form.token.trim()) {
        Some(cookie) => {
            let mut response =
                (StatusCode::SEE_OTHER, [(header::LOCATION, "/admin/health")]).into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        None => {
            tracing::warn!(target: "selfheal", "admin login with a wrong token");
            dashboard.login_page(StatusCode::FORBIDDEN, "That token is not right.")
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
}

/// A row of a two-column table.
struct Row {
    name: String,
    value: String,
}

struct FingerprintRow {
    fingerprint: String,
    count: u64,
    last_seen: String,
    sample: String,
}

struct HealRow {
    kind: &'static str,
    operation: String,
    ago: String,
}

struct CheckRow {
    name: String,
    status: &'static str,
    critical: bool,
    message: String,
    took: String,
}

struct AlertRow {
    rule: String,
    severity: &'static str,
    state: &'static str,
    fingerprint: String,
    summary: String,
    at: String,
}

/// One bar of the sparkline (SVG units).
struct Bar {
    x: u32,
    y: u32,
    height: u32,
    count: u64,
    minutes_ago: u64,
}

#[derive(Template)]
#[template(path = "selfheal/health.html")]
struct HealthPage {
    service: String,
    refresh_secs: u64,
    status: &'static str,
    reasons: Vec<String>,
    window_key: &'static str,
    time_window: String,
    total_errors: u64,
    requests: u64,
    failed_requests: u64,
    error_rate: String,
    errors_by_type: Vec<Row>,
    fingerprints: Vec<FingerprintRow>,
    bars: Vec<Bar>,
    bar_width: u32,
    chart_width: u32,
    max_per_bucket: u64,
    bucket_label: String,
    heals: Vec<Row>,
    recent_heals: Vec<HealRow>,
    breakers: Vec<Row>,
    retries: u64,
    budget_refusals: u64,
    breaker_rejections: u64,
    checks: Vec<CheckRow>,
    active_alerts: Vec<String>,
    alerts: Vec<AlertRow>,
    generated: String,
}

const CHART_HEIGHT: u32 = 60;

impl HealthPage {
    fn new(dashboard: &Dashboard, report: &Report, window_key: &'static str) -> Self {
        let buckets = &report.errors_per_bucket;
        let max = buckets.iter().copied().max().unwrap_or(0);
        let bar_width = 6;
        let bars = buckets
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let height = if max == 0 {
                    0
                } else {
                    ((count * u64::from(CHART_HEIGHT)).div_ceil(max)) as u32
                };
                Bar {
                    x: i as u32 * bar_width,
                    y: CHART_HEIGHT - height,
                    height,
                    count,
                    minutes_ago: ((buckets.len() - 1 - i) as u64 * report.bucket_secs) / 60,
                }
            })
            .collect::<Vec<_>>();
        Self {
            service: dashboard.service.clone(),
            refresh_secs: dashboard.refresh.as_secs().max(1),
            status: report.status.as_str(),
            reasons: report.reasons.clone(),
            window_key,
            time_window: report.time_window.clone(),
            total_errors: report.total_errors,
            requests: report.requests.total,
            failed_requests: report.requests.failed,
            error_rate: format!("{:.1}%", report.requests.error_rate * 100.0),
            errors_by_type: report
                .errors_by_type
                .iter()
                .map(|(kind, n)| Row {
                    name: kind.clone(),
                    value: n.to_string(),
                })
                .collect(),
            fingerprints: report
                .fingerprints
                .iter()
                .map(|fp| FingerprintRow {
                    fingerprint: fp.fingerprint.clone(),
                    count: fp.count,
                    last_seen: ago(fp.last_seen_secs_ago),
                    sample: fp.sample.clone(),
                })
                .collect(),
            chart_width: (bars.len() as u32 * bar_width).max(bar_width),
            bars,
            bar_width: bar_width - 1,
            max_per_bucket: max,
            bucket_label: if report.bucket_secs == 60 {
                "minute".to_owned()
            } else {
                format!("{} s", report.bucket_secs)
            },
            heals: report
                .heals
                .iter()
                .map(|(kind, n)| Row {
                    name: kind.as_str().to_owned(),
                    value: n.to_string(),
                })
                .collect(),
            recent_heals: report
                .recent_heals
                .iter()
                .map(|h| HealRow {
                    kind: h.kind.as_str(),
                    operation: h.operation.clone(),
                    ago: ago(h.ago_secs),
                })
                .collect(),
            breakers: report
                .breakers
                .iter()
                .map(|b| Row {
                    name: b.name.clone(),
                    value: format!(
                        "{} for {}",
                        b.state,
                        ago(b.since_secs).trim_end_matches(" ago")
                    ),
                })
                .collect(),
            retries: report.retries,
            budget_refusals: report.budget_refusals,
            breaker_rejections: report.breaker_rejections,
            checks: report
                .checks
                .iter()
                .map(|c| CheckRow {
                    name: c.name.clone(),
                    status: match c.passing {
                        Some(true) => "pass",
                        Some(false) => "fail",
                        None => "pending",
                    },
                    critical: c.critical,
                    message: c.message.clone().unwrap_or_default(),
                    took: c.took_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
                })
                .collect(),
            active_alerts: report
                .active_alerts
                .iter()
                .map(|(rule, fp)| match fp {
                    Some(fp) => format!("{rule} ({fp})"),
                    None => rule.clone(),
                })
                .collect(),
            alerts: report
                .recent_alerts
                .iter()
                .map(|a| AlertRow {
                    rule: a.rule.clone(),
                    severity: a.severity.marker(),
                    state: match a.state {
                        crate::health::AlertState::Firing => "firing",
                        crate::health::AlertState::Resolved => "resolved",
                    },
                    fingerprint: a.fingerprint.clone().unwrap_or_default(),
                    summary: a.summary.clone(),
                    at: rfc3339(unix_secs(a.at)),
                })
                .collect(),
            generated: rfc3339(unix_secs(SystemTime::now())),
        }
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        _ => format!("{} h {} min ago", secs / 3600, (secs % 3600) / 60),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2024-05-01T12:00:00Z` for seconds since the Unix epoch (UTC).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn health_status(status: Status) -> &'static str {
    match status {
        Status::Healthy => "pass",
        Status::Degraded => "warn",
        Status::Critical => "fail",
    }
}

/// The [`Report`] as an `application/health+json` document
/// (draft-inadarei-api-health-check): `status` (`pass`, `warn`, `fail`),
/// `notes` (the reasons), `output` (when not passing), and `checks`, keyed
/// `component:measurement`, each an array of objects with `status`,
/// `observedValue`, `observedUnit`, `time` and, where useful,
/// `componentId`, `componentType` and `output`.
///
/// | key | observed |
/// |---|---|
/// | `errors:count` | errors in the window |
/// | `requests:errorRate` | failed requests in the window, % |
/// | `requests:count` | requests in the window |
/// | `heals:count` | heals in the window |
/// | `fingerprints:count` | one entry per fingerprint (`componentId`), with its redacted sample as `output` |
/// | `<check>:responseTime` | each registered check: pass/fail, took ms |
/// | `<breaker>:state` | each circuit breaker: `closed`, `half_open`, `open` |
/// | `retries:count`, `retryBudget:refusals`, `breakers:rejections` | since start |
pub fn health_json(report: &Report, service: &str) -> Value {
    let now = rfc3339(unix_secs(SystemTime::now()));
    let overall = health_status(report.status);
    let mut checks = serde_json::Map::new();
    let mut put = |key: String, entries: Vec<Value>| {
        checks.insert(key, Value::Array(entries));
    };
    put(
        "errors:count".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": report.total_errors,
            "observedUnit": "errors",
            "status": if report.total_errors == 0 { "pass" } else { "warn" },
            "time": now,
            "output": report.time_window,
        })],
    );
    put(
        "requests:errorRate".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": (report.requests.error_rate * 1000.0).round() / 10.0,
            "observedUnit": "%",
            "status": overall,
            "time": now,
        })],
    );
    put(
        "requests:count".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": report.requests.total,
            "observedUnit": "requests",
            "status": "pass",
            "time": now,
        })],
    );
    put(
        "heals:count".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": report.heals.values().sum::<u64>(),
            "observedUnit": "heals",
            "status": "pass",
            "time": now,
        })],
    );
    put(
        "fingerprints:count".into(),
        report
            .fingerprints
            .iter()
            .map(|fp| {
                json!({
                    "componentId": fp.fingerprint,
                    "componentType": "system",
                    "observedValue": fp.count,
                    "observedUnit": "errors",
                    "status": "warn",
                    "time": now,
                    "output": fp.sample,
                })
            })
            .collect(),
    );
    for check in &report.checks {
        let status = match (check.passing, check.critical) {
            (Some(true), _) => "pass",
            (Some(false), true) => "fail",
            (Some(false), false) | (None, _) => "warn",
        };
        let mut entry = json!({
            "componentId": check.name,
            "componentType": "component",
            "observedValue": check.took_ms,
            "observedUnit": "ms",
            "status": status,
            "time": check.checked_at.map_or_else(|| now.clone(), rfc3339),
        });
        if let Some(message) = &check.message {
            entry["output"] = Value::String(message.clone());
        }
        put(format!("{}:responseTime", check.name), vec![entry]);
    }
    for breaker in &report.breakers {
        put(
            format!("{}:state", breaker.name),
            vec![json!({
                "componentId": breaker.name,
                "componentType": "component",
                "observedValue": breaker.state,
                "status": if breaker.state == "closed" { "pass" } else { "warn" },
                "time": now,
            })],
        );
    }
    for (key, value, unit) in [
        ("retries:count", report.retries, "retries"),
        ("retryBudget:refusals", report.budget_refusals, "refusals"),
        (
            "breakers:rejections",
            report.breaker_rejections,
            "rejections",
        ),
    ] {
        put(
            key.to_owned(),
            vec![json!({
                "componentType": "system",
                "observedValue": value,
                "observedUnit": unit,
                "status": "pass",
                "time": now,
            })],
        );
    }
    let mut doc = json!({
        "status": overall,
        "serviceId": service,
        "description": format!("health of {service}, {}", report.time_window.to_lowercase()),
        "notes": report.reasons,
        "checks": Value::Object(checks),
        "links": {"about": "/admin/health"},
    });
    if report.status != Status::Healthy {
        doc["output"] = Value::String(report.reasons.join("; "));
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
    }
}
