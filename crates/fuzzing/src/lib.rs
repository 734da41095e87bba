//! What the coverage-guided fuzz targets check, in one place: the
//! targets in `fuzz/` (cargo-fuzz, nightly) call these functions, and this
//! crate's test replays every committed corpus file and every crash kept
//! as a regression through the same functions on stable, so CI checks them
//! without nightly.
//!
//! ## Why fuzz, when there are property tests
//!
//! A property test draws values from a generator someone wrote, so it
//! explores the shapes its author imagined. These parsers take bytes from
//! whoever sends them (a session store row, an upstream's headers, a form
//! body, an operator's environment, a plan file), and coverage-guided
//! fuzzing explores shapes nobody imagined: libFuzzer mutates inputs and
//! keeps those that reach new code, guided by comparisons it observes.
//!
//! ## The targets, and what each asserts besides "no panic"
//!
//! | target | input | invariant |
//! |---|---|---|
//! | [`session_bytes`] | a stored session record's bytes (MessagePack, as the SQL and Redis stores keep it) | `Healed<StudentSession>` always yields a session whose every field passes its check, and drops the record whole exactly when it cannot be read |
//! | [`session_json`] | a record's fields as JSON | the same, and every stored field that decodes and passes its check is kept (only bad fields are reset) |
//! | [`http_hints`] | header values, alone and as a header map | every parser of `selfheal::http::hints` answers at most `MAX_HINT`; digits read as delay-seconds are those seconds |
//! | [`form`] | a URL-encoded body | `decode_form` and `StrictForm` never fail on it, and decoding inverts a browser's encoding; a checked field has no refused character, fits its maximum, and checks to itself again; `keep` never returns a refused character; normalising an email is idempotent, and a valid email is visible characters only |
//! | [`config`] | `NAME=value` lines (or a byte choosing the name) | `Config::from_lookup` never panics, and its answer (the `Debug` of a config, the text of an error) does not depend on the value of any secret |
//! | [`chaos_plan`] | a plan's TOML | a plan that parses serialises and parses back to itself |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cozmic::input::{self, Text};
use cozmic::session::StudentSession;
use selfheal::http::hints;
use selfheal::session::Healed;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{MemoryStore, Session};

/// A fuzz target's check: panics when an invariant does not hold.
pub type Check = fn(&[u8]);

/// Every target: its name (the directory of its corpus in `fuzz/corpus/`
/// and of its kept crashes in `fuzz/regressions/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("session_bytes", session_bytes),
    ("session_json", session_json),
    ("http_hints", http_hints),
    ("form", form),
    ("config", config),
    ("chaos_plan", chaos_plan),
];

/// Runs `future` to completion on this thread's runtime (one per thread,
/// made once: a runtime per input would cost more than the input).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// A session store holding one record as bytes, decoded on load the way
/// the SQL and Redis stores decode theirs (MessagePack through
/// `rmp_serde`): what a truncated row or a stray write leaves behind.
#[derive(Debug, Clone)]
struct BytesStore {
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl SessionStore for BytesStore {
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let bytes =
            rmp_serde::to_vec(record).map_err(|e| session_store::Error::Encode(e.to_string()))?;
        *self.bytes.lock().expect("not poisoned") = Some(bytes);
        Ok(())
    }

    async fn load(&self, _id: &Id) -> session_store::Result<Option<Record>> {
        let bytes = self.bytes.lock().expect("not poisoned").clone();
        match bytes {
            None => Ok(None),
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map(Some)
                .map_err(|e| session_store::Error::Decode(e.to_string())),
        }
    }

    async fn delete(&self, _id: &Id) -> session_store::Result<()> {
        *self.bytes.lock().expect("not poisoned") = None;
        Ok(())
    }
}

/// Panics unless every field of `session` passes its check (what
/// `StudentSession`'s `SessionData` declares).
fn assert_valid(session: &StudentSession) {
    assert!(session.student_id.is_none_or(|id| id > 0), "{session:?}");
    assert!(session.xp >= 0, "{session:?}");
    assert!(session.level >= 1, "{session:?}");
    assert!(session.streak >= 0, "{session:?}");
    assert!(
        session.theme == "light" || session.theme == "dark",
        "{session:?}"
    );
}

/// A stored session record from arbitrary bytes, loaded and healed.
pub fn session_bytes(data: &[u8]) {
    let store = Arc::new(BytesStore {
        bytes: Arc::new(Mutex::new(Some(data.to_vec()))),
    });
    let healed = block_on(async {
        let session = Session::new(Some(Id(1)), store, None);
        Healed::<StudentSession>::load(session, None, true).await
    });
    assert_valid(&healed);
    // Only a record that cannot be read is dropped whole; one that can keeps
    // its good fields (checked field by field in `session_json`).
    let readable = rmp_serde::from_slice::<Record>(data).is_ok();
    let dropped = healed.repairs().iter().any(|r| r.field == "record");
    assert_eq!(dropped, !readable, "{:?}", healed.repairs());
}

