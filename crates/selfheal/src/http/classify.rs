//! What is transient, what is permanent, and what may be sent twice.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::time::SystemTime;

use reqwest::{Method, Response, StatusCode};

use super::hints;
use crate::retry::{Classify, Signal, Verdict};

/// A set of HTTP status codes (0 to 639, which covers the 100 to 599 that
/// exist), as a bitmap: `contains` is a shift and a mask.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusSet([u64; 10]);

impl StatusSet {
    const LIMIT: u16 = 640;

    /// 408, 429, 502, 503, 504: see the module docs of `http` for why, and
    /// why not 500.
    pub(crate) const fn default_transient() -> Self {
        Self([0; 10])
            .with(408)
            .with(429)
            .with(502)
            .with(503)
            .with(504)
    }

    pub(crate) const fn with(mut self, code: u16) -> Self {
        if code < Self::LIMIT {
            self.0[(code / 64) as usize] |= 1 << (code % 64);
        }
        self
    }

    pub(crate) const fn without(mut self, code: u16) -> Self {
        if code < Self::LIMIT {
            self.0[(code / 64) as usize] &= !(1 << (code % 64));
        }
        self
    }

    #[inline]
    pub(crate) const fn contains(&self, code: u16) -> bool {
        code < Self::LIMIT && self.0[(code / 64) as usize] & (1 << (code % 64)) != 0
    }

    fn codes(&self) -> impl Iterator<Item = u16> + '_ {
        (0..Self::LIMIT).filter(|&c| self.contains(c))
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.codes()).finish()
    }
}

/// How a failed attempt failed, for classification and fingerprints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// The connection could not be established (refused, DNS, connect
    /// timeout): nothing was sent, so any request may be retried.
    Connect,
    /// The attempt timed out after the connection was made: the server may
    /// have received (and acted on) the request.
    Timeout,
    /// The connection was reset or closed mid-exchange: the server may have
    /// received the request.
    Reset,
    /// A TLS failure (bad certificate, protocol mismatch): will repeat.
    Tls,
    /// Anything else (building the request, a body error, a redirect loop,
    /// another middleware's error): not a transient condition of the
    /// dependency.
    Other(&'static str),
}

impl ErrorClass {
    pub(crate) fn of(error: &reqwest_middleware::Error) -> Self {
        let reqwest_middleware::Error::Reqwest(error) = error else {
            return Self::Other("middleware");
        };
        if error.is_builder() {
            return Self::Other("builder");
        }
        if error.is_redirect() {
            return Self::Other("redirect");
        }
        if error.is_decode() {
            return Self::Other("decode");
        }
        if chain_has_tls_error(error) {
            return Self::Tls;
        }
        if error.is_connect() {
            return Self::Connect;
        }
        if error.is_timeout() {
            return Self::Timeout;
        }
        if chain_has_reset(error) {
            return Self::Reset;
        }
        if error.is_body() {
            return Self::Other("body");
        }
        Self::Other("request")
    }

    /// Whether the attempt or its connect timed out.
    pub(crate) fn timed_out(error: &reqwest_middleware::Error) -> bool {
        matches!(error, reqwest_middleware::Error::Reqwest(e) if e.is_timeout())
    }

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Tls => "tls",
            Self::Other(name) => name,
        }
    }

    pub(crate) const fn is_transient(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout | Self::Reset)
    }
}

/// Walks `error`'s sources (and the payloads of `io::Error`s, which
/// `source()` skips) calling `f` on each.
fn any_source(
    error: &(dyn StdError + 'static),
    f: &mut dyn FnMut(&(dyn StdError + 'static)) -> bool,
) -> bool {
    let mut next = Some(error);
    // Bounded: a cyclic or absurdly deep chain is not worth following.
    for _ in 0..32 {
        let Some(current) = next else { return false };
        if f(current) {
            return true;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && f(inner)
        {
            return true;
        }
        next = current.source();
    }
    false
}

fn chain_has_tls_error(error: &reqwest::Error) -> bool {
    any_source(error, &mut |e| e.is::<rustls::Error>())
}

fn chain_has_reset(error: &reqwest::Error) -> bool {
    use std::io::ErrorKind::*;
    any_source(error, &mut |e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
            );
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message()
                || h.is_canceled()
                || h.is_closed()
                || h.is_body_write_aborted();
        }
        false
    })
}

/// The middleware's classifier: transient statuses (with the server's hint)
/// and transient errors; fingerprints by status code or error class.
#[derive(Clone, Debug)]
pub(crate) struct Classifier {
    pub(crate) transient: StatusSet,
}

impl Classify<Response, reqwest_middleware::Error> for Classifier {
    fn classify_error(&self, error: &reqwest_middleware::Error) -> Verdict {
        if ErrorClass::of(error).is_transient() {
            Verdict::Transient
        } else {
            Verdict::Permanent
        }
    }

    #[inline]
    fn classify_ok(&self, response: &Response) -> Option<Verdict> {
        let status = response.status();
        if status.as_u16() < 400 {
            return None;
        }
        Some(self.classify_status(status, response))
    }

    fn failure_kind(
        &self,
        outcome: Result<&Response, &reqwest_middleware::Error>,
    ) -> Cow<'static, str> {
        match outcome {
            Ok(response) => Cow::Owned(response.status().as_str().to_owned()),
            Err(error) => Cow::Borrowed(ErrorClass::of(error).as_str()),
        }
    }

    /// A refusal is an answer that pushes back (a retryable status) or an
    /// attempt or connect that timed out (the first symptoms of an
    /// overloaded server: a slow answer, a full accept backlog); a refused
    /// connect or a reset connection says nothing about capacity (the
    /// link, or a process that is gone: the breaker's to weigh) and is not
    /// counted; any other answer is an accept.
    fn throttle_signal(
        &self,
        outcome: Result<&Response, &reqwest_middleware::Error>,
        verdict: Verdict,
    ) -> Signal {
        if !verdict.is_retryable() {
            return Signal::Accepted;
        }
        match outcome {
            Ok(_) => Signal::Refused,
            Err(error) if ErrorClass::timed_out(error) => Signal::Refused,
            Err(_) => Signal::NoAnswer,
        }
    }
}

impl Classifier {
    #[cold]
    fn classify_status(&self, status: StatusCode, response: &Response) -> Verdict {
        if !self.transient.contains(status.as_u16()) {
            return Verdict::Permanent;
        }
        match hints::from_headers(response.headers(), SystemTime::now()) {
            Some(hint) => Verdict::RetryAfter(hint),
            None => Verdict::Transient,
        }
    }
}

/// RFC 9110 §9.2.2: methods whose intended effect of several identical
/// requests is the same as one's. TRACE too (it has no effect at all).
pub(crate) fn is_idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let set = StatusSet::default_transient();
        for code in [408, 429, 502, 503, 504] {
            assert!(set.contains(code), "{code}");
        }
        for code in [200, 400, 404, 409, 500, 501, 505] {
            assert!(!set.contains(code), "{code}");
        }
        let set = set.with(500).without(429);
        assert!(set.contains(500));
        assert!(!set.contains(429));
        assert_eq!(format!("{set:?}"), "{408, 500, 502, 503, 504}");
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_idempotent_method(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent_method(&m), "{m}");
        }
    }
}
