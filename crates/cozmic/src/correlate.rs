//! Correlation ids: the `X-Request-Id` of the page request that caused an
//! upstream call travels with that call.
//!
//! Why: when the tutor or a payment fails, the operator reads the app's log
//! and the provider's log side by side; one id on both is how they find the
//! same request. (It is also how the chaos harness links an upstream fault
//! to the user action it struck.) The id is the client's or the load
//! balancer's `X-Request-Id` when it is a short printable token, and
//! nothing otherwise: an upstream never receives arbitrary client bytes.
//!
//! [`scope`] is an axum middleware that makes the id current for the
//! handler's task; [`Propagate`] is a reqwest middleware that adds the
//! current id to outgoing requests that carry none. Both are on whatever
//! the healing mode, so that a run with healing off is traced the same way.

use axum::http::HeaderValue;
use reqwest_middleware::{Middleware, Next};

/// The header both sides use.
pub const REQUEST_ID: &str = "x-request-id";

/// The longest id passed on.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// The id of the request being handled, if it had an acceptable one.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Whether `value` is passed on: 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Axum middleware: runs the rest of the request with its `X-Request-Id`
/// current (when acceptable).
pub async fn scope(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| acceptable(v))
        .cloned()
    {
        Some(id) => CURRENT.scope(id, next.run(request)).await,
        None => next.run(request).await,
    }
}

/// Reqwest middleware: adds the current request id to an outgoing request
/// that has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Propagate;

#[async_trait::async_trait]
impl Middleware for Propagate {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut axum::http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if let Some(id) = current() {
            request.headers_mut().entry(REQUEST_ID).or_insert(id);
        }
        next.run(request, extensions).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_tokens_are_passed_on() {
        for ok in ["abc", "heal_on-u3-a17-t1", "0f:12.x"] {
            assert!(acceptable(&HeaderValue::from_static(ok)), "{ok}");
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in ["", "a b", "a\"b", "<script>", long.as_str()] {
            assert!(!acceptable(&HeaderValue::from_str(bad).unwrap()), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_current_id_is_the_scoped_one_and_none_outside() {
        assert!(current().is_none());
        let id = HeaderValue::from_static("req-1");
        let seen = CURRENT.scope(id.clone(), async { current() }).await;
        assert_eq!(seen, Some(id));
    }
}
