//! One virtual user: a student's journey through the app (sign up, the
//! dashboard, lessons, the tutor, sometimes Premium), acting as a browser
//! does and judging each answer as a user would.
//!
//! The journey and the rules every action follows (judge the page, press
//! again once on anything but success, record the final outcome) are here;
//! `steps` holds what each action sends and expects, and `corrupt` how a
//! user's session is damaged mid-run.

mod corrupt;
mod steps;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cozmic::config::FaultHooks;
use tokio::task::JoinHandle;

use super::world::World;
use super::{RunOptions, Shared};
use crate::report::{FailureKind, Outcome, Recorder};

/// Starts `options.users` users on the world's app, acting until
/// `options.duration` after `started`.
pub(super) fn spawn(
    options: &RunOptions,
    world: &World,
    recorder: &Recorder,
    shared: &Arc<Shared>,
    started: Instant,
) -> Vec<JoinHandle<()>> {
    let plan = &options.plan;
    let storm = options.is_storm();
    let state = world.app.state();
    let base = world.app.url();
    let deadline = started + options.duration;
    let corrupt_users = ((options.users as f64) * plan.sessions.corrupt_fraction).round() as usize;
    let mut tasks = Vec::new();
    for user in 0..options.users {
        let ctx = User {
            run: options.name,
            index: user,
            base: base.clone(),
            recorder: recorder.clone(),
            shared: shared.clone(),
            started,
            deadline,
            rng: fastrand::Rng::with_seed(
                options.seed ^ (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            panic_probability: if storm { 0.0 } else { plan.panic.probability },
            corrupt: !storm
                && user < corrupt_users.max(usize::from(plan.sessions.corrupt_fraction > 0.0)),
            panic_sent: false,
            retrying: false,
            pending_lesson: None,
            done: Vec::new(),
            generation: 0,
            jar: Arc::default(),
            session_table: state.sessions().table(),
            sqlite: state.db().sqlite().cloned(),
            postgres: state.db().postgres().cloned(),
            storm,
        };
        tasks.push(tokio::spawn(ctx.live()));
    }
    tasks
}

/// One virtual user.
struct User {
    run: &'static str,
    index: usize,
    base: String,
    recorder: Recorder,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
    rng: fastrand::Rng,
    panic_probability: f64,
    corrupt: bool,
    /// Whether the last request of the current try asked for a panic.
    panic_sent: bool,
    /// Whether the current try is the user pressing again.
    retrying: bool,
    /// The lesson form last sent: pressed again as is.
    pending_lesson: Option<(&'static str, String)>,
    /// The lessons this student has completed (a lesson pays once).
    done: Vec<&'static str>,
    /// Which student this user is now: when one has completed every lesson,
    /// the next one signs up (a new visitor, a fresh browser).
    generation: u32,
    /// The browser's cookie jar.
    jar: Arc<reqwest::cookie::Jar>,
    /// The session store's table (`None` for Redis).
    session_table: Option<&'static str>,
    sqlite: Option<sqlx::SqlitePool>,
    postgres: Option<sqlx::PgPool>,
    storm: bool,
}

/// The steps of a journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    SignUp,
    Dashboard,
    CompleteLesson,
    Tutor,
    Subscribe,
}

impl Action {
    fn step(self) -> &'static str {
        match self {
            Action::SignUp => "signup",
            Action::Dashboard => "dashboard",
            Action::CompleteLesson => "complete_lesson",
            Action::Tutor => "tutor",
            Action::Subscribe => "subscribe",
        }
    }
}

/// What one try of an action got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Ok,
    Friendly,
    /// The login page: the session was lost.
    SignedOut,
    Hard(FailureKind),
}

impl Seen {
    fn outcome(self) -> Outcome {
        match self {
            Seen::Ok => Outcome::Success,
            Seen::Friendly => Outcome::Degraded,
            Seen::SignedOut => Outcome::SignedOut,
            Seen::Hard(kind) => Outcome::HardFailure(kind),
        }
    }
}

const LESSONS: [&str; 6] = [
    "light-years",
    "phases-of-the-moon",
    "seasons",
    "black-holes",
    "exoplanets",
    "rockets",
];

/// A fresh browser: a cookie jar (kept, to read the session cookie) and a
/// client on it.
fn browser() -> (Arc<reqwest::cookie::Jar>, reqwest::Client) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    (jar, client)
}

impl User {
    fn email(&self) -> String {
        format!(
            "user{}.{}.{}@chaos.test",
            self.index, self.generation, self.run
        )
    }

    fn new_browser(&mut self) -> reqwest::Client {
        let (jar, client) = browser();
        self.jar = jar;
        client
    }

