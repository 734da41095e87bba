//! Students: sign-up, login, admin flags.

use std::future::Future;

use selfheal::db::TxError;

use super::{Db, NewEmail, Result, now_ms};

/// A student, as the dashboard shows them.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Student {
    /// Id.
    pub id: i64,
    /// Email address (lower case).
    pub email: String,
    /// Display name.
    pub name: String,
    /// XP total (always the ledger's sum).
    pub xp: i64,
    /// Days in a row with a completed lesson.
    pub streak: i64,
    /// 1 if admin.
    pub is_admin: i64,
    /// 1 if premium.
    pub premium: i64,
}

/// Why a sign-up failed.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// The address has an account already.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] TxError<sqlx::Error>),
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

impl Db {
    /// Creates a student and their welcome email, in one transaction.
    pub fn create_student(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        welcome: NewEmail,
    ) -> impl Future<Output = std::result::Result<i64, SignupError>> + Send + 'static {
        let (email, name, hash) = (email.to_owned(), name.to_owned(), password_hash.to_owned());
        let run = transaction!(self, "signup", |tx| {
            let now = now_ms();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO students (email, name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(email.clone())
            .bind(name.clone())
            .bind(hash.clone())
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
            enqueue!(tx, email, welcome, now)?;
            Ok(id)
        });
        async move {
            run.await.map_err(|e| {
                if is_unique_violation(e.inner()) {
                    SignupError::EmailTaken
                } else {
                    SignupError::Db(e)
                }
            })
        }
    }

    /// The id, name and password hash for a login.
    pub async fn login_record(
        &self,
        email: &str,
    ) -> std::result::Result<Option<(i64, String, String)>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as("SELECT id, name, password_hash FROM students WHERE email = $1")
            .bind(email)
            .fetch_optional(r.pool())
            .await)
    }

    /// A student by id.
    pub async fn student(&self, id: i64) -> std::result::Result<Option<Student>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT id, email, name, xp, streak, is_admin, premium FROM students WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(r.pool())
        .await)
    }

    /// Every student's id and email.
    pub async fn students(&self) -> std::result::Result<Vec<(i64, String)>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as("SELECT id, email FROM students ORDER BY id").fetch_all(r.pool()).await)
    }

    /// Flags (or unflags) the student with this email as an admin; false
    /// when there is no such student. An operator's action (`cozmic promote`),
    /// never a web request.
    pub fn set_admin(
        &self,
        email: &str,
        admin: bool,
    ) -> impl Future<Output = Result<bool>> + Send + 'static {
        let email = crate::input::normalize_email(email);
        transaction!(self, "set_admin", |tx| {
            let done = sqlx::query("UPDATE students SET is_admin = $1 WHERE email = $2")
                .bind(i64::from(admin))
                .bind(email.clone())
                .execute(&mut **tx)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Whether the student is flagged admin.
    pub async fn is_admin(&self, student_id: i64) -> bool {
        matches!(self.student(student_id).await, Ok(Some(s)) if s.is_admin == 1)
    }
}
