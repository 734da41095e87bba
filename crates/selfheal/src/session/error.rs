//! What goes wrong that a repair cannot fix: a store that fails
//! ([`SessionError`] when saving, [`SessionUnavailable`] when loading) and a
//! missing session layer, with the answers they give ([`HealedRejection`]).

use std::fmt;

use axum::http::StatusCode;

/// A session operation failed (the store is down, say).
#[derive(Debug, thiserror::Error)]
#[error("session store error: {0}")]
pub struct SessionError(#[from] tower_sessions::session::Error);

/// The rejection of [`Healed`](super::Healed) when the request's session cannot be loaded
/// because the store fails (it is down, or times out): `503 Service
/// Unavailable` with `Retry-After` (5 s by default), never a session with
/// default values, which would look like a logout.
///
/// [`HealLayer`](crate::web::HealLayer) replaces its plain body with the
/// friendly "temporarily unavailable" page and records it.
///
/// ```
/// use axum::response::IntoResponse;
/// use selfheal::session::SessionUnavailable;
///
/// let response = SessionUnavailable::default().into_response();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "5");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionUnavailable {
    /// The `Retry-After` of the answer, in seconds.
    pub retry_after_secs: u32,
}

impl Default for SessionUnavailable {
    fn default() -> Self {
        Self {
            retry_after_secs: 5,
        }
    }
}

impl fmt::Display for SessionUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session store is unavailable")
    }
}

impl std::error::Error for SessionUnavailable {}

impl axum::response::IntoResponse for SessionUnavailable {
    fn into_response(self) -> axum::response::Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(self.retry_after_secs),
                ),
                (
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                ),
            ],
            "Your session cannot be loaded right now. Please try again in a few seconds.",
        )
            .into_response()
    }
}

/// Why [`Healed`](super::Healed) could not be extracted.
#[derive(Debug)]
#[non_exhaustive]
pub enum HealedRejection {
    /// The session store fails: `503` with `Retry-After`.
    Unavailable(SessionUnavailable),
    /// tower-sessions' `SessionManagerLayer` is missing (a programming
    /// error): `500`.
    MissingLayer,
}

impl axum::response::IntoResponse for HealedRejection {
    fn into_response(self) -> axum::response::Response {
        match self {
            Self::Unavailable(unavailable) => unavailable.into_response(),
            Self::MissingLayer => {
                (StatusCode::INTERNAL_SERVER_ERROR, "session layer missing").into_response()
            }
        }
    }
}
