//! Premium purchases (idempotency keys and their outcome).

use std::future::Future;

use super::{Db, NewEmail, Result, now_ms};

impl Db {
    /// Records a purchase about to be attempted and returns the key to use:
    /// the student's pending purchase's key if there is one (two tabs, a
    /// double click: one purchase), else `key`. A unique partial index keeps
    /// one pending purchase per student even under concurrent requests.
    pub fn begin_payment(
        &self,
        student_id: i64,
        key: &str,
        amount: i64,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        let key = key.to_owned();
        transaction!(self, "begin_payment", |tx| {
            let pending =
                "SELECT idempotency_key FROM payments WHERE student_id = $1 AND status = 'pending'";
            let existing: Option<String> = sqlx::query_scalar(pending)
                .bind(student_id)
                .fetch_optional(&mut **tx)
                .await?;
            if let Some(existing) = existing {
                return Ok(existing);
            }
            sqlx::query(
                "INSERT INTO payments (student_id, idempotency_key, amount, status, created_at) \
                 VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT DO NOTHING",
            )
            .bind(student_id)
            .bind(key.clone())
            .bind(amount)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            let current: Option<String> = sqlx::query_scalar(pending)
                .bind(student_id)
                .fetch_optional(&mut **tx)
                .await?;
            Ok(current.unwrap_or_else(|| key.clone()))
        })
    }

    /// The idempotency key of the student's latest purchase still pending
    /// (tried, outcome unknown), so that trying again reuses it.
    pub async fn pending_payment_key(
        &self,
        student_id: i64,
    ) -> std::result::Result<Option<String>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar(
            "SELECT idempotency_key FROM payments WHERE student_id = $1 AND status = 'pending' ORDER BY id DESC LIMIT 1",
        )
        .bind(student_id)
        .fetch_optional(r.pool())
        .await)
    }

    /// Records a successful purchase: the payment, the premium flag and the
    /// confirmation email, in one transaction.
    pub fn complete_payment(
        &self,
        student_id: i64,
        key: &str,
        provider_id: &str,
        email: NewEmail,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (key, provider_id) = (key.to_owned(), provider_id.to_owned());
        transaction!(self, "complete_payment", |tx| {
            let updated = sqlx::query(
                "UPDATE payments SET status = 'succeeded', provider_id = $1 WHERE idempotency_key = $2 AND status <> 'succeeded'",
            )
            .bind(provider_id.clone())
            .bind(key.clone())
            .execute(&mut **tx)
            .await?;
            if updated.rows_affected() == 1 {
                let address: String = sqlx::query_scalar(
                    "UPDATE students SET premium = 1 WHERE id = $1 RETURNING email",
                )
                .bind(student_id)
                .fetch_one(&mut **tx)
                .await?;
                enqueue!(tx, address, email, now_ms())?;
            }
            Ok(())
        })
    }

    /// Records a purchase that could not be completed.
    pub fn fail_payment(&self, key: &str) -> impl Future<Output = Result<()>> + Send + 'static {
        let key = key.to_owned();
        transaction!(self, "fail_payment", |tx| {
            sqlx::query("UPDATE payments SET status = 'failed' WHERE idempotency_key = $1 AND status = 'pending'")
                .bind(key.clone())
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}
