//! The app's own overload: cozmic (a child process, healing on) offered
//! about three times the logins it can serve, with and without its
//! concurrency limits (`Config::concurrency_limit`, and the passwords' own
//! `Config::passwords_limit`: the controlled-delay rule on the hashing
//! queue; both on by default in cozmic).
//!
//! Why logins: a login verifies an argon2 hash (tens of milliseconds of
//! CPU and 19 MiB each, on a gate of one thread per core), so its cost is
//! real and the app's, not the harness's: the load generator spends
//! microseconds per request and cannot be what saturates first on a
//! 2-core machine. Each login is a fresh visitor (no session cookie, the
//! login form's CSRF cookie and token), so each success also writes a new
//! session.
//!
//! Two app processes run side by side, one without the limits and one
//! with them; their phases are taken in turn (one app loaded while the
//! other idles):
//!
//! 1. **unloaded**: one user, one login after the other: the p50 and p99
//!    that the overload is compared with;
//! 2. **peak**: a few users in a closed loop (each sends its next login
//!    when the last is answered), enough to keep every hashing thread
//!    busy: the peak goodput, logins per second;
//! 3. **overload**: open-loop Poisson arrivals at the offered rate (three
//!    times the higher of the two apps' first peaks, the same for both),
//!    each user waiting at most the user timeout; the figures are taken
//!    after the first seconds (while the limits find their level);
//! 4. **peak** again, then overload and peak in turn, for a few rounds.
//!
//! Why rounds, in turn: this machine hashes at one speed one minute and
//! 1.5× slower the next (the unloaded p50 of two runs forty seconds apart:
//! 20 and 30 ms). A peak measured once, in another run, made "of peak" a
//! figure of the hour: 86–96 % for the same code. Each overload phase is
//! compared with the peaks just before and just after it, on the same
//! process (what the app served at its best at that time), and, for the
//! app with the limits, with the other app's peaks of the same rounds (a
//! limit that lowered the peak itself would show there).
//!
//! A login is a success when it is answered with the redirect to the
//! dashboard; shed when answered `503` (the limit's friendly page, or the
//! hashing gate's own "busy"); failed otherwise (a timeout, an error). How
//! many of the `503`s were the limit's is read from the app's `/metrics`
//! (`selfheal_shed_total`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cozmic::config::{Config, Healing};
use serde::Serialize;

use super::app::{App, AppMode};
use logins::{ACCOUNTS, Logins};

mod logins;
use crate::overload::figures::{self, Got, Sample};

/// The app-overload scenario: two app processes, without and with the
/// limits, measured in turn.
#[derive(Debug, Clone)]
pub struct AppOverloadOptions {
    /// The chaos binary, which serves the app as a child.
    pub exe: PathBuf,
    /// Length of the unloaded phase.
    pub unloaded: Duration,
    /// Length of each peak phase.
    pub peak: Duration,
    /// Users of the peak phase's closed loop.
    pub peak_users: usize,
    /// Length of each overload phase.
    pub overload: Duration,
    /// Overload phases, each between two peak phases.
    pub rounds: usize,
    /// Each overload phase's first part, left out of its figures.
    pub settle: Duration,
    /// The overload's offered rate as a multiple of the peak goodput.
    pub factor: f64,
    /// The offered rate, logins per second, the same for both apps;
    /// `None`: `factor` × the higher of their first peaks.
    pub rate: Option<f64>,
    /// How long a user waits for a login.
    pub user_timeout: Duration,
    /// RNG seed of the arrivals.
    pub seed: u64,
}

impl AppOverloadOptions {
    /// The full scenario: 6 s unloaded, then 4 s of peak with 8 users and
    /// 8 s of overload at 3× the peak in turn, five rounds (figures from
    /// each overload's 4th second), users waiting 5 s.
    pub fn full(exe: PathBuf, seed: u64) -> Self {
        Self {
            exe,
            unloaded: Duration::from_secs(6),
            peak: Duration::from_secs(4),
            peak_users: 8,
            overload: Duration::from_secs(8),
            rounds: 5,
            settle: Duration::from_secs(3),
            factor: 3.0,
            rate: None,
            user_timeout: Duration::from_secs(5),
            seed,
        }
    }
}

