//! What the user sees when something went wrong: a kind page or JSON with a
//! request id, and nothing about the cause.

use std::fmt;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// `x-request-id`, as a constant: looking a header up by `&str` parses the
/// name on every call.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};

/// The text of a panic's payload (a `&str` or a `String`; else a
/// placeholder).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a non-string payload")
}

/// Marks a 5xx response whose body the app wrote for users, so that
/// [`HealLayer`](super::HealLayer) passes it through instead of replacing it
/// with its own friendly answer (it is still recorded).
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::{Html, IntoResponse};
/// use selfheal::web::Friendly;
///
/// let response = (
///     StatusCode::SERVICE_UNAVAILABLE,
///     Friendly,
///     Html("<p>The AI tutor is resting. Your progress is saved.</p>"),
/// )
///     .into_response();
/// assert!(response.extensions().get::<Friendly>().is_some());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Friendly;

impl IntoResponseParts for Friendly {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(Friendly);
        Ok(res)
    }
}

/// Why the layer answers instead of the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCause {
    /// The handler panicked.
    Panic,
    /// The handler answered with this 5xx status (its body is replaced).
    Status(StatusCode),
    /// The request took longer than the layer's timeout.
    Timeout,
    /// The service is critical and sheds load.
    Overloaded,
}

/// What a [`Responder`] knows about the failed request. Never the error's
/// text: a responder cannot leak what it is not given.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ErrorContext<'a> {
    /// What happened.
    pub cause: ErrorCause,
    /// The status of the answer (500, 503, the handler's own 5xx).
    pub status: StatusCode,
    /// The request id, also logged with the error.
    pub request_id: &'a str,
    /// Whether the client asked for JSON (`Accept: application/json`).
    pub wants_json: bool,
    /// The `Retry-After` the answer carries, if any.
    pub retry_after: Option<Duration>,
}

/// Builds the answer to a failed request. The layer then adds the
/// `x-request-id`, `cache-control: no-store` and (when set in the context)
/// `retry-after` headers, and keeps the status of the context.
///
/// Closures `Fn(&ErrorContext<'_>) -> Response` are responders too.
pub trait Responder: Send + Sync + 'static {
    /// The response for `context`.
    fn respond(&self, context: &ErrorContext<'_>) -> Response;
}

impl<F> Responder for F
where
    F: Fn(&ErrorContext<'_>) -> Response + Send + Sync + 'static,
{
    fn respond(&self, context: &ErrorContext<'_>) -> Response {
        self(context)
    }
}

/// The default [`Responder`]: a short page in plain words (HTML), or
/// `{"error": {"status", "message", "request_id"}}` for JSON clients.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct FriendlyResponder;

impl FriendlyResponder {
    fn message(context: &ErrorContext<'_>) -> (&'static str, &'static str) {
        match context.cause {
            ErrorCause::Timeout => (
                "This is taking too long",
                "The page took too long to answer. Please try again in a moment.",
            ),
            ErrorCause::Overloaded => (
                "We are busy right now",
                "The service is recovering from a problem. Please try again in a moment.",
            ),
            ErrorCause::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE => (
                "Temporarily unavailable",
                "Part of the service is temporarily unavailable. Please try again in a moment.",
            ),
            _ => (
                "Something went wrong on our side",
                "It is not your fault, and it has been recorded. Please try again; \
                 if it keeps happening, send us the request id below.",
            ),
        }
    }
}

impl Responder for FriendlyResponder {
    fn respond(&self, context: &ErrorContext<'_>) -> Response {
        let (title, message) = Self::message(context);
        if context.wants_json {
            let body = serde_json::json!({
                "error": {
                    "status": context.status.as_u16(),
                    "message": message,
                    "request_id": context.request_id,
                }
            });
            return (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
        // The request id is a validated token (see `request_id`), the rest is
        // ours: nothing here needs escaping, but escape the id anyway.
        let id = escape_html(context.request_id);
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><style>body{{font-family:system-ui,sans-serif;\
             max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}\
             code{{background:#eee;padding:.1rem .3rem}}</style></head><body>\
             <h1>{title}</h1><p>{message}</p><p>Request id: <code>{id}</code></p>\
             </body></html>"
        );
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
                     base-uri 'none'",
                ),
            ],
            page,
        )
            .into_response()
    }
}

pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The request id for a failed request: the client's (or a proxy's)
/// `x-request-id` when it is a plain token (1 to 64 characters of
/// `A-Z a-z 0-9 - _ .`), else a fresh random one (16 hex digits).
///
/// A header that is not a plain token is not echoed: it would be a way to
/// put arbitrary text into our logs and pages.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_owned)
}

/// Whether the client asked for JSON: an `Accept` header naming
/// `application/json` (or any `+json` type) and not `text/html`.
pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    !accept.contains("text/html") && accept.contains("json")
}

/// Builds the full answer: the responder's response with our status and
/// headers, keeping `keep` (the inner response's headers, for a replaced 5xx).
pub(crate) fn answer(
    responder: &dyn Responder,
    context: &ErrorContext<'_>,
    keep: Option<HeaderMap>,
) -> Response {
    let mut response = responder.respond(context);
    *response.status_mut() = context.status;
    let headers = response.headers_mut();
    if let Some(keep) = keep {
        let ours: Vec<_> = headers.keys().cloned().collect();
        let mut last = None;
        for (name, value) in keep {
            // `None` means "same name as the previous one".
            let name = match name {
                Some(name) => {
                    last = Some(name.clone());
                    name
                }
                None => match &last {
                    Some(name) => name.clone(),
                    None => continue,
                },
            };
            if name == header::CONTENT_TYPE
                || name == header::CONTENT_LENGTH
                || name == header::CONTENT_ENCODING
                || name == header::TRANSFER_ENCODING
            {
                continue;
            }
            if !ours.contains(&name) {
                headers.append(name, value);
            }
        }
    }
    if let Ok(id) = HeaderValue::from_str(context.request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(after) = context.retry_after {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    response.extensions_mut().insert(Friendly);
    response
}

impl fmt::Display for ErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panic => f.write_str("Panic"),
            Self::Status(s) => f.write_str(s.as_str()),
            Self::Timeout => f.write_str("Timeout"),
            Self::Overloaded => f.write_str("Overloaded"),
        }
    }
}
