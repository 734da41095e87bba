//! Input hygiene: the one place that says what text cozmic accepts from a
//! form, so that every handler refuses the same things in the same way.
//!
//! ## Why refuse, and why before the database
//!
//! A client's input is not the server's health. A NUL byte is valid UTF-8
//! and a valid Rust `String`, but PostgreSQL refuses it (`invalid byte
//! sequence for encoding "UTF8": 0x00`): left to the database, one anonymous
//! request becomes a 500, and thirty of them an alert. Other characters are
//! accepted by every layer and do harm later: a CR/LF in a name becomes a
//! new line in an email header or body, ESC and BEL reach an operator's
//! terminal through the logs, U+202E (RIGHT-TO-LEFT OVERRIDE) makes a name
//! display as something else, and a name of nothing but U+200B (ZERO WIDTH
//! SPACE) shows as nothing at all. So every text field is checked here, with
//! a clear 422 that shows back what was typed minus the refused characters.
//!
//! ## The rules
//!
//! - **Refused everywhere** ([`is_refused`]): every control character
//!   (Unicode `Cc`: C0, DEL, C1), the line and paragraph separators U+2028
//!   and U+2029, and the format characters that are abuse rather than
//!   writing: the bidi embeddings, overrides and isolates (U+202A–U+202E,
//!   U+2066–U+2069), the deprecated format controls U+206A–U+206F, the
//!   byte order mark U+FEFF, the interlinear annotation controls
//!   U+FFF9–U+FFFB and the language tag U+E0001. The format characters real
//!   text needs stay allowed: ZWJ and ZWNJ (emoji sequences, Persian,
//!   Indic scripts), LRM/RLM, the soft hyphen.
//! - **Multi-line fields** ([`Lines::Multi`], the tutor's question) keep
//!   `\n` and `\t`; a browser sends a textarea's line breaks as CR LF, so
//!   CR LF and a lone CR become `\n` first. Single-line fields keep neither.
//! - **Length** is counted in characters after trimming; past the field's
//!   maximum is a [`Problem::TooLong`].
//! - **A visible character** ([`is_visible`]) is required where a field asks
//!   for one (a name): a letter, digit, punctuation or symbol, not a space,
//!   a mark alone, a format character or a blank such as U+3164.
//! - **Emails** ([`normalize_email`]) are NFKC-normalised and lower-cased
//!   before they are checked, stored or looked up, so that `Zoë` typed with
//!   a precomposed `ë` and with `e` + U+0308 is one address, and so are
//!   `ADA@example.com`, `ada@example.com` and a fullwidth `ａda@example.com`;
//!   every character of an address must be visible (no U+200B, joiners or
//!   direction marks).
//! - **Invalid UTF-8** in a form body is refused, never turned into U+FFFD
//!   (axum's `Form` decodes lossily): [`StrictForm`] decodes the body itself.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde::de::value::MapDeserializer;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// The longest name, in characters.
pub const NAME_MAX: usize = 60;
/// The longest email address, in characters (RFC 5321's path limit).
pub const EMAIL_MAX: usize = 254;
/// The shortest password, in characters.
pub const PASSWORD_MIN: usize = 8;
/// The longest password, in characters.
pub const PASSWORD_MAX: usize = 128;
/// The longest question to the tutor, in characters.
pub const QUESTION_MAX: usize = 2000;
/// The largest form body read, in bytes: the longest question,
/// percent-encoded, fits with room to spare.
pub const BODY_MAX: usize = 64 * 1024;

/// Whether a field may span several lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// One line: no line breaks, no tabs (names, emails).
    Single,
    /// Several lines: `\n` and `\t` are kept (the tutor's question).
    Multi,
}

/// What is wrong with a field's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Nothing but white space (or nothing at all).
    Empty,
    /// A character from the refused set (see the module docs).
    Refused,
    /// More than `max` characters.
    TooLong {
        /// The field's maximum, in characters.
        max: usize,
    },
    /// No visible character, only spaces and invisible ones.
    Invisible,
}

/// The rules of one text field: lines, maximum length, whether a visible
/// character is required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Text {
    lines: Lines,
    max_chars: usize,
    visible: bool,
}