/// What one app-overload run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppOverloadRun {
    /// Whether the adaptive concurrency limit was on.
    pub limit: bool,
    /// Seed of the arrivals.
    pub seed: u64,
    /// Median login latency, one user at a time, ms.
    pub unloaded_p50_ms: f64,
    /// 99th percentile login latency, one user at a time, ms.
    pub unloaded_p99_ms: f64,
    /// Logins per second with the peak phases' closed loop (their mean).
    pub peak_goodput: f64,
    /// Each peak phase's logins per second, in order.
    pub peaks: Vec<f64>,
    /// The overload's offered rate, logins per second.
    pub offered_rate: f64,
    /// Logins that arrived in the overload phases' measured parts.
    pub requests: u64,
    /// Successful logins per second in the overload phases' measured
    /// parts (their mean).
    pub goodput: f64,
    /// Each overload phase's goodput, in order.
    pub round_goodput: Vec<f64>,
    /// The peak goodput compared with: for each overload phase, the mean
    /// of the peaks just before and just after it; their mean.
    pub reference_peak: f64,
    /// `goodput / reference_peak`.
    pub goodput_ratio: f64,
    /// Median latency of the logins accepted (succeeded) under overload, ms.
    pub accepted_p50_ms: f64,
    /// 99th percentile latency of the logins accepted under overload, ms.
    pub accepted_p99_ms: f64,
    /// `503` answers in the measured part (the limit's and the hashing gate's).
    pub shed: u64,
    /// Requests the limits shed over the whole run (`/metrics`: the
    /// logins' own limit and the pages' limit), `None` without a limit or
    /// when unreadable.
    pub shed_by_limit: Option<u64>,
    /// Logins that neither succeeded nor were shed (timeouts, errors).
    pub failed: u64,
    /// The logins' limit at the end of the run (`/metrics`).
    pub final_limit: Option<u64>,
    /// The app process's peak resident set size (`VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Successful logins per arrival second of the overload phases, one
    /// after the other.
    pub goodput_per_second: Vec<f64>,
    /// What the overload phases' logins got: status codes, `timeout` (the
    /// user stopped waiting), `error` (no answer).
    pub answers: BTreeMap<String, u64>,
}

