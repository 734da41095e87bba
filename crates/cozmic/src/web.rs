//! Pages and routes.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hmac::Mac;
use selfheal::web::{AdminGuard, Dashboard, Friendly, HealLayer, admin_routes};
use serde::Deserialize;
use tower_sessions::cookie::Key;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::AppState;
use crate::config::{FaultHooks, Healing};
use crate::db::{self, NewEmail, SignupError};
use crate::input::{self, Problem, StrictForm, Text};
use crate::lessons::{self, LESSONS};
use crate::session::{StudentSession, Visitor};
use crate::upstream::UpstreamError;

/// The router: pages, the admin dashboard, probes and metrics, with the
/// session layer and (healing on) selfheal's `HealLayer` around them.
pub fn app(state: AppState) -> Router {
    let monitor = state.monitor().clone();
    let config = state.config();
    let healing = config.healing;

    let guard = state.inner.admin_guard.clone();

    let sessions = SessionManagerLayer::new(state.inner.store.clone())
        .with_name("cozmic_session")
        .with_secure(config.secure_cookies)
        .with_same_site(SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(time::Duration::days(14)))
        .with_signed(Key::from(state.inner.secret.as_bytes()));

    let mut pages = Router::new()
        .route("/", get(home))
        .route("/signup", get(signup_form).post(signup))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/dashboard", get(dashboard))
        .route("/lessons", get(lesson_list))
        .route("/lessons/{id}", get(lesson))
        .route("/lessons/{id}/complete", post(complete_lesson))
        .route("/tutor", get(tutor_page).post(ask_tutor))
        .route("/premium", get(premium_page))
        .route("/premium/subscribe", post(subscribe))
        .fallback(not_found)
        .with_state(state.clone())
        .merge(admin_routes(admin_dashboard(&monitor, guard, config)));
    if config.faults.is_armed() {
        pages = pages.layer(axum::middleware::from_fn(panic_on_demand));
    }
    let pages = pages
        .layer(sessions)
        .layer(Extension(healing))
        .layer(Extension(selfheal::session::CookieName("cozmic_session")));
    let metrics = selfheal::metrics::Metrics::install().ok();
    let pages = match healing {
        Healing::On => {
            let mut heal = HealLayer::new(monitor.clone());
            if let Some(header) = &config.client_ip_header {
                let name = axum::http::HeaderName::from_bytes(header.as_bytes())
                    .expect("validated by Config");
                heal = heal.with_client_key(selfheal::web::ClientKey::Header(name));
            }
            if let Some(metrics) = &metrics {
                heal = heal.with_metrics(metrics);
            }
            pages.layer(heal)
        }
        Healing::Off => pages
            .layer(axum::middleware::map_response(naive_unavailable))
            .layer(Extension(monitor.clone())),
    };
    let mut router = pages.merge(selfheal::web::probes(monitor.clone()));
    if let Some(metrics) = &metrics {
        router = router.merge(metrics.routes(monitor));
    }
    router
}

/// The admin dashboard; without `ADMIN_TOKEN`, its 403 page says how to
/// get in.
fn admin_dashboard(
    monitor: &selfheal::health::Monitor,
    guard: AdminGuard,
    config: &crate::config::Config,
) -> Dashboard {
    let dashboard = Dashboard::new(monitor.clone(), guard).with_service_name("cozmic");
    if config.admin_token.is_some() {
        return dashboard;
    }
    dashboard.with_access_hint(
        "No ADMIN_TOKEN is set on this server. To get in, set ADMIN_TOKEN (16 characters or more) \
         and restart cozmic, or run `cozmic promote EMAIL` on the server to make your student \
         account an admin, then sign in to cozmic as that student.",
    )
}

