//! One virtual user: a student's journey through the app (sign up, the
//! dashboard, lessons, the tutor, sometimes Premium), acting as a browser
//! does and judging each answer as a user would.
//!
//! The journey and the rules every action follows (judge the page, press
//! again once on anything but success, record the final outcome) are here;
//! `steps` holds what each action sends and expects, and `corrupt` how a
//! user's session is damaged mid-run.
//!
//! Every try of an action is tagged: its requests carry one `X-Request-Id`
//! (the app passes it on to its upstream calls), and the try is recorded
//! with its tag and what the user saw, so that the fault ledger can judge
//! each fault by the try it struck. The faults the user brings along (a
//! panic asked of the app, a corrupted session, a request abandoned
//! mid-way) are written to the ledger here, against the try they strike.
//!
//! What a user does after anything but success is the same with healing on
//! or off, because it is what a person would do: press again once; if the
//! answer said when to come back (`Retry-After`), wait that long first (a
//! person told to come back in more than 10 s has left, and the degraded
//! answer is final); if the login page came instead, sign in, then press
//! again; if the app failed twice in a row, clear the cookies (a fresh
//! browser) and sign in before the next action.

mod corrupt;
mod faults;
mod steps;

pub(super) use steps::form_value;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cozmic::config::FaultHooks;
use tokio::task::JoinHandle;

use self::faults::{Fault, fault_key};
use super::world::World;
use super::{RunOptions, Shared};
use crate::ledger::{FaultLedger, REQUEST_ID, TryRecord, Verdict};
use crate::plan::DurationRange;
use crate::report::{FailureKind, Outcome, Recorder};

