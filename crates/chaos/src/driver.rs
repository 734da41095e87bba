//! The driver: starts cozmic in-process with its fault hooks armed, points
//! it at faulty upstreams and a flaky SMTP server, holds the SQLite write
//! lock in bursts, corrupts sessions, and lets virtual users live through
//! it; then drains the outbox and checks integrity.
//!
//! Why in-process and over real sockets: the faults must be real (a real
//! `database is locked`, a real TCP reset, a real SMTP refusal) and the users
//! must see what a browser sees (status codes, redirects, pages), so the
//! app is the real binary's router on a loopback port, and the users are
//! HTTP clients with cookie jars.
//!
//! How an action is judged (the same in both modes):
//! - **success**: the page the user asked for (the dashboard with its XP,
//!   the tutor's answer, the premium receipt…);
//! - **degraded**: a friendly answer instead (the app's own "temporarily
//!   unavailable" page, selfheal's error page with a request id, or the login
//!   page after a session had to be reset);
//! - **hard failure**: a 5xx without a friendly page, a connection error or
//!   reset, a wrong page.
//!
//! A user who gets anything but success presses again once (after a short
//! pause; with the same form, so nothing is applied twice): the recorded
//! outcome is the final one, and the first-try numbers are kept as counters
//! (`first_try_failures`, `user_retries`) so that nothing is hidden.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cozmic::config::{Config, FaultHooks, Healing, OpenAi, Secret, Stripe, UpstreamPolicy};
use sqlx::Connection;

use crate::faults::UpstreamFaults;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::proxy::{FaultProxy, Mode};
use crate::report::{self, FailureKind, Integrity, Outcome, Recorder, counters};
use crate::smtp::SmtpServer;
use crate::upstream::{OpenAiServer, StripeServer};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run name (one of [`report::runs`]).
    pub name: &'static str,
    /// Healing on or off.
    pub healing: Healing,
    /// Storm: the upstreams completely down, users only ask the tutor;
    /// `Some(budget)` says whether the retry budget is on.
    pub storm: Option<bool>,
    /// How long users act.
    pub duration: Duration,
    /// Concurrent virtual users.
    pub users: usize,
    /// The fault plan.
    pub plan: Plan,
    /// RNG seed.
    pub seed: u64,
    /// A database URL for the app (PostgreSQL); a temporary SQLite file when
    /// `None`.
    pub database_url: Option<String>,
}

/// What a run measured besides the recorder's samples.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Integrity after the run drained.
    pub integrity: Integrity,
    /// One line per integrity problem found (empty when all is well).
    pub problems: Vec<String>,
    /// Emails the app committed to send.
    pub emails_expected: u64,
    /// Students at the end.
    pub students: u64,
}

