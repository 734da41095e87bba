//! Credentials out of operator-facing text, once, where it enters the
//! monitor.
//!
//! An error's message is the best sample an operator gets, and the worst
//! place for a secret: a connection error quotes its URL, password and all;
//! a failed login logs `password=…`. Redacting at every place that *shows*
//! a sample (the dashboard, the JSON, the alert, the log) is a promise that
//! holds until the next place is added; redacting where the sample *enters*
//! the monitor holds for all of them.

/// Redacts what looks like a credential in text shown to operators: the
/// password in a URL's user info (`postgres://app:s3cret@db` →
/// `postgres://app:***@db`) and the value after `password=`, `secret=`,
/// `token=` or `key=`.
///
/// The monitor applies it where text enters (error samples, condition
/// reasons, check messages), so nothing it reports (the dashboard, the
/// health JSON, [`Monitor::report`](crate::health::Monitor::report), alert
/// notices) carries a password that a connection error quoted.
///
/// ```
/// use selfheal::redact::redact;
///
/// assert_eq!(
///     redact("cannot connect to postgres://app:s3cret@db/main"),
///     "cannot connect to postgres://app:***@db/main"
/// );
/// ```
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
