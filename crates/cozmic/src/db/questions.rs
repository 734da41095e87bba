//! Questions to the AI tutor.

use std::future::Future;

use super::{Db, Result, now_ms};

/// A question to the tutor and its answer.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Question {
    /// The question.
    pub question: String,
    /// The answer, if the tutor gave one.
    pub answer: Option<String>,
    /// `answered`, `unavailable` or `unconfigured`.
    pub status: String,
}

impl Db {
    /// Stores a question and its answer (or why there is none).
    pub fn save_question(
        &self,
        student_id: i64,
        question: &str,
        answer: Option<&str>,
        status: &'static str,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (question, answer, status) = (
            question.to_owned(),
            answer.map(str::to_owned),
            status.to_owned(),
        );
        transaction!(self, "save_question", |tx| {
            sqlx::query("INSERT INTO questions (student_id, question, answer, status, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(student_id)
                .bind(question.clone())
                .bind(answer.clone())
                .bind(status.clone())
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    /// A student's last `limit` questions.
    pub async fn recent_questions(
        &self,
        student_id: i64,
        limit: i64,
    ) -> std::result::Result<Vec<Question>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT question, answer, status FROM questions WHERE student_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(student_id)
        .bind(limit)
        .fetch_all(r.pool())
        .await)
    }
}