/// The longest `Retry-After` a user waits before pressing again.
const PATIENCE: Duration = Duration::from_secs(10);

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
    let access = world.access();
    let deadline = started + options.duration;
    let corrupt_users = ((options.users as f64) * plan.sessions.corrupt_fraction).round() as usize;
    let mut tasks = Vec::new();
    for user in 0..options.users {
        let ctx = User {
            run: options.name,
            index: user,
            base: access.base.clone(),
            recorder: recorder.clone(),
            shared: shared.clone(),
            started,
            deadline,
            rng: fastrand::Rng::with_seed(
                options.seed ^ (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            seed: options.seed,
            attempt: 1,
            nth: (Action::SignUp, 0),
            begun: [0; Action::KINDS],
            panic_probability: plan.panic.probability,
            panic_after_probability: plan.panic.after_commit_probability,
            disconnect_probability: plan.client.disconnect_probability,
            disconnect_after: plan.client.disconnect_after,
            ledger: world.ledger.clone(),
            seq: 0,
            tag: String::new(),
            retry_after: None,
            session_struck: false,
            corrupt: user < corrupt_users.max(usize::from(plan.sessions.corrupt_fraction > 0.0)),
            panic_sent: false,
            retrying: false,
            pending_lesson: None,
            done: Vec::new(),
            generation: 0,
            jar: Arc::default(),
            session_table: access.session_table,
            sqlite: access.sqlite.clone(),
            postgres: access.postgres.clone(),
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
    /// The journey's own choices (think times, which step comes next).
    rng: fastrand::Rng,
    /// The run's seed, from which each fault decision is drawn (see
    /// [`User::draw`]).
    seed: u64,
    /// The current try of the current action: 1, or 2 when pressed again.
    attempt: u8,
    /// The current action, and how many of its kind this user has begun
    /// (counting it): what a fault decision is keyed by.
    nth: (Action, u64),
    /// Actions begun so far, per kind.
    begun: [u64; Action::KINDS],
    panic_probability: f64,
    /// Probability that a form panics after its handler committed.
    panic_after_probability: f64,
    /// Probability that a lesson form is abandoned mid-request.
    disconnect_probability: f64,
    /// How long after sending it is abandoned.
    disconnect_after: DurationRange,
    /// The run's fault ledger.
    ledger: Arc<FaultLedger>,
    /// Actions started so far (numbers the tags).
    seq: u64,
    /// The current try's tag (its requests' `X-Request-Id`).
    tag: String,
    /// The `Retry-After` of the last answer judged, if it had one.
    retry_after: Option<Duration>,
    /// Whether the session was corrupted since the last try (the next try
    /// is the one it strikes).
    session_struck: bool,
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
}

/// The steps of a journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    SignUp,
    /// Signing in again (after a lost session or cleared cookies).
    LogIn,
    Dashboard,
    CompleteLesson,
    Tutor,
    Subscribe,
}

impl Action {
    /// How many kinds of action there are.
    const KINDS: usize = 6;

    fn step(self) -> &'static str {
        match self {
            Action::SignUp => "signup",
            Action::LogIn => "login",
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
    /// What a fault that struck this try comes to.
    fn verdict(self) -> Verdict {
        match self {
            Seen::Ok => Verdict::Hidden,
            Seen::Friendly => Verdict::Degraded,
            Seen::SignedOut | Seen::Hard(_) => Verdict::Failed,
        }
    }

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
            self.think().await;
        }
    }

    /// One try of `action` (`attempt` 1 or 2), tagged and recorded.
    async fn perform(&mut self, action: Action, attempt: u8, http: &reqwest::Client) -> Seen {
        self.tag = format!("{}-u{}-a{}-t{attempt}", self.run, self.index, self.seq);
        self.attempt = attempt;
        if std::mem::take(&mut self.session_struck) {
            self.ledger.request("session_corrupted", Some(&self.tag));
        }
        let began = Instant::now();
        let seen = self.perform_untracked(action, http).await;
        self.shared.record_try(TryRecord {
            tag: self.tag.clone(),
            step: action.step(),
            attempt,
            started: began - self.started,
            ended: self.started.elapsed(),
            verdict: seen.verdict(),
        });
        seen
    }

    async fn perform_untracked(&mut self, action: Action, http: &reqwest::Client) -> Seen {
        self.panic_sent = false;
        self.retry_after = None;
        let seen = match action {
            Action::SignUp => self.sign_up(http).await,
            Action::Dashboard => self.dashboard(http).await,
            Action::CompleteLesson => self.complete(http).await,
            Action::Tutor => self.ask(http).await,
            Action::Subscribe => self.subscribe(http).await,
            Action::LogIn => self.log_in(http).await,
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
        let ms = self.rng.u64(100..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Runs `action`; on anything but success the user presses again once,
    /// as the module docs say. Records the final outcome.
    async fn act(&mut self, action: Action, http: &mut reqwest::Client) -> bool {
        self.begin(action);
        let step = action.step();
        let begin = Instant::now();
        let started_at = begin - self.started;
        let mut seen = self.perform(action, 1, http).await;
        if seen != Seen::Ok {
            self.shared
                .first_try_failures
                .fetch_add(1, Ordering::Relaxed);
            let wait = match self.retry_after {
                Some(after) if seen == Seen::Friendly => after,
                _ => Duration::from_millis(500),
            };
            if wait <= PATIENCE {
                self.shared.user_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                if seen == Seen::SignedOut {
                    // Its own action; the retry below keeps this one's key.
                    let nth = self.nth;
                    self.sign_in_again(http).await;
                    self.nth = nth;
                }
                // The same form again (the same lesson nonce, the same purchase).
                self.retrying = true;
                let again = self.perform(action, 2, http).await;
                self.retrying = false;
                if matches!(seen, Seen::Hard(FailureKind::ServerError))
                    && matches!(again, Seen::Hard(FailureKind::ServerError))
                {
                    // The app failed twice in a row: clear the cookies and
                    // sign in before going on.
                    *http = self.new_browser();
                    self.sign_in_again(http).await;
                }
                seen = again;
            }
        }
        self.recorder
            .record(self.run, step, started_at, begin.elapsed(), seen.outcome());
        seen == Seen::Ok
    }

    /// Signs in again, recorded as a `login` action of its own.
    async fn sign_in_again(&mut self, http: &reqwest::Client) {
        self.shared.relogins.fetch_add(1, Ordering::Relaxed);
        self.begin(Action::LogIn);
        let began = Instant::now();
        let login = self.perform(Action::LogIn, 1, http).await;
        self.recorder.record(
            self.run,
            "login",
            began - self.started,
            began.elapsed(),
            login.outcome(),
        );
    }

    /// Sends `request` tagged with the current try's tag.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        request.header(REQUEST_ID, &self.tag).send().await
    }

    /// Numbers a new action: in the tags (`seq`) and among the actions of
    /// its kind (what its fault decisions are keyed by).
    fn begin(&mut self, action: Action) {
        self.seq += 1;
        let begun = &mut self.begun[action as usize];
        *begun += 1;
        self.nth = (action, *begun);
    }

    /// The generator for one fault decision of the current try: seeded by
    /// the run's seed, the user, the action (its kind, and how many of that
    /// kind the user has begun), the try and the kind of fault, never by the
    /// journey's own generator. Heal on and heal off then ask for the same
    /// faults at the same steps of the same users (common random numbers:
    /// the two runs differ by the healing, not by how many panics each
    /// happened to draw): the third sign-up of user 7 panics in both or in
    /// neither, even where one run got further than the other, and a user
    /// who pressed again in one run and not in the other does not shift
    /// every later decision.
    fn draw(&self, fault: Fault) -> fastrand::Rng {
        let (action, nth) = self.nth;
        fastrand::Rng::with_seed(fault_key(
            self.seed,
            self.index,
            (action as u64) << 48 | nth,
            self.attempt,
            fault,
        ))
    }

    /// Whether this user's one session corruption hits the cookie (else
    /// the stored record): keyed by the user alone, not by the action that
    /// happened to come last, so both modes corrupt the same half.
    fn corrupt_cookie(&self) -> bool {
        fastrand::Rng::with_seed(fault_key(
            self.seed,
            self.index,
            u64::MAX,
            0,
            Fault::CorruptCookie,
        ))
        .bool()
    }

    /// Sends a form the way a user who closes the tab mid-way does, with
    /// the plan's probability: gone after `disconnect_after`, whatever the
    /// app did with it (written to the ledger); the user then sends it again.
    async fn maybe_abandon(&mut self, request: Option<reqwest::RequestBuilder>) {
        let Some(request) = request else { return };
        let mut draw = self.draw(Fault::Disconnect);
        if self.disconnect_probability <= 0.0 || draw.f64() >= self.disconnect_probability {
            return;
        }
        let after = self.disconnect_after.sample(&mut draw);
        self.ledger.request("client_disconnect", Some(&self.tag));
        let _ = self.send(request.timeout(after)).await;
    }

    /// Asks, with the plan's probability, for a panic after the handler of
    /// this form committed.
    fn maybe_panic_after(&mut self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.panic_after_probability > 0.0
            && self.draw(Fault::PanicAfter).f64() < self.panic_after_probability
        {
            self.ledger.request("panic_after_commit", Some(&self.tag));
            self.panic_sent = true;
            request.header(FaultHooks::PANIC_AFTER_HEADER, "1")
        } else {
            request
        }
    }

    fn maybe_panic(&mut self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.panic_probability > 0.0 && self.draw(Fault::Panic).f64() < self.panic_probability {
            self.shared.panics_requested.fetch_add(1, Ordering::Relaxed);
            self.ledger.request("panic_before_handler", Some(&self.tag));
            self.panic_sent = true;
            request.header(FaultHooks::PANIC_HEADER, "1")
        } else {
            request
        }
    }

    /// Judges a response: `ok` decides success for a 2xx page. Notes its
    /// `Retry-After` (seconds) for the user's next move.
    async fn judge(
        &mut self,
        response: Result<reqwest::Response, reqwest::Error>,
        ok: impl Fn(&str) -> bool,
    ) -> (Seen, String) {
        let response = match response {
            Ok(r) => r,
            Err(_) => return (Seen::Hard(FailureKind::Connection), String::new()),
        };
        let status = response.status();
        let signed_out = response.url().path() == "/login";
        self.retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let says_when = response
            .headers()
            .contains_key(reqwest::header::RETRY_AFTER);
        let body = match response.text().await {
            Ok(body) => body,
            Err(_) => return (Seen::Hard(FailureKind::Connection), String::new()),
        };
        (classify(status, signed_out, says_when, &body, ok), body)
    }
}

/// What a page means to the user: the rules of [`User::judge`], apart so
/// that the storm judges its answers by them too.
fn classify(
    status: reqwest::StatusCode,
    signed_out: bool,
    says_when: bool,
    body: &str,
    ok: impl Fn(&str) -> bool,
) -> Seen {
    // Degraded means a truthful answer that loses nothing: the app's
    // own notice ("temporarily unavailable, your question is saved") or
    // a 503 that says when to come back. A generic error page is a
    // failure, request id or not.
    let friendly = body.contains("data-friendly")
        || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE && says_when);
    if status.is_success() && signed_out {
        Seen::SignedOut
    } else if status.is_success() && ok(body) {
        Seen::Ok
    } else if status.is_server_error() && friendly {
        Seen::Friendly
    } else if status.is_server_error() {
        Seen::Hard(FailureKind::ServerError)
    } else {
        Seen::Hard(FailureKind::Unexpected)
    }
}

// the storm judges its answers as users do.
/// Judges one answer by the users' rules (`ok` decides success for a 2xx page).
pub(super) async fn judge_answer(
    response: Result<reqwest::Response, reqwest::Error>,
    ok: impl Fn(&str) -> bool,
) -> Outcome {
    let Ok(response) = response else {
        return Outcome::HardFailure(FailureKind::Connection);
    };
    let status = response.status();
    let signed_out = response.url().path() == "/login";
    let says_when = response
        .headers()
        .contains_key(reqwest::header::RETRY_AFTER);
    match response.text().await {
        Ok(body) => classify(status, signed_out, says_when, &body, ok).outcome(),
        Err(_) => Outcome::HardFailure(FailureKind::Connection),
    }
}
