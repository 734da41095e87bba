//! Home, sign-up, login and logout, and the signed-in extractor.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppError, Chrome, Page, see_other};
use crate::AppState;
use crate::db::{self, NewEmail, SignupError};
use crate::input::{self, Problem, StrictForm, Text};
use crate::session::{StudentSession, Visitor};

#[derive(Template, WebTemplate)]
#[template(path = "home.html")]
struct HomePage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
}

pub(super) async fn home(visitor: Visitor) -> Response {
    if visitor.student_id().is_some() {
        return see_other("/dashboard");
    }
    let Chrome {
        signed_in,
        theme,
        csrf,
    } = Chrome::of(&visitor);
    HomePage {
        signed_in,
        theme,
        csrf,
    }
    .into_response()
}

#[derive(Template, WebTemplate)]
#[template(path = "signup.html")]
struct SignupPage {
    signed_in: bool,
    theme: String,
    csrf: super::Csrf,
    error: Option<String>,
    name: String,
    email: String,
}

#[derive(Deserialize, Default)]
pub(super) struct SignupForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub(super) async fn signup_form(visitor: Visitor) -> Response {
    if visitor.student_id().is_some() {
        return see_other("/dashboard");
    }
    SignupPage {
        signed_in: false,
        theme: visitor.data.theme.clone(),
        csrf: super::Csrf::of(&visitor),
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
    if !input::is_valid_email(&email) {
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

pub(super) async fn signup(
    State(state): State<AppState>,
    Client(client): Client,
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
            // A password check like a login's, so throttled like one.
            let attempt = match state.inner.login_throttle.begin(&email, client).await {
                Ok(attempt) => attempt,
                Err(throttled) => {
                    let mut response = signup_error(
                        &visitor,
                        StatusCode::TOO_MANY_REQUESTS,
                        &too_many(&throttled),
                        &form.name,
                        &form.email,
                    );
                    retry_after(&mut response, &throttled);
                    return Ok(response);
                }
            };
            if let Some((id, name)) = check_password(&state, &email, password).await? {
                attempt.succeeded();
                return sign_in(&mut visitor, id, name).await;
            }
            attempt.failed();
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
pub(super) fn signup_error(
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
            csrf: super::Csrf::of(visitor),
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
    csrf: super::Csrf,
    error: Option<String>,
    email: String,
}

#[derive(Deserialize, Default)]
pub(super) struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub(super) async fn login_form(visitor: Visitor) -> Response {
    if visitor.student_id().is_some() {
        return see_other("/dashboard");
    }
    LoginPage {
        signed_in: false,
        theme: visitor.data.theme.clone(),
        csrf: super::Csrf::of(&visitor),
        error: None,
        email: String::new(),
    }
    .into_response()
}

/// A login. Failures are throttled per account and client
/// (`selfheal::web::LoginThrottle`): past the budget, a `429` with
/// `Retry-After` and the form (the email kept), decided before any
/// password work, the same for known and unknown emails.
pub(super) async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    mut visitor: Visitor,
    StrictForm { form, error }: StrictForm<LoginForm>,
) -> Page {
    let refuse = |status: StatusCode, message: &str, email: &str| {
        login_error(&visitor, status, message, email)
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
        let attempt = match state.inner.login_throttle.begin(&email, client).await {
            Ok(attempt) => attempt,
            Err(throttled) => {
                let mut response =
                    refuse(StatusCode::TOO_MANY_REQUESTS, &too_many(&throttled), &email);
                retry_after(&mut response, &throttled);
                return Ok(response);
            }
        };
        // An error (the database down, the hashing gate full) drops the
        // attempt undecided: refunded, it was not the client's guess.
        let verified = check_password(&state, &email, form.password).await?;
        match verified {
            Some(_) => attempt.succeeded(),
            None => attempt.failed(),
        }
        verified
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

/// The login form again, with `message` and the email typed (minus the
/// characters the input rules refuse); never the password.
pub(super) fn login_error(
    visitor: &Visitor,
    status: StatusCode,
    message: &str,
    email: &str,
) -> Response {
    (
        status,
        LoginPage {
            signed_in: false,
            theme: visitor.data.theme.clone(),
            csrf: super::Csrf::of(visitor),
            error: Some(message.to_owned()),
            email: Text::EMAIL.keep(email),
        },
    )
        .into_response()
}

/// The sentence of a throttled sign-in: how long to wait, in words.
fn too_many(throttled: &selfheal::web::Throttled) -> String {
    let secs = throttled.retry_after_secs();
    let wait = if secs <= 90 {
        format!("{secs} seconds")
    } else {
        format!("{} minutes", secs.div_ceil(60))
    };
    format!(
        "Too many failed sign-ins from your network. For your account's safety, please wait {wait} and try again."
    )
}

/// Adds `Retry-After` to a throttled answer.
fn retry_after(response: &mut Response, throttled: &selfheal::web::Throttled) {
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(throttled.retry_after_secs()),
    );
}

/// The client of a request, as the login throttle tells clients apart (the
/// TCP peer, or the configured proxy header).
pub(super) struct Client(Option<selfheal::health::ClientId>);

impl axum::extract::FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(state.inner.login_throttle.client_of(parts)))
    }
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

pub(super) async fn logout(mut visitor: Visitor) -> Page {
    visitor.sign_out().await?;
    Ok(see_other("/"))
}

/// The signed-in student and their session: an extractor that answers
/// with a redirect to the login page when nobody is signed in (or the
/// session names a student who no longer exists, whose session it ends).
pub(super) struct SignedIn {
    pub(super) student: db::Student,
    pub(super) visitor: Visitor,
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
}
