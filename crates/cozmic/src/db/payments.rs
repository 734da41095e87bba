//! Premium purchases (idempotency keys and their outcome).
//!
//! A purchase is `pending` from just before the provider is asked until its
//! answer is written. When that answer never arrives (lost on the way back,
//! the student gave up), the purchase stays pending and the student may have
//! been charged: [`Db::claim_unsettled_payment`] hands such purchases to the
//! app's background purchase check, which asks the provider again with the
//! same idempotency key and settles them.

use std::future::Future;
use std::time::Duration;

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

    /// Claims the oldest purchase pending for at least `age` that no other
    /// worker is checking, for `lease` (until then other workers skip it):
    /// `None` when there is none.
    pub fn claim_unsettled_payment(
        &self,
        age: Duration,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<UnsettledPayment>>> + Send + 'static {
        claim!(
            self,
            "payment_claim",
            "payments",
            pick: "status = 'pending' AND created_at <= $3 \
                   AND (check_after IS NULL OR check_after <= $1)",
            set: "check_after = $2",
            returning: "student_id, idempotency_key, created_at",
            lease,
            Some(age),
        )
    }

    /// How many purchases are pending (tried, outcome not yet known).
    pub async fn pending_payments(&self) -> std::result::Result<i64, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar(
            "SELECT COUNT(*) FROM payments WHERE status = 'pending'",
        )
        .fetch_one(r.pool())
        .await)
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

/// A purchase still pending, claimed by [`Db::claim_unsettled_payment`].
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UnsettledPayment {
    /// Who is buying.
    pub student_id: i64,
    /// The purchase's idempotency key (the provider's record of it).
    pub idempotency_key: String,
    /// When it was first tried, milliseconds since the Unix epoch.
    pub created_at: i64,
}