impl Text {
    /// A student's name: one line, up to [`NAME_MAX`], a visible character.
    pub const NAME: Text = Text::single_line(NAME_MAX).requiring_visible();
    /// An email address: one line, up to [`EMAIL_MAX`].
    pub const EMAIL: Text = Text::single_line(EMAIL_MAX);
    /// A question to the tutor: several lines, up to [`QUESTION_MAX`], a
    /// visible character.
    pub const QUESTION: Text = Text::multi_line(QUESTION_MAX).requiring_visible();

    /// A one-line field of at most `max_chars` characters.
    pub const fn single_line(max_chars: usize) -> Self {
        Self {
            lines: Lines::Single,
            max_chars,
            visible: false,
        }
    }

    /// A multi-line field of at most `max_chars` characters.
    pub const fn multi_line(max_chars: usize) -> Self {
        Self {
            lines: Lines::Multi,
            max_chars,
            visible: false,
        }
    }

    /// The same field, requiring at least one visible character.
    pub const fn requiring_visible(mut self) -> Self {
        self.visible = true;
        self
    }

    /// The field's maximum, in characters.
    pub const fn max_chars(&self) -> usize {
        self.max_chars
    }

    /// The text to use: line breaks normalised (multi-line fields), then
    /// trimmed; or what is wrong with it. Refused characters are reported
    /// before length, so that the page names the real problem.
    pub fn check(&self, value: &str) -> Result<String, Problem> {
        let value = self.line_breaks(value);
        let value = value.trim();
        if value.chars().any(|c| self.refuses(c)) {
            return Err(Problem::Refused);
        }
        if value.is_empty() {
            return Err(Problem::Empty);
        }
        if value.chars().count() > self.max_chars {
            return Err(Problem::TooLong {
                max: self.max_chars,
            });
        }
        if self.visible && !value.chars().any(is_visible) {
            return Err(Problem::Invisible);
        }
        Ok(value.to_owned())
    }

    /// What to show back in the form after a refusal: the text without the
    /// refused characters, cut at the field's maximum.
    pub fn keep(&self, value: &str) -> String {
        self.line_breaks(value)
            .chars()
            .filter(|c| !self.refuses(*c))
            .take(self.max_chars)
            .collect()
    }

    fn refuses(&self, c: char) -> bool {
        match self.lines {
            Lines::Multi if c == '\n' || c == '\t' => false,
            _ => is_refused(c),
        }
    }

    fn line_breaks(&self, value: &str) -> String {
        match self.lines {
            Lines::Single => value.to_owned(),
            Lines::Multi => value.replace("\r\n", "\n").replace('\r', "\n"),
        }
    }
}

/// Whether `c` is refused in every text field (see the module docs).
pub fn is_refused(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::Surrogate
    ) || matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{206A}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0001}'
    )
}

/// Whether `c` shows as something: a letter, a digit, punctuation or a
/// symbol (private-use characters too), but not a blank that is classed as
/// a letter (the Hangul fillers, U+2800 BRAILLE PATTERN BLANK).
pub fn is_visible(c: char) -> bool {
    let shown = matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter
            | GeneralCategoryGroup::Number
            | GeneralCategoryGroup::Punctuation
            | GeneralCategoryGroup::Symbol
    ) || c.general_category() == GeneralCategory::PrivateUse;
    shown
        && !matches!(
            c,
            '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}'
        )
}

/// An email address as it is stored and looked up: NFKC-normalised
/// (compatibility forms folded, so a fullwidth `ｔwin@` is `twin@`, and NFD
/// twins are one), lower-cased and trimmed, until none of the three changes
/// it: normalising a normalised address gives it back (a student who types
/// the stored form finds the same account).
///
/// Each step can undo another: NFKC turns U+1FFD GREEK OXIA into a space
/// and a combining accent (so trimming comes after it, not before), and
/// turns U+1D2C MODIFIER LETTER CAPITAL A into `A`, which lower-casing then
/// changes again. The coverage-guided fuzzer found the first (a leading
/// U+1FFD normalised to an address with a leading space, and that address
/// to another); its input is kept in `fuzz/regressions/form/`.
pub fn normalize_email(value: &str) -> String {
    let step = |text: &str| {
        text.nfkc()
            .collect::<String>()
            .to_lowercase()
            .trim()
            .to_owned()
    };
    let mut email = step(value);
    // A fixed point comes after one or two steps; the bound keeps a
    // hostile input from looping.
    for _ in 0..4 {
        let next = step(&email);
        if next == email {
            break;
        }
        email = next;
    }
    email
}

