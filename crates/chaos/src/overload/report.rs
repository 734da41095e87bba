//! The overload suite's Markdown: one table per scenario, each figure the
//! mean over the seeds run (times to recover: the mean of the seeds that
//! recovered, and how many did).

use std::fmt::Write;

pub(super) use super::figures::mean;
use super::{ClientVariant, MetastableRun, OverloadReport};
use crate::driver::overload::AppOverloadRun;

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
        let rounds = self.app.first().map_or(0, |r| r.round_goodput.len());
        let _ = writeln!(
            out,
            "#### App overload: cozmic offered about 3× the logins it can serve ({seeds})\n\n\
             Logins (an argon2 verification each, on one hashing thread per core), cozmic as a child process with healing on; \
             unloaded = one user at a time; peak = 8 users in a closed loop (enough to keep both hashing threads busy; a user turned away waits 20 ms); \
             overload = {} logins/s offered (3× the higher of the two apps' first peaks, the same for both), open loop, users wait 5 s. \
             Both apps run side by side and are loaded in turn (which goes first alternates by round): {rounds} rounds of 8 s of overload, each between two 4 s peaks, figures from each overload's 4th second (the first round's include the limit coming down from 64). \
             \"Of peak\" compares each overload with the mean of the app's own peaks just before and just after it \
             (this machine's speed drifts by up to 1.5× within minutes); \"of no limit's peak\" compares with the other app's peaks of the same rounds.\n",
            offered
        );
        out.push_str(
            "| cozmic | unloaded p50 / p99 | peak goodput | goodput at 3× | of peak | of no limit's peak | accepted p50 / p99 | accepted p99 / unloaded p99 | 503s (by the limit, whole run) | failed | peak RSS |\n\
             | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
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
            let of_unlimited = mean(runs.iter().filter_map(|r| {
                let unlimited = self
                    .app
                    .iter()
                    .find(|u| !u.limit && u.seed == r.seed && u.reference_peak > 0.0)?;
                Some(r.goodput / unlimited.reference_peak)
            }));
            let _ = writeln!(
                out,
                "| {} | {:.0} / {:.0} ms | {:.1}/s | {:.1}/s | {:.0} % | {:.0} % | {:.0} / {:.0} ms | {:.1}× | {:.0}{by_limit} | {:.0} | {:.0} MiB |",
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
                of_unlimited * 100.0,
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
    use std::collections::BTreeMap;

    use super::*;

    fn app_run(limit: bool, peaks: &[f64], round_goodput: &[f64]) -> AppOverloadRun {
        let goodput = mean(round_goodput.iter().copied());
        let reference_peak = mean(peaks.windows(2).map(|w| (w[0] + w[1]) / 2.0));
        AppOverloadRun {
            limit,
            seed: 7,
            unloaded_p50_ms: 20.0,
            unloaded_p99_ms: 30.0,
            peak_goodput: mean(peaks.iter().copied()),
            peaks: peaks.to_vec(),
            offered_rate: 300.0,
            requests: 1000,
            goodput,
            round_goodput: round_goodput.to_vec(),
            reference_peak,
            goodput_ratio: goodput / reference_peak,
            accepted_p50_ms: 40.0,
            accepted_p99_ms: 54.0,
            shed: 600,
            shed_by_limit: limit.then_some(650),
            failed: 0,
            final_limit: None,
            peak_rss_bytes: Some(80 << 20),
            goodput_per_second: round_goodput.to_vec(),
            answers: BTreeMap::new(),
        }
    }

    /// "Of peak" is each app against its own peaks around each overload;
    /// "of no limit's peak" the limited app against the other's peaks of
    /// the same rounds (a limit that lowered the peak shows there).
    #[test]
    fn the_app_table_compares_with_both_apps_peaks() {
        let report = OverloadReport {
            seeds: vec![7],
            metastable_setup: super::super::MetastableSetup::of(
                &super::super::MetastableOptions::full(ClientVariant::Naive, 7),
            ),
            metastable: Vec::new(),
            app: vec![
                app_run(false, &[100.0, 100.0, 100.0], &[95.0, 95.0]),
                // Its own peaks are lower: 90 % of them, 72 % of the other's.
                app_run(true, &[80.0, 80.0, 80.0], &[72.0, 72.0]),
            ],
        };
        let table = report.markdown();
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| {
                l.starts_with("| no concurrency") || l.starts_with("| adaptive concurrency")
            })
            .collect();
        assert_eq!(rows.len(), 2, "{table}");
        assert!(rows[0].contains("| 95.0/s | 95 % | 95 % |"), "{}", rows[0]);
        assert!(rows[1].contains("| 72.0/s | 90 % | 72 % |"), "{}", rows[1]);
        assert!(rows[1].contains("| 600 (650) |"), "{}", rows[1]);
    }

    #[test]
    fn means_ignore_what_is_missing() {
        assert_eq!(mean([]), 0.0);
        assert_eq!(mean([1.0, 2.0, 6.0]), 3.0);
        let a = [1.0, 3.0];
        let b = [3.0];
        assert_eq!(mean_series([&a[..], &b[..]]), vec![2.0, 3.0]);
    }
}
