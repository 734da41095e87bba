//! Progress: lesson completions, the XP ledger and what they add up to.

use std::future::Future;

use super::{Db, NewEmail, Result, now_ms};

fn today() -> i64 {
    now_ms() / 86_400_000
}

/// XP for one completed lesson.
pub const LESSON_XP: i64 = 10;
/// XP per level.
pub const XP_PER_LEVEL: i64 = 100;

/// The level for an XP total (level 1 at 0 XP).
pub const fn level(xp: i64) -> i64 {
    xp / XP_PER_LEVEL + 1
}

/// A ledger row, as recent activity.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Activity {
    /// The lesson completed.
    pub lesson_id: String,
    /// Points earned.
    pub points: i64,
    /// When (Unix ms).
    pub created_at: i64,
}

/// What completing a lesson did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// False when this form (nonce) had already been applied, or the
    /// lesson had already been completed (it pays its XP once).
    pub applied: bool,
    /// True when this very form (nonce) had been applied before: a double
    /// click or a retry of an action that did succeed.
    pub same_form: bool,
    /// The XP total after it.
    pub xp: i64,
    /// The streak after it.
    pub streak: i64,
}

/// The integrity of one student's progress (for tests and the chaos harness).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Integrity {
    /// The student's XP total.
    pub xp: i64,
    /// The sum of their ledger.
    pub ledger_sum: i64,
    /// Their ledger rows.
    pub ledger_rows: i64,
}

impl Db {
    /// The guide's save-progress: +10 XP and a ledger row in one transaction
    /// (and a level-up email when a level is reached). A lesson pays once:
    /// a lesson already in `lesson_completions` (its primary key decides,
    /// also between concurrent requests) changes nothing, and neither does a
    /// nonce already in the ledger (the same form sent again).
    pub fn complete_lesson(
        &self,
        student_id: i64,
        lesson_id: &str,
        nonce: &str,
        level_up: impl Fn(i64) -> NewEmail + Send + Sync + Copy + 'static,
    ) -> impl Future<Output = Result<Completion>> + Send + 'static {
        let (lesson_id, nonce) = (lesson_id.to_owned(), nonce.to_owned());
        transaction!(self, "save_progress", |tx| {
            let now = now_ms();
            let first: Option<i64> = sqlx::query_scalar(
                "INSERT INTO lesson_completions (student_id, lesson_id, completed_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING student_id",
            )
            .bind(student_id)
            .bind(lesson_id.clone())
            .bind(now)
            .fetch_optional(&mut **tx)
            .await?;
            let inserted: Option<i64> = if first.is_none() {
                None
            } else {
                sqlx::query_scalar(
                    "INSERT INTO xp_ledger (student_id, lesson_id, points, request_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING RETURNING id",
                )
                .bind(student_id)
                .bind(lesson_id.clone())
                .bind(LESSON_XP)
                .bind(nonce.clone())
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?
            };
            if inserted.is_none() {
                let (xp, streak): (i64, i64) =
                    sqlx::query_as("SELECT xp, streak FROM students WHERE id = $1")
                        .bind(student_id)
                        .fetch_one(&mut **tx)
                        .await?;
                let same_form: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM xp_ledger WHERE request_id = $1")
                        .bind(nonce.clone())
                        .fetch_optional(&mut **tx)
                        .await?;
                return Ok(Completion {
                    applied: false,
                    same_form: same_form.is_some(),
                    xp,
                    streak,
                });
            }
            let (xp, streak, email): (i64, i64, String) = sqlx::query_as(
                "UPDATE students SET xp = xp + $1, \
                 streak = CASE WHEN last_active_day = $2 THEN streak \
                               WHEN last_active_day = $2 - 1 THEN streak + 1 ELSE 1 END, \
                 last_active_day = $2 WHERE id = $3 RETURNING xp, streak, email",
            )
            .bind(LESSON_XP)
            .bind(today())
            .bind(student_id)
            .fetch_one(&mut **tx)
            .await?;
            if level(xp) > level(xp - LESSON_XP) {
                enqueue!(tx, email, level_up(level(xp)), now)?;
            }
            Ok(Completion {
                applied: true,
                same_form: false,
                xp,
                streak,
            })
        })
    }

    /// The last `limit` ledger rows of a student.
    pub async fn recent_activity(
        &self,
        student_id: i64,
        limit: i64,
    ) -> std::result::Result<Vec<Activity>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT lesson_id, points, created_at FROM xp_ledger WHERE student_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(student_id)
        .bind(limit)
        .fetch_all(r.pool())
        .await)
    }

    /// The lessons a student has completed.
    pub async fn completed_lessons(
        &self,
        student_id: i64,
    ) -> std::result::Result<Vec<String>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT lesson_id FROM lesson_completions WHERE student_id = $1")
            .bind(student_id)
            .fetch_all(r.pool())
            .await)
    }

    /// XP against the ledger, for one student.
    pub async fn integrity(&self, student_id: i64) -> std::result::Result<Integrity, sqlx::Error> {
        let (xp, ledger_sum, ledger_rows): (i64, i64, i64) = on_db!(self, r => sqlx::query_as(
            "SELECT s.xp, CAST(COALESCE(SUM(l.points), 0) AS BIGINT), COUNT(l.id) \
             FROM students s LEFT JOIN xp_ledger l ON l.student_id = s.id WHERE s.id = $1 GROUP BY s.id, s.xp",
        )
        .bind(student_id)
        .fetch_one(r.pool())
        .await)?;
        Ok(Integrity {
            xp,
            ledger_sum,
            ledger_rows,
        })
    }

    /// The ledger's request ids (form nonces) of a student.
    pub async fn ledger_nonces(
        &self,
        student_id: i64,
    ) -> std::result::Result<Vec<String>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT request_id FROM xp_ledger WHERE student_id = $1")
            .bind(student_id)
            .fetch_all(r.pool())
            .await)
    }
}
