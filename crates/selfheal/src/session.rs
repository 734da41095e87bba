//! Typed sessions that repair themselves, over any tower-sessions store.
//!
//! The guide's `ensure_session_defaults` and `fix_corrupted_session` run
//! before every request because session data goes bad in ordinary ways: a
//! deploy adds a key that old sessions lack, an older version wrote `xp` as
//! a string, a bug stored a level of 0, a store row was truncated, a cookie
//! was edited by hand. None of those is a reason to answer 500 or to lose
//! the rest of what the user had.
//!
//! So the app declares its session once, a struct with defaults and optional
//! checks per field, and takes it as the [`Healed`] extractor:
//!
//! - a **missing** key gets its default;
//! - a field that **fails to decode** or **fails its check** is reset to its
//!   default, and *only that field*: each field is stored under its own
//!   session key and decoded on its own, so a bad `xp` does not cost the
//!   user their `name`;
//! - a session **record that cannot be decoded** (the store says so) is
//!   dropped and the user gets a fresh session with a new id, and a
//!   **cookie that cannot be verified** (a tampered signed cookie, a
//!   malformed or unknown id) never yields a session: the user gets a fresh
//!   one, not an error (OWASP: never trust a session you did not issue);
//! - every repair is a [`SessionRepaired`](crate::health::HealKind::SessionRepaired)
//!   heal on the monitor (operation `session:<field>`, or `session:record` /
//!   `session:cookie`) and a `WARN` log line naming the field, never its
//!   value.
//!
//! A store that is *down* (not a record that is corrupt) is not repaired:
//! deleting sessions because the database blinked would log everyone out.
//! Nor are the defaults used in its place: to a signed-in user, a session
//! with default values *is* a logout (the next page is the login form). So
//! when a request presents a session whose record cannot be loaded because
//! the store fails, the extractor records a `SessionStoreError` and rejects
//! the request with [`SessionUnavailable`]: `503 Service Unavailable` with
//! `Retry-After`, the stored session untouched. The user presses again a few
//! seconds later and is still signed in. A request without a session cookie
//! never reaches the store, so anonymous pages keep working.
//!
//! The monitor is found in the request's extensions, where
//! [`HealLayer`](crate::web::HealLayer) puts it (or add
//! `axum::Extension(monitor)` yourself).
//!
//! ```
//! use axum::{Router, routing::get};
//! use selfheal::session::{Fields, Healed, SessionData};
//! use serde::{Deserialize, Serialize};
//! use tower_sessions::{MemoryStore, SessionManagerLayer};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Progress {
//!     xp: u64,
//!     level: u32,
//!     name: String,
//! }
//!
//! impl Default for Progress {
//!     fn default() -> Self {
//!         Self { xp: 0, level: 1, name: String::new() }
//!     }
//! }
//!
//! impl SessionData for Progress {
//!     fn fields(f: &mut Fields<'_, Self>) {
//!         f.field("xp", |s| &mut s.xp);
//!         f.checked("level", |s| &mut s.level, "within 1..=100", |l| (1..=100).contains(l));
//!         f.field("name", |s| &mut s.name);
//!     }
//! }
//!
//! async fn dashboard(mut progress: Healed<Progress>) -> String {
//!     progress.xp += 10;
//!     progress.save().await.ok();
//!     format!("{} has {} xp at level {}", progress.name, progress.xp, progress.level)
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(dashboard))
//!     .layer(SessionManagerLayer::new(MemoryStore::default()));
//! # let _ = app;
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower_sessions::Session;
use tower_sessions::session_store;

use crate::health::{HealKind, Monitor};

/// A session's typed contents: a struct with defaults ([`Default`]) whose
/// fields are listed, each under its own session key, by [`fields`](Self::fields).
///
/// See the [module docs](self) for an example.
pub trait SessionData: Default + Send + Sync + 'static {
    /// Lists the fields: [`Fields::field`] for plain ones,
    /// [`Fields::checked`] for those with a rule. Called a few times per
    /// request: keep it a plain list.
    fn fields(fields: &mut Fields<'_, Self>);
}

