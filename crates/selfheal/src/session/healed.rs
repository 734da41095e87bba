//! The [`Healed`] extractor: loading a session (each field decoded and
//! repaired, an unreadable record or a rejected cookie replaced by a fresh
//! session, a failing store left alone), saving it, and taking it from an
//! axum request.

use std::fmt;
use std::ops::{Deref, DerefMut};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::Value;
use tower_sessions::Session;
use tower_sessions::session_store;

use super::fields::{Fields, Mode, encode};
use super::{HealedRejection, Repair, RepairReason, SessionData, SessionError, SessionUnavailable};
use crate::health::Monitor;
use crate::observe::{self, Event, Failure, HealKind, Observer};

/// The name of the session cookie, for noticing a cookie that was sent but
/// did not yield a session. Default `"id"` (tower-sessions' default); if
/// you rename the cookie, add `axum::Extension(CookieName("sid"))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieName(pub &'static str);

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

    /// Loads and repairs `T` from `session`, reporting repairs to `monitor`
    /// (`None`: to the global observer).
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
                    observe::emit(
                        monitor.map(|m| m as &dyn Observer),
                        &Event::Error {
                            operation: "session",
                            failure: Failure {
                                kind: "SessionStoreError",
                                message: &error,
                            },
                            client: None,
                        },
                    );
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
            let operation = format!("session:{}", repair.field);
            observe::emit(
                monitor.map(|m| m as &dyn Observer),
                &Event::Heal {
                    kind: HealKind::SessionRepaired,
                    operation: &operation,
                },
            );
        }
        Self {
            data,
            session,
            repairs,
            store_failed: store_down,
        }
    }
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