/// The admin guard for `config`: `ADMIN_TOKEN` (bearer or login form), or
/// students made admin with `cozmic promote`.
pub(crate) fn admin_guard(config: &crate::config::Config, db: &crate::db::Db) -> AdminGuard {
    let healing = config.healing;
    let admin_db = db.clone();
    let is_admin_student = move |request: axum::http::Request<()>| {
        let db = admin_db.clone();
        async move {
            let Some(session) = request.extensions().get::<Session>().cloned() else {
                return false;
            };
            let id = match healing {
                Healing::On => session.get::<i64>("student_id").await.ok().flatten(),
                Healing::Off => session
                    .get::<StudentSession>("student")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.student_id),
            };
            match id {
                Some(id) => db.is_admin(id).await,
                None => false,
            }
        }
    };
    match &config.admin_token {
        Some(token) => AdminGuard::token(token.expose())
            .expect("validated by Config")
            .with_secure_cookie(config.secure_cookies)
            .or_predicate(is_admin_student),
        None => AdminGuard::predicate(is_admin_student),
    }
}

/// The chaos hook: a request with the panic header panics in the handler
/// chain (armed hooks only: this layer is not even installed otherwise).
async fn panic_on_demand(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.headers().contains_key(FaultHooks::PANIC_HEADER) {
        std::panic::panic_any(FaultHooks::PANIC_MESSAGE);
    }
    next.run(request).await
}

/// What every page needs for its header.
struct Chrome {
    signed_in: bool,
    theme: String,
}

impl Chrome {
    fn of(visitor: &Visitor) -> Self {
        Self {
            signed_in: visitor.student_id().is_some(),
            theme: visitor.data.theme.clone(),
        }
    }
}

/// A handler's failure. Never shows its cause.
///
/// An infrastructure fault the user can wait out (the database or the
/// session store unreachable, a write that could not get its lock within
/// the runner's deadline) is [`AppError::Unavailable`]: a 503 with
/// `Retry-After` and a page that says so; every write is one transaction,
/// so nothing was half-written. Anything else is a 500 (with healing on,
/// replaced by the friendly page and recorded by `HealLayer`).
#[derive(Debug)]
enum AppError {
    Unavailable(Unavailable),
    Internal(anyhow::Error),
}

/// What is unavailable, for the page's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unavailable {
    /// The database answers "locked" / "serialization failure" past the
    /// runner's deadline: busy, not down.
    DatabaseBusy,
    /// The database cannot be reached.
    Database,
    /// The session store cannot be reached.
    Sessions,
    /// Too many password checks at once (the hashing gate is full).
    PasswordsBusy,
}

/// `Retry-After` of an [`AppError::Unavailable`] answer.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl Unavailable {
    /// The infrastructure fault in `error`'s chain, if that is what it is.
    fn of(error: &anyhow::Error) -> Option<Self> {
        error.chain().find_map(|cause| {
            if let Some(e) = cause.downcast_ref::<selfheal::db::TxError<sqlx::Error>>() {
                return Self::of_sqlx(e.inner());
            }
            if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
                return Self::of_sqlx(e);
            }
            if cause.downcast_ref::<crate::password::Busy>().is_some() {
                return Some(Self::PasswordsBusy);
            }
            if cause
                .downcast_ref::<selfheal::session::SessionError>()
                .is_some()
                || cause
                    .downcast_ref::<tower_sessions::session::Error>()
                    .is_some()
            {
                return Some(Self::Sessions);
            }
            None
        })
    }

    fn of_sqlx(error: &sqlx::Error) -> Option<Self> {
        use selfheal::retry::Verdict;
        match selfheal::db::classify::verdict(error) {
            Verdict::Permanent => None,
            _ => {
                let kind = selfheal::db::classify::failure_kind(error);
                let busy = kind.starts_with("sqlite:BUSY")
                    || kind.starts_with("sqlite:LOCKED")
                    || ["pg:40001", "pg:40P01", "pg:55P03", "pg:57014"].contains(&kind.as_ref());
                Some(if busy {
                    Self::DatabaseBusy
                } else {
                    Self::Database
                })
            }
        }
    }

    fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::DatabaseBusy => (
                "We are busy saving other changes",
                "Nothing was saved and nothing was lost. Please try again in a few seconds.",
            ),
            Self::Database => (
                "We cannot reach our database right now",
                "Nothing was lost: your progress is safe. Please try again in a few seconds.",
            ),
            Self::Sessions => (
                "We cannot reach our session store right now",
                "If you were signed in, you still are. Please try again in a few seconds.",
            ),
            Self::PasswordsBusy => (
                "Lots of people are signing in right now",
                "Please try again in a few seconds.",
            ),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(error: E) -> Self {
        let error = error.into();
        match Unavailable::of(&error) {
            Some(what) => {
                tracing::warn!(error = %selfheal::web::redact(&format!("{error:#}")), ?what, "request answered 503: infrastructure unavailable");
                AppError::Unavailable(what)
            }
            None => AppError::Internal(error),
        }
    }
}