/// The visitor [`SessionData::fields`] lists its fields to. Each call reads
/// (or writes) one field at once; there is nothing to build.
pub struct Fields<'a, T> {
    data: &'a mut T,
    mode: Mode<'a>,
}

impl<T> fmt::Debug for Fields<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fields").finish_non_exhaustive()
    }
}

enum Mode<'a> {
    /// Collect the keys.
    Names(&'a mut Vec<&'static str>),
    /// Decode `stored[i]` into the i-th field, noting repairs.
    Load {
        stored: &'a mut [Option<Value>],
        index: usize,
        repairs: &'a mut Vec<Repair>,
    },
    /// Encode every field.
    Store(&'a mut Vec<(&'static str, Value)>),
}

impl<T> Fields<'_, T> {
    /// A field stored under the session key `name`; `access` points at it
    /// in the struct (`|s| &mut s.xp`).
    pub fn field<V, A>(&mut self, name: &'static str, access: A) -> &mut Self
    where
        V: Serialize + DeserializeOwned,
        A: Fn(&mut T) -> &mut V,
    {
        self.visit(name, access, None, |_: &V| true)
    }

    /// A field with a rule: a stored value for which `check` says no is
    /// reset to the default like an undecodable one. `rule` describes the
    /// check in words, for the log (`"within 1..=100"`).
    pub fn checked<V, A, C>(
        &mut self,
        name: &'static str,
        access: A,
        rule: &'static str,
        check: C,
    ) -> &mut Self
    where
        V: Serialize + DeserializeOwned,
        A: Fn(&mut T) -> &mut V,
        C: Fn(&V) -> bool,
    {
        self.visit(name, access, Some(rule), check)
    }

    fn visit<V, A, C>(
        &mut self,
        name: &'static str,
        access: A,
        rule: Option<&'static str>,
        check: C,
    ) -> &mut Self
    where
        V: Serialize + DeserializeOwned,
        A: Fn(&mut T) -> &mut V,
        C: Fn(&V) -> bool,
    {
        match &mut self.mode {
            Mode::Names(names) => names.push(name),
            Mode::Load {
                stored,
                index,
                repairs,
            } => {
                let slot = stored.get_mut(*index).and_then(Option::take);
                *index += 1;
                let reason = match slot {
                    None => Some(RepairReason::Missing),
                    Some(value) => match serde_json::from_value::<V>(value) {
                        Err(_) => Some(RepairReason::Undecodable),
                        Ok(value) if !check(&value) => {
                            Some(RepairReason::Invalid(rule.unwrap_or("check")))
                        }
                        Ok(value) => {
                            *access(self.data) = value;
                            None
                        }
                    },
                };
                if let Some(reason) = reason {
                    repairs.push(Repair {
                        field: name,
                        reason,
                    });
                }
            }
            Mode::Store(out) => {
                // Serializing a struct field to a JSON value fails only for
                // maps with non-string keys: such a field is not stored.
                if let Ok(value) = serde_json::to_value(&*access(self.data)) {
                    out.push((name, value));
                }
            }
        }
        self
    }
}

/// One repair made while loading a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    /// The field (session key), or `"record"` / `"cookie"` for a whole
    /// session replaced.
    pub field: &'static str,
    /// Why.
    pub reason: RepairReason,
}

/// Why a field or a session was repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairReason {
    /// The key was absent from an existing session: set to its default.
    Missing,
    /// The stored value did not decode as the field's type: reset.
    Undecodable,
    /// The stored value failed the field's check (the rule's words): reset.
    Invalid(&'static str),
    /// The store could not decode the session record: a fresh session with
    /// a new id.
    RecordUnreadable,
    /// The request's session cookie could not be verified or named no
    /// session we know: a fresh session.
    CookieRejected,
}

impl fmt::Display for RepairReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing, set to its default"),
            Self::Undecodable => f.write_str("undecodable, reset to its default"),
            Self::Invalid(rule) => write!(f, "failed its check ({rule}), reset to its default"),
            Self::RecordUnreadable => f.write_str("session record unreadable, fresh session"),
            Self::CookieRejected => f.write_str("session cookie rejected, fresh session"),
        }
    }
}

/// The name of the session cookie, for noticing a cookie that was sent but
/// did not yield a session. Default `"id"` (tower-sessions' default); if
/// you rename the cookie, add `axum::Extension(CookieName("sid"))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieName(pub &'static str);

