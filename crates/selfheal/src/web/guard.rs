//! Who may see the admin pages.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, header};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type PredicateFuture = Pin<Box<dyn Future<Output = bool> + Send>>;
type Predicate = Arc<dyn Fn(Request<()>) -> PredicateFuture + Send + Sync>;

/// The name of the cookie the login form sets.
pub(crate) const COOKIE: &str = "selfheal_admin";

/// Decides who may see the admin pages: a bearer token, or the app's own
/// rule (a predicate over the request, e.g. "the session's user is an
/// admin"). Everyone else gets `403`, for HTML and JSON alike.
///
/// ## The token, for programs and for browsers
///
/// A program sends `Authorization: Bearer <token>`. A browser cannot add a
/// header to a link, so the dashboard has a login form (`GET /admin/login`)
/// that POSTs the token in the request body and, when it is right, sets a
/// cookie: `HttpOnly` (no script can read it), `SameSite=Strict` (no other
/// site can make the browser send it), `Path=/admin`, `Secure` (unless
/// [`with_secure_cookie(false)`](AdminGuard::with_secure_cookie), for plain
/// HTTP in development), valid for 12 hours by default. The cookie holds its
/// issue time, its expiry and an HMAC-SHA256 of both keyed with a key
/// derived from the token, never the token itself; changing the token signs
/// everyone out.
///
/// ## Logging out revokes, on the server
///
/// The cookie is stateless, so deleting it in the browser alone would leave
/// a copied cookie (a shared machine, a proxy log, a stolen backup) valid
/// until it expires. `POST /admin/logout` therefore also moves the guard's
/// **revocation epoch** to now: every cookie issued before it is refused
/// from then on. The cookie names no one, so a logout signs out *every*
/// admin browser signed in before it, not only the one that pressed the
/// button; they sign in again with the token. Only a request carrying a
/// valid admin cookie moves the epoch (and the cookie is `SameSite=Strict`,
/// so no other site can make a browser do it): an anonymous POST cannot sign
/// admins out.
///
/// The epoch is held by this guard (its clones share it), in memory: a
/// state no database outage can take away. To keep it across restarts and
/// share it between instances, persist it where the app keeps its state:
/// [`on_revoke`](AdminGuard::on_revoke) hears each new epoch (write it
/// down), and [`revoke_before`](AdminGuard::revoke_before) takes one read
/// back (at start, and every few seconds from the shared database: another
/// instance's logout then reaches this one). Without that, a restart forgets
/// the epoch and other instances accept an old cookie until it expires
/// ([`with_login_ttl`](AdminGuard::with_login_ttl)). Rotating `ADMIN_TOKEN`
/// revokes everywhere at once.
///
/// A `?token=` query parameter is deliberately **not** accepted: URLs end up
/// in access logs, proxy logs, browser history and `Referer` headers, and a
/// token there is a token leaked.
///
/// Presented tokens are compared in constant time: both sides are hashed
/// with SHA-256 and the digests compared with `subtle`, so neither the
/// token's length nor its first wrong byte shows in the timing.
///
/// ```
/// use selfheal::web::AdminGuard;
///
/// let guard = AdminGuard::token("a-long-random-admin-token-from-env").unwrap();
/// assert!(AdminGuard::token("short").is_err());
/// // The token never shows in Debug output.
/// assert!(!format!("{guard:?}").contains("admin-token"));
/// ```
#[derive(Clone)]
pub struct AdminGuard {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Token {
        digest: [u8; 32],
        cookie_key: [u8; 32],
        secure_cookie: bool,
        ttl: Duration,
        /// Cookies issued at or before this (Unix ms) are refused: moved
        /// by a logout. Shared by the guard's clones.
        revoked_before: Arc<AtomicU64>,
        /// Hears each epoch a logout sets (to persist or share it).
        on_revoke: Option<Arc<dyn Fn(u64) + Send + Sync>>,
        /// Also admins: those the app's rule allows (see `or_predicate`).
        also: Option<Predicate>,
    },
    Predicate(Predicate),
}

impl fmt::Debug for AdminGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Token {
                secure_cookie,
                ttl,
                also,
                ..
            } => f
                .debug_struct("AdminGuard::Token")
                .field("token", &"<redacted>")
                .field("secure_cookie", secure_cookie)
                .field("ttl", ttl)
                .field("or_predicate", &also.is_some())
                .finish(),
            Kind::Predicate(_) => f.write_str("AdminGuard::Predicate"),
        }
    }
}

