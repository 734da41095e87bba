//! Parsing the server's "come back later" headers.
//!
//! A server that is overloaded or rate-limiting a client usually says when it
//! will take the next request. Waiting exactly that long is both faster than a
//! guess (no retry lands too early and burns an attempt) and kinder to the
//! server (no retry lands while it is still refusing). These headers are read,
//! in this order of preference (the first one present *and well-formed* wins):
//!
//! | header | format | who sends it |
//! |---|---|---|
//! | `retry-after-ms` | milliseconds, optionally fractional (`1500`, `250.5`) | OpenAI, Azure OpenAI |
//! | `Retry-After` | delay-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`), RFC 9110 §10.2.3 | the standard; most APIs and proxies |
//! | `RateLimit-Reset` | delta-seconds | IETF `draft-ietf-httpapi-ratelimit-headers` (early drafts), many API gateways |
//! | `RateLimit` | structured field with `t=<seconds>` (or `reset=<seconds>`) | later versions of the same draft |
//! | `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens` | Go-style durations (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) | OpenAI |
//!
//! For OpenAI's pair, the reset of the limit that is exhausted
//! (`x-ratelimit-remaining-requests: 0` or `x-ratelimit-remaining-tokens: 0`)
//! is used; when neither says so, the sooner of the two (the later one is the
//! time until the limit is *fully* replenished, more than a retry needs).
//!
//! These headers are attacker-controlled input (a compromised or hostile
//! upstream, a misbehaving proxy), so the parsers are strict and total: they
//! never panic, a malformed value is ignored (`None`), numbers saturate instead
//! of overflowing, and every result is at most [`MAX_HINT`]. A date in the past
//! means "now" ([`Duration::ZERO`]). The middleware then caps the hint by its
//! policy's maximum delay, and gives up at once when the hint is past the
//! call's deadline.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The longest hint any parser here returns: one day. Longer values (a
/// `Retry-After` of a year, 20 digits of seconds) are clamped to it, so
/// arithmetic on a hint can never overflow and an error message never shows
/// an absurd delay. Any such hint is far beyond a call's deadline anyway.
pub const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// The server's hint in `headers`, read as described in the
/// [module docs](self); `now` is the wall-clock time used for an HTTP-date.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use selfheal::http::hints;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "2".parse().unwrap());
/// assert_eq!(hints::from_headers(&headers, SystemTime::now()), Some(Duration::from_secs(2)));
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
/// assert_eq!(hints::from_headers(&headers, SystemTime::now()), Some(Duration::from_secs(360)));
/// ```
pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).map(|v| v.as_bytes());
    if let Some(hint) = get("retry-after-ms").and_then(milliseconds) {
        return Some(hint);
    }
    if let Some(hint) = get("retry-after").and_then(|v| retry_after(v, now)) {
        return Some(hint);
    }
    if let Some(hint) = get("ratelimit-reset").and_then(delay_seconds) {
        return Some(hint);
    }
    if let Some(hint) = get("ratelimit").and_then(ratelimit_field) {
        return Some(hint);
    }
    openai_reset(
        get("x-ratelimit-reset-requests").and_then(go_duration),
        get("x-ratelimit-remaining-requests").and_then(delay_seconds),
        get("x-ratelimit-reset-tokens").and_then(go_duration),
        get("x-ratelimit-remaining-tokens").and_then(delay_seconds),
    )
}

