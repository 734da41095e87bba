//! The open-loop storm: tutor questions arrive at a fixed offered rate, the
//! AI upstream goes down in the middle of the run and comes back, and the
//! run measures what that cost the upstream and the users (the figures are
//! defined in [`report::storm`](crate::report::OpenLoopStorm)).
//!
//! Why open loop: requests do not wait for each other. Arrivals follow a
//! Poisson process at the offered rate (exponential gaps from a seeded RNG,
//! so a run is reproducible), each request is its own task with its own
//! timeout, and a request's latency is counted from its scheduled arrival,
//! so a harness that falls behind shows up as latency instead of as fewer
//! requests. With closed-loop users a policy that fails fast only brings the
//! next request sooner, and the upstream's load hides what the policy does.
//!
//! Why these variants: no healing (one attempt, the error page), the retry
//! budget alone, and the budget with the circuit breaker, which is cozmic's
//! default policy; each is one run with the same schedule and seed.
//!
//! Bounded and local: everything is on loopback, a few signed-in browsers
//! share the arrivals, and at most `max_in_flight` requests are open at
//! once (an arrival beyond that is not sent and counts as failed).
//!
//! Upstream calls are read from the AI proxy's counters at the outage's
//! start and end. While the proxy is up every call is a request it sees;
//! while it is down it resets new connections before any byte (counted as
//! connections) and requests on open keep-alive connections (counted as
//! requests), so a call during the outage is either.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cozmic::config::{Healing, UpstreamPolicy};
use tokio::task::JoinHandle;

use super::user::judge_answer;
use super::world::World;
use super::{AppMode, RunOptions};
use crate::plan::{Plan, StormPlan};
use crate::progress::{Progress, RunBar};
use crate::proxy::{FaultProxy, Mode, ProxyStats};
use crate::report::{
    Got, OpenLoopStorm, Outcome, Recorder, StormSample, StormSchedule, StormVariant, UpstreamCalls,
};

/// One open-loop storm run.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// How the app calls its upstream.
    pub variant: StormVariant,
    /// Offered rate, requests per second.
    pub rate: f64,
    /// How long requests arrive.
    pub duration: Duration,
    /// When the upstream goes down, from the start.
    pub outage_start: Duration,
    /// When it comes back, from the start.
    pub outage_end: Duration,
    /// How long a user waits for an answer.
    pub timeout: Duration,
    /// Signed-in browsers the arrivals take turns on.
    pub sessions: usize,
    /// Most requests open at once.
    pub max_in_flight: usize,
    /// RNG seed of the arrival schedule.
    pub seed: u64,
    /// Where the run's database is made (as [`RunOptions::database_url`]).
    pub database_url: Option<String>,
    /// Where the app runs (as [`RunOptions::app`]).
    pub app: AppMode,
}

impl StormOptions {
    /// The plan's storm for `variant`: its duration and offered rate, the
    /// upstream down from 20 % to 60 % of the run (a warm-up long enough to
    /// fill the breaker's window with successes, an outage long enough for
    /// it to open, and as long again to recover), a 10 s user timeout, 8
    /// browsers, at most 10 s of arrivals in flight, the app in this
    /// process.
    pub fn from_plan(
        variant: StormVariant,
        plan: &StormPlan,
        seed: u64,
        database_url: Option<String>,
    ) -> Self {
        let timeout = Duration::from_secs(10);
        Self {
            variant,
            rate: plan.rate,
            duration: plan.duration,
            outage_start: plan.duration.mul_f64(0.2),
            outage_end: plan.duration.mul_f64(0.6),
            timeout,
            sessions: 8,
            max_in_flight: ((plan.rate * timeout.as_secs_f64()).ceil() as usize).max(1),
            seed,
            database_url,
            app: AppMode::default(),
        }
    }

    fn schedule(&self) -> StormSchedule {
        StormSchedule {
            duration: self.duration,
            outage_start: self.outage_start,
            outage_end: self.outage_end,
        }
    }
}

/// Healing on or off for `variant`.
fn healing(variant: StormVariant) -> Healing {
    match variant {
        StormVariant::NoHealing => Healing::Off,
        StormVariant::Budget | StormVariant::BudgetBreaker => Healing::On,
    }
}