/// The value of the metric line starting with `prefix` in a Prometheus text page.
fn metric(page: &str, prefix: &str) -> Option<u64> {
    page.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

/// The sum of the metric lines starting with `prefix` (all labels), `None`
/// when there is none.
fn metric_sum(page: &str, prefix: &str) -> Option<u64> {
    let values: Vec<u64> = page
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Runs the scenario (see the [module docs](self)) on two app processes
/// at once, without and with the limits, their phases taken in turn: the
/// runs without and with the limits, in that order.
pub async fn run(options: &AppOverloadOptions) -> anyhow::Result<[AppOverloadRun; 2]> {
    let dir = tempfile::tempdir()?;
    let mut benches = Vec::new();
    for limit in [false, true] {
        let bench = Bench::start(options, limit, &dir.path().join(format!("limit-{limit}"))).await;
        match bench {
            Ok(bench) => benches.push(bench),
            Err(error) => {
                for bench in benches {
                    bench.app.shutdown().await;
                }
                return Err(error);
            }
        }
    }
    let rate = interleave(options, &mut benches).await;
    let mut runs = Vec::new();
    for bench in benches {
        runs.push(bench.finish(options, rate).await);
    }
    runs.try_into()
        .map_err(|_| anyhow::anyhow!("two runs expected"))
}

/// The phases, each app's in turn: unloaded, then peak, and per round
/// overload then peak (the overload at `options.rate`, or `factor` × the
/// higher of the two first peaks).
async fn interleave(options: &AppOverloadOptions, benches: &mut [Bench]) -> f64 {
    for bench in benches.iter_mut() {
        bench.unloaded = bench.logins.closed_loop(1, options.unloaded).await;
    }
    for bench in benches.iter_mut() {
        bench.peak(options).await;
    }
    let first = benches.iter().map(|b| b.peaks[0]).fold(0.0, f64::max);
    let rate = options.rate.unwrap_or(options.factor * first).max(1.0);
    for round in 0..options.rounds.max(1) {
        // Each app first every other round: whatever a phase leaves behind
        // (a backlog draining, a warm cache) lands on both alike.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..benches.len()).collect()
        } else {
            (0..benches.len()).rev().collect()
        };
        for &i in &order {
            benches[i].overload(options, rate, round).await;
        }
        for &i in &order {
            benches[i].peak(options).await;
        }
    }
    rate
}

/// One app process and what was measured on it so far.
struct Bench {
    limit: bool,
    app: App,
    logins: Arc<Logins>,
    unloaded: Vec<Sample>,
    peaks: Vec<f64>,
    round_goodput: Vec<f64>,
    goodput_per_second: Vec<f64>,
    /// The overload phases' samples from each one's `settle` on.
    measured: Vec<Sample>,
    /// What the overload phases' logins got.
    answers: BTreeMap<String, u64>,
}

impl Bench {
    /// Starts cozmic (healing on; its limits on or off) with its data in
    /// `dir`, and signs up the students.
    async fn start(
        options: &AppOverloadOptions,
        limit: bool,
        dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut config = Config::new(dir);
        config.healing = Healing::On;
        config.concurrency_limit = limit;
        config.passwords_limit = limit;
        config.client_ip_header = Some("x-real-ip".to_owned());
        config.secret_key = Some(super::app::random_secret_key());
        let mode = AppMode::Children {
            exe: options.exe.clone(),
            instances: 1,
            kill: false,
        };
        let app = App::start(&mode, config, dir).await?;
        let logins = match Logins::prepare(app.url(), ACCOUNTS).await {
            Ok(logins) => Arc::new(logins),
            Err(error) => {
                app.shutdown().await;
                return Err(error);
            }
        };
        Ok(Self {
            limit,
            app,
            logins,
            unloaded: Vec::new(),
            peaks: Vec::new(),
            round_goodput: Vec::new(),
            goodput_per_second: Vec::new(),
            measured: Vec::new(),
            answers: BTreeMap::new(),
        })
    }

    /// A peak phase: its logins per second (those answered within it: the
    /// last login of each user ends after it).
    async fn peak(&mut self, options: &AppOverloadOptions) {
        let samples = self
            .logins
            .closed_loop(options.peak_users, options.peak)
            .await;
        let ok = samples
            .iter()
            .filter(|s| s.got == Got::Success && s.arrival + s.latency <= options.peak)
            .count();
        self.peaks.push(ok as f64 / options.peak.as_secs_f64());
    }

    /// Overload phase `round` at `rate`.
    async fn overload(&mut self, options: &AppOverloadOptions, rate: f64, round: usize) {
        self.logins.answers.lock().expect("answers").clear();
        // Rounds of consecutive seeds must not share arrivals.
        let seed = options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round as u64;
        let samples = self
            .logins
            .open_loop(rate, options.overload, options.user_timeout, seed)
            .await;
        self.round_goodput
            .push(figures::goodput(&samples, options.settle, options.overload));
        self.goodput_per_second
            .extend(figures::goodput_per_second(&samples, options.overload));
        self.measured
            .extend(samples.into_iter().filter(|s| s.arrival >= options.settle));
        for (kind, n) in self.logins.answers.lock().expect("answers").iter() {
            *self.answers.entry(kind.clone()).or_default() += n;
        }
    }

    /// Reads the app's `/metrics` and memory, stops it: the run.
    async fn finish(self, options: &AppOverloadOptions, rate: f64) -> AppOverloadRun {
        let base = self.app.url();
        let metrics = async {
            self.logins
                .http
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await
        }
        .await
        .unwrap_or_default();
        let peak_rss_bytes = self.app.peak_rss_bytes().await;
        self.app.shutdown().await;
        let ok = |s: &Sample| s.got == Got::Success;
        let count = |got| self.measured.iter().filter(|s| s.got == got).count() as u64;
        let goodput = figures::mean(self.round_goodput.iter().copied());
        // Each overload phase against the peaks just before and after it.
        let reference_peak = figures::mean(self.peaks.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        AppOverloadRun {
            limit: self.limit,
            seed: options.seed,
            unloaded_p50_ms: figures::percentile_ms(&self.unloaded, 0.5, ok),
            unloaded_p99_ms: figures::percentile_ms(&self.unloaded, 0.99, ok),
            peak_goodput: figures::mean(self.peaks.iter().copied()),
            peaks: self.peaks,
            offered_rate: rate,
            requests: self.measured.len() as u64,
            goodput,
            round_goodput: self.round_goodput,
            reference_peak,
            goodput_ratio: if reference_peak > 0.0 {
                goodput / reference_peak
            } else {
                0.0
            },
            accepted_p50_ms: figures::percentile_ms(&self.measured, 0.5, ok),
            accepted_p99_ms: figures::percentile_ms(&self.measured, 0.99, ok),
            shed: count(Got::Shed),
            shed_by_limit: metric_sum(&metrics, "selfheal_shed_total{"),
            failed: count(Got::Failed),
            final_limit: metric(
                &metrics,
                "selfheal_concurrency_limit{limiter=\"cozmic-passwords\"}",
            ),
            peak_rss_bytes,
            goodput_per_second: self.goodput_per_second,
            answers: self.answers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_the_prometheus_page() {
        let page = "# TYPE x counter\nselfheal_shed_total{limiter=\"cozmic\"} 42\nselfheal_concurrency_limit{limiter=\"cozmic\"} 17.4\n";
        assert_eq!(
            metric(page, "selfheal_shed_total{limiter=\"cozmic\"}"),
            Some(42)
        );
        assert_eq!(
            metric(page, "selfheal_concurrency_limit{limiter=\"cozmic\"}"),
            Some(17)
        );
        assert_eq!(metric(page, "nothing"), None);
        let page = format!("{page}selfheal_shed_total{{limiter=\"cozmic-passwords\"}} 8\n");
        assert_eq!(metric_sum(&page, "selfheal_shed_total{"), Some(50));
        assert_eq!(metric_sum(&page, "nothing"), None);
    }
}
