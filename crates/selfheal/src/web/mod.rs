//! The axum side of selfheal: unhandled errors caught, recorded and answered
//! kindly; probes; the admin health dashboard.
//!
//! ## Why a layer, and why it replaces 5xx bodies
//!
//! A handler that panics, or answers `500` with `e.to_string()` in the body,
//! tells the user nothing useful and may tell an attacker a lot (SQL, file
//! paths, a database URL with its password). The guide's Flask version wraps
//! every route in `log_unhandled_exception`; here one [`HealLayer`] on the
//! `Router` does the same for every route at once:
//!
//! - a **panic** is caught (the connection and the server survive, the next
//!   request is served as usual), recorded as an error of kind `Panic` and a
//!   [`PanicCaught`](crate::health::HealKind::PanicCaught) heal, and answered
//!   with a friendly `500`;
//! - every **5xx** is recorded with its status code as the kind (`"500"`,
//!   `"503"`) and the **route template** (`/users/{id}`, from axum's
//!   [`MatchedPath`](axum::extract::MatchedPath)) as the operation, never the
//!   raw path: `/users/1` and `/users/2` are one fingerprint, and an
//!   attacker cannot mint fingerprints by varying the URL;
//! - every request's outcome feeds the monitor's error rate;
//! - the answer is a friendly page (HTML for browsers, JSON when the request
//!   says `Accept: application/json`) carrying a **request id** (the
//!   client's `x-request-id` when it is a plain token, else a fresh one), the
//!   same id that is logged with the error, so a user's screenshot can be
//!   matched with the log line. Never the error text, never a backtrace.
//!
//! **Replacement policy.** The body of every 5xx response is replaced, unless
//! the response carries the [`Friendly`] marker: the app then vouches that it
//! wrote the body for users. This is the safe default: a 5xx body that
//! axum, a library or a hurried `(StatusCode::INTERNAL_SERVER_ERROR,
//! e.to_string())` produced is exactly the one that leaks internals, and the
//! layer cannot tell a kind sentence from a SQL error by looking. The status
//! code is kept, and so are the headers (a `Retry-After` on a `503` still
//! reaches the client), except the body's own `content-type` and
//! `content-length`. `4xx` responses are the app's answers to the client's
//! mistakes and pass through untouched.
//!
//! A panic while the response *body* streams (after the handler returned)
//! is not caught here: the status line has been sent by then, and hyper
//! closes the connection.
//!
//! **Cost.** The layer's own work is a few atomic operations and one
//! extension insert per request (plus two clock reads and three atomic adds
//! with [metrics](HealLayer::with_metrics)); see the crate's `web_bench`
//! example. Note that every `Router::layer` call boxes each route once more,
//! which in axum costs about as much as this layer: put several layers in one
//! `tower::ServiceBuilder` and one `layer` call.
//!
//! Options, off by default: a **request timeout** (`503` with `Retry-After`,
//! recorded as kind `Timeout`) and **load shedding** while the monitor's
//! status is critical (`503` with `Retry-After`, not recorded, so that the
//! error rate decays and the service lets traffic back in by itself).
//!
//! ```
//! use axum::{Router, routing::get};
//! use selfheal::health::Monitor;
//! use selfheal::web::{self, HealLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let monitor = Monitor::builder().global(false).build().unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(HealLayer::new(monitor.clone()))
//!     // Probes sit outside the layer: they are not the users' traffic.
//!     .merge(web::probes(monitor));
//! # let _ = app;
//! # }
//! ```

mod dashboard;
pub mod future;
mod guard;
mod layer;
mod probes;
mod respond;

pub use dashboard::{Dashboard, admin_routes, health_json};
pub use guard::{AdminGuard, TokenError};
pub use layer::{ClientKey, HealLayer, HealService};
pub use probes::probes;
pub use respond::{ErrorCause, ErrorContext, Friendly, FriendlyResponder, Responder, request_id};

/// The value of the cookie `name` among the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name).then_some(value)
        })
}

/// Redacts what looks like a credential in text shown to operators: the
/// password in a URL's user info (`postgres://app:s3cret@db` →
/// `postgres://app:***@db`) and the value after `password=`, `secret=`,
/// `token=` or `key=`.
///
/// Error samples are kept verbatim by the monitor; the dashboard and the
/// health JSON show them through this function, so that a connection error
/// quoting its database URL does not put the password on the admin page.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Passwords in URL user info: scheme://user:password@host
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_pairs(&out)
}

/// `password=…`, `secret=…`, `token=…`, `key=…` (any case, also with `:`)
/// have their value replaced with `***`.
fn redact_pairs(text: &str) -> String {
    const NAMES: [&str; 5] = ["password", "passwd", "secret", "token", "key"];
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let matched = NAMES.iter().find_map(|name| {
            let end = i + name.len();
            if lower[i..].starts_with(name)
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
                && matches!(bytes.get(end), Some(b'=' | b':'))
            {
                Some(end + 1)
            } else {
                None
            }
        });
        match matched {
            Some(name_end) => {
                let value_start =
                    name_end + text[name_end..].bytes().take_while(|b| *b == b' ').count();
                out.push_str(&text[i..value_start]);
                let value_end = text[value_start..]
                    .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '\''))
                    .map_or(text.len(), |n| value_start + n);
                if value_end > value_start {
                    out.push_str("***");
                }
                i = value_end;
            }
            None => {
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_url_passwords_and_pairs() {
        assert_eq!(
            redact("cannot connect to postgres://app:s3cret@db:5432/main: refused"),
            "cannot connect to postgres://app:***@db:5432/main: refused"
        );
        assert_eq!(
            redact("https://example.com/a:b@c"),
            "https://example.com/a:b@c"
        );
        assert_eq!(
            redact("login failed password=hunter2 user=x"),
            "login failed password=*** user=x"
        );
        assert_eq!(redact("SECRET_KEY: abc"), "SECRET_KEY: ***");
        assert_eq!(redact("api_key=1&x=2"), "api_key=***&x=2");
        assert_eq!(redact("monkey=1"), "monkey=1");
        assert_eq!(redact("plain <script>"), "plain <script>");
        assert_eq!(redact("ünïcode token=é€ ok"), "ünïcode token=*** ok");
    }
}
