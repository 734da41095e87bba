//! The email outbox the mailer drains.
//!
//! Several instances may drain one outbox (a fleet on one PostgreSQL): an
//! email is *claimed* before it is sent ([`Db::claim_due_email`]: one
//! statement that picks a due, unclaimed row and stamps a lease on it;
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, SQLite's single writer
//! elsewhere), so no two workers send it. A worker that dies mid-delivery
//! keeps its claim until the lease runs out; then another takes it over (the
//! one duplicate this can cause, an email sent but not yet marked, carries
//! the same `Message-ID`, so receivers drop it).

use std::future::Future;
use std::time::Duration;

use super::{Db, Result, now_ms};

/// An email waiting in the outbox.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxEmail {
    /// The outbox id (the Message-ID is derived from it).
    pub id: i64,
    /// The recipient's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// An email to enqueue with a change.
#[derive(Clone, Debug)]
pub struct NewEmail {
    /// `welcome`, `level_up`, `premium`.
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

impl Db {
    /// Claims the oldest due email that no live lease holds, for `lease`:
    /// `None` when there is none. Only the claimer sends it (until the lease
    /// runs out).
    pub fn claim_due_email(
        &self,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<OutboxEmail>>> + Send + 'static {
        claim!(
            self,
            "outbox_claim",
            "outbox",
            pick: "sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 \
                   AND (claimed_until IS NULL OR claimed_until <= $1)",
            set: "claimed_until = $2",
            returning: "id, recipient, subject, body, attempts",
            lease,
            None,
        )
    }

    /// Marks an email sent.
    pub fn mark_sent(&self, id: i64) -> impl Future<Output = Result<()>> + Send + 'static {
        transaction!(self, "outbox_sent", |tx| {
            sqlx::query("UPDATE outbox SET sent_at = $1, claimed_until = NULL WHERE id = $2")
                .bind(now_ms())
                .bind(id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    /// Records a failed attempt: another one after `retry_in`, or, with
    /// `None`, none (the email is given up).
    pub fn mark_failed_attempt(
        &self,
        id: i64,
        retry_in: Option<Duration>,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let error = error.chars().take(300).collect::<String>();
        transaction!(self, "outbox_failed_attempt", |tx| {
            let now = now_ms();
            let (next, failed_at) = match retry_in {
                Some(delay) => (now + delay.as_millis() as i64, None),
                None => (now, Some(now)),
            };
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, failed_at = $2, \
                 last_error = $3, claimed_until = NULL WHERE id = $4",
            )
            .bind(next)
            .bind(failed_at)
            .bind(error.clone())
            .bind(id)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }

    /// Outbox counts: (waiting, sent, failed).
    pub async fn outbox_counts(&self) -> std::result::Result<(i64, i64, i64), sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT \
               CAST(COALESCE(SUM(CASE WHEN sent_at IS NULL AND failed_at IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN sent_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN failed_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM outbox",
        )
        .fetch_one(r.pool())
        .await)
    }

    /// Every outbox email's id and when it was committed (milliseconds since
    /// the Unix epoch), for delivery checks that ask when a lost one was
    /// sent.
    pub async fn outbox_created(&self) -> std::result::Result<Vec<(i64, i64)>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as("SELECT id, created_at FROM outbox ORDER BY id").fetch_all(r.pool()).await)
    }

    /// The ids of every outbox email (for delivery checks).
    pub async fn outbox_ids(&self) -> std::result::Result<Vec<i64>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT id FROM outbox ORDER BY id").fetch_all(r.pool()).await)
    }
}