/// An admin token that is too weak to guard anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the admin token must be at least {min} characters long (got {got})")]
pub struct TokenError {
    min: usize,
    got: usize,
}

impl AdminGuard {
    /// The shortest token accepted.
    pub const MIN_TOKEN_LEN: usize = 16;

    /// Admins are those presenting `token` (a bearer header, or the cookie
    /// set by the login form). Fails for tokens shorter than
    /// [`MIN_TOKEN_LEN`](Self::MIN_TOKEN_LEN) characters.
    pub fn token(token: impl AsRef<str>) -> Result<Self, TokenError> {
        let token = token.as_ref();
        let got = token.chars().count();
        if got < Self::MIN_TOKEN_LEN {
            return Err(TokenError {
                min: Self::MIN_TOKEN_LEN,
                got,
            });
        }
        let mut derive = Sha256::new();
        derive.update(b"selfheal admin cookie key\0");
        derive.update(token.as_bytes());
        Ok(Self {
            kind: Kind::Token {
                digest: Sha256::digest(token.as_bytes()).into(),
                cookie_key: derive.finalize().into(),
                secure_cookie: true,
                ttl: Duration::from_secs(12 * 3600),
                revoked_before: Arc::new(AtomicU64::new(0)),
                on_revoke: None,
                also: None,
            },
        })
    }

    /// Admins are those for whom `allow` says yes. It gets the request's
    /// method, URI, headers and extensions (a `tower_sessions::Session` is
    /// there when the session layer runs before the admin routes):
    ///
    /// ```
    /// use selfheal::web::AdminGuard;
    ///
    /// let guard = AdminGuard::predicate(|request: axum::http::Request<()>| async move {
    ///     // e.g. read the app's session from request.extensions()
    ///     request.headers().get("x-admin").is_some()
    /// });
    /// # let _ = guard;
    /// ```
    pub fn predicate<F, Fut>(allow: F) -> Self
    where
        F: Fn(Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self {
            kind: Kind::Predicate(Arc::new(move |request| Box::pin(allow(request)))),
        }
    }

    /// Admins are also those for whom `allow` says yes (the token still
    /// works, and the login form stays). Useful when some users are flagged
    /// admin in the app's own database:
    ///
    /// ```
    /// use selfheal::web::AdminGuard;
    ///
    /// let guard = AdminGuard::token("a-long-random-admin-token-from-env")
    ///     .unwrap()
    ///     .or_predicate(|request: axum::http::Request<()>| async move {
    ///         request.headers().get("x-admin").is_some()
    ///     });
    /// # let _ = guard;
    /// ```
    ///
    /// On a predicate guard, the two predicates are combined: either allows.
    pub fn or_predicate<F, Fut>(self, allow: F) -> Self
    where
        F: Fn(Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let allow: Predicate = Arc::new(move |request| Box::pin(allow(request)));
        let mut kind = self.kind;
        match &mut kind {
            Kind::Token { also, .. } => *also = Some(either(also.take(), allow)),
            Kind::Predicate(first) => *first = either(Some(Arc::clone(first)), allow),
        }
        Self { kind }
    }

    /// Whether the login cookie is `Secure` (sent over HTTPS only). Default
    /// `true`; turn off only for plain-HTTP development.
    pub fn with_secure_cookie(mut self, secure: bool) -> Self {
        if let Kind::Token { secure_cookie, .. } = &mut self.kind {
            *secure_cookie = secure;
        }
        self
    }

    /// How long a login lasts. Default 12 hours.
    pub fn with_login_ttl(mut self, login_ttl: Duration) -> Self {
        if let Kind::Token { ttl, .. } = &mut self.kind {
            *ttl = login_ttl;
        }
        self
    }

    /// Whether this guard has a login form (token guards do).
    pub(crate) fn has_login(&self) -> bool {
        matches!(self.kind, Kind::Token { .. })
    }