/// Counters shared by the users of one run.
#[derive(Debug, Default)]
struct Shared {
    /// Per student email: nonces the user saw acknowledged, and every nonce sent.
    progress: Mutex<BTreeMap<String, UserProgress>>,
    user_retries: AtomicU64,
    first_try_failures: AtomicU64,
    panics_requested: AtomicU64,
    sessions_corrupted: AtomicU64,
    relogins: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct UserProgress {
    acknowledged: BTreeSet<String>,
    sent: BTreeSet<String>,
}

/// Runs one scenario and records it into `recorder` under `options.name`.
pub async fn run(
    options: RunOptions,
    recorder: &Recorder,
    progress: &Progress,
) -> anyhow::Result<RunOutcome> {
    let dir = tempfile::tempdir()?;
    let seed = options.seed;
    let plan = &options.plan;
    let storm = options.storm.is_some();

    // Upstreams behind fault proxies: one decision-maker per upstream, so a
    // 503 drawn for one is served by that one.
    let ai_faults = Arc::new(if storm {
        UpstreamFaults::disabled()
    } else {
        UpstreamFaults::new(&plan.upstream, seed)
    });
    let pay_faults = Arc::new(if storm {
        UpstreamFaults::disabled()
    } else {
        UpstreamFaults::new(&plan.upstream, seed.wrapping_add(1))
    });
    let openai = OpenAiServer::start(ai_faults.clone()).await?;
    let stripe = StripeServer::start(pay_faults.clone()).await?;
    let ai_proxy = FaultProxy::start(openai.addr(), ai_faults.clone()).await?;
    let pay_proxy = FaultProxy::start(stripe.addr(), pay_faults.clone()).await?;
    if storm {
        ai_proxy.set_mode(Mode::Down);
        pay_proxy.set_mode(Mode::Down);
    }
    let smtp = SmtpServer::start().await?;
    let outages = (!storm).then(|| smtp.start_outages(&plan.smtp, seed.wrapping_add(2)));

    let mut config = Config::new(dir.path());
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database_url = options.database_url.clone().map(Secret::new);
    config.healing = options.healing;
    config.faults = FaultHooks::armed();
    config.mail_poll = Duration::from_millis(200);
    // Compressed time: the outbox retries within seconds instead of up to an
    // hour, so that a run drains in seconds after the SMTP server is back.
    config.mail_backoff = (Duration::from_millis(250), Duration::from_secs(3));
    config.smtp_url = Some(Secret::new(format!("smtp://{}", smtp.addr())));
    config.openai = Some(OpenAi {
        api_key: Secret::new("sk-chaos"),
        base_url: format!("{}/v1", ai_proxy.url()),
        model: "chaos-tutor".into(),
    });
    config.stripe = Some(Stripe {
        api_key: Secret::new("sk_chaos"),
        base_url: pay_proxy.url(),
    });
    if let Some(budget) = options.storm {
        // Isolate the budget: no breaker in either storm run.
        config.upstream = UpstreamPolicy {
            budget,
            breaker: false,
            ..UpstreamPolicy::default()
        };
    }
    let app = cozmic::start(config).await?;
    let base = app.url();
    let sqlite_path: Option<PathBuf> = app
        .state()
        .db()
        .sqlite()
        .map(|_| dir.path().join("cozmic.db"));

    // The lock holder.
    let stop = Arc::new(AtomicBool::new(false));
    let locker = match (&sqlite_path, plan.sqlite_lock.enabled && !storm) {
        (Some(path), true) => Some(tokio::spawn(hold_sqlite_lock(
            path.clone(),
            plan.clone(),
            seed,
            stop.clone(),
            recorder.counter(options.name, "sqlite_lock_bursts"),
        ))),
        _ => None,
    };

    // The users.
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
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
            rng: fastrand::Rng::with_seed(seed ^ (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            panic_probability: if storm { 0.0 } else { plan.panic.probability },
            corrupt: !storm
                && user < corrupt_users.max(usize::from(plan.sessions.corrupt_fraction > 0.0)),
            panic_sent: false,
            retrying: false,
            pending_lesson: None,
            done: Vec::new(),
            generation: 0,
            jar: Arc::default(),
            session_table: app.state().sessions().table(),
            sqlite: app.state().db().sqlite().cloned(),
            postgres: app.state().db().postgres().cloned(),
            storm,
        };
        tasks.push(tokio::spawn(ctx.live()));
    }
    let bar = progress.run_bar(options.name, options.duration);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.update(
            started.elapsed().min(options.duration),
            recorder.live(options.name),
        );
    }
    for task in tasks {
        task.await?;
    }
    bar.finish(recorder.live(options.name));
    stop.store(true, Ordering::Relaxed);
    if let Some(locker) = locker {
        locker
            .await?
            .map_err(|e| e.context("the SQLite lock holder failed"))?;
    }

    // Counters.
    let ai = ai_proxy.stats();
    let pay = pay_proxy.stats();
    let upstream_calls = if storm {
        ai.connections + pay.connections
    } else {
        ai.requests + pay.requests
    };
    recorder.add(options.name, counters::UPSTREAM_CALLS, upstream_calls);
    for (kind, count) in crate::faults::FaultKind::ALL.iter().map(|k| {
        (
            *k,
            ai_faults.injected().get(*k) + pay_faults.injected().get(*k),
        )
    }) {
        recorder.add(options.name, &counters::faults_injected(kind.name()), count);
    }
    recorder.add(
        options.name,
        &counters::faults_injected("panic"),
        shared.panics_requested.load(Ordering::Relaxed),
    );
    recorder.add(
        options.name,
        &counters::faults_injected("session_corrupted"),
        shared.sessions_corrupted.load(Ordering::Relaxed),
    );
    recorder.add(
        options.name,
        "user_retries",
        shared.user_retries.load(Ordering::Relaxed),
    );
    recorder.add(
        options.name,
        "first_try_failures",
        shared.first_try_failures.load(Ordering::Relaxed),
    );
    recorder.add(
        options.name,
        "relogins",
        shared.relogins.load(Ordering::Relaxed),
    );
    let report = app.state().monitor().report(Duration::from_secs(3600));
    let heals: u64 = report.heals.values().sum();
    recorder.add(options.name, counters::FAULTS_RECOVERED, heals);
    for (kind, count) in &report.heals {
        recorder.add(options.name, &format!("heals.{}", kind.as_str()), *count);
    }
    let fired = report
        .recent_alerts
        .iter()
        .filter(|a| a.state == selfheal::health::AlertState::Firing)
        .count();
    recorder.add(options.name, counters::ALERTS_FIRED, fired as u64);

