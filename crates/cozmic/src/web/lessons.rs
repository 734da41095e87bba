//! The dashboard, the lesson list, a lesson and its completion (with the
//! form nonce that makes it pay once).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hmac::Mac;
use serde::Deserialize;

use super::auth::SignedIn;
use super::{Chrome, Page, message, random_token, see_other};
use crate::AppState;
use crate::db::{self, NewEmail};
use crate::lessons::{self, LESSONS};
use crate::session::Visitor;

/// A lesson form's nonce: 16 random bytes and a MAC binding them to the
/// student and the lesson (keyed with `SECRET_KEY`), so that a form cannot
/// be forged for XP, only submitted (once) as served.
fn lesson_nonce(state: &AppState, student_id: i64, lesson_id: &str) -> String {
    let random = random_token();
    let mac = lesson_mac(state, student_id, lesson_id, &random)
        .finalize()
        .into_bytes();
    format!("{random}{}", hex::encode(&mac[..16]))
}

fn lesson_nonce_is_valid(state: &AppState, student_id: i64, lesson_id: &str, nonce: &str) -> bool {
    if nonce.len() != 64 || !nonce.is_ascii() {
        return false;
    }
    let (random, tag) = nonce.split_at(32);
    let Ok(tag) = hex::decode(tag) else {
        return false;
    };
    lesson_mac(state, student_id, lesson_id, random)
        .verify_truncated_left(&tag)
        .is_ok()
}

fn lesson_mac(
    state: &AppState,
    student_id: i64,
    lesson_id: &str,
    random: &str,
) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(state.inner.secret.as_bytes())
        .expect("any key length");
    mac.update(format!("cozmic lesson\0{student_id}\0{lesson_id}\0{random}").as_bytes());
    mac
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
    student: db::Student,
    level: i64,
    level_progress: i64,
    flash: Option<String>,
    next_lesson: Option<&'static lessons::Lesson>,
    activity: Vec<ActivityItem>,
}

struct ActivityItem {
    points: i64,
    title: &'static str,
    when: String,
}

#[derive(Deserialize)]
pub(super) struct DashboardQuery {
    done: Option<String>,
}

fn ago(created_at_ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let seconds = ((now - created_at_ms) / 1000).max(0);
    match seconds {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

pub(super) async fn dashboard(
    State(state): State<AppState>,
    SignedIn {
        student,
        mut visitor,
    }: SignedIn,
    query: Result<Query<DashboardQuery>, axum::extract::rejection::QueryRejection>,
) -> Page {
    let activity = state.db().recent_activity(student.id, 5).await?;
    let done = state.db().completed_lessons(student.id).await?;
    let level = db::level(student.xp);
    // Refresh the session's cached values (only changes are written).
    visitor.data.name = student.name.clone();
    visitor.data.xp = student.xp;
    visitor.data.level = level;
    visitor.data.streak = student.streak;
    visitor.save().await?;
    let flash = query
        .ok()
        .and_then(|Query(q)| q.done)
        .and_then(|id| lessons::find(&id))
        .map(|lesson| format!("Lesson complete: {} (+{} XP)", lesson.title, db::LESSON_XP));
    let Chrome {
        signed_in,
        theme,
        csrf,
    } = Chrome::of(&visitor);
    Ok(DashboardPage {
        signed_in,
        theme,
        csrf,
        level,
        level_progress: student.xp % db::XP_PER_LEVEL,
        flash,
        next_lesson: LESSONS
            .iter()
            .find(|l| !done.iter().any(|d| d == l.id))
            .or(LESSONS.first()),
        activity: activity
            .into_iter()
            .map(|a| ActivityItem {
                points: a.points,
                title: lessons::find(&a.lesson_id).map_or("a lesson", |l| l.title),
                when: ago(a.created_at),
            })
            .collect(),
        student,
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "lessons.html")]
struct LessonsPage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
    lessons: Vec<LessonItem>,
}

struct LessonItem {
    id: &'static str,
    title: &'static str,
    summary: &'static str,
    done: bool,
}

pub(super) async fn lesson_list(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
) -> Page {
    let done = state.db().completed_lessons(student.id).await?;
    let Chrome {
        signed_in,
        theme,
        csrf,
    } = Chrome::of(&visitor);
    Ok(LessonsPage {
        signed_in,
        theme,
        csrf,
        lessons: LESSONS
            .iter()
            .map(|l| LessonItem {
                id: l.id,
                title: l.title,
                summary: l.summary,
                done: done.iter().any(|d| d == l.id),
            })
            .collect(),
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "lesson.html")]
struct LessonPage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
    id: &'static str,
    title: &'static str,
    body: &'static [&'static str],
    /// Completed already: no form (a lesson pays its XP once).
    completed: bool,
    nonce: String,
}

pub(super) async fn lesson(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let Some(lesson) = lessons::find(&id) else {
        return Ok(no_such_lesson(&visitor));
    };
    let completed = state
        .db()
        .completed_lessons(student.id)
        .await?
        .iter()
        .any(|done| done == lesson.id);
    let Chrome {
        signed_in,
        theme,
        csrf,
    } = Chrome::of(&visitor);
    Ok(LessonPage {
        signed_in,
        theme,
        csrf,
        id: lesson.id,
        title: lesson.title,
        body: lesson.body,
        completed,
        nonce: if completed {
            String::new()
        } else {
            lesson_nonce(&state, student.id, lesson.id)
        },
    }
    .into_response())
}

/// The page for a lesson id that names none.
fn no_such_lesson(visitor: &Visitor) -> Response {
    message(
        visitor,
        StatusCode::NOT_FOUND,
        "No such lesson",
        "That lesson does not exist (any more).",
    )
}

#[derive(Deserialize)]
pub(super) struct CompleteForm {
    #[serde(default)]
    nonce: String,
}

/// The guide's save-progress: +10 XP and a ledger row, once per form and
/// once per lesson (another form of a lesson completed since lands on the
/// lesson, shown completed, with no XP; the same form again, a double click
/// or a retry, lands where the first did).
pub(super) async fn complete_lesson(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    Path(id): Path<String>,
    form: Result<Form<CompleteForm>, axum::extract::rejection::FormRejection>,
) -> Page {
    let Some(lesson) = lessons::find(&id) else {
        return Ok(no_such_lesson(&visitor));
    };
    let nonce = form.map(|Form(f)| f.nonce).unwrap_or_default();
    if !lesson_nonce_is_valid(&state, student.id, lesson.id, &nonce) {
        return Ok(message(
            &visitor,
            StatusCode::BAD_REQUEST,
            "Please try again",
            "This form has expired. Open the lesson again and press the button once more.",
        ));
    }
    let level_up = |level: i64| NewEmail {
        kind: "level_up".to_owned(),
        subject: format!("You reached level {level}!"),
        body: format!(
            "Congratulations: you reached level {level} on CozmicLearning. Keep the streak going!\n"
        ),
    };
    let completion = state
        .db()
        .complete_lesson(student.id, lesson.id, &nonce, level_up)
        .await?;
    if !completion.applied && !completion.same_form {
        return Ok(see_other(&format!("/lessons/{}", lesson.id)));
    }
    if completion.applied {
        state.mailer().wake();
    }
    Ok(see_other(&format!("/dashboard?done={}", lesson.id)))
}