    async fn live(mut self) {
        let mut http = self.new_browser();
        // Sign up (a failure is retried by the next action's re-login).
        self.act(Action::SignUp, &mut http).await;
        let mut subscribed = false;
        let mut corrupt_at = if self.corrupt {
            Some(self.started + (self.deadline - self.started).mul_f64(0.2 + 0.6 * self.rng.f64()))
        } else {
            None
        };
        while Instant::now() < self.deadline {
            if let Some(at) = corrupt_at
                && Instant::now() >= at
            {
                corrupt_at = None;
                self.corrupt_session().await;
            }
            if self.storm {
                self.act(Action::Tutor, &mut http).await;
            } else {
                if self.done.len() == LESSONS.len() {
                    // Every lesson completed (each pays once): the next
                    // student arrives.
                    self.generation += 1;
                    self.done.clear();
                    self.pending_lesson = None;
                    subscribed = false;
                    http = self.new_browser();
                    self.act(Action::SignUp, &mut http).await;
                    self.think().await;
                }
                self.act(Action::Dashboard, &mut http).await;
                self.think().await;
                self.act(Action::CompleteLesson, &mut http).await;
                self.think().await;
                if self.rng.f64() < 0.5 {
                    self.act(Action::Tutor, &mut http).await;
                    self.think().await;
                }
                if !subscribed && self.rng.f64() < 0.1 {
                    subscribed = self.act(Action::Subscribe, &mut http).await;
                    self.think().await;
                }
            }
            self.think().await;
        }
    }

    async fn perform(&mut self, action: Action, http: &reqwest::Client) -> Seen {
        self.panic_sent = false;
        let seen = match action {
            Action::SignUp => self.sign_up(http).await,
            Action::Dashboard => self.dashboard(http).await,
            Action::CompleteLesson => self.complete(http).await,
            Action::Tutor => self.ask(http).await,
            Action::Subscribe => self.subscribe(http).await,
        };
        match seen {
            // The connection died under a request that asked for a panic:
            // the panic escaped to the user.
            Seen::Hard(FailureKind::Connection) if self.panic_sent => {
                Seen::Hard(FailureKind::Panic)
            }
            seen => seen,
        }
    }

    async fn think(&mut self) {
        let ms = if self.storm {
            self.rng.u64(50..150)
        } else {
            self.rng.u64(100..400)
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Runs `action`; on anything but success the user presses again once
    /// (signing in again if the session was lost, or with a fresh browser
    /// if the app keeps failing). Records the final outcome.
    async fn act(&mut self, action: Action, http: &mut reqwest::Client) -> bool {
        let step = action.step();
        let begin = Instant::now();
        let started_at = begin - self.started;
        let mut seen = self.perform(action, http).await;
        if seen != Seen::Ok && !self.storm {
            self.shared
                .first_try_failures
                .fetch_add(1, Ordering::Relaxed);
            self.shared.user_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            if seen == Seen::SignedOut || matches!(seen, Seen::Hard(FailureKind::ServerError)) {
                // Lost the session, or the app errors on every request
                // with this cookie: a fresh browser, signed in again.
                if matches!(seen, Seen::Hard(_)) {
                    *http = self.new_browser();
                }
                self.shared.relogins.fetch_add(1, Ordering::Relaxed);
                let login_began = Instant::now();
                let login = self.log_in(http).await;
                self.recorder.record(
                    self.run,
                    "login",
                    login_began - self.started,
                    login_began.elapsed(),
                    login.outcome(),
                );
            }
            // The same form again (the same lesson nonce, the same purchase).
            self.retrying = true;
            seen = self.perform(action, http).await;
            self.retrying = false;
        }
        self.recorder
            .record(self.run, step, started_at, begin.elapsed(), seen.outcome());
        seen == Seen::Ok
    }

    fn maybe_panic(&mut self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.panic_probability > 0.0 && self.rng.f64() < self.panic_probability {
            self.shared.panics_requested.fetch_add(1, Ordering::Relaxed);
            self.panic_sent = true;
            request.header(FaultHooks::PANIC_HEADER, "1")
        } else {
            request
        }
    }

    /// Judges a response: `ok` decides success for a 2xx page.
    async fn judge(
        response: Result<reqwest::Response, reqwest::Error>,
        ok: impl Fn(&str) -> bool,
    ) -> (Seen, String) {
        let response = match response {
            Ok(r) => r,
            Err(_) => return (Seen::Hard(FailureKind::Connection), String::new()),
        };
        let status = response.status();
        let signed_out = response.url().path() == "/login";
        let says_when = response
            .headers()
            .contains_key(reqwest::header::RETRY_AFTER);
        let body = match response.text().await {
            Ok(body) => body,
            Err(_) => return (Seen::Hard(FailureKind::Connection), String::new()),
        };
        // Degraded means a truthful answer that loses nothing: the app's
        // own notice ("temporarily unavailable, your question is saved") or
        // a 503 that says when to come back. A generic error page is a
        // failure, request id or not.
        let friendly = body.contains("data-friendly")
            || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE && says_when);
        let seen = if status.is_success() && signed_out {
            Seen::SignedOut
        } else if status.is_success() && ok(&body) {
            Seen::Ok
        } else if status.is_server_error() && friendly {
            Seen::Friendly
        } else if status.is_server_error() {
            Seen::Hard(FailureKind::ServerError)
        } else {
            Seen::Hard(FailureKind::Unexpected)
        };
        (seen, body)
    }
}

// --- chaos-integ (issue 14, item 6): the storm judges its answers as users do.
/// Judges one answer as a user does (`ok` decides success for a 2xx page).
pub(super) async fn judge_answer(
    response: Result<reqwest::Response, reqwest::Error>,
    ok: impl Fn(&str) -> bool,
) -> Outcome {
    User::judge(response, ok).await.0.outcome()
}
// --- end chaos-integ
