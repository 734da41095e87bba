//! Cross-site request forgery: a form is accepted only when it was served
//! by this site, to this browser, and sent from this site.
//!
//! ## Why a token, when cookies are `SameSite=Lax`
//!
//! `SameSite=Lax` keeps a session cookie off cross-site `POST`s in today's
//! browsers, and that is most of the defence, but not all of it: older
//! browsers ignore the attribute, a sibling subdomain counts as the same
//! *site*, and a login form has no session to protect at all, so "login
//! CSRF" (another site signs the victim into the attacker's account, and
//! the victim's work lands there) passes straight through. So every
//! state-changing request must also carry a token that only a page of this
//! site could have given it.
//!
//! ## The design: a signed double-submit cookie, plus the browser's word
//!
//! - **A pre-session token.** A visitor gets a cookie holding 128 random
//!   bits (`HttpOnly`, `SameSite=Lax`, `Path=/`; with
//!   [secure cookies](CsrfLayer::with_secure_cookie) it is `Secure` and named
//!   with the `__Host-` prefix, which browsers refuse to let a subdomain or a
//!   plain-HTTP page set). Each form carries, in a hidden field, an
//!   HMAC-SHA256 of those bits keyed with a key derived from the app's
//!   secret. No session is needed (anonymous sign-up and login forms are
//!   covered, and no session is written for a visitor who only reads), and
//!   a token cannot be made for a cookie without the key: a planted cookie
//!   is useless without a token for it, and a token seen in a page is
//!   useless without the `HttpOnly` cookie it belongs to.
//! - **The browser's word, as defence in depth.** `Sec-Fetch-Site:
//!   cross-site` (or `same-site`: a sibling subdomain) and an `Origin` that is
//!   not this site (nor one [allowed](CsrfLayer::with_allowed_origin)), or
//!   `Origin: null`, are refused even with a valid token. Clients that send
//!   neither header (older browsers, programs) rely on the token.
//!
//! Every request whose method is not `GET`, `HEAD`, `OPTIONS` or `TRACE` is
//! checked before the handler runs, so a handler cannot forget. The token is
//! read from the form field `csrf` of a URL-encoded body (buffered up to
//! [a limit](CsrfLayer::with_max_body), then handed on unchanged) or from
//! the `x-csrf-token` header (for other bodies).
//!
//! ## A failed check loses nothing that can be kept
//!
//! A refused form is answered by a [`CsrfResponder`] with what was typed
//! ([`CsrfRejection::fields`]: never a field whose name says password,
//! token or secret) and a fresh token in the request's extensions, so the
//! app can show the same form again, filled in, ready to send. The default,
//! [`PlainRejection`], is a short `403` page that says what to do.
//!
//! Handlers and templates put the token in their forms with [`CsrfToken`]
//! (an extractor, and `Display` as the field's value): the cookie is set on
//! the first answer that renders one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_layer::Layer;
use tower_service::Service;

/// The form field the token travels in.
pub const CSRF_FIELD: &str = "csrf";

/// The header the token may travel in instead (bodies that are not forms).
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-csrf-token");

/// A boxed response future, what a [`CsrfResponder`] returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Why a state-changing request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrfReason {
    /// `Sec-Fetch-Site` says another site (or a sibling subdomain) sent it.
    CrossSite,
    /// `Origin` names another origin, or is `null`.
    ForeignOrigin,
    /// The browser has no token cookie (a first visit, cookies cleared).
    MissingCookie,
    /// The request carries no token.
    MissingToken,
    /// The token does not belong to the cookie.
    BadToken,
    /// The body is larger than the layer reads, so its token cannot be read.
    TooLarge,
}

impl CsrfReason {
    /// The status a refusal answers with: `413` for [`TooLarge`](Self::TooLarge),
    /// else `403`.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// A short name, for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CrossSite => "cross_site",
            Self::ForeignOrigin => "foreign_origin",
            Self::MissingCookie => "missing_cookie",
            Self::MissingToken => "missing_token",
            Self::BadToken => "bad_token",
            Self::TooLarge => "too_large",
        }
    }
}