    /// Whether the request comes from an admin.
    pub(crate) async fn allows(&self, parts: &Parts) -> bool {
        match &self.kind {
            Kind::Token { digest, also, .. } => {
                let bearer = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                let by_token = match bearer {
                    Some(presented) => token_matches(digest, presented),
                    None => self.cookie_is_valid(&parts.headers),
                };
                match also {
                    Some(allow) if !by_token => allow(request_of(parts)).await,
                    _ => by_token,
                }
            }
            Kind::Predicate(allow) => allow(request_of(parts)).await,
        }
    }

    /// The `Set-Cookie` for a login with `presented`, if it is the token.
    pub(crate) fn login(&self, presented: &str) -> Option<HeaderValue> {
        let Kind::Token {
            digest,
            cookie_key,
            secure_cookie,
            ttl,
            ..
        } = &self.kind
        else {
            return None;
        };
        if !token_matches(digest, presented) {
            return None;
        }
        let issued = unix_now_ms();
        let expiry = issued / 1000 + ttl.as_secs();
        let value = format!(
            "{COOKIE}={issued}.{expiry}.{}; Path=/admin; Max-Age={}; HttpOnly; SameSite=Strict{}",
            hex(&sign(cookie_key, issued, expiry)),
            ttl.as_secs(),
            if *secure_cookie { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&value).ok()
    }

    /// The revocation epoch (Unix ms): admin cookies issued at or before
    /// it are refused. `None` for a predicate-only guard.
    pub fn revoked_before(&self) -> Option<u64> {
        match &self.kind {
            Kind::Token { revoked_before, .. } => Some(revoked_before.load(Ordering::SeqCst)),
            Kind::Predicate(_) => None,
        }
    }

    /// Moves the revocation epoch forward to `epoch_ms` (never back): one
    /// persisted earlier, or set by another instance's logout. See the
    /// type's docs.
    pub fn revoke_before(&self, epoch_ms: u64) {
        if let Kind::Token { revoked_before, .. } = &self.kind {
            revoked_before.fetch_max(epoch_ms, Ordering::SeqCst);
        }
    }

    /// Calls `hook` with the new epoch after each logout that revokes, to
    /// persist it or share it with other instances (it runs on the request's
    /// task: hand slow work to a task of your own).
    pub fn on_revoke(mut self, hook: impl Fn(u64) + Send + Sync + 'static) -> Self {
        if let Kind::Token { on_revoke, .. } = &mut self.kind {
            *on_revoke = Some(Arc::new(hook));
        }
        self
    }

    /// The `Set-Cookie` that signs out. When the request carries a valid
    /// admin cookie, every cookie issued until now is revoked (see the
    /// type's docs); an anonymous request revokes nothing.
    pub(crate) fn logout(&self, headers: &HeaderMap) -> HeaderValue {
        if let Kind::Token {
            revoked_before,
            on_revoke,
            ..
        } = &self.kind
            && self.cookie_is_valid(headers)
        {
            let now = unix_now_ms();
            revoked_before.fetch_max(now, Ordering::SeqCst);
            if let Some(hook) = on_revoke {
                hook(now);
            }
        }
        HeaderValue::from_static(
            "selfheal_admin=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict",
        )
    }

    /// Whether `headers` carry an admin cookie that verifies, has not
    /// expired and was issued after the last logout.
    fn cookie_is_valid(&self, headers: &HeaderMap) -> bool {
        let Kind::Token {
            cookie_key,
            revoked_before,
            ..
        } = &self.kind
        else {
            return false;
        };
        super::cookie(headers, COOKIE).is_some_and(|value| {
            verify_cookie(
                cookie_key,
                value,
                unix_now(),
                revoked_before.load(Ordering::SeqCst),
            )
        })
    }
}

/// Constant-time: SHA-256 of the presented token, compared with `subtle`.
/// A body-less copy of the request, for a predicate.
fn request_of(parts: &Parts) -> Request<()> {
    copy_request(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        &parts.extensions,
    )
}

fn copy_request(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    version: axum::http::Version,
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    *request.version_mut() = version;
    *request.headers_mut() = headers.clone();
    *request.extensions_mut() = extensions.clone();
    request
}

/// `first` or `second`: `second` is asked only when `first` says no.
fn either(first: Option<Predicate>, second: Predicate) -> Predicate {
    match first {
        None => second,
        Some(first) => Arc::new(move |request: Request<()>| {
            let first = first.clone();
            let second = second.clone();
            Box::pin(async move {
                let copy = clone_request(&request);
                first(request).await || second(copy).await
            })
        }),
    }
}

fn clone_request(request: &Request<()>) -> Request<()> {
    copy_request(
        request.method(),
        request.uri(),
        request.version(),
        request.headers(),
        request.extensions(),
    )
}

fn token_matches(digest: &[u8; 32], presented: &str) -> bool {
    let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    presented.ct_eq(digest).into()
}

/// The cookie's MAC over its issue time (Unix ms) and expiry (Unix s).
fn sign(key: &[u8; 32], issued_ms: u64, expiry: u64) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("v2.{issued_ms}.{expiry}").as_bytes());
    mac.finalize().into_bytes().into()
}