/// Whether `email` (already [normalised](normalize_email)) is an address
/// cozmic accepts for an account: at most [`EMAIL_MAX`] bytes, a local part
/// and a dotted domain, no white space, control or invisible characters
/// (U+200B, joiners, direction marks: an address that looks like another
/// must not be another account), and one the mailer accepts (so that the
/// welcome email can be sent).
pub fn is_valid_email(email: &str) -> bool {
    email.len() <= EMAIL_MAX
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.chars().all(is_visible)
        && email.parse::<lettre::Address>().is_ok()
}

/// Why a form body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormError {
    /// Not `application/x-www-form-urlencoded`, or fields that do not fit
    /// the form (a field given twice, say).
    Unreadable,
    /// A field is not valid UTF-8 once percent-decoded.
    InvalidUtf8,
    /// Larger than [`BODY_MAX`].
    TooLarge,
}

impl FormError {
    /// The status to answer with: 413 for a body too large, else 422.
    pub fn status(self) -> StatusCode {
        match self {
            FormError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            FormError::Unreadable | FormError::InvalidUtf8 => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// A sentence for the page.
    pub fn message(self) -> &'static str {
        match self {
            FormError::Unreadable => "The form could not be read. Please try again.",
            FormError::InvalidUtf8 => {
                "The form contained bytes that are not text (invalid UTF-8); they were removed. Please check and send it again."
            }
            FormError::TooLarge => "The form was too long. Please shorten it and try again.",
        }
    }
}

/// A URL-encoded form, decoded strictly: a field that is not valid UTF-8
/// once percent-decoded is an error, never U+FFFD.
///
/// `form` is always filled as far as possible (invalid bytes dropped,
/// missing fields defaulted), so that a refusal can show back what was
/// typed; `error` says whether the body was refused.
#[derive(Debug)]
pub struct StrictForm<T> {
    /// The fields, as far as they could be read.
    pub form: T,
    /// Why the body was refused, if it was.
    pub error: Option<FormError>,
}

impl<S, T> FromRequest<S> for StrictForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let refused = |error| StrictForm {
            form: T::default(),
            error: Some(error),
        };
        if !is_form {
            return Ok(refused(FormError::Unreadable));
        }
        let Ok(body) = axum::body::to_bytes(request.into_body(), BODY_MAX).await else {
            return Ok(refused(FormError::TooLarge));
        };
        let (pairs, valid) = decode_form(&body);
        let form = T::deserialize(MapDeserializer::<_, serde::de::value::Error>::new(
            pairs.into_iter(),
        ));
        Ok(match form {
            Ok(form) => StrictForm {
                form,
                error: (!valid).then_some(FormError::InvalidUtf8),
            },
            Err(_) => refused(FormError::Unreadable),
        })
    }
}

