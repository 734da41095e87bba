//! The metastability run: an open-loop load at ~70 % of a finite-capacity
//! upstream ([`PoolServer`]), a trigger in the middle (the upstream's
//! service time doubled for a while: its capacity halved), and three ways
//! of calling it, each through reqwest:
//!
//! * **naive retries** ([`ClientVariant::Naive`]): what the guide's
//!   `@auto_retry` does, written as a plain loop: 3 attempts, a fixed
//!   per-attempt timeout, a fixed 100 ms pause, no budget, no deadline (the
//!   call goes on after its user has given up, as a decorated function in a
//!   web handler does);
//! * **static selfheal** ([`ClientVariant::Static`]): selfheal's middleware
//!   with its defaults before issue 15: a failure-ratio circuit breaker
//!   (50 % over 30 s, at least the breaker's minimum of calls, open 5 s)
//!   and a retry budget of 20 tokens refilled 0.5 per success, no
//!   throttle. The middleware now feeds its breakers only attempts that got
//!   no answer (connect errors and timeouts); here every failure is an
//!   attempt timeout, so the breaker sees exactly what it saw before;
//! * **adaptive selfheal** ([`ClientVariant::Adaptive`]): today's
//!   middleware defaults (throttle `K = 2` on retries, budget 50 / 2.0,
//!   the "no answer" breaker).
//!
//! Both selfheal variants get the same attempts (3), attempt timeout and a
//! deadline equal to the user's timeout (what a caller configures when it
//! knows how long its user waits); the backoff is the middleware's default.
//!
//! Open loop, as the [storm](crate::driver::storm): arrivals follow a
//! Poisson process from a seeded RNG (every variant gets the same
//! arrivals), each is a task of its own, and latency counts from the
//! scheduled arrival. A user waits at most the user timeout; the call
//! itself is detached and goes on as its variant says.

use std::sync::Arc;
use std::time::Duration;

use reqwest_middleware::ClientWithMiddleware;
use selfheal::http::ResilientMiddleware;
use serde::Serialize;

use super::figures::{self, Got, Sample, Schedule};
use super::pool::{PoolCounts, PoolServer};

/// How the client calls the finite-capacity upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientVariant {
    /// The guide's `@auto_retry`: 3 attempts, fixed timeout and pause, no budget.
    Naive,
    /// selfheal before issue 15: failure-ratio breaker, budget 20 / 0.5.
    Static,
    /// selfheal's middleware defaults today: throttle, budget 50 / 2.0, "no answer" breaker.
    Adaptive,
}

impl ClientVariant {
    /// Every variant, in report order.
    pub const ALL: [ClientVariant; 3] = [
        ClientVariant::Naive,
        ClientVariant::Static,
        ClientVariant::Adaptive,
    ];

    /// What a reader calls it.
    pub fn label(self) -> &'static str {
        match self {
            ClientVariant::Naive => "naive retries (3 attempts, no budget)",
            ClientVariant::Static => "static selfheal (failure-ratio breaker, budget 20/0.5)",
            ClientVariant::Adaptive => "adaptive selfheal (throttle, budget 50/2.0)",
        }
    }
}

/// One metastability run.
#[derive(Debug, Clone)]
pub struct MetastableOptions {
    /// How the client calls.
    pub variant: ClientVariant,
    /// Workers of the upstream.
    pub workers: usize,
    /// Service time of one request on a worker.
    pub service: Duration,
    /// Offered rate, requests per second.
    pub rate: f64,
    /// The run's length, warm-up and trigger.
    pub schedule: Schedule,
    /// The service time's factor during the trigger (2.0: capacity halved).
    pub slowdown: f64,
    /// How long a user waits.
    pub user_timeout: Duration,
    /// Each attempt's timeout.
    pub attempt_timeout: Duration,
    /// The naive client's fixed pause between attempts.
    pub naive_pause: Duration,
    /// RNG seed of the arrivals.
    pub seed: u64,
}

