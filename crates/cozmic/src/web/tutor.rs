//! The AI tutor page.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::auth::SignedIn;
use super::{Chrome, Page, unavailable_response};
use crate::AppState;
use crate::config::Healing;
use crate::db;
use crate::input::{Problem, StrictForm, Text};
use crate::session::Visitor;
use crate::upstream::UpstreamError;

#[derive(Template, WebTemplate)]
#[template(path = "tutor.html")]
struct TutorPage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
    configured: bool,
    notice: Option<String>,
    retry_after: u64,
    error: Option<String>,
    asked: String,
    answer: Option<String>,
    history: Vec<db::Question>,
}

impl TutorPage {
    fn new(visitor: &Visitor, configured: bool, history: Vec<db::Question>) -> Self {
        let Chrome {
            signed_in,
            theme,
            csrf,
        } = Chrome::of(visitor);
        Self {
            signed_in,
            theme,
            csrf,
            configured,
            notice: None,
            retry_after: 0,
            error: None,
            asked: String::new(),
            answer: None,
            history,
        }
    }
}

pub(super) async fn tutor_page(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
) -> Page {
    let history = state.db().recent_questions(student.id, 5).await?;
    Ok(TutorPage::new(&visitor, state.inner.tutor.is_configured(), history).into_response())
}

/// The tutor's form again with `message` and the question typed (minus
/// refused characters), answered with `status`: for a refused form.
pub(super) async fn tutor_error(
    state: &AppState,
    visitor: &Visitor,
    status: StatusCode,
    message: &str,
    question: &str,
) -> Page {
    let history = match visitor.student_id() {
        Some(id) => state.db().recent_questions(id, 5).await?,
        None => Vec::new(),
    };
    let mut page = TutorPage::new(visitor, state.inner.tutor.is_configured(), history);
    page.error = Some(message.to_owned());
    page.asked = Text::QUESTION.keep(question);
    Ok((status, page).into_response())
}

#[derive(Deserialize, Default)]
pub(super) struct AskForm {
    #[serde(default)]
    question: String,
}

/// The guide's ask-question: retried through the middleware; when the
/// provider is still failing, a friendly 503 with Retry-After, and the
/// question is kept.
pub(super) async fn ask_tutor(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    StrictForm { form, error }: StrictForm<AskForm>,
) -> Page {
    let tutor = &state.inner.tutor;
    let checked = match error {
        Some(error) => Err((error.status(), error.message())),
        None => Text::QUESTION.check(&form.question).map_err(|problem| {
            let message = match problem {
                Problem::Refused => {
                    "Your question contains control characters that cannot be used; they were removed below."
                }
                _ => "Please write a question of up to 2,000 characters.",
            };
            (StatusCode::UNPROCESSABLE_ENTITY, message)
        }),
    };
    let question = match checked {
        Ok(question) => question,
        Err((status, message)) => {
            let history = state.db().recent_questions(student.id, 5).await?;
            let mut page = TutorPage::new(&visitor, tutor.is_configured(), history);
            page.error = Some(message.to_owned());
            page.asked = Text::QUESTION.keep(&form.question);
            return Ok((status, page).into_response());
        }
    };
    let question = question.as_str();
    let outcome = tutor.ask(question).await;
    let (answer, status, unavailable) = match outcome {
        Err(UpstreamError::NotConfigured) => (None, "unconfigured", None),
        Err(error) if state.healing() == Healing::Off => {
            return Err(anyhow::anyhow!("AI tutor failed: {error}").into());
        }
        // Still failing after the middleware's retries: the kind answer,
        // reported like every fallback.
        outcome => state.fallback("ai:ask").recover(
            outcome.map(|answer| (Some(answer), "answered", None)),
            |error| (None, "unavailable", Some(error.retry_after())),
        ),
    };
    state
        .db()
        .save_question(student.id, question, answer.as_deref(), status)
        .await?;
    let history = state.db().recent_questions(student.id, 5).await?;
    let mut page = TutorPage::new(
        &visitor,
        tutor.is_configured(),
        history.into_iter().skip(1).collect(),
    );
    page.asked = question.to_owned();
    page.answer = answer;
    match unavailable {
        None => Ok(page.into_response()),
        Some(retry_after) => {
            let seconds = retry_after.as_secs().max(1);
            page.notice = Some("The AI tutor is temporarily unavailable.".to_owned());
            page.retry_after = seconds;
            Ok(unavailable_response(seconds, page.into_response()))
        }
    }
}