/// A refused request, for a [`CsrfResponder`]: why, the request's parts
/// (its path, its headers, its extensions: the session, and a fresh
/// [`CsrfToken`] for the form shown again) and the fields that can safely
/// be shown back.
#[derive(Debug)]
#[non_exhaustive]
pub struct CsrfRejection {
    /// Why.
    pub reason: CsrfReason,
    /// The request, without its body.
    pub parts: Parts,
    /// The form's fields as sent (URL-encoded bodies only), minus the token
    /// and every field whose name contains `password`, `token` or
    /// `secret`: what was typed, safe to put back into the form.
    pub fields: Vec<(String, String)>,
}

impl CsrfRejection {
    /// The first value of the field `name`, or `""`.
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Answers a refused request. Closures `Fn(CsrfRejection) -> impl Future<Output = Response>`
/// are responders too. The layer then adds `Cache-Control: no-store` and,
/// when the answer renders a new token, its cookie.
pub trait CsrfResponder: Send + Sync + 'static {
    /// The answer to `rejection` (use [`CsrfReason::status`]).
    fn respond(&self, rejection: CsrfRejection) -> ResponseFuture;
}

impl<F, Fut> CsrfResponder for F
where
    F: Fn(CsrfRejection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    fn respond(&self, rejection: CsrfRejection) -> ResponseFuture {
        Box::pin(self(rejection))
    }
}

/// The default [`CsrfResponder`]: a short HTML page with the reason's
/// status that says what to do (go back, reload, send again).
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct PlainRejection;

impl CsrfResponder for PlainRejection {
    fn respond(&self, rejection: CsrfRejection) -> ResponseFuture {
        let body = "<!doctype html><meta charset=\"utf-8\"><title>Please send the form again</title>\
                    <h1>Please send the form again</h1>\
                    <p>This form had expired, or was sent from another site, so nothing was done. \
                    Go back, reload the page, and send it again.</p>";
        let response = (
            rejection.reason.status(),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response();
        Box::pin(std::future::ready(response))
    }
}

/// A [`Layer`] that refuses state-changing requests without a valid token
/// or from another site; see the [module docs](self).
///
/// Defaults: cookie `selfheal_csrf` (`__Host-selfheal_csrf` when secure),
/// secure cookies on, bodies read up to 64 KiB, no other allowed origin,
/// [`PlainRejection`].
///
/// Put it inside the session layer when the responder needs the session,
/// and around every route with a form (admin routes too).
#[derive(Clone)]
pub struct CsrfLayer {
    shared: Arc<Shared>,
}

struct Shared {
    key: [u8; 32],
    cookie: String,
    secure: bool,
    max_body: usize,
    allowed_origins: Vec<String>,
    responder: Arc<dyn CsrfResponder>,
}

impl Clone for Shared {
    fn clone(&self) -> Self {
        Self {
            key: self.key,
            cookie: self.cookie.clone(),
            secure: self.secure,
            max_body: self.max_body,
            allowed_origins: self.allowed_origins.clone(),
            responder: self.responder.clone(),
        }
    }
}

impl fmt::Debug for CsrfLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfLayer")
            .field("key", &"<redacted>")
            .field("cookie", &self.cookie_name())
            .field("max_body", &self.shared.max_body)
            .field("allowed_origins", &self.shared.allowed_origins)
            .finish_non_exhaustive()
    }
}

impl CsrfLayer {
    /// A layer whose tokens are keyed with a key derived from `secret` (the
    /// app's secret key: the derivation keeps the tokens' key apart from
    /// every other use of it).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let mut derive = Sha256::new();
        derive.update(b"selfheal csrf key\0");
        derive.update(secret.as_ref());
        Self {
            shared: Arc::new(Shared {
                key: derive.finalize().into(),
                cookie: "selfheal_csrf".to_owned(),
                secure: true,
                max_body: 64 * 1024,
                allowed_origins: Vec::new(),
                responder: Arc::new(PlainRejection),
            }),
        }
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// The cookie's name (ASCII letters, digits, `_` and `-`; others are
    /// dropped), before the `__Host-` prefix secure cookies get.
    pub fn with_cookie_name(mut self, name: &str) -> Self {
        self.shared_mut().cookie = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        self
    }