/// The body's `name=value` pairs, percent-decoded (`+` is a space), and
/// whether every one of them was valid UTF-8. Invalid bytes are dropped
/// from the pairs, so that what remains can be shown back.
pub fn decode_form(body: &[u8]) -> (Vec<(String, String)>, bool) {
    let mut valid = true;
    let mut decode = |raw: &[u8]| {
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                valid = false;
                String::from_utf8_lossy(error.as_bytes()).replace('\u{FFFD}', "")
            }
        }
    };
    let pairs = body
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            let name = decode(parts.next().unwrap_or_default());
            let value = decode(parts.next().unwrap_or_default());
            (name, value)
        })
        .collect();
    (pairs, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_in_single_line_fields() {
        for bad in [
            "Ada\0Lovelace",
            "Ada\u{1b}[31m",
            "Ada\u{7}",
            "Ada\r\nBcc: x",
            "Ada\nLovelace",
            "Ada\tLovelace",
            "Ad\u{85}a",
            "Ada\u{7f}",
            "\u{202E}ecalevoL adA",
            "Ada\u{2066}x\u{2069}",
            "A\u{2028}da",
            "Ada\u{FEFF}",
        ] {
            assert_eq!(Text::NAME.check(bad), Err(Problem::Refused), "{bad:?}");
            assert_eq!(Text::EMAIL.check(bad), Err(Problem::Refused), "{bad:?}");
        }
        assert_eq!(
            Text::NAME.keep("Ada\0 Love\u{1b}lace\u{202E}"),
            "Ada Lovelace"
        );
    }

    #[test]
    fn real_names_pass() {
        for good in [
            "Ada Lovelace",
            "Zoë O'Brien-Smith",
            "محمد",
            "明",
            "\u{200F}שלום",
            "می\u{200C}خواهم",
            "👩\u{200D}🚀 Ada",
        ] {
            assert_eq!(Text::NAME.check(good).as_deref(), Ok(good), "{good:?}");
        }
        assert_eq!(Text::NAME.check("  Ada  ").as_deref(), Ok("Ada"));
    }

    #[test]
    fn a_name_needs_a_visible_character() {
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200B}\u{200C}",
            "\u{3164}",
            "\u{2800}\u{2800}",
            "\u{301}",
            "\u{00A0}\u{2003}\u{200D}",
        ] {
            assert_eq!(
                Text::NAME.check(invisible),
                Err(Problem::Invisible),
                "{invisible:?}"
            );
        }
        assert_eq!(Text::NAME.check("   "), Err(Problem::Empty));
        assert_eq!(Text::NAME.check(""), Err(Problem::Empty));
        // U+202E is refused before visibility is asked.
        assert_eq!(Text::NAME.check("\u{202E}\u{200B}"), Err(Problem::Refused));
    }

    #[test]
    fn lengths_are_counted_in_characters() {
        assert!(Text::NAME.check(&"é".repeat(NAME_MAX)).is_ok());
        assert_eq!(
            Text::NAME.check(&"é".repeat(NAME_MAX + 1)),
            Err(Problem::TooLong { max: NAME_MAX })
        );
        assert_eq!(Text::NAME.keep(&"a".repeat(100)).len(), NAME_MAX);
    }

    #[test]
    fn questions_keep_newlines_and_tabs_only() {
        assert_eq!(
            Text::QUESTION.check("Why?\r\n\tAnd how?\rWhen?").as_deref(),
            Ok("Why?\n\tAnd how?\nWhen?")
        );
        for bad in ["Why\0?", "Why\u{1b}?", "Why\u{202E}?", "Why\u{b}?"] {
            assert_eq!(Text::QUESTION.check(bad), Err(Problem::Refused), "{bad:?}");
        }
        assert_eq!(Text::QUESTION.keep("a\0b\nc"), "ab\nc");
        assert_eq!(Text::QUESTION.check("\n\t \n"), Err(Problem::Empty));
    }

    #[test]
    fn emails_are_nfkc_and_lower_case() {
        assert_eq!(
            normalize_email("\u{ff54}win@example.com"),
            "twin@example.com"
        );
        let composed = "Zo\u{eb}@Example.com";
        let decomposed = "Zoe\u{308}@example.COM";
        assert_eq!(normalize_email(composed), normalize_email(decomposed));
        assert_eq!(normalize_email(" ADA@Example.com "), "ada@example.com");
        assert_eq!(normalize_email(decomposed), "zo\u{eb}@example.com");
    }

    /// Found by the `form` fuzz target: U+1FFD is a space and an accent
    /// under NFKC, so trimming before NFKC left a leading space, and
    /// normalising twice gave two different addresses.
    #[test]
    fn normalising_an_email_twice_changes_nothing() {
        for email in [
            "\u{1FFD}newome@example.com",
            "\u{1D2C}da@example.com",
            " \u{2003}Ada@Example.com\u{3000}",
            "\u{130}stanbul@example.com",
        ] {
            let once = normalize_email(email);
            assert_eq!(normalize_email(&once), once, "{email:?}");
        }
        assert_eq!(normalize_email("\u{1D2C}da@example.com"), "ada@example.com");
    }

    #[test]
    fn forms_decode_strictly() {
        let (pairs, valid) = decode_form(b"name=Ada+Lovelace&email=ada%40example.com&x");
        assert!(valid);
        assert_eq!(
            pairs,
            vec![
                ("name".into(), "Ada Lovelace".into()),
                ("email".into(), "ada@example.com".into()),
                ("x".into(), String::new()),
            ]
        );
        let (pairs, valid) = decode_form(b"name=Ad%FFa&q=%C3%A9");
        assert!(!valid, "an invalid percent-encoded byte is refused");
        assert_eq!(pairs[0].1, "Ada", "and dropped from what is shown back");
        assert_eq!(pairs[1].1, "é");
        let (_, valid) = decode_form(b"\xff\xfe=\x00");
        assert!(!valid, "a raw invalid byte too");
        let (pairs, valid) = decode_form(b"name=Ada%00");
        assert!(valid, "NUL is UTF-8: the field rules refuse it");
        assert_eq!(pairs[0].1, "Ada\0");
    }
}