    // Drain: SMTP up for good, give the outbox time to empty.
    let mut outcome = RunOutcome::default();
    if let Some(outages) = outages {
        let stats = outages.stop().await?;
        recorder.add(
            options.name,
            &counters::faults_injected("smtp_outage"),
            stats.outages,
        );
    }
    smtp.set_up(true).await?;
    let db = app.state().db().clone();
    app.state().mailer().wake();
    // The same rule in both modes: wait until the outbox is empty, or until
    // it has made no progress for 5 s (a worker that gave up, emails marked
    // failed), at most 45 s. What is still waiting then counts as lost.
    let drain_deadline = Instant::now() + Duration::from_secs(if storm { 3 } else { 45 });
    let mut last = db.outbox_counts().await?;
    let mut last_change = Instant::now();
    while Instant::now() < drain_deadline
        && last.0 > 0
        && last_change.elapsed() < Duration::from_secs(5)
    {
        app.state().mailer().wake();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = db.outbox_counts().await?;
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    if !storm {
        outcome = check_integrity(&db, &smtp, &stripe, &shared).await?;
    }
    app.shutdown().await;
    ai_proxy.shutdown().await;
    pay_proxy.shutdown().await;
    openai.shutdown().await;
    stripe.shutdown().await;
    smtp.shutdown().await;
    Ok(outcome)
}

/// XP against the ledger for every student, every acknowledged lesson
/// present once, every committed email delivered exactly once, every
/// purchase charged at most once.
async fn check_integrity(
    db: &cozmic::db::Db,
    smtp: &SmtpServer,
    stripe: &StripeServer,
    shared: &Shared,
) -> anyhow::Result<RunOutcome> {
    let mut problems = Vec::new();
    let mut violations = 0_u64;
    let students = db.students().await?;
    let progress = shared.progress.lock().expect("progress").clone();
    for (id, email) in &students {
        let integrity = db.integrity(*id).await?;
        if integrity.xp != integrity.ledger_sum
            || integrity.ledger_sum != integrity.ledger_rows * cozmic::db::LESSON_XP
        {
            violations += 1;
            problems.push(format!(
                "student {id}: XP {} but ledger sum {} over {} rows",
                integrity.xp, integrity.ledger_sum, integrity.ledger_rows
            ));
        }
        // One row per nonce is the schema's UNIQUE constraint; what can go
        // wrong is a row the user never sent, or an acknowledged one missing.
        let in_ledger: BTreeSet<String> = db.ledger_nonces(*id).await?.into_iter().collect();
        if let Some(user) = progress.get(email) {
            for lost in user.acknowledged.difference(&in_ledger) {
                violations += 1;
                problems.push(format!("student {id}: acknowledged completion {lost} is not in the ledger (progress lost)"));
            }
            for phantom in in_ledger.difference(&user.sent) {
                violations += 1;
                problems.push(format!(
                    "student {id}: ledger row {phantom} was never sent by the user"
                ));
            }
        }
    }
    // Emails: every outbox row must have arrived once at the SMTP server.
    let tag = db.instance_tag().await?;
    let expected: Vec<String> = db
        .outbox_ids()
        .await?
        .into_iter()
        .map(|id| cozmic::mail::message_id(id, &tag))
        .collect();
    let delivery = smtp.delivery_report();
    let emails_lost = delivery.missing(expected.iter().map(String::as_str)).len() as u64;
    let emails_duplicated = delivery.duplicated() as u64;
    if emails_lost > 0 {
        problems.push(format!(
            "{emails_lost} of {} emails never arrived",
            expected.len()
        ));
    }
    if emails_duplicated > 0 {
        problems.push(format!(
            "{emails_duplicated} extra copies of emails arrived"
        ));
    }
    // Payments: a student charged more than once.
    let mut payments_duplicated = 0;
    for (student, payments) in stripe.payments_by_student() {
        if payments.len() > 1 {
            payments_duplicated += (payments.len() - 1) as u64;
            problems.push(format!(
                "student {student} was charged {} times",
                payments.len()
            ));
        }
    }
    Ok(RunOutcome {
        integrity: Integrity {
            integrity_violations: violations,
            emails_lost,
            emails_duplicated,
            payments_duplicated,
        },
        problems,
        emails_expected: expected.len() as u64,
        students: students.len() as u64,
    })
}

/// Holds the SQLite write lock (`BEGIN IMMEDIATE` on a side connection) in
/// bursts, for about `held_fraction` of the time.
async fn hold_sqlite_lock(
    path: PathBuf,
    plan: Plan,
    seed: u64,
    stop: Arc<AtomicBool>,
    bursts: report::Counter,
) -> anyhow::Result<()> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(3));
    let lock = &plan.sqlite_lock;
    let f = lock.held_fraction.clamp(0.001, 0.9);
    let off_mean = lock.burst.mean().as_secs_f64() * (1.0 - f) / f;
    while !stop.load(Ordering::Relaxed) {
        let off = Duration::from_secs_f64(off_mean * 2.0 * rng.f64());
        tokio::time::sleep(off).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
        bursts.incr();
        tokio::time::sleep(lock.burst.sample(&mut rng)).await;
        sqlx::query("COMMIT").execute(&mut conn).await?;
    }
    Ok(())
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
            Seen::Friendly | Seen::SignedOut => Outcome::Degraded,
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

