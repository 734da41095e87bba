//! The overload suite's Markdown: one table per scenario, each figure the
//! mean over the seeds run (times to recover: the mean of the seeds that
//! recovered, and how many did).

use std::fmt::Write;

use super::{ClientVariant, MetastableRun, OverloadReport};
use crate::driver::overload::AppOverloadRun;

/// The mean of `values` (0 when empty).
pub(super) fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values {
        sum += v;
        n += 1;
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// The element-wise mean of several series (as long as the longest).
pub(super) fn mean_series<'a>(series: impl IntoIterator<Item = &'a [f64]>) -> Vec<f64> {
    let all: Vec<&[f64]> = series.into_iter().collect();
    let len = all.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..len)
        .map(|i| mean(all.iter().filter_map(|s| s.get(i).copied())))
        .collect()
}

impl OverloadReport {
    /// The runs of `variant`, every seed.
    pub(super) fn runs_of(&self, variant: ClientVariant) -> Vec<&MetastableRun> {
        self.metastable
            .iter()
            .filter(|r| r.variant == variant)
            .collect()
    }

    /// The app-overload runs with or without the limit, every seed.
    pub(super) fn app_runs(&self, limit: bool) -> Vec<&AppOverloadRun> {
        self.app.iter().filter(|r| r.limit == limit).collect()
    }

    /// Both tables, with the setup in words.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let seeds = match self.seeds.len() {
            1 => format!("seed {}", self.seeds[0]),
            n => format!("mean over {n} seeds ({:?})", self.seeds),
        };
        let s = &self.metastable_setup;
        let _ = writeln!(
            out,
            "#### Metastability: a retry storm after a 10 s trigger ({seeds})\n\n\
             Upstream: {} workers × {:.0} ms ({:.0} requests/s), FIFO queue, abandoned requests still served; \
             {:.0} requests/s offered (open loop, Poisson); capacity halved ({}× service time) from {:.0} s to {:.0} s of {:.0} s; \
             users wait {:.0} ms, attempts {:.0} ms.\n",
            s.workers,
            s.service_ms,
            s.capacity,
            s.rate,
            s.slowdown,
            s.trigger_secs[0],
            s.trigger_secs[1],
            s.duration_secs,
            s.user_timeout_ms,
            s.attempt_timeout_ms
        );
        out.push_str(
            "| client | goodput before | during trigger | after | upstream calls/s before / during / after | calls per request (trigger) | upstream queue at trigger end / run end | time to recover to 95 % | goodput 10 s+ after (of before) | upstream work wasted |\n\
             | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for variant in ClientVariant::ALL {
            let runs = self.runs_of(variant);
            if runs.is_empty() {
                continue;
            }
            let m = |f: fn(&MetastableRun) -> f64| mean(runs.iter().map(|r| f(r)));
            let recovered: Vec<f64> = runs.iter().filter_map(|r| r.time_to_recover_secs).collect();
            let recover = match recovered.len() {
                0 => "never".to_owned(),
                k if k == runs.len() => format!("{:.1} s", mean(recovered)),
                k => format!(
                    "{:.1} s ({k} of {} seeds; never in the others)",
                    mean(recovered),
                    runs.len()
                ),
            };
            let settled: Vec<f64> = runs.iter().filter_map(|r| r.settled_ratio).collect();
            let _ = writeln!(
                out,
                "| {} | {:.1}/s | {:.1}/s | {:.1}/s | {:.0} / {:.0} / {:.0} | {:.2} | {:.0} / {:.0} | {recover} | {:.0} % | {:.0} % |",
                variant.label(),
                m(|r| r.goodput_before),
                m(|r| r.goodput_during),
                m(|r| r.goodput_after),
                m(|r| r.calls_per_sec[0]),
                m(|r| r.calls_per_sec[1]),
                m(|r| r.calls_per_sec[2]),
                m(|r| r.calls_per_request_during),
                m(|r| r.backlog_at_trigger_end as f64),
                m(|r| r.backlog_at_end as f64),
                mean(settled) * 100.0,
                m(|r| r.wasted_share) * 100.0,
            );
        }
        out.push('\n');
        self.app_markdown(&mut out, &seeds);
        out
    }

    fn app_markdown(&self, out: &mut String, seeds: &str) {
        if self.app.is_empty() {
            return;
        }
        let rates: Vec<f64> = self
            .app_runs(false)
            .iter()
            .map(|r| r.offered_rate)
            .collect();
        let (low, high) = rates
            .iter()
            .fold((f64::MAX, 0.0_f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let offered = if rates.len() > 1 {
            format!(
                "{:.0} (mean; {low:.0}–{high:.0})",
                mean(rates.iter().copied())
            )
        } else {
            format!("{:.0}", mean(rates.iter().copied()))
        };
        let _ = writeln!(
            out,
            "#### App overload: cozmic offered about 3× the logins it can serve ({seeds})\n\n\
             Logins (an argon2 verification each, on one hashing thread per core), cozmic as a child process with healing on; \
             unloaded = one user at a time; peak = 8 users in a closed loop (enough to keep both hashing threads busy; a user turned away waits 20 ms); then {} logins/s offered (3× the peak of the run without the limit, the same for both), \
             open loop, users wait 5 s; figures from the overload's 5th second. \
             \"Of peak\" compares with the app's best without the limit: its closed-loop peak, or its goodput under the overload when that was higher (a closed loop under a limit measures the limit).\n",
            offered
        );
        out.push_str(
            "| cozmic | unloaded p50 / p99 | peak goodput | goodput at 3× | of peak | accepted p50 / p99 | accepted p99 / unloaded p99 | 503s (by the limit, whole run) | failed | peak RSS |\n\
             | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for limit in [false, true] {
            let runs = self.app_runs(limit);
            if runs.is_empty() {
                continue;
            }
            let m = |f: fn(&AppOverloadRun) -> f64| mean(runs.iter().map(|r| f(r)));
            let by_limit = if limit {
                format!(" ({:.0})", m(|r| r.shed_by_limit.unwrap_or(0) as f64))
            } else {
                String::new()
            };
            let rss = m(|r| r.peak_rss_bytes.unwrap_or(0) as f64) / (1024.0 * 1024.0);
            let _ = writeln!(
                out,
                "| {} | {:.0} / {:.0} ms | {:.1}/s | {:.1}/s | {:.0} % | {:.0} / {:.0} ms | {:.1}× | {:.0}{by_limit} | {:.0} | {:.0} MiB |",
                if limit {
                    "adaptive concurrency limit on"
                } else {
                    "no concurrency limit"
                },
                m(|r| r.unloaded_p50_ms),
                m(|r| r.unloaded_p99_ms),
                m(|r| r.peak_goodput),
                m(|r| r.goodput),
                m(|r| r.goodput_ratio) * 100.0,
                m(|r| r.accepted_p50_ms),
                m(|r| r.accepted_p99_ms),
                m(|r| if r.unloaded_p99_ms > 0.0 {
                    r.accepted_p99_ms / r.unloaded_p99_ms
                } else {
                    0.0
                }),
                m(|r| r.shed as f64),
                m(|r| r.failed as f64),
                rss,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_ignore_what_is_missing() {
        assert_eq!(mean([]), 0.0);
        assert_eq!(mean([1.0, 2.0, 6.0]), 3.0);
        let a = [1.0, 3.0];
        let b = [3.0];
        assert_eq!(mean_series([&a[..], &b[..]]), vec![2.0, 3.0]);
    }
}