    /// Whether the cookie is `Secure` and `__Host-` prefixed (served over
    /// HTTPS). Default `true`; turn off only for plain-HTTP development.
    pub fn with_secure_cookie(mut self, secure: bool) -> Self {
        self.shared_mut().secure = secure;
        self
    }

    /// Also accepts `Origin: origin` (`https://learn.example.com`): when a
    /// reverse proxy rewrites `Host`, the origin browsers see is not the one
    /// the request names.
    pub fn with_allowed_origin(mut self, origin: impl Into<String>) -> Self {
        let origin = origin.into().trim_end_matches('/').to_owned();
        self.shared_mut().allowed_origins.push(origin);
        self
    }

    /// The largest URL-encoded body read for its token. Default 64 KiB;
    /// larger ones are refused ([`CsrfReason::TooLarge`]).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.shared_mut().max_body = bytes;
        self
    }

    /// Replaces [`PlainRejection`].
    pub fn with_responder(mut self, responder: impl CsrfResponder) -> Self {
        self.shared_mut().responder = Arc::new(responder);
        self
    }

    /// The cookie's name as sent (with the `__Host-` prefix when secure).
    pub fn cookie_name(&self) -> String {
        self.shared.cookie_name()
    }
}

impl Shared {
    fn cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{}", self.cookie)
        } else {
            self.cookie.clone()
        }
    }

    fn set_cookie(&self, nonce: &str) -> Option<HeaderValue> {
        let value = if self.secure {
            format!(
                "{}={nonce}; Path=/; HttpOnly; SameSite=Lax; Secure",
                self.cookie_name()
            )
        } else {
            format!("{}={nonce}; Path=/; HttpOnly; SameSite=Lax", self.cookie)
        };
        HeaderValue::from_str(&value).ok()
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The form token of this request's visitor, to put in a form's hidden
/// `csrf` field: `value()`, or the token itself in a template (`Display`).
/// Rendering it makes the layer set the cookie when the visitor has none.
///
/// An extractor (a `500` when no [`CsrfLayer`] runs: a programming error;
/// take `Option<CsrfToken>` where the layer is optional).
#[derive(Clone)]
pub struct CsrfToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    key: [u8; 32],
    nonce: String,
    /// The visitor has no (valid) cookie: this nonce is new.
    fresh: bool,
    /// A page rendered the token.
    issued: AtomicBool,
}

impl fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfToken")
            .field("fresh", &self.inner.fresh)
            .finish_non_exhaustive()
    }
}

impl CsrfToken {
    fn new(key: [u8; 32], nonce: String, fresh: bool) -> Self {
        Self {
            inner: Arc::new(TokenInner {
                key,
                nonce,
                fresh,
                issued: AtomicBool::new(false),
            }),
        }
    }

    /// The value of the form's `csrf` field.
    pub fn value(&self) -> String {
        self.inner.issued.store(true, Ordering::Relaxed);
        hex(&mac(&self.inner.key, &self.inner.nonce))
    }

    /// The token of the request with these extensions, if a [`CsrfLayer`]
    /// runs.
    pub fn of(extensions: &axum::http::Extensions) -> Option<Self> {
        extensions.get::<Self>().cloned()
    }

    /// Whether `presented` is this visitor's token (constant-time).
    fn accepts(&self, presented: &str) -> bool {
        let Some(presented) = unhex32(presented) else {
            return false;
        };
        mac(&self.inner.key, &self.inner.nonce)
            .ct_eq(&presented)
            .into()
    }

