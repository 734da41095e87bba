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
//!
//! The pieces: `routes` answers HTTP (the routes, the admin check, the
//! sign-in, the headers every admin page carries); `view` turns a
//! [`health::Report`](crate::health::Report) into what the HTML template
//! shows; `json` turns it into `application/health+json`; `dates` writes
//! the timestamps both show.

mod dates;
mod fleet;
mod json;
mod routes;
mod view;

use std::time::Duration;

pub use self::json::health_json;
pub use self::routes::admin_routes;
use super::guard::AdminGuard;
use super::throttle::LoginThrottle;
use crate::health::Monitor;

/// The dashboard's settings: the monitor it shows and the guard in front.
///
/// Defaults: refresh every 30 s, service name `"service"`, no access hint,
/// the token login throttled by a [`LoginThrottle`] named `admin:login`
/// with its default budgets, reporting to `monitor`.
#[derive(Clone, Debug)]
pub struct Dashboard {
    monitor: Monitor,
    guard: AdminGuard,
    refresh: Duration,
    service: String,
    hint: Option<String>,
    throttle: LoginThrottle,
    #[cfg(feature = "sqlx")]
    ledger: Option<crate::health::ledger::Ledger>,
}

impl Dashboard {
    /// A dashboard of `monitor` behind `guard`.
    pub fn new(monitor: Monitor, guard: AdminGuard) -> Self {
        Self {
            throttle: LoginThrottle::new("admin:login")
                .with_observer(std::sync::Arc::new(monitor.clone())),
            monitor,
            guard,
            refresh: Duration::from_secs(30),
            service: "service".to_owned(),
            hint: None,
            #[cfg(feature = "sqlx")]
            ledger: None,
        }
    }

    /// The throttle of the token login form (a wrong token spends the
    /// budgets of [`LoginThrottle`], the admin being one account): to
    /// change its budgets or tell clients apart by a proxy's header.
    pub fn with_login_throttle(mut self, throttle: LoginThrottle) -> Self {
        self.throttle = throttle;
        self
    }

    /// Shows the fleet and its history from `ledger` (feature `sqlx`): every
    /// instance with its status (silent ones flagged), fingerprints merged
    /// across instances with per-instance counts, and 24 h / 7 d / 30 d of
    /// history (`?history=24h|7d|30d`) with trends, marks and retry advice;
    /// in `health.json` too (`fleet`, `history`). Default: this instance
    /// only.
    #[cfg(feature = "sqlx")]
    pub fn with_ledger(mut self, ledger: crate::health::ledger::Ledger) -> Self {
        self.ledger = Some(ledger);
        self
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
}