/// The app's upstream policy for `variant` (the defaults otherwise).
pub(super) fn policy(variant: StormVariant) -> UpstreamPolicy {
    let (budget, breaker, throttle) = match variant {
        StormVariant::NoHealing => (false, false, false),
        StormVariant::Budget => (true, false, false),
        StormVariant::BudgetBreaker => (true, true, true),
    };
    UpstreamPolicy {
        budget,
        breaker,
        throttle,
        ..UpstreamPolicy::default()
    }
}

/// Runs one open-loop storm; each request is also recorded into `recorder`
/// (step `tutor`) under the variant's run name.
pub async fn run(
    options: StormOptions,
    recorder: &Recorder,
    progress: &Progress,
) -> anyhow::Result<OpenLoopStorm> {
    anyhow::ensure!(
        options.rate > 0.0
            && options.sessions > 0
            && options.outage_start <= options.outage_end
            && options.outage_end <= options.duration,
        "a storm needs a positive rate, a browser, and an outage within the run: {options:?}"
    );
    let world = World::start(&RunOptions {
        name: options.variant.run_name(),
        healing: healing(options.variant),
        storm: Some(options.variant),
        duration: options.duration,
        users: options.sessions,
        plan: Plan::default(),
        seed: options.seed,
        database_url: options.database_url.clone(),
        redis_url: None,
        app: options.app.clone(),
    })
    .await?;
    let measured = drive(&options, &world, recorder, progress).await;
    world.shutdown().await;
    measured
}

/// Signs the browsers in, sends the arrivals while the outage comes and
/// goes, and measures.
async fn drive(
    options: &StormOptions,
    world: &World,
    recorder: &Recorder,
    progress: &Progress,
) -> anyhow::Result<OpenLoopStorm> {
    let name = options.variant.run_name();
    let base = world.app.url();
    let browsers = sign_up(&base, name, options).await?;
    let proxy = &world.ai_proxy;
    let bar = progress.run_bar(name, options.duration);
    let started = Instant::now();
    let at_start = proxy.stats();
    let arrivals = Arrivals {
        options,
        url: format!("{base}/tutor"),
        browsers: &browsers,
        started,
        recorder,
        bar: &bar,
    };
    let (samples, [down_at, up_at]) =
        tokio::join!(arrivals.send(), outage(proxy, started, options));
    let samples = samples?;
    let at_end = proxy.stats();
    bar.finish(recorder.live(name));
    let during_outage = calls_while_down(down_at, up_at);
    let calls = UpstreamCalls {
        during_outage,
        total: (down_at.requests - at_start.requests)
            + during_outage
            + (at_end.requests - up_at.requests),
    };
    Ok(OpenLoopStorm::measure(
        options.variant,
        options.rate,
        options.schedule(),
        &samples,
        calls,
    ))
}

/// The calls between two snapshots of a proxy that was down in between: new
/// connections (reset before a byte) and requests on open ones.
fn calls_while_down(from: ProxyStats, to: ProxyStats) -> u64 {
    (to.connections - from.connections) + (to.requests - from.requests)
}

/// Takes the upstream down at the outage's start and brings it back at its
/// end; returns the proxy's counters at those two moments.
async fn outage(proxy: &FaultProxy, started: Instant, options: &StormOptions) -> [ProxyStats; 2] {
    tokio::time::sleep_until((started + options.outage_start).into()).await;
    let down_at = proxy.stats();
    proxy.set_mode(Mode::Down);
    tokio::time::sleep_until((started + options.outage_end).into()).await;
    let up_at = proxy.stats();
    proxy.set_mode(Mode::Normal);
    [down_at, up_at]
}

/// `options.sessions` students signed up, each in a browser of its own.
async fn sign_up(base: &str, run: &str, options: &StormOptions) -> anyhow::Result<Vec<Browser>> {
    let mut tasks: Vec<JoinHandle<anyhow::Result<Browser>>> = Vec::new();
    for index in 0..options.sessions {
        let url = format!("{base}/signup");
        let tutor = format!("{base}/tutor");
        let email = format!("storm{index}.{run}@chaos.test");
        let timeout = options.timeout;
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .cookie_store(true)
                .timeout(timeout)
                .build()?;
            let csrf = csrf_token(&http, &url).await?;
            let response = http
                .post(&url)
                .form(&[
                    ("name", format!("Storm User {index}")),
                    ("email", email),
                    ("password", "chaos-password-123".to_owned()),
                    ("csrf", csrf),
                ])
                .send()
                .await;
            let outcome = judge_answer(response, |b| b.contains("id=\"xp\"")).await;
            anyhow::ensure!(
                outcome == Outcome::Success,
                "storm sign-up {index}: {outcome:?}"
            );
            // The tutor's form token, sent with every question.
            let csrf = csrf_token(&http, &tutor).await?;
            Ok(Browser { http, csrf })
        }));
    }
    let mut browsers = Vec::new();
    for task in tasks {
        browsers.push(task.await??);
    }
    Ok(browsers)
}

