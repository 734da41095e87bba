//! The Premium page and the purchase.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use selfheal::observe::{Event, Failure};
use serde::Deserialize;

use super::auth::SignedIn;
use super::{Chrome, Page, is_token, message, random_token, see_other, unavailable_response};
use crate::AppState;
use crate::config::Healing;
use crate::db::NewEmail;
use crate::upstream::UpstreamError;

#[derive(Template, WebTemplate)]
#[template(path = "premium.html")]
struct PremiumPage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
    configured: bool,
    premium: bool,
    purchase: String,
    notice: Option<String>,
    success: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct PremiumQuery {
    ok: Option<String>,
}

pub(super) async fn premium_page(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    query: Result<Query<PremiumQuery>, axum::extract::rejection::QueryRejection>,
) -> Page {
    // A purchase whose outcome is unknown (the provider timed out, say) is
    // tried again with the same key: the provider charges it at most once.
    let pending = state.db().pending_payment_key(student.id).await?;
    let purchase = pending
        .as_deref()
        .and_then(|key| key.strip_prefix(&purchase_prefix(student.id)))
        .filter(|nonce| is_token(nonce))
        .map_or_else(random_token, str::to_owned);
    let Chrome {
        signed_in,
        theme,
        csrf,
    } = Chrome::of(&visitor);
    Ok(PremiumPage {
        signed_in,
        theme,
        csrf,
        configured: state.inner.payments.is_configured(),
        premium: student.premium == 1,
        purchase,
        notice: None,
        success: query
            .ok()
            .and_then(|Query(q)| q.ok)
            .filter(|_| student.premium == 1)
            .map(|_| "Payment received: welcome to Premium!".to_owned()),
    }
    .into_response())
}

#[derive(Deserialize)]
pub(super) struct SubscribeForm {
    #[serde(default)]
    purchase: String,
}

/// A purchase: one Idempotency-Key per purchase form, so a retry (ours or
/// the student pressing again) is charged once.
pub(super) async fn subscribe(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    form: Result<Form<SubscribeForm>, axum::extract::rejection::FormRejection>,
) -> Page {
    if student.premium == 1 {
        return Ok(see_other("/premium?ok=1"));
    }
    let payments = &state.inner.payments;
    if !payments.is_configured() {
        return Ok(see_other("/premium"));
    }
    let purchase = form.map(|Form(f)| f.purchase).unwrap_or_default();
    if !is_token(&purchase) {
        return Ok(message(
            &visitor,
            StatusCode::BAD_REQUEST,
            "Please try again",
            "This form has expired. Open the Premium page again. You have not been charged.",
        ));
    }
    let key = format!("{}{purchase}", purchase_prefix(student.id));
    // A purchase already pending (another tab, a double click) is this one.
    let key = state
        .db()
        .begin_payment(student.id, &key, crate::upstream::PREMIUM_PRICE_CENTS)
        .await?;
    let purchase = key
        .strip_prefix(&purchase_prefix(student.id))
        .unwrap_or(&purchase)
        .to_owned();
    match payments.charge_premium(student.id, &key).await {
        Ok(provider_id) => {
            let email = receipt(&provider_id);
            state
                .db()
                .complete_payment(student.id, &key, &provider_id, email)
                .await?;
            state.mailer().wake();
            Ok(see_other("/premium?ok=1"))
        }
        Err(error) if state.healing() == Healing::Off => {
            Err(anyhow::anyhow!("payment failed: {error}").into())
        }
        Err(UpstreamError::Refused(status)) => {
            state.db().fail_payment(&key).await?;
            state.report(&Event::Error {
                operation: "payments:charge",
                failure: Failure {
                    kind: "PaymentRefused",
                    message: &format_args!("HTTP {status}"),
                },
                client: None,
            });
            Ok(message(
                &visitor,
                StatusCode::PAYMENT_REQUIRED,
                "The payment was declined",
                "The payment provider declined this payment. You have not been charged.",
            ))
        }
        Err(error) => {
            // The outcome may be unknown (a timeout after the charge): the
            // payment stays pending, and the same form retries with the same
            // key, which the provider answers without charging again.
            let retry_after = state
                .fallback("payments:charge")
                .recover(Err(error), |error: UpstreamError| {
                    error.retry_after().as_secs().max(1)
                });
            let Chrome {
                signed_in,
                theme,
                csrf,
            } = Chrome::of(&visitor);
            let page = PremiumPage {
                signed_in,
                theme,
                csrf,
                configured: true,
                premium: false,
                purchase,
                notice: Some(
                    "Payments are temporarily unavailable. If you were charged, it counts once: press Subscribe again in a moment and it will not be charged twice."
                        .to_owned(),
                ),
                success: None,
            };
            Ok(unavailable_response(retry_after, page.into_response()))
        }
    }
}

/// The receipt emailed with a settled purchase.
pub(crate) fn receipt(provider_id: &str) -> NewEmail {
    NewEmail {
        kind: "premium".to_owned(),
        subject: "Your CozmicLearning Premium receipt".to_owned(),
        body: format!(
            "Thank you! Your payment {provider_id} of $9.00 was received and Premium is active.\n"
        ),
    }
}

/// The idempotency key of a purchase is this prefix and the form's nonce.
fn purchase_prefix(student_id: i64) -> String {
    format!("cozmic-premium-{student_id}-")
}