    fn needs_cookie(&self) -> bool {
        self.inner.fresh && self.inner.issued.load(Ordering::Relaxed)
    }
}

impl fmt::Display for CsrfToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CsrfToken {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::of(&parts.extensions).ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for CsrfToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

/// The service made by [`CsrfLayer`].
#[derive(Clone)]
pub struct CsrfService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for CsrfService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request<Body>> for CsrfService<S>
where
    S: Service<Request<Body>, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = CsrfFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        let cookie = super::cookie(req.headers(), &shared.cookie_name())
            .filter(|nonce| is_nonce(nonce))
            .map(str::to_owned);
        let token = match cookie {
            Some(nonce) => CsrfToken::new(shared.key, nonce, false),
            None => CsrfToken::new(shared.key, new_nonce(), true),
        };
        req.extensions_mut().insert(token.clone());
        if is_safe(req.method()) {
            return CsrfFuture {
                state: FutureState::Safe {
                    future: self.inner.call(req),
                    token: Some(token),
                    shared: Some(shared),
                },
            };
        }
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        CsrfFuture {
            state: FutureState::Checked {
                future: Box::pin(check(shared, token, req, inner)),
            },
        }
    }
}

pin_project! {
    /// The response future of [`CsrfService`]: safe methods go straight
    /// to the inner service (no boxing); others are checked first.
    pub struct CsrfFuture<F> {
        #[pin]
        state: FutureState<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum FutureState<F> {
        Safe {
            #[pin]
            future: F,
            token: Option<CsrfToken>,
            shared: Option<Arc<Shared>>,
        },
        Checked {
            future: ResponseFuture,
        },
    }
}

impl<F> fmt::Debug for CsrfFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfFuture").finish_non_exhaustive()
    }
}