/// Marks a 503 answered for an [`AppError::Unavailable`], so that the naive
/// app (healing off, the chaos baseline) can answer it as it always did.
#[derive(Clone, Copy, Debug)]
struct UnavailableAnswer;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Unavailable(what) => {
                let (heading, text) = what.words();
                let page = MessagePage {
                    signed_in: false,
                    theme: "light".to_owned(),
                    heading: heading.to_owned(),
                    message: text.to_owned(),
                };
                let mut response =
                    unavailable_response(UNAVAILABLE_RETRY_AFTER_SECS, page.into_response());
                response.extensions_mut().insert(UnavailableAnswer);
                response
            }
            AppError::Internal(error) => {
                tracing::error!(error = %selfheal::web::redact(&format!("{error:#}")), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
            }
        }
    }
}

/// Healing off: an infrastructure fault is the plain 500 of an app without
/// selfheal (the chaos harness' control run).
async fn naive_unavailable(response: Response) -> Response {
    if response.extensions().get::<UnavailableAnswer>().is_some() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
    }
    response
}

type Page = Result<Response, AppError>;

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = fastrand::u128(..).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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

fn is_token(value: &str) -> bool {
    (8..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------- home, auth

#[derive(Template, WebTemplate)]
#[template(path = "home.html")]
struct HomePage {
    signed_in: bool,
    theme: String,
}

async fn home(visitor: Visitor) -> Response {
    if visitor.student_id().is_some() {
        return see_other("/dashboard");
    }
    let Chrome { signed_in, theme } = Chrome::of(&visitor);
    HomePage { signed_in, theme }.into_response()
}

#[derive(Template, WebTemplate)]
#[template(path = "signup.html")]
struct SignupPage {
    signed_in: bool,
    theme: String,
    error: Option<String>,
    name: String,
    email: String,
}

#[derive(Deserialize, Default)]
struct SignupForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

async fn signup_form(visitor: Visitor) -> Response {
    if visitor.student_id().is_some() {
        return see_other("/dashboard");
    }
    SignupPage {
        signed_in: false,
        theme: visitor.data.theme.clone(),
        error: None,
        name: String::new(),
        email: String::new(),
    }
    .into_response()
}

/// A sign-up that passed the input rules: the name to store and the
/// normalised email (see [`input`]).
#[derive(Debug)]
struct ValidSignup {
    name: String,
    email: String,
}

fn validate_signup(form: &SignupForm) -> Result<ValidSignup, &'static str> {
    let name = match Text::NAME.check(&form.name) {
        Ok(name) => name,
        Err(Problem::Refused) => {
            return Err(
                "Your name contains characters that cannot be used (control or text-direction characters); they were removed below.",
            );
        }
        Err(Problem::Invisible) => {
            return Err("Please enter your name with at least one visible character.");
        }
        Err(Problem::Empty | Problem::TooLong { .. }) => {
            return Err("Please enter your name (up to 60 characters).");
        }
    };
    let email = match Text::EMAIL.check(&form.email) {
        Ok(email) => input::normalize_email(&email),
        Err(Problem::Refused) => {
            return Err(
                "Your email address contains characters that cannot be used; they were removed below.",
            );
        }
        Err(_) => return Err("Please enter a valid email address, like ada@example.com."),
    };
    let valid_email = email.len() <= input::EMAIL_MAX
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        // No invisible characters (U+200B, joiners, direction marks): an
        // address that looks like another must not be another account.
        && email.chars().all(input::is_visible)
        // What the mailer will accept, so the welcome email can be sent.
        && email.parse::<lettre::Address>().is_ok();
    if !valid_email {
        return Err("Please enter a valid email address, like ada@example.com.");
    }
    let length = form.password.chars().count();
    if !(input::PASSWORD_MIN..=input::PASSWORD_MAX).contains(&length) {
        return Err("Please choose a password of 8 to 128 characters.");
    }
    if form.password.chars().any(input::is_refused) {
        return Err("Please choose a password without control characters.");
    }
    Ok(ValidSignup { name, email })
}

async fn signup(
    State(state): State<AppState>,
    mut visitor: Visitor,
    StrictForm { form, error }: StrictForm<SignupForm>,
) -> Page {
    if let Some(error) = error {
        return Ok(signup_error(
            &visitor,
            error.status(),
            error.message(),
            &form.name,
            &form.email,
        ));
    }
    let ValidSignup { name, email } = match validate_signup(&form) {
        Ok(valid) => valid,
        Err(message) => {
            return Ok(signup_error(
                &visitor,
                StatusCode::UNPROCESSABLE_ENTITY,
                message,
                &form.name,
                &form.email,
            ));
        }
    };
    let password = form.password;
    let hash = {
        let password = password.clone();
        state
            .password_work()
            .run(move || crate::password::hash(&password))
            .await???
    };
    let welcome = NewEmail {
        kind: "welcome".to_owned(),
        subject: "Welcome to CozmicLearning!".to_owned(),
        body: format!(
            "Hi {name},\n\nWelcome aboard! Your first lesson is waiting: finish it for your first 10 XP.\n\nSee you among the stars,\nCozmicLearning\n"
        ),
    };
    match state
        .db()
        .create_student(&email, &name, &hash, welcome)
        .await
    {
        Ok(id) => {
            state.mailer().wake();
            sign_in(&mut visitor, id, name).await
        }
        Err(SignupError::EmailTaken) => {
            // The same form sent again after its answer was lost (the
            // session store failed after the account was made, a timeout):
            // the right password signs in, as the first answer would have.
            if let Some((id, name)) = check_password(&state, &email, password).await? {
                return sign_in(&mut visitor, id, name).await;
            }
            Ok(signup_error(
                &visitor,
                StatusCode::UNPROCESSABLE_ENTITY,
                "An account with this email already exists. Log in instead?",
                &form.name,
                &form.email,
            ))
        }
        Err(SignupError::Db(error)) => Err(error.into()),
    }
}

/// The sign-up form again, with `message` and what was typed (minus the
/// characters the input rules refuse).
fn signup_error(
    visitor: &Visitor,
    status: StatusCode,
    message: &str,
    name: &str,
    email: &str,
) -> Response {
    (
        status,
        SignupPage {
            signed_in: false,
            theme: visitor.data.theme.clone(),
            error: Some(message.to_owned()),
            name: Text::NAME.keep(name),
            email: Text::EMAIL.keep(email),
        },
    )
        .into_response()
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    signed_in: bool,
    theme: String,
    error: Option<String>,
    email: String,
}

#[derive(Deserialize, Default)]
struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

async fn login_form(visitor: Visitor) -> Response {
    if visitor.student_id().is_some() {
        return see_other("/dashboard");
    }
    LoginPage {
        signed_in: false,
        theme: visitor.data.theme.clone(),
        error: None,
        email: String::new(),
    }
    .into_response()
}

async fn login(
    State(state): State<AppState>,
    mut visitor: Visitor,
    StrictForm { form, error }: StrictForm<LoginForm>,
) -> Page {
    let refuse = |status: StatusCode, message: &str, email: &str| {
        (
            status,
            LoginPage {
                signed_in: false,
                theme: visitor.data.theme.clone(),
                error: Some(message.to_owned()),
                email: Text::EMAIL.keep(email),
            },
        )
            .into_response()
    };
    if let Some(error) = error {
        return Ok(refuse(error.status(), error.message(), &form.email));
    }
    let email = match Text::EMAIL.check(&form.email) {
        Ok(email) => input::normalize_email(&email),
        Err(Problem::Refused) => {
            return Ok(refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Your email address contains characters that cannot be used; they were removed below.",
                &form.email,
            ));
        }
        // Empty or too long: no account has it.
        Err(_) => String::new(),
    };
    let verified = if email.is_empty() || email.len() > 254 || form.password.chars().count() > 128 {
        None
    } else {
        check_password(&state, &email, form.password).await?
    };
    let Some((id, name)) = verified else {
        return Ok(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "That email and password do not match an account.",
            &email,
        ));
    };
    sign_in(&mut visitor, id, name).await
}

