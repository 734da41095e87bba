//! Which requests may be sent twice, and idempotency keys.

use http::HeaderValue;
use http::header::HeaderName;
use reqwest::Request;

use super::classify::is_idempotent_method;

/// The `Idempotency-Key` request header (IETF
/// `draft-ietf-httpapi-idempotency-key-header`, Stripe's convention): a
/// server that supports it runs a request with a key it has already seen at
/// most once, and answers a repeat with the first answer.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Per-request instruction about repeating a request, attached as a
/// reqwest-middleware extension.
///
/// Without one, the method decides (RFC 9110 §9.2.2): GET, HEAD, OPTIONS,
/// TRACE, PUT and DELETE are retried; any other method (POST, PATCH) only if
/// the request carries an [`Idempotency-Key`](IDEMPOTENCY_KEY) header, or
/// when the attempt failed before anything was sent (a connect error).
///
/// ```
/// use selfheal::http::Idempotency;
///
/// # async fn demo(client: reqwest_middleware::ClientWithMiddleware) -> reqwest_middleware::Result<()> {
/// // Stripe-style: one key for this logical call, the same on every attempt.
/// client
///     .post("https://api.stripe.com/v1/refunds")
///     .with_extension(Idempotency::GenerateKey)
///     .header("content-type", "application/x-www-form-urlencoded")
///     .body("charge=ch_123")
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Idempotency {
    /// Give the request an `Idempotency-Key` (a random UUID) unless it already
    /// has one, generated once per logical call and sent unchanged on every
    /// attempt; the request is then retried whatever its method. Only useful
    /// with servers that honour the header (Stripe, Adyen and
    /// others): a server that ignores it runs every attempt.
    GenerateKey,
    /// The caller vouches that repeating this request is harmless (a search
    /// sent as POST, an upsert with a client-chosen id): retried like a GET.
    Idempotent,
    /// Never repeat this request once it may have reached the server, even
    /// if its method is idempotent (a GET with side effects). It is still
    /// retried after a connect error, when nothing was sent.
    NotIdempotent,
}

/// How freely a request may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Whatever happened to the previous attempt.
    Always,
    /// Only when the previous attempt sent nothing.
    IfNothingSent,
}

/// Decides how `request` may be repeated, generating its idempotency key
/// first when asked to (`marker`, or `generate_for_unsafe` for a non-idempotent
/// method without a key).
pub(crate) fn prepare(
    request: &mut Request,
    marker: Option<Idempotency>,
    generate_for_unsafe: bool,
) -> Replay {
    let idempotent_method = is_idempotent_method(request.method());
    let has_key = request.headers().contains_key(IDEMPOTENCY_KEY);
    match marker {
        Some(Idempotency::Idempotent) => return Replay::Always,
        Some(Idempotency::NotIdempotent) => return Replay::IfNothingSent,
        Some(Idempotency::GenerateKey) => {
            if !has_key {
                request.headers_mut().insert(IDEMPOTENCY_KEY, new_key());
            }
            return Replay::Always;
        }
        None => {}
    }
    if idempotent_method || has_key {
        return Replay::Always;
    }
    if generate_for_unsafe {
        request.headers_mut().insert(IDEMPOTENCY_KEY, new_key());
        return Replay::Always;
    }
    Replay::IfNothingSent
}

/// A random (version 4) UUID, lowercase and hyphenated, from the operating
/// system's generator: keys must not collide across processes and restarts,
/// which a seeded PRNG cannot promise.
pub(crate) fn new_key() -> HeaderValue {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // The OS generator failing is nearly unheard of; a key from the
        // thread-local PRNG is still unique with overwhelming probability.
        bytes = fastrand::u128(..).to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut i = 0;
    for (n, byte) in bytes.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            out[i] = b'-';
            i += 1;
        }
        out[i] = HEX[usize::from(byte >> 4)];
        out[i + 1] = HEX[usize::from(byte & 0x0f)];
        i += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex digits and hyphens are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::Method;

    fn request(method: Method) -> Request {
        Request::new(method, "http://example.test/".parse().unwrap())
    }

    #[test]
    fn keys_are_uuid_v4_and_distinct() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(s.as_bytes()[14], b'4');
        assert!(matches!(s.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
        assert_eq!(s.matches('-').count(), 4);
    }

    #[test]
    fn replay_rules() {
        assert_eq!(
            prepare(&mut request(Method::GET), None, false),
            Replay::Always
        );
        assert_eq!(
            prepare(&mut request(Method::DELETE), None, false),
            Replay::Always
        );
        let mut post = request(Method::POST);
        assert_eq!(prepare(&mut post, None, false), Replay::IfNothingSent);
        assert!(!post.headers().contains_key(IDEMPOTENCY_KEY));

        let mut keyed = request(Method::PATCH);
        keyed
            .headers_mut()
            .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        assert_eq!(prepare(&mut keyed, None, false), Replay::Always);
        assert_eq!(keyed.headers()[IDEMPOTENCY_KEY], "k1");

        // Asked for a key: generated once; an existing key is kept.
        let mut post = request(Method::POST);
        assert_eq!(
            prepare(&mut post, Some(Idempotency::GenerateKey), false),
            Replay::Always
        );
        assert_eq!(post.headers()[IDEMPOTENCY_KEY].len(), 36);
        assert_eq!(
            prepare(&mut keyed, Some(Idempotency::GenerateKey), false),
            Replay::Always
        );
        assert_eq!(keyed.headers()[IDEMPOTENCY_KEY], "k1");

        // The builder option applies to non-idempotent methods only.
        let mut post = request(Method::POST);
        assert_eq!(prepare(&mut post, None, true), Replay::Always);
        assert!(post.headers().contains_key(IDEMPOTENCY_KEY));
        let mut get = request(Method::GET);
        prepare(&mut get, None, true);
        assert!(!get.headers().contains_key(IDEMPOTENCY_KEY));

        assert_eq!(
            prepare(
                &mut request(Method::POST),
                Some(Idempotency::Idempotent),
                false
            ),
            Replay::Always
        );
        assert_eq!(
            prepare(
                &mut request(Method::GET),
                Some(Idempotency::NotIdempotent),
                false
            ),
            Replay::IfNothingSent
        );
    }
}