impl MetastableOptions {
    /// The full scenario: 10 workers of 100 ms (100 requests a second),
    /// 70 requests a second offered, 50 s with the capacity halved from
    /// 15 s to 25 s (3 s of warm-up); users wait 2 s, attempts 500 ms.
    /// The trigger builds a backlog of about 200 requests (70 arrive, 50
    /// are served a second): 4 s of queue at half capacity, longer than any
    /// user waits.
    pub fn full(variant: ClientVariant, seed: u64) -> Self {
        Self {
            variant,
            workers: 10,
            service: Duration::from_millis(100),
            rate: 70.0,
            schedule: Schedule {
                duration: Duration::from_secs(50),
                warmup: Duration::from_secs(3),
                trigger_start: Duration::from_secs(15),
                trigger_end: Duration::from_secs(25),
            },
            slowdown: 2.0,
            user_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_millis(500),
            naive_pause: Duration::from_millis(100),
            seed,
        }
    }

    /// The upstream's capacity, requests per second.
    pub fn capacity(&self) -> f64 {
        self.workers as f64 / self.service.as_secs_f64()
    }
}

/// What one metastability run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetastableRun {
    /// The variant.
    pub variant: ClientVariant,
    /// Seed of the arrivals.
    pub seed: u64,
    /// Offered rate, requests per second.
    pub offered_rate: f64,
    /// The upstream's capacity outside the trigger, requests per second.
    pub capacity: f64,
    /// Requests that arrived.
    pub requests: u64,
    /// Goodput before the trigger (after the warm-up), requests per second.
    pub goodput_before: f64,
    /// Goodput during the trigger.
    pub goodput_during: f64,
    /// Goodput from the trigger's end to the run's end.
    pub goodput_after: f64,
    /// Upstream calls per second before, during and after the trigger.
    pub calls_per_sec: [f64; 3],
    /// Upstream calls per user request during the trigger.
    pub calls_per_request_during: f64,
    /// Seconds from the trigger's end to recovery (see [`figures`]).
    pub time_to_recover_secs: Option<f64>,
    /// Goodput from 10 s after the trigger's end, over goodput before.
    pub settled_ratio: Option<f64>,
    /// Upstream work done for clients that had gone, share of all served.
    pub wasted_share: f64,
    /// The longest the upstream's queue was in the trigger's last second.
    pub backlog_at_trigger_end: u64,
    /// The longest the upstream's queue was in the run's last second.
    pub backlog_at_end: u64,
    /// Successes per arrival second (the chart's curve).
    pub goodput_per_second: Vec<f64>,
    /// Upstream calls per second.
    pub calls_per_second: Vec<u64>,
}

impl MetastableRun {
    /// The figures of one run from its samples and the upstream's counts.
    pub fn measure(options: &MetastableOptions, samples: &[Sample], counts: &PoolCounts) -> Self {
        let s = options.schedule;
        let secs = |d: Duration| d.as_secs() as usize;
        let calls = |from: Duration, to: Duration| -> f64 {
            let n: u64 = counts.arrived.iter().take(secs(to)).skip(secs(from)).sum();
            n as f64 / to.saturating_sub(from).as_secs_f64().max(1.0)
        };
        let during = calls(s.trigger_start, s.trigger_end);
        let arrivals_during = samples
            .iter()
            .filter(|x| x.arrival >= s.trigger_start && x.arrival < s.trigger_end)
            .count() as f64;
        let trigger_secs = (s.trigger_end - s.trigger_start).as_secs_f64();
        let answered: u64 = counts.answered.iter().sum();
        let wasted: u64 = counts.wasted.iter().sum();
        let mut calls_per_second = counts.arrived.clone();
        calls_per_second.resize(secs(s.duration), 0);
        Self {
            variant: options.variant,
            seed: options.seed,
            offered_rate: options.rate,
            capacity: options.capacity(),
            requests: samples.len() as u64,
            goodput_before: figures::goodput(samples, s.warmup, s.trigger_start),
            goodput_during: figures::goodput(samples, s.trigger_start, s.trigger_end),
            goodput_after: figures::goodput(samples, s.trigger_end, s.duration),
            calls_per_sec: [
                calls(s.warmup, s.trigger_start),
                during,
                calls(s.trigger_end, s.duration),
            ],
            calls_per_request_during: if arrivals_during > 0.0 {
                during * trigger_secs / arrivals_during
            } else {
                0.0
            },
            time_to_recover_secs: figures::time_to_recover(samples, s),
            settled_ratio: figures::settled_ratio(samples, s),
            wasted_share: if answered + wasted == 0 {
                0.0
            } else {
                wasted as f64 / (answered + wasted) as f64
            },
            backlog_at_trigger_end: counts
                .queue
                .get(secs(s.trigger_end).saturating_sub(1))
                .copied()
                .unwrap_or(0),
            backlog_at_end: counts
                .queue
                .get(secs(s.duration).saturating_sub(1))
                .copied()
                .unwrap_or(0),
            goodput_per_second: figures::goodput_per_second(samples, s.duration),
            calls_per_second,
        }
    }
}