/// Chooses between OpenAI's two resets (see the [module docs](self)).
/// `remaining_*` are parsed as plain non-negative integers; only zero matters.
fn openai_reset(
    requests: Option<Duration>,
    remaining_requests: Option<Duration>,
    tokens: Option<Duration>,
    remaining_tokens: Option<Duration>,
) -> Option<Duration> {
    let requests_out = remaining_requests == Some(Duration::ZERO);
    let tokens_out = remaining_tokens == Some(Duration::ZERO);
    match (requests, tokens) {
        (Some(r), Some(t)) => Some(match (requests_out, tokens_out) {
            (true, true) => r.max(t),
            (true, false) => r,
            (false, true) => t,
            (false, false) => r.min(t),
        }),
        (one, other) => one.or(other),
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP-date (IMF-fixdate, and the
/// obsolete RFC 850 and asctime forms recipients must accept). A date at or
/// before `now` is [`Duration::ZERO`].
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = trim(value);
    match value.first() {
        Some(b'0'..=b'9') => delay_seconds(value),
        Some(_) => {
            let text = std::str::from_utf8(value).ok()?;
            let date = httpdate::parse_http_date(text).ok()?;
            Some(clamp(date.duration_since(now).unwrap_or(Duration::ZERO)))
        }
        None => None,
    }
}

/// delay-seconds (`1*DIGIT`, RFC 9110 §10.2.3), with optional surrounding
/// spaces or tabs; saturates at [`MAX_HINT`].
pub fn delay_seconds(value: &[u8]) -> Option<Duration> {
    let value = trim(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seconds = value.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(clamp(Duration::from_secs(seconds.min(MAX_HINT.as_secs()))))
}

/// Milliseconds, optionally with a fraction (`1500`, `250.5`): the
/// `retry-after-ms` header. Saturates at [`MAX_HINT`].
pub fn milliseconds(value: &[u8]) -> Option<Duration> {
    let value = trim(value);
    let (nanos, rest) = decimal(value, 1_000_000)?;
    rest.is_empty().then(|| clamp_nanos(nanos))
}

/// A Go `time.Duration` string as OpenAI sends it: one or more
/// `<number><unit>` pairs, the number optionally fractional, the unit one of
/// `h`, `m`, `s`, `ms`, `us` (`µs`, `μs`), `ns`; or a bare `0`. A sign is
/// rejected (a reset is never negative). Saturates at [`MAX_HINT`].
///
/// ```
/// use std::time::Duration;
/// use selfheal::http::hints::go_duration;
///
/// assert_eq!(go_duration(b"1s"), Some(Duration::from_secs(1)));
/// assert_eq!(go_duration(b"6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(go_duration(b"20ms"), Some(Duration::from_millis(20)));
/// assert_eq!(go_duration(b"1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
/// assert_eq!(go_duration(b"soon"), None);
/// ```
pub fn go_duration(value: &[u8]) -> Option<Duration> {
    let mut rest = trim(value);
    if rest == b"0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // The number is scaled by the unit after the unit is known, so parse
        // it in nanoseconds-per-unit = 1 first, keeping nine fraction digits.
        let (scaled, after_number) = decimal(rest, 1_000_000_000)?;
        let (unit_nanos, unit_len) = unit(after_number)?;
        // `scaled` is the number × 10^9; × the unit's nanoseconds / 10^9.
        total = total.saturating_add(scaled.saturating_mul(unit_nanos) / 1_000_000_000);
        rest = &after_number[unit_len..];
    }
    Some(clamp_nanos(total))
}

/// The `RateLimit` structured field of the later drafts: the largest
/// `t=<seconds>` (or `reset=<seconds>`) parameter among its items.
fn ratelimit_field(value: &[u8]) -> Option<Duration> {
    value
        .split(|&b| b == b',' || b == b';')
        .filter_map(|item| {
            let item = trim(item);
            let eq = item.iter().position(|&b| b == b'=')?;
            let (key, val) = (trim(&item[..eq]), &item[eq + 1..]);
            (key.eq_ignore_ascii_case(b"t") || key.eq_ignore_ascii_case(b"reset"))
                .then(|| delay_seconds(val))
                .flatten()
        })
        .max()
}

/// A unit at the start of `s`: (nanoseconds per unit, bytes used).
fn unit(s: &[u8]) -> Option<(u128, usize)> {
    const NS: u128 = 1;
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000_000_000;
    Some(match s {
        [b'n', b's', ..] => (NS, 2),
        [b'u', b's', ..] => (US, 2),
        [0xC2, 0xB5, b's', ..] => (US, 3), // µ (micro sign)
        [0xCE, 0xBC, b's', ..] => (US, 3), // μ (Greek mu)
        [b'm', b's', ..] => (MS, 2),
        [b's', ..] => (S, 1),
        [b'm', ..] => (60 * S, 1),
        [b'h', ..] => (3600 * S, 1),
        _ => return None,
    })
}

/// A non-negative decimal number (`12`, `12.5`, `.5`, `12.`) at the start of
/// `s`, multiplied by `scale` (a power of ten up to 10^9; fraction digits
/// beyond its precision are dropped), and the rest of `s`. Saturating.
fn decimal(s: &[u8], scale: u128) -> Option<(u128, &[u8])> {
    let int_len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut value: u128 = 0;
    for &d in &s[..int_len] {
        value = value
            .saturating_mul(10)
            .saturating_add(u128::from(d - b'0'));
    }
    value = value.saturating_mul(scale);
    let mut rest = &s[int_len..];
    let mut frac_len = 0;
    if let [b'.', after @ ..] = rest {
        frac_len = after.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut place = scale;
        for &d in &after[..frac_len] {
            place /= 10;
            value = value.saturating_add(u128::from(d - b'0') * place);
        }
        rest = &after[frac_len..];
    }
    // At least one digit, before or after the point.
    (int_len + frac_len > 0).then_some((value, rest))
}

fn clamp(d: Duration) -> Duration {
    d.min(MAX_HINT)
}

fn clamp_nanos(nanos: u128) -> Duration {
    let max = MAX_HINT.as_nanos();
    let nanos = nanos.min(max) as u64;
    Duration::from_nanos(nanos)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn delay_seconds_is_strict() {
        assert_eq!(delay_seconds(b"0"), Some(Duration::ZERO));
        assert_eq!(delay_seconds(b" 120\t"), Some(Duration::from_secs(120)));
        assert_eq!(delay_seconds(b"99999999999999999999999999"), Some(MAX_HINT));
        for bad in [
            &b""[..],
            b" ",
            b"-1",
            b"+1",
            b"1.5",
            b"1s",
            b"0x10",
            b"1 2",
            b"\xff",
        ] {
            assert_eq!(delay_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        // IMF-fixdate, RFC 850 and asctime: the three forms of RFC 9110 §5.6.7.
        for later in [
            "Sun, 06 Nov 1994 08:50:07 GMT",
            "Sunday, 06-Nov-94 08:50:07 GMT",
            "Sun Nov  6 08:50:07 1994",
        ] {
            assert_eq!(
                retry_after(later.as_bytes(), now),
                Some(Duration::from_secs(30)),
                "{later}"
            );
        }
        assert_eq!(
            retry_after(b"Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(
            retry_after(b"Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_HINT)
        );
        assert_eq!(retry_after(b"Sun, 06 Nov 1994 25:00:00 GMT", now), None);
        assert_eq!(retry_after(b"tomorrow", now), None);
        assert_eq!(retry_after(b"2", now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(b"0"), Some(Duration::ZERO));
        assert_eq!(go_duration(b"0s"), Some(Duration::ZERO));
        assert_eq!(go_duration(b"1s"), Some(ms(1000)));
        assert_eq!(go_duration(b"6m0s"), Some(ms(360_000)));
        assert_eq!(go_duration(b"20ms"), Some(ms(20)));
        assert_eq!(go_duration(b"1h2m3.5s"), Some(ms(3_723_500)));
        assert_eq!(go_duration(b"0.5s"), Some(ms(500)));
        assert_eq!(go_duration(b".25s"), Some(ms(250)));
        assert_eq!(go_duration(b"1.5h"), Some(ms(5_400_000)));
        assert_eq!(go_duration(b"7us"), Some(Duration::from_micros(7)));
        assert_eq!(
            go_duration("7µs".as_bytes()),
            Some(Duration::from_micros(7))
        );
        assert_eq!(go_duration(b"300ns"), Some(Duration::from_nanos(300)));
        assert_eq!(go_duration(b"100000h"), Some(MAX_HINT));
        for bad in [
            &b""[..],
            b"1",
            b"s",
            b"-1s",
            b"+1s",
            b"1x",
            b"1 s",
            b".s",
            b"1s2",
            b"1.2.3s",
            b"1d",
        ] {
            assert_eq!(go_duration(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn milliseconds_header() {
        assert_eq!(milliseconds(b"1500"), Some(Duration::from_millis(1500)));
        assert_eq!(milliseconds(b"0.5"), Some(Duration::from_micros(500)));
        assert_eq!(milliseconds(b"1e3"), None);
        assert_eq!(milliseconds(b"-5"), None);
    }

    #[test]
    fn precedence_and_fallthrough() {
        let now = SystemTime::now();
        let secs = Duration::from_secs;
        let h = headers(&[("retry-after", "7"), ("retry-after-ms", "1500")]);
        assert_eq!(from_headers(&h, now), Some(Duration::from_millis(1500)));
        // A malformed preferred header falls through to the next one.
        let h = headers(&[("retry-after-ms", "soon"), ("retry-after", "7")]);
        assert_eq!(from_headers(&h, now), Some(secs(7)));
        let h = headers(&[("retry-after", "later"), ("ratelimit-reset", "9")]);
        assert_eq!(from_headers(&h, now), Some(secs(9)));
        let h = headers(&[("ratelimit", "\"default\";r=0;t=12")]);
        assert_eq!(from_headers(&h, now), Some(secs(12)));
        let h = headers(&[("ratelimit", "limit=100, remaining=0, reset=30")]);
        assert_eq!(from_headers(&h, now), Some(secs(30)));
        assert_eq!(from_headers(&headers(&[]), now), None);
    }

    #[test]
    fn openai_pair() {
        let now = SystemTime::now();
        let secs = Duration::from_secs;
        let both = |rr: &str, rt: &str| {
            headers(&[
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-reset-tokens", "6m0s"),
                ("x-ratelimit-remaining-requests", rr),
                ("x-ratelimit-remaining-tokens", rt),
            ])
        };
        assert_eq!(from_headers(&both("0", "100"), now), Some(secs(1)));
        assert_eq!(from_headers(&both("5", "0"), now), Some(secs(360)));
        assert_eq!(from_headers(&both("0", "0"), now), Some(secs(360)));
        assert_eq!(from_headers(&both("5", "100"), now), Some(secs(1)));
        let h = headers(&[("x-ratelimit-reset-tokens", "20ms")]);
        assert_eq!(from_headers(&h, now), Some(Duration::from_millis(20)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Arbitrary bytes: never a panic, never more than a day.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let now = SystemTime::now();
            for hint in [
                retry_after(&bytes, now),
                delay_seconds(&bytes),
                milliseconds(&bytes),
                go_duration(&bytes),
                ratelimit_field(&bytes),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(hint <= MAX_HINT);
            }
        }

        /// Inputs shaped like the real thing (digits, units, dates with
        /// garbage), which random bytes rarely reach.
        #[test]
        fn near_miss_inputs_never_panic(
            s in "[0-9 .hmsuµn+-]{0,24}|[A-Za-z]{3}, [0-9]{1,2} [A-Za-z]{3} [0-9]{1,5} [0-9:]{1,9} GMT",
        ) {
            let now = SystemTime::now();
            for hint in [retry_after(s.as_bytes(), now), go_duration(s.as_bytes()), milliseconds(s.as_bytes())]
                .into_iter()
                .flatten()
            {
                prop_assert!(hint <= MAX_HINT);
            }
        }

        /// Every header combination goes through [`from_headers`] safely.
        #[test]
        fn header_maps_never_panic(
            values in proptest::collection::vec(proptest::collection::vec(0x20u8..0x7f, 0..24), 7),
        ) {
            let names = [
                "retry-after-ms", "retry-after", "ratelimit-reset", "ratelimit",
                "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
                "x-ratelimit-remaining-tokens",
            ];
            let mut map = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                if let Ok(value) = http::HeaderValue::from_bytes(value) {
                    map.insert(*name, value);
                }
            }
            if let Some(hint) = from_headers(&map, SystemTime::now()) {
                prop_assert!(hint <= MAX_HINT);
            }
        }

        /// Whole seconds round-trip exactly.
        #[test]
        fn seconds_round_trip(n in 0u64..86_400) {
            prop_assert_eq!(delay_seconds(n.to_string().as_bytes()), Some(Duration::from_secs(n)));
            prop_assert_eq!(go_duration(format!("{n}s").as_bytes()), Some(Duration::from_secs(n)));
        }
    }
}