/// A stored session whose fields are the members of a JSON object,
/// loaded and healed: invalid fields reset, valid ones kept.
pub fn session_json(data: &[u8]) {
    let Ok(fields) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data)
    else {
        return;
    };
    let record = Record {
        id: Id(1),
        data: fields.clone().into_iter().collect(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::days(1),
    };
    let healed = block_on(async {
        let store = Arc::new(MemoryStore::default());
        store.save(&record).await.expect("memory");
        let session = Session::new(Some(record.id), store, None);
        Healed::<StudentSession>::load(session, None, true).await
    });
    assert_valid(&healed);
    // Only bad fields are reset: a stored value that decodes and passes its
    // check is what the session holds.
    fn stored<T: serde::de::DeserializeOwned>(
        fields: &serde_json::Map<String, serde_json::Value>,
        name: &str,
    ) -> Option<T> {
        serde_json::from_value(fields.get(name)?.clone()).ok()
    }
    if let Some(id) = stored::<Option<i64>>(&fields, "student_id")
        && id.is_none_or(|id| id > 0)
    {
        assert_eq!(healed.student_id, id, "student_id kept");
    }
    if let Some(name) = stored::<String>(&fields, "name") {
        assert_eq!(healed.name, name, "name kept");
    }
    if let Some(xp) = stored::<i64>(&fields, "xp").filter(|xp| *xp >= 0) {
        assert_eq!(healed.xp, xp, "xp kept");
    }
    if let Some(level) = stored::<i64>(&fields, "level").filter(|l| *l >= 1) {
        assert_eq!(healed.level, level, "level kept");
    }
    if let Some(streak) = stored::<i64>(&fields, "streak").filter(|s| *s >= 0) {
        assert_eq!(healed.streak, streak, "streak kept");
    }
    if let Some(theme) = stored::<String>(&fields, "theme").filter(|t| t == "light" || t == "dark")
    {
        assert_eq!(healed.theme, theme, "theme kept");
    }
}

/// The headers `selfheal::http::hints` reads, in the order a fuzz input's
/// lines choose them (by their first byte).
const HINT_HEADERS: [&str; 8] = [
    "retry-after-ms",
    "retry-after",
    "ratelimit-reset",
    "ratelimit",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
];

/// Every header parser of `selfheal::http::hints` on `data` as one value,
/// and `from_headers` on `data` as lines (first byte: which header; the
/// rest: its value), at two clocks (an HTTP-date may be past or future).
pub fn http_hints(data: &[u8]) {
    let within = |hint: Option<Duration>| {
        if let Some(hint) = hint {
            assert!(hint <= hints::MAX_HINT, "{hint:?} from {data:?}");
        }
    };
    within(hints::delay_seconds(data));
    within(hints::milliseconds(data));
    within(hints::go_duration(data));
    let clocks = [
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ];
    for now in clocks {
        within(hints::retry_after(data, now));
    }
    if !data.is_empty() && data.len() <= 9 && data.iter().all(u8::is_ascii_digit) {
        let seconds: u64 = std::str::from_utf8(data).unwrap().parse().unwrap();
        assert_eq!(
            hints::delay_seconds(data),
            Some(Duration::from_secs(seconds).min(hints::MAX_HINT))
        );
    }
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Some((which, value)) = line.split_first()
            && let Ok(value) = http::HeaderValue::from_bytes(value)
        {
            headers.append(
                HINT_HEADERS[usize::from(*which) % HINT_HEADERS.len()],
                value,
            );
        }
    }
    for now in clocks {
        within(hints::from_headers(&headers, now));
    }
}

/// Every field a cozmic form has, for `StrictForm`.
#[derive(Debug, Default, serde::Deserialize)]
#[allow(dead_code)] // read by Debug only: what matters is that it decodes
struct AnyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    question: String,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    csrf: String,
}

/// The rules of one text field on `value`.
fn check_text(text: Text, multi_line: bool, value: &str) {
    let allowed = |c: char| !input::is_refused(c) || (multi_line && (c == '\n' || c == '\t'));
    if let Ok(checked) = text.check(value) {
        assert!(!checked.is_empty());
        assert!(checked.chars().count() <= text.max_chars(), "{checked:?}");
        assert!(checked.chars().all(allowed), "{checked:?}");
        assert_eq!(checked.trim(), checked, "trimmed");
        assert_eq!(text.check(&checked).as_ref(), Ok(&checked), "idempotent");
    }
    let kept = text.keep(value);
    assert!(kept.chars().count() <= text.max_chars());
    assert!(kept.chars().all(allowed), "{kept:?}");
}

