//! The student's session: who is signed in, plus a few cached values, healed
//! field by field (the guide's `ensure_session_defaults` and
//! `fix_corrupted_session`).
//!
//! With healing on, the session is selfheal's [`Healed`] extractor: a missing
//! or corrupt field gets its default, an unreadable record or a tampered
//! cookie gives a fresh session, every repair is reported. With healing
//! off (the chaos harness' control run) the session is read the naive way,
//! one struct under one key, and a corrupt record is a 500.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use selfheal::session::{Fields, Healed, SessionData};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use crate::config::Healing;

/// What a session holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StudentSession {
    /// The signed-in student, if any.
    pub student_id: Option<i64>,
    /// Their name (for the header).
    pub name: String,
    /// Cached XP (the database is the truth).
    pub xp: i64,
    /// Cached level, 1 or more.
    pub level: i64,
    /// Cached streak.
    pub streak: i64,
    /// `light` or `dark`.
    pub theme: String,
}

impl Default for StudentSession {
    fn default() -> Self {
        Self {
            student_id: None,
            name: String::new(),
            xp: 0,
            level: 1,
            streak: 0,
            theme: "light".to_owned(),
        }
    }
}

impl SessionData for StudentSession {
    fn fields(f: &mut Fields<'_, Self>) {
        f.checked(
            "student_id",
            |s| &mut s.student_id,
            "a positive id",
            |id| id.is_none_or(|id| id > 0),
        );
        f.field("name", |s| &mut s.name);
        f.checked("xp", |s| &mut s.xp, "not negative", |xp| *xp >= 0);
        f.checked("level", |s| &mut s.level, "1 or more", |level| *level >= 1);
        f.checked(
            "streak",
            |s| &mut s.streak,
            "not negative",
            |streak| *streak >= 0,
        );
        f.checked(
            "theme",
            |s| &mut s.theme,
            "light or dark",
            |t| t == "light" || t == "dark",
        );
    }
}

/// The key the naive (healing off) session uses.
const NAIVE_KEY: &str = "student";

/// The request's session, healed or naive depending on the app's mode.
#[derive(Debug)]
pub struct Visitor {
    /// The session's contents.
    pub data: StudentSession,
    inner: Inner,
    /// The visitor's form token, when the CSRF layer runs.
    csrf: Option<selfheal::web::CsrfToken>,
}

#[derive(Debug)]
enum Inner {
    Healed(Healed<StudentSession>),
    Naive(Session),
}

/// A session that could not be read (healing off only).
#[derive(Debug)]
pub struct SessionUnreadable;

impl axum::response::IntoResponse for SessionUnreadable {
    fn into_response(self) -> axum::response::Response {
        (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let healing = parts
            .extensions
            .get::<Healing>()
            .copied()
            .unwrap_or_default();
        let csrf = selfheal::web::CsrfToken::of(&parts.extensions);
        match healing {
            Healing::On => {
                let healed = Healed::<StudentSession>::from_request_parts(parts, state)
                    .await
                    .map_err(IntoResponse::into_response)?;
                Ok(Self {
                    data: StudentSession::clone(&healed),
                    inner: Inner::Healed(healed),
                    csrf,
                })
            }
            Healing::Off => {
                let session = Session::from_request_parts(parts, state)
                    .await
                    .map_err(IntoResponse::into_response)?;
                let data = session
                    .get::<StudentSession>(NAIVE_KEY)
                    .await
                    .map_err(|_| SessionUnreadable.into_response())?
                    .unwrap_or_default();
                Ok(Self {
                    data,
                    inner: Inner::Naive(session),
                    csrf,
                })
            }
        }
    }
}

impl Visitor {
    /// The signed-in student's id.
    pub fn student_id(&self) -> Option<i64> {
        self.data.student_id
    }

    /// The visitor's CSRF form token (for a form's hidden `csrf` field),
    /// when the CSRF layer runs.
    pub fn csrf(&self) -> Option<&selfheal::web::CsrfToken> {
        self.csrf.as_ref()
    }

    /// The tower-sessions session.
    pub fn session(&self) -> &Session {
        match &self.inner {
            Inner::Healed(healed) => healed.session(),
            Inner::Naive(session) => session,
        }
    }

    /// Writes `self.data` back to the session.
    pub async fn save(&mut self) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Healed(healed) => {
                **healed = self.data.clone();
                healed.save().await?;
            }
            Inner::Naive(session) => session.insert(NAIVE_KEY, &self.data).await?,
        }
        Ok(())
    }

    /// Signs a student in: a new session id (no fixation), then the data.
    pub async fn sign_in(&mut self, data: StudentSession) -> anyhow::Result<()> {
        self.session().cycle_id().await?;
        self.data = data;
        self.save().await
    }

    /// Signs out: the session is deleted.
    pub async fn sign_out(&mut self) -> anyhow::Result<()> {
        self.data = StudentSession::default();
        self.session().flush().await?;
        Ok(())
    }
}