/// The student whose email and password these are, checked on the hashing
/// gate. An unknown email costs the same verification as a wrong password:
/// neither its timing nor a busy answer under load tells which addresses
/// have accounts.
async fn check_password(
    state: &AppState,
    email: &str,
    password: String,
) -> Result<Option<(i64, String)>, AppError> {
    let record = state.db().login_record(email).await?;
    Ok(state
        .password_work()
        .run(move || match record {
            Some((id, name, hash)) => {
                crate::password::verify(&password, &hash).then_some((id, name))
            }
            None => {
                crate::password::verify(&password, crate::password::dummy_hash());
                None
            }
        })
        .await??)
}

/// Signs student `id` in (a new session id) and goes to the dashboard.
async fn sign_in(visitor: &mut Visitor, id: i64, name: String) -> Page {
    visitor
        .sign_in(StudentSession {
            student_id: Some(id),
            name,
            ..StudentSession::default()
        })
        .await?;
    Ok(see_other("/dashboard"))
}

async fn logout(mut visitor: Visitor) -> Page {
    visitor.sign_out().await?;
    Ok(see_other("/"))
}

/// The signed-in student and their session: an extractor that answers
/// with a redirect to the login page when nobody is signed in (or the
/// session names a student who no longer exists, whose session it ends).
struct SignedIn {
    student: db::Student,
    visitor: Visitor,
}