/// A session operation failed (the store is down, say).
#[derive(Debug, thiserror::Error)]
#[error("session store error: {0}")]
pub struct SessionError(#[from] tower_sessions::session::Error);

/// The rejection of [`Healed`] when the request's session cannot be loaded
/// because the store fails (it is down, or times out): `503 Service
/// Unavailable` with `Retry-After` (5 s by default), never a session with
/// default values, which would look like a logout.
///
/// [`HealLayer`](crate::web::HealLayer) replaces its plain body with the
/// friendly "temporarily unavailable" page and records it.
///
/// ```
/// use axum::response::IntoResponse;
/// use selfheal::session::SessionUnavailable;
///
/// let response = SessionUnavailable::default().into_response();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["retry-after"], "5");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionUnavailable {
    /// The `Retry-After` of the answer, in seconds.
    pub retry_after_secs: u32,
}

impl Default for SessionUnavailable {
    fn default() -> Self {
        Self {
            retry_after_secs: 5,
        }
    }
}

impl fmt::Display for SessionUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session store is unavailable")
    }
}

impl std::error::Error for SessionUnavailable {}

impl axum::response::IntoResponse for SessionUnavailable {
    fn into_response(self) -> axum::response::Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(self.retry_after_secs),
                ),
                (
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                ),
            ],
            "Your session cannot be loaded right now. Please try again in a few seconds.",
        )
            .into_response()
    }
}

/// Why [`Healed`] could not be extracted.
#[derive(Debug)]
#[non_exhaustive]
pub enum HealedRejection {
    /// The session store fails: `503` with `Retry-After`.
    Unavailable(SessionUnavailable),
    /// tower-sessions' `SessionManagerLayer` is missing (a programming
    /// error): `500`.
    MissingLayer,
}

impl axum::response::IntoResponse for HealedRejection {
    fn into_response(self) -> axum::response::Response {
        match self {
            Self::Unavailable(unavailable) => unavailable.into_response(),
            Self::MissingLayer => {
                (StatusCode::INTERNAL_SERVER_ERROR, "session layer missing").into_response()
            }
        }
    }
}

/// The session's typed, repaired contents: an axum extractor.
///
/// Reads like the struct (`Deref`/`DerefMut`); [`save`](Healed::save)
/// writes the fields back into the session, which tower-sessions persists at
/// the end of the request. Needs tower-sessions' `SessionManagerLayer`; its
/// absence is a programming error answered with `500`.
pub struct Healed<T> {
    data: T,
    session: Session,
    repairs: Vec<Repair>,
    store_failed: bool,
}

impl<T: fmt::Debug> fmt::Debug for Healed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Healed")
            .field("data", &self.data)
            .field("repairs", &self.repairs)
            .finish_non_exhaustive()
    }
}

impl<T> Deref for Healed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> DerefMut for Healed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

impl<T: SessionData> Healed<T> {
    /// Writes every field into the session (only changed values mark it
    /// modified).
    pub async fn save(&mut self) -> Result<(), SessionError> {
        for (name, value) in encode(&mut self.data) {
            self.session.insert_value(name, value).await?;
        }
        Ok(())
    }

    /// The repairs made when this session was loaded.
    pub fn repairs(&self) -> &[Repair] {
        &self.repairs
    }

    /// Whether the store failed while this session was loaded (the data is
    /// then the defaults, not the user's). The extractor rejects such a
    /// request with [`SessionUnavailable`]; callers of [`Healed::load`]
    /// should do the same.
    pub fn store_failed(&self) -> bool {
        self.store_failed
    }

    /// The underlying tower-sessions session (to cycle its id on login, say).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The data, without the session.
    pub fn into_inner(self) -> T {
        self.data
    }