/// A form body: decoded (by `decode_form` and by the `StrictForm`
/// extractor), then every value through every field's rules and the email
/// rules.
pub fn form(data: &[u8]) {
    let (pairs, valid) = input::decode_form(data);
    if std::str::from_utf8(data).is_ok() && !data.contains(&b'%') {
        assert!(valid, "plain UTF-8 without escapes decodes");
    }
    // Decoding is the inverse of encoding: the pairs, encoded as a browser
    // would, decode to themselves.
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    assert_eq!(
        input::decode_form(encoded.as_bytes()),
        (pairs.clone(), true),
        "{encoded}"
    );
    for (name, value) in &pairs {
        for field in [name, value] {
            check_text(Text::NAME, false, field);
            check_text(Text::EMAIL, false, field);
            check_text(Text::QUESTION, true, field);
        }
        let email = input::normalize_email(value);
        // Stored addresses are normalised; a student who types the stored
        // form back must find the same account.
        assert_eq!(input::normalize_email(&email), email, "idempotent");
        if input::is_valid_email(&email) {
            assert!(email.len() <= input::EMAIL_MAX);
            assert!(email.chars().all(input::is_visible), "{email:?}");
        }
    }
    let request = axum::http::Request::post("/signup")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(data.to_vec()))
        .expect("a request");
    let strict = block_on(<input::StrictForm<AnyForm> as axum::extract::FromRequest<
        (),
    >>::from_request(request, &()));
    let Ok(strict) = strict;
    if !valid {
        assert!(strict.error.is_some(), "invalid UTF-8 is refused");
    }
}

/// The variables cozmic reads, for a fuzz input's lines that choose one by
/// their first byte.
const CONFIG_VARIABLES: [&str; 19] = [
    "COZMIC_BIND",
    "COZMIC_DATA_DIR",
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "ADMIN_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "STRIPE_API_KEY",
    "STRIPE_BASE_URL",
    "SMTP_URL",
    "COZMIC_MAIL_FROM",
    "COZMIC_PRODUCTION",
    "COZMIC_LOG_FORMAT",
    "COZMIC_CLIENT_IP_HEADER",
    "COZMIC_HTTPS",
    "COZMIC_ORIGIN",
    "COZMIC_LOG",
];

/// The secrets whose values must never shape what the configuration says.
const SECRETS: [&str; 4] = [
    "SECRET_KEY",
    "ADMIN_TOKEN",
    "OPENAI_API_KEY",
    "STRIPE_API_KEY",
];

/// What `Config::from_lookup` says about `vars`: a config's `Debug`, or an
/// error's text.
fn config_answer(vars: &HashMap<String, String>) -> String {
    match cozmic::config::Config::from_lookup(|name| vars.get(name).cloned()) {
        Ok(config) => {
            assert!(
                !config.https || config.secure_cookies,
                "HTTPS makes cookies secure"
            );
            format!("{config:?}")
        }
        Err(error) => error.to_string(),
    }
}

/// An environment from `NAME=value` lines (a line whose name is not one
/// cozmic reads chooses one by its first byte), read by `Config`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut vars = HashMap::new();
    for line in text.lines() {
        let (name, value) = match line.split_once('=') {
            Some((name, value)) if CONFIG_VARIABLES.contains(&name) => (name, value),
            _ => match line.as_bytes().first() {
                Some(first) => (
                    CONFIG_VARIABLES[usize::from(*first) % CONFIG_VARIABLES.len()],
                    line.get(1..).unwrap_or_default(),
                ),
                None => continue,
            },
        };
        vars.insert(name.to_owned(), value.to_owned());
    }
    let answer = config_answer(&vars);
    // The same environment with every secret replaced by as many `x`: the
    // answer must be the same (lengths may matter, contents never).
    let mut masked = vars.clone();
    for name in SECRETS {
        if let Some(value) = masked.get_mut(name) {
            let trimmed = value.trim();
            if !trimmed.is_ascii() {
                return;
            }
            *value = "x".repeat(trimmed.len());
        }
    }
    assert_eq!(
        answer,
        config_answer(&masked),
        "the answer depends on a secret's value"
    );
}

/// A chaos plan from TOML: one that parses writes itself out and reads
/// back the same.
pub fn chaos_plan(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(plan) = chaos::plan::Plan::from_toml_str(text) {
        let written = plan.to_toml_string();
        let again = chaos::plan::Plan::from_toml_str(&written)
            .unwrap_or_else(|e| panic!("a plan's own TOML does not read back: {e}\n{written}"));
        assert_eq!(again, plan, "{written}");
    }
}