impl axum::extract::FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut visitor = Visitor::from_request_parts(parts, state).await?;
        let Some(id) = visitor.student_id() else {
            return Err(see_other("/login"));
        };
        match state.db().student(id).await {
            Ok(Some(student)) => Ok(Self { student, visitor }),
            Ok(None) => match visitor.sign_out().await {
                Ok(()) => Err(see_other("/login")),
                Err(error) => Err(AppError::from(error).into_response()),
            },
            Err(error) => Err(AppError::from(error).into_response()),
        }
    }
}

// ---------------------------------------------------------------- dashboard, lessons

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    signed_in: bool,
    theme: String,
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
struct DashboardQuery {
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

async fn dashboard(
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
    let Chrome { signed_in, theme } = Chrome::of(&visitor);
    Ok(DashboardPage {
        signed_in,
        theme,
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
    lessons: Vec<LessonItem>,
}

struct LessonItem {
    id: &'static str,
    title: &'static str,
    summary: &'static str,
    done: bool,
}

async fn lesson_list(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
) -> Page {
    let done = state.db().completed_lessons(student.id).await?;
    let Chrome { signed_in, theme } = Chrome::of(&visitor);
    Ok(LessonsPage {
        signed_in,
        theme,
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
    id: &'static str,
    title: &'static str,
    body: &'static [&'static str],
    /// Completed already: no form (a lesson pays its XP once).
    completed: bool,
    nonce: String,
}

async fn lesson(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    Path(id): Path<String>,
) -> Page {
    let Some(lesson) = lessons::find(&id) else {
        return Ok(message(
            &visitor,
            StatusCode::NOT_FOUND,
            "No such lesson",
            "That lesson does not exist (any more).",
        ));
    };
    let completed = state
        .db()
        .completed_lessons(student.id)
        .await?
        .iter()
        .any(|done| done == lesson.id);
    let Chrome { signed_in, theme } = Chrome::of(&visitor);
    Ok(LessonPage {
        signed_in,
        theme,
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

#[derive(Deserialize)]
struct CompleteForm {
    #[serde(default)]
    nonce: String,
}

/// The guide's save-progress: +10 XP and a ledger row, once per form and
/// once per lesson (another form of a lesson completed since lands on the
/// lesson, shown completed, with no XP; the same form again, a double click
/// or a retry, lands where the first did).
async fn complete_lesson(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
    Path(id): Path<String>,
    form: Result<Form<CompleteForm>, axum::extract::rejection::FormRejection>,
) -> Page {
    let Some(lesson) = lessons::find(&id) else {
        return Ok(message(
            &visitor,
            StatusCode::NOT_FOUND,
            "No such lesson",
            "That lesson does not exist (any more).",
        ));
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

// ---------------------------------------------------------------- tutor

#[derive(Template, WebTemplate)]
#[template(path = "tutor.html")]
struct TutorPage {
    signed_in: bool,
    theme: String,
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
        let Chrome { signed_in, theme } = Chrome::of(visitor);
        Self {
            signed_in,
            theme,
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

async fn tutor_page(
    State(state): State<AppState>,
    SignedIn { student, visitor }: SignedIn,
) -> Page {
    let history = state.db().recent_questions(student.id, 5).await?;
    Ok(TutorPage::new(&visitor, state.inner.tutor.is_configured(), history).into_response())
}

#[derive(Deserialize, Default)]
struct AskForm {
    #[serde(default)]
    question: String,
}

/// The guide's ask-question: retried through the middleware; when the
/// provider is still failing, a friendly 503 with Retry-After, and the
/// question is kept.
async fn ask_tutor(
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

fn unavailable_response(retry_after_secs: u64, page: Response) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    (StatusCode::SERVICE_UNAVAILABLE, Friendly, headers, page).into_response()
}

// ---------------------------------------------------------------- premium

#[derive(Template, WebTemplate)]
#[template(path = "premium.html")]
struct PremiumPage {
    signed_in: bool,
    theme: String,
    configured: bool,
    premium: bool,
    purchase: String,
    notice: Option<String>,
    success: Option<String>,
}

#[derive(Deserialize)]
struct PremiumQuery {
    ok: Option<String>,
}

async fn premium_page(
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
    let Chrome { signed_in, theme } = Chrome::of(&visitor);
    Ok(PremiumPage {
        signed_in,
        theme,
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
struct SubscribeForm {
    #[serde(default)]
    purchase: String,
}

/// A purchase: one Idempotency-Key per purchase form, so a retry (ours or
/// the student pressing again) is charged once.
async fn subscribe(
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
            let email = NewEmail {
                kind: "premium".to_owned(),
                subject: "Your CozmicLearning Premium receipt".to_owned(),
                body: format!(
                    "Thank you! Your payment {provider_id} of $9.00 was received and Premium is active.\n"
                ),
            };
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
            state.monitor().record_error(
                "PaymentRefused",
                "payments:charge",
                &format!("HTTP {status}"),
            );
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
            let Chrome { signed_in, theme } = Chrome::of(&visitor);
            let page = PremiumPage {
                signed_in,
                theme,
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

/// The idempotency key of a purchase is this prefix and the form's nonce.
fn purchase_prefix(student_id: i64) -> String {
    format!("cozmic-premium-{student_id}-")
}

// ---------------------------------------------------------------- misc

#[derive(Template, WebTemplate)]
#[template(path = "message.html")]
struct MessagePage {
    signed_in: bool,
    theme: String,
    heading: String,
    message: String,
}

fn message(visitor: &Visitor, status: StatusCode, heading: &str, text: &str) -> Response {
    let Chrome { signed_in, theme } = Chrome::of(visitor);
    (
        status,
        MessagePage {
            signed_in,
            theme,
            heading: heading.to_owned(),
            message: text.to_owned(),
        },
    )
        .into_response()
}

async fn not_found(visitor: Visitor) -> Response {
    message(
        &visitor,
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is nothing at this address.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str, email: &str, password: &str) -> SignupForm {
        SignupForm {
            name: name.into(),
            email: email.into(),
            password: password.into(),
        }
    }

    #[test]
    fn signup_validation_names_the_problem() {
        assert!(validate_signup(&form("Ada", "ada@example.com", "correct horse")).is_ok());
        assert!(
            validate_signup(&form("", "ada@example.com", "correct horse"))
                .unwrap_err()
                .contains("name")
        );
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@.com",
        ] {
            assert!(
                validate_signup(&form("Ada", bad, "correct horse"))
                    .unwrap_err()
                    .contains("email"),
                "{bad}"
            );
        }
        assert!(
            validate_signup(&form("Ada", "ada@example.com", "short"))
                .unwrap_err()
                .contains("password")
        );
    }

    #[test]
    fn form_tokens_are_checked() {
        assert!(is_token(&random_token()));
        for bad in ["", "short", "has space here", "<script>alert(1)</script>"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}