    /// Loads and repairs `T` from `session`, reporting repairs to `monitor`.
    /// `cookie_presented` says whether the request carried a session cookie
    /// (to notice one that did not yield a session). The extractor calls
    /// this; call it yourself outside axum.
    pub async fn load(session: Session, monitor: Option<&Monitor>, cookie_presented: bool) -> Self {
        let mut data = T::default();
        let mut names = Vec::new();
        T::fields(&mut Fields {
            data: &mut data,
            mode: Mode::Names(&mut names),
        });
        let mut repairs = Vec::new();
        let mut stored: Vec<Option<Value>> = vec![None; names.len()];
        let mut store_down = false;
        for (slot, name) in stored.iter_mut().zip(&names) {
            match session.get_value(name).await {
                Ok(value) => *slot = value,
                Err(tower_sessions::session::Error::Store(session_store::Error::Decode(_))) => {
                    reset(&session).await;
                    repairs.push(Repair {
                        field: "record",
                        reason: RepairReason::RecordUnreadable,
                    });
                    break;
                }
                Err(error) => {
                    tracing::warn!(target: "selfheal", %error, "session store unavailable; the stored session is left alone");
                    if let Some(monitor) = monitor {
                        monitor.record_error("SessionStoreError", "session", &error);
                    }
                    store_down = true;
                    break;
                }
            }
        }
        let existing = session.id().is_some();
        if cookie_presented && !existing && repairs.is_empty() && !store_down {
            repairs.push(Repair {
                field: "cookie",
                reason: RepairReason::CookieRejected,
            });
        }
        if existing && !store_down {
            let mut field_repairs = Vec::new();
            T::fields(&mut Fields {
                data: &mut data,
                mode: Mode::Load {
                    stored: &mut stored,
                    index: 0,
                    repairs: &mut field_repairs,
                },
            });
            if !field_repairs.is_empty() {
                // Write the repaired fields back, so that the store holds
                // good values from now on.
                let encoded = encode(&mut data);
                for repair in &field_repairs {
                    if let Some((name, value)) = encoded.iter().find(|(n, _)| *n == repair.field)
                        && let Err(error) = session.insert_value(name, value.clone()).await
                    {
                        tracing::warn!(target: "selfheal", %error, field = name, "cannot write a repaired session field");
                    }
                }
            }
            repairs.extend(field_repairs);
        }
        for repair in &repairs {
            tracing::warn!(
                target: "selfheal",
                field = repair.field,
                reason = %repair.reason,
                "session repaired"
            );
            if let Some(monitor) = monitor {
                let operation = format!("session:{}", repair.field);
                monitor.record_heal(HealKind::SessionRepaired, &operation);
            }
        }
        Self {
            data,
            session,
            repairs,
            store_failed: store_down,
        }
    }
}

fn encode<T: SessionData>(data: &mut T) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    T::fields(&mut Fields {
        data,
        mode: Mode::Store(&mut out),
    });
    out
}

/// Drops a session whose record cannot be read and gives it a new id.
async fn reset(session: &Session) {
    // `flush` clears the data, deletes the stored record and forgets the
    // id; `cycle_id` then gives the (now empty, loaded) record a fresh id,
    // so that the next save creates a new session rather than reusing the
    // old id.
    if let Err(error) = session.flush().await {
        tracing::warn!(target: "selfheal", %error, "cannot delete an unreadable session");
    }
    if let Err(error) = session.cycle_id().await {
        tracing::warn!(target: "selfheal", %error, "cannot give a reset session a new id");
    }
}

fn cookie_presented(parts: &Parts) -> bool {
    let name = parts.extensions.get::<CookieName>().map_or("id", |c| c.0);
    crate::web::cookie(&parts.headers, name).is_some()
}

impl<S, T> FromRequestParts<S> for Healed<T>
where
    S: Send + Sync,
    T: SessionData,
{
    type Rejection = HealedRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(session) = parts.extensions.get::<Session>().cloned() else {
            tracing::error!(target: "selfheal", "Healed<T> needs tower-sessions' SessionManagerLayer");
            return Err(HealedRejection::MissingLayer);
        };
        // A session id parsed from the cookie means a cookie was sent;
        // without one, look at the headers (a cookie that did not verify).
        let presented = session.id().is_some() || cookie_presented(parts);
        let monitor = parts.extensions.get::<Monitor>();
        let healed = Self::load(session, monitor, presented).await;
        if healed.store_failed {
            return Err(HealedRejection::Unavailable(SessionUnavailable::default()));
        }
        Ok(healed)
    }
}