/// The client of one variant.
enum Caller {
    Naive(reqwest::Client),
    Healing(ClientWithMiddleware),
}

impl Caller {
    fn new(options: &MetastableOptions) -> anyhow::Result<Self> {
        selfheal::tls::install_default_crypto_provider();
        let http = reqwest::Client::builder().build()?;
        let healing = ResilientMiddleware::builder()
            .with_max_attempts(3)
            .with_attempt_timeout(options.attempt_timeout)
            .with_deadline(options.user_timeout);
        let middleware = match options.variant {
            ClientVariant::Naive => return Ok(Caller::Naive(http)),
            ClientVariant::Static => healing
                .without_throttle()
                .with_budget(20, 0.5)
                .with_breaker(|name: &str| {
                    selfheal::breaker::Breaker::builder(name.to_owned()).build()
                })
                .build()?,
            ClientVariant::Adaptive => healing.build()?,
        };
        Ok(Caller::Healing(
            reqwest_middleware::ClientBuilder::new(http)
                .with(middleware)
                .build(),
        ))
    }

    /// One logical call: whether it got a `200`.
    async fn call(&self, url: &str, options: &MetastableOptions) -> bool {
        match self {
            Caller::Naive(http) => {
                for attempt in 0..3 {
                    if attempt > 0 {
                        tokio::time::sleep(options.naive_pause).await;
                    }
                    let sent = http.get(url).timeout(options.attempt_timeout).send().await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        return true;
                    }
                }
                false
            }
            Caller::Healing(http) => http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
        }
    }
}

/// Runs one variant: starts the upstream, sends the arrivals, pulls the
/// trigger, and measures.
pub async fn run(options: &MetastableOptions) -> anyhow::Result<MetastableRun> {
    let s = options.schedule;
    anyhow::ensure!(
        options.rate > 0.0
            && s.warmup <= s.trigger_start
            && s.trigger_start <= s.trigger_end
            && s.trigger_end <= s.duration,
        "a metastability run needs a positive rate and a trigger within the run: {options:?}"
    );
    let caller = Arc::new(Caller::new(options)?);
    let pool = Arc::new(PoolServer::start(options.workers, options.service).await?);
    let started = pool.started();
    let trigger = {
        let pool = pool.clone();
        let (from, to, factor) = (
            started + s.trigger_start,
            started + s.trigger_end,
            options.slowdown,
        );
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            pool.set_slowdown(factor);
            tokio::time::sleep_until(to.into()).await;
            pool.set_slowdown(1.0);
        })
    };
    let url = pool.url();
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut users = Vec::new();
    let mut at = Duration::ZERO;
    loop {
        at += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / options.rate);
        if at >= s.duration {
            break;
        }
        let scheduled = started + at;
        tokio::time::sleep_until(scheduled.into()).await;
        let (caller, url, opts) = (caller.clone(), url.clone(), options.clone());
        // Detached: the call goes on after its user stops waiting.
        let call = tokio::spawn(async move { caller.call(&url, &opts).await });
        let wait = options.user_timeout;
        users.push(tokio::spawn(async move {
            let got = match tokio::time::timeout_at((scheduled + wait).into(), call).await {
                Ok(Ok(true)) => Got::Success,
                _ => Got::Failed,
            };
            Sample {
                arrival: at,
                latency: scheduled.elapsed().min(wait),
                got,
            }
        }));
    }
    let mut samples = Vec::with_capacity(users.len());
    for user in users {
        samples.push(user.await?);
    }
    trigger.await?;
    let counts = pool.counts();
    // Let detached calls run out before the next run starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(pool);
    Ok(MetastableRun::measure(options, &samples, &counts))
}
