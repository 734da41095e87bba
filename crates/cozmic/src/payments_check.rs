//! The purchase check: settles purchases whose outcome nobody heard.
//!
//! Why: a charge whose answer is lost (the provider acted, then the
//! connection was reset; the answer came after the client's timeout) leaves
//! the purchase `pending`. The page tells the student to press Subscribe
//! again, and pressing again (with the same idempotency key) settles it. A
//! student who leaves instead may have paid without becoming Premium, and
//! nothing else would ever notice: the chaos harness counted one to three
//! such students per run on its harsh plan.
//!
//! So a supervised worker asks the provider again about every purchase
//! pending for longer than [`Config::payment_check`](crate::config::Config::payment_check),
//! with the purchase's own idempotency key (which the provider answers
//! without charging twice):
//!
//! - **succeeded**: Premium and the receipt email, exactly as if the answer
//!   had arrived (one transaction; a purchase already settled is left
//!   alone), reported as a heal (`payments:check` recovered);
//! - **declined**: the purchase is marked failed (the student was not
//!   charged);
//! - **no answer**: asked again one check period later, for as long as it
//!   takes. Never silently: each failed check is an error in the health
//!   monitor (`PaymentUnsettled@payments:check`), so a purchase that stays
//!   unsettled raises the repeated-error alert.
//!
//! One worker at a time asks about one purchase: the claim stamps a lease
//! on the row (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so a fleet of
//! instances on one database does not ask N times. With healing off (the
//! chaos control run) the worker does not run.

use std::time::Duration;

use selfheal::observe::{Event, Failure};
use selfheal::supervise::ShutdownSignal;

use crate::AppState;
use crate::db::UnsettledPayment;
use crate::upstream::UpstreamError;

/// Settles unsettled purchases until `shutdown`.
pub(crate) async fn run(state: AppState, mut shutdown: ShutdownSignal) -> anyhow::Result<()> {
    let every = state.config().payment_check;
    loop {
        while let Some(payment) = state.db().claim_unsettled_payment(every, every).await? {
            if shutdown.is_shutdown() {
                return Ok(());
            }
            check(&state, payment).await?;
        }
        tokio::select! {
            () = shutdown.recv() => return Ok(()),
            () = tokio::time::sleep(poll(every)) => {}
        }
    }
}

/// How often the worker looks for purchases to check: a quarter of the
/// check period, between 100 ms and 15 s.
fn poll(every: Duration) -> Duration {
    (every / 4).clamp(Duration::from_millis(100), Duration::from_secs(15))
}

/// Asks the provider about one purchase and writes what it says.
async fn check(state: &AppState, payment: UnsettledPayment) -> anyhow::Result<()> {
    const OPERATION: &str = "payments:check";
    let UnsettledPayment {
        student_id,
        idempotency_key: key,
        created_at,
    } = payment;
    match state.inner.payments.charge_premium(student_id, &key).await {
        Ok(provider_id) => {
            let email = crate::web::premium_receipt(&provider_id);
            state
                .db()
                .complete_payment(student_id, &key, &provider_id, email)
                .await?;
            state.mailer().wake();
            let pending_ms = crate::db::now_ms().saturating_sub(created_at).max(0);
            state.report(&Event::Recovered {
                operation: OPERATION,
                attempts: 2,
                waited: Duration::from_millis(pending_ms as u64),
            });
        }
        Err(UpstreamError::Refused(_)) => state.db().fail_payment(&key).await?,
        Err(error) => state.report(&Event::Error {
            operation: OPERATION,
            failure: Failure {
                kind: "PaymentUnsettled",
                message: &format_args!("purchase still pending, asked again later: {error}"),
            },
            client: None,
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_is_a_quarter_of_the_period_within_bounds() {
        assert_eq!(poll(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(poll(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(poll(Duration::from_millis(10)), Duration::from_millis(100));
        assert_eq!(poll(Duration::from_secs(3600)), Duration::from_secs(15));
    }
}
