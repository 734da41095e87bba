//! What a handler's failure becomes: a 503 the user can wait out, the
//! limit's shedding, or a 500 that never shows its cause.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Csrf, Friendly, MessagePage};

/// A handler's failure. Never shows its cause.
///
/// An infrastructure fault the user can wait out (the database or the
/// session store unreachable, a write that could not get its lock within
/// the runner's deadline) is [`AppError::Unavailable`]: a 503 with
/// `Retry-After` and a page that says so; every write is one transaction,
/// so nothing was half-written. Anything else is a 500 (with healing on,
/// replaced by the friendly page and recorded by `HealLayer`).
#[derive(Debug)]
pub(super) enum AppError {
    Unavailable(Unavailable),
    /// A limit shed the request (the passwords' limit): the server
    /// protecting itself, answered as `HealLayer`'s shedding, not recorded.
    Shed(selfheal::web::LimitFull),
    Internal(anyhow::Error),
}

/// What is unavailable, for the page's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unavailable {
    /// The database answers "locked" / "serialization failure" past the
    /// runner's deadline: busy, not down.
    DatabaseBusy,
    /// The database cannot be reached.
    Database,
    /// The session store cannot be reached.
    Sessions,
    /// Too many password checks at once (the hashing gate is full).
    PasswordsBusy,
}

/// `Retry-After` of an [`AppError::Unavailable`] answer.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl Unavailable {
    /// The infrastructure fault in `error`'s chain, if that is what it is.
    fn of(error: &anyhow::Error) -> Option<Self> {
        error.chain().find_map(|cause| {
            if let Some(e) = cause.downcast_ref::<selfheal::db::TxError<sqlx::Error>>() {
                return Self::of_sqlx(e.inner());
            }
            if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
                return Self::of_sqlx(e);
            }
            if cause.downcast_ref::<crate::password::Busy>().is_some() {
                return Some(Self::PasswordsBusy);
            }
            if cause
                .downcast_ref::<selfheal::session::SessionError>()
                .is_some()
                || cause
                    .downcast_ref::<tower_sessions::session::Error>()
                    .is_some()
            {
                return Some(Self::Sessions);
            }
            None
        })
    }

    fn of_sqlx(error: &sqlx::Error) -> Option<Self> {
        use selfheal::retry::Verdict;
        match selfheal::db::classify::verdict(error) {
            Verdict::Permanent => None,
            _ if selfheal::db::classify::is_contention(error) => Some(Self::DatabaseBusy),
            _ => Some(Self::Database),
        }
    }

    fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::DatabaseBusy => (
                "We are busy saving other changes",
                "Nothing was saved and nothing was lost. Please try again in a few seconds.",
            ),
            Self::Database => (
                "We cannot reach our database right now",
                "Nothing was lost: your progress is safe. Please try again in a few seconds.",
            ),
            Self::Sessions => (
                "We cannot reach our session store right now",
                "If you were signed in, you still are. Please try again in a few seconds.",
            ),
            Self::PasswordsBusy => (
                "Lots of people are signing in right now",
                "Please try again in a few seconds.",
            ),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(error: E) -> Self {
        let error = error.into();
        if let Some(&full) = error.downcast_ref::<selfheal::web::LimitFull>() {
            return AppError::Shed(full);
        }
        match Unavailable::of(&error) {
            Some(what) => {
                tracing::warn!(error = %selfheal::web::redact(&format!("{error:#}")), ?what, "request answered 503: infrastructure unavailable");
                AppError::Unavailable(what)
            }
            None => AppError::Internal(error),
        }
    }
}

/// Marks a 503 answered for an [`AppError::Unavailable`], so that the naive
/// app (healing off, the chaos baseline) can answer it as it always did.
#[derive(Clone, Copy, Debug)]
pub(super) struct UnavailableAnswer;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Unavailable(what) => {
                let (heading, text) = what.words();
                let page = MessagePage {
                    signed_in: false,
                    theme: "light".to_owned(),
                    csrf: Csrf::default(),
                    heading: heading.to_owned(),
                    message: text.to_owned(),
                };
                let mut response =
                    unavailable_response(UNAVAILABLE_RETRY_AFTER_SECS, page.into_response());
                response.extensions_mut().insert(UnavailableAnswer);
                response
            }
            AppError::Shed(full) => full.into_response(),
            AppError::Internal(error) => {
                tracing::error!(error = %selfheal::web::redact(&format!("{error:#}")), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
            }
        }
    }
}

/// Healing off: an infrastructure fault is the plain 500 of an app without
/// selfheal (the chaos harness' control run).
pub(super) async fn naive_unavailable(response: Response) -> Response {
    if response.extensions().get::<UnavailableAnswer>().is_some() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    response
}

/// A `503` with `Retry-After` and `page`, marked friendly (no outer layer
/// replaces it).
pub(super) fn unavailable_response(retry_after_secs: u64, page: Response) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    (StatusCode::SERVICE_UNAVAILABLE, Friendly, headers, page).into_response()
}