impl<F> Future for CsrfFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Safe {
                future,
                token,
                shared,
            } => {
                let Ok(mut response) = std::task::ready!(future.poll(cx));
                if let (Some(token), Some(shared)) = (token.take(), shared.take()) {
                    add_cookie(&mut response, &token, &shared);
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Checked { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Sets the cookie of `token` on `response` when the page rendered a token
/// the visitor has no cookie for.
fn add_cookie(response: &mut Response, token: &CsrfToken, shared: &Shared) {
    if token.needs_cookie()
        && let Some(cookie) = shared.set_cookie(&token.inner.nonce)
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

/// Checks a state-changing request, then hands it on or refuses it.
async fn check<S>(
    shared: Arc<Shared>,
    token: CsrfToken,
    req: Request<Body>,
    mut inner: S,
) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = std::convert::Infallible>,
{
    let (parts, body) = req.into_parts();
    let header_token = parts
        .headers
        .get(&CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (body, fields) = if is_form(&parts.headers) {
        match axum::body::to_bytes(body, shared.max_body).await {
            Ok(bytes) => {
                let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                (Body::from(bytes), fields)
            }
            Err(_) => {
                return refuse(&shared, &token, CsrfReason::TooLarge, parts, Vec::new()).await;
            }
        }
    } else {
        (body, Vec::new())
    };
    // After reading the body: a refused form is shown back filled in.
    if let Some(reason) = cross_site(&parts.headers, &parts.uri, &shared.allowed_origins) {
        return refuse(&shared, &token, reason, parts, fields).await;
    }
    let presented = header_token.or_else(|| {
        fields
            .iter()
            .find(|(name, _)| name == CSRF_FIELD)
            .map(|(_, value)| value.clone())
    });
    let verdict = match presented {
        _ if token.inner.fresh => Err(CsrfReason::MissingCookie),
        None => Err(CsrfReason::MissingToken),
        Some(presented) if token.accepts(&presented) => Ok(()),
        Some(_) => Err(CsrfReason::BadToken),
    };
    if let Err(reason) = verdict {
        return refuse(&shared, &token, reason, parts, fields).await;
    }
    let Ok(response) = inner.call(Request::from_parts(parts, body)).await;
    response
}

/// The answer to a refused request: the responder's, with the cookie of
/// the fresh token it renders and `no-store`.
async fn refuse(
    shared: &Shared,
    token: &CsrfToken,
    reason: CsrfReason,
    parts: Parts,
    fields: Vec<(String, String)>,
) -> Response {
    tracing::info!(
        target: "selfheal",
        reason = reason.as_str(),
        method = %parts.method,
        path = parts.uri.path(),
        "state-changing request refused: CSRF check failed"
    );
    let fields = fields
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            !["password", "token", "secret", CSRF_FIELD]
                .iter()
                .any(|secret| name.contains(secret))
        })
        .collect();
    let rejection = CsrfRejection {
        reason,
        parts,
        fields,
    };
    let mut response = shared.responder.respond(rejection).await;
    add_cookie(&mut response, token, shared);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether the browser says the request comes from another site, or names
/// an origin that is not this one.
fn cross_site(headers: &HeaderMap, uri: &Uri, allowed: &[String]) -> Option<CsrfReason> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
            return Some(CsrfReason::CrossSite);
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else {
        return Some(CsrfReason::ForeignOrigin);
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return None;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => None,
        _ => Some(CsrfReason::ForeignOrigin),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn mac(key: &[u8; 32], nonce: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"selfheal csrf v1\0");
    mac.update(nonce.as_bytes());
    mac.finalize().into_bytes().into()
}

/// 128 random bits, hex.
fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = fastrand::u128(..).to_le_bytes();
    }
    hex(&bytes)
}

fn is_nonce(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_browser_word_is_checked() {
        let uri: Uri = "/login".parse().unwrap();
        let check = |pairs: &[(&'static str, &str)]| cross_site(&headers(pairs), &uri, &[]);
        assert_eq!(check(&[("host", "learn.example.com")]), None);
        assert_eq!(
            check(&[
                ("host", "learn.example.com"),
                ("origin", "https://learn.example.com")
            ]),
            None
        );
        assert_eq!(
            check(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080")
            ]),
            None
        );
        assert_eq!(
            check(&[
                ("host", "learn.example.com"),
                ("sec-fetch-site", "same-origin")
            ]),
            None
        );
        for bad in [
            &[
                ("host", "learn.example.com"),
                ("origin", "https://evil.example"),
            ][..],
            &[("host", "learn.example.com"), ("origin", "null")],
            &[
                ("host", "learn.example.com"),
                ("origin", "https://learn.example.com.evil.example"),
            ],
            &[("origin", "https://learn.example.com")],
        ] {
            assert_eq!(check(bad), Some(CsrfReason::ForeignOrigin), "{bad:?}");
        }
        for site in ["cross-site", "same-site", "CROSS-SITE"] {
            assert_eq!(
                check(&[
                    ("host", "learn.example.com"),
                    ("origin", "https://learn.example.com"),
                    ("sec-fetch-site", site)
                ]),
                Some(CsrfReason::CrossSite),
                "{site}"
            );
        }
        let allowed = ["https://learn.example.com".to_owned()];
        assert_eq!(
            cross_site(
                &headers(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "https://learn.example.com")
                ]),
                &uri,
                &allowed
            ),
            None
        );
    }

    #[test]
    fn tokens_belong_to_their_cookie_and_key() {
        let key = [7u8; 32];
        let nonce = new_nonce();
        assert!(is_nonce(&nonce));
        let token = CsrfToken::new(key, nonce.clone(), false);
        let value = token.value();
        assert_eq!(value.len(), 64);
        assert!(token.accepts(&value));
        assert!(!CsrfToken::new(key, new_nonce(), false).accepts(&value));
        assert!(!CsrfToken::new([8u8; 32], nonce, false).accepts(&value));
        for bad in ["", "zz", &value[..63], &format!("{value}0")] {
            assert!(!token.accepts(bad), "{bad}");
        }
        assert!(!is_nonce("not a nonce"));
    }
}