/// The length of the HMAC-SHA256 signature (base64) that prefixes a signed
/// cookie's value (the `cookie` crate's format: `base64(mac) + value`).
const SIGNATURE_LEN: usize = 44;

fn form_value(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    page[start..].split('"').next().map(str::to_owned)
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
        let body = match response.text().await {
            Ok(body) => body,
            Err(_) => return (Seen::Hard(FailureKind::Connection), String::new()),
        };
        let friendly = body.contains("data-friendly") || body.contains("Request id:");
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

    async fn sign_up(&mut self, http: &reqwest::Client) -> Seen {
        let email = self.email();
        let request = http.post(format!("{}/signup", self.base)).form(&[
            ("name", format!("Chaos User {}", self.index)),
            ("email", email.clone()),
            ("password", "chaos-password-123".to_owned()),
        ]);
        let request = self.maybe_panic(request);
        let (seen, body) = Self::judge(request.send().await, |b| b.contains("id=\"xp\"")).await;
        if seen == Seen::Hard(FailureKind::Unexpected) && body.contains("already exists") {
            // An earlier try did sign up (its answer was lost): log in.
            return self.log_in(http).await;
        }
        if seen == Seen::Ok {
            self.shared
                .progress
                .lock()
                .expect("progress")
                .entry(email)
                .or_default();
        }
        seen
    }

    async fn log_in(&mut self, http: &reqwest::Client) -> Seen {
        let request = http.post(format!("{}/login", self.base)).form(&[
            ("email", self.email()),
            ("password", "chaos-password-123".to_owned()),
        ]);
        let (seen, body) = Self::judge(request.send().await, |b| b.contains("id=\"xp\"")).await;
        if seen != Seen::Ok && body.contains("do not match") {
            // Never signed up (every try failed): sign up now.
            return Box::pin(self.sign_up(http)).await;
        }
        seen
    }

    async fn dashboard(&mut self, http: &reqwest::Client) -> Seen {
        let request = self.maybe_panic(http.get(format!("{}/dashboard", self.base)));
        Self::judge(request.send().await, |b| b.contains("id=\"xp\""))
            .await
            .0
    }

    async fn complete(&mut self, http: &reqwest::Client) -> Seen {
        // Pressing again re-sends the same form; a new action opens a lesson.
        let pending = if self.retrying {
            self.pending_lesson.clone()
        } else {
            None
        };
        let (lesson, nonce) = match pending {
            Some(pending) => pending,
            None => {
                let left: Vec<&'static str> = LESSONS
                    .iter()
                    .copied()
                    .filter(|l| !self.done.contains(l))
                    .collect();
                // (Never empty: the journey moves to the next student first.)
                let Some(&lesson) = left.get(self.rng.usize(..left.len().max(1))) else {
                    return Seen::Ok;
                };
                let (seen, page) = Self::judge(
                    http.get(format!("{}/lessons/{lesson}", self.base))
                        .send()
                        .await,
                    |b| b.contains("name=\"nonce\"") || b.contains("id=\"completed\""),
                )
                .await;
                if seen != Seen::Ok {
                    return seen;
                }
                // A lesson pays once: one completed already is read again,
                // with no form to send.
                if !page.contains("name=\"nonce\"") {
                    self.done.push(lesson);
                    return Seen::Ok;
                }
                let Some(nonce) = form_value(&page, "nonce") else {
                    return Seen::Hard(FailureKind::Unexpected);
                };
                (lesson, nonce)
            }
        };
        self.pending_lesson = Some((lesson, nonce.clone()));
        let email = self.email();
        self.shared
            .progress
            .lock()
            .expect("progress")
            .entry(email.clone())
            .or_default()
            .sent
            .insert(nonce.clone());
        let request = http
            .post(format!("{}/lessons/{lesson}/complete", self.base))
            .form(&[("nonce", nonce.as_str())]);
        let request = self.maybe_panic(request);
        let (seen, _) = Self::judge(request.send().await, |b| b.contains("Lesson complete:")).await;
        if seen == Seen::Ok {
            if !self.done.contains(&lesson) {
                self.done.push(lesson);
            }
            self.shared
                .progress
                .lock()
                .expect("progress")
                .entry(email)
                .or_default()
                .acknowledged
                .insert(nonce);
        }
        seen
    }

    async fn ask(&mut self, http: &reqwest::Client) -> Seen {
        let topics = [
            "light-years",
            "the Moon",
            "seasons",
            "black holes",
            "exoplanets",
            "rockets",
        ];
        let question = format!(
            "Can you explain {}?",
            topics[self.rng.usize(..topics.len())]
        );
        let request = self.maybe_panic(
            http.post(format!("{}/tutor", self.base))
                .form(&[("question", question)]),
        );
        Self::judge(request.send().await, |b| b.contains("id=\"answer\""))
            .await
            .0
    }

    async fn subscribe(&mut self, http: &reqwest::Client) -> Seen {
        let (seen, page) = Self::judge(
            http.get(format!("{}/premium", self.base)).send().await,
            |b| b.contains("Premium"),
        )
        .await;
        if seen != Seen::Ok {
            return seen;
        }
        if page.contains("You are a premium student") {
            return Seen::Ok;
        }
        let Some(purchase) = form_value(&page, "purchase") else {
            return Seen::Hard(FailureKind::Unexpected);
        };
        let request = http
            .post(format!("{}/premium/subscribe", self.base))
            .form(&[("purchase", purchase.as_str())]);
        let request = self.maybe_panic(request);
        Self::judge(request.send().await, |b| {
            b.contains("welcome to Premium") || b.contains("You are a premium student")
        })
        .await
        .0
    }

    /// Corrupts this user's session: half the time the cookie (a forged
    /// value the app did not sign), half the time its stored record (garbage
    /// bytes in the store's row for this user's session id). Counted only
    /// when it happened.
    async fn corrupt_session(&mut self) {
        let url: reqwest::Url = self.base.parse().expect("base url");
        if self.rng.bool() {
            self.jar.add_cookie_str(
                "cozmic_session=Zm9yZ2VkLXNpZ25hdHVyZS1mb3JnZWQtc2lnbmF0dXJlMDAwMDAwMDAwMDAw; Path=/",
                &url,
            );
            self.shared
                .sessions_corrupted
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        use reqwest::cookie::CookieStore;
        let Some(table) = self.session_table else {
            return;
        };
        let cookies = self.jar.cookies(&url);
        let id = cookies
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.split("; ")
                    .find_map(|c| c.strip_prefix("cozmic_session="))
            })
            .filter(|v| v.len() > SIGNATURE_LEN && v.is_char_boundary(SIGNATURE_LEN))
            .map(|v| v[SIGNATURE_LEN..].to_owned());
        let Some(id) = id else {
            return;
        };
        let sql = format!("UPDATE {table} SET data = $1 WHERE id = $2");
        let garbage = vec![0xc1_u8, 0xff, 0x00, 0x42];
        let result = match (&self.sqlite, &self.postgres) {
            (Some(pool), _) => sqlx::query(&sql)
                .bind(garbage)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            (_, Some(pool)) => sqlx::query(&sql)
                .bind(garbage)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            _ => Ok(0),
        };
        match result {
            Ok(1) => {
                self.shared
                    .sessions_corrupted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not corrupt a session row"),
        }
    }
}