/// A signed-in browser and the CSRF token its forms carry.
struct Browser {
    http: reqwest::Client,
    csrf: String,
}

/// The CSRF token of the form at `url` (cozmic refuses forms without one).
async fn csrf_token(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let page = http.get(url).send().await?.text().await?;
    super::user::form_value(&page, "csrf").ok_or_else(|| anyhow::anyhow!("no CSRF token on {url}"))
}

/// The arrival schedule and what each request needs.
struct Arrivals<'a> {
    options: &'a StormOptions,
    url: String,
    browsers: &'a [Browser],
    started: Instant,
    recorder: &'a Recorder,
    bar: &'a RunBar,
}

impl Arrivals<'_> {
    /// Sends every arrival of the schedule, each in its own task, and
    /// returns one sample per arrival once all have their answer.
    async fn send(&self) -> anyhow::Result<Vec<StormSample>> {
        let options = self.options;
        let name = options.variant.run_name();
        let mut rng = fastrand::Rng::with_seed(options.seed);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut samples = Vec::new();
        let mut tasks = Vec::new();
        let mut at = Duration::ZERO;
        let mut last_update = Instant::now();
        for n in 0.. {
            // Exponential gaps: a Poisson process at the offered rate.
            at += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / options.rate);
            if at >= options.duration {
                break;
            }
            let scheduled = self.started + at;
            tokio::time::sleep_until(scheduled.into()).await;
            if last_update.elapsed() >= Duration::from_millis(250) {
                last_update = Instant::now();
                self.bar
                    .update(self.started.elapsed(), self.recorder.live(name));
            }
            if in_flight.load(Ordering::Relaxed) >= options.max_in_flight {
                // Not sent: the user got nothing.
                let outcome = Outcome::HardFailure(crate::report::FailureKind::Connection);
                self.recorder
                    .record(name, "tutor", at, Duration::ZERO, outcome);
                samples.push(StormSample {
                    started: at,
                    latency: Duration::ZERO,
                    got: Got::Failed,
                });
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let browser = &self.browsers[n % self.browsers.len()];
            let request = browser.http.post(&self.url).form(&[
                ("question", format!("Can you explain storm question {n}?")),
                ("csrf", browser.csrf.clone()),
            ]);
            let in_flight = Arc::clone(&in_flight);
            let recorder = self.recorder.clone();
            tasks.push(tokio::spawn(async move {
                let outcome =
                    judge_answer(request.send().await, |b| b.contains("id=\"answer\"")).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                // From the scheduled arrival: a harness running late shows.
                let latency = scheduled.elapsed();
                recorder.record(name, "tutor", at, latency, outcome);
                let got = match outcome {
                    Outcome::Success => Got::Success,
                    Outcome::Degraded => Got::Degraded,
                    Outcome::SignedOut | Outcome::HardFailure(_) => Got::Failed,
                };
                StormSample {
                    started: at,
                    latency,
                    got,
                }
            }));
        }
        for task in tasks {
            samples.push(task.await?);
        }
        samples.sort_by_key(|s| s.started);
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_places_the_outage_in_the_middle() {
        let plan = StormPlan::default();
        let options = StormOptions::from_plan(StormVariant::Budget, &plan, 1, None);
        assert!(options.outage_start > Duration::ZERO);
        assert!(options.outage_start < options.outage_end);
        assert!(options.outage_end < options.duration);
        assert!(options.max_in_flight >= 1);
    }

    #[test]
    fn the_variants_set_budget_and_breaker() {
        assert_eq!(healing(StormVariant::NoHealing), Healing::Off);
        let budget = policy(StormVariant::Budget);
        assert!(budget.budget && !budget.breaker);
        let both = policy(StormVariant::BudgetBreaker);
        assert!(both.budget && both.breaker);
    }

    #[test]
    fn calls_while_down_count_refused_connections_and_requests() {
        let from = ProxyStats {
            connections: 10,
            requests: 40,
            ..ProxyStats::default()
        };
        let to = ProxyStats {
            connections: 25,
            requests: 43,
            ..ProxyStats::default()
        };
        assert_eq!(calls_while_down(from, to), 18);
    }
}