/// `issued.expiry.tag`: the tag verifies, `expiry` is after `now` (Unix
/// s), and `issued` is after `revoked_before` (Unix ms).
fn verify_cookie(key: &[u8; 32], value: &str, now: u64, revoked_before: u64) -> bool {
    let mut fields = value.splitn(3, '.');
    let (Some(issued), Some(expiry), Some(tag)) = (fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let (Ok(issued), Ok(expiry)) = (issued.parse::<u64>(), expiry.parse::<u64>()) else {
        return false;
    };
    if expiry <= now || issued <= revoked_before || tag.len() != 64 {
        return false;
    }
    let Some(tag) = unhex(tag) else {
        return false;
    };
    sign(key, issued, expiry).ct_eq(&tag).into()
}

fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_verify_until_they_expire_and_only_with_their_key() {
        let key = [7u8; 32];
        let value = format!("500000.1000.{}", hex(&sign(&key, 500_000, 1000)));
        assert!(verify_cookie(&key, &value, 999, 0));
        assert!(!verify_cookie(&key, &value, 1000, 0));
        assert!(!verify_cookie(&[8u8; 32], &value, 999, 0));
        let forged = format!("500000.2000.{}", hex(&sign(&key, 500_000, 1000)));
        assert!(!verify_cookie(&key, &forged, 999, 0));
        let reissued = format!("600000.1000.{}", hex(&sign(&key, 500_000, 1000)));
        assert!(!verify_cookie(&key, &reissued, 999, 0));
        assert!(!verify_cookie(&key, "garbage", 0, 0));
        assert!(!verify_cookie(&key, "5.zz", 0, 0));
        assert!(!verify_cookie(&key, "1.5.zz", 0, 0));
    }

    #[test]
    fn cookies_issued_before_a_logout_are_revoked() {
        let key = [7u8; 32];
        let value = format!("500000.1000.{}", hex(&sign(&key, 500_000, 1000)));
        assert!(verify_cookie(&key, &value, 999, 499_999));
        assert!(!verify_cookie(&key, &value, 999, 500_000));
        assert!(!verify_cookie(&key, &value, 999, 700_000));
    }

    #[test]
    fn a_logout_is_heard_and_an_epoch_from_elsewhere_only_moves_forward() {
        let heard = Arc::new(AtomicU64::new(0));
        let guard = AdminGuard::token("a-long-random-admin-token-0123")
            .unwrap()
            .on_revoke({
                let heard = heard.clone();
                move |epoch| heard.store(epoch, Ordering::SeqCst)
            });
        let clone = guard.clone();
        guard.revoke_before(1_000);
        assert_eq!(clone.revoked_before(), Some(1_000), "clones share it");
        guard.revoke_before(500);
        assert_eq!(guard.revoked_before(), Some(1_000), "never back");

        let mut headers = HeaderMap::new();
        let cookie = guard.login("a-long-random-admin-token-0123").unwrap();
        let pair = cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        headers.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_str(&pair).unwrap(),
        );
        guard.logout(&headers);
        let epoch = heard.load(Ordering::SeqCst);
        assert!(epoch > 1_000, "the hook heard the new epoch");
        assert_eq!(guard.revoked_before(), Some(epoch));
        assert_eq!(
            AdminGuard::predicate(|_| async { true }).revoked_before(),
            None
        );
    }

    #[test]
    fn tokens_compare_by_digest() {
        let digest: [u8; 32] = Sha256::digest(b"0123456789abcdef").into();
        assert!(token_matches(&digest, "0123456789abcdef"));
        assert!(!token_matches(&digest, "0123456789abcdeF"));
        assert!(!token_matches(&digest, ""));
    }
}
