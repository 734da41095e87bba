//! The tables of the suites beside the heal runs: the process faults (an
//! instance killed mid-run) and the retry storms (closed and open loop).

use super::{Table, ms, pct, proportion_verdict};
use crate::report::{StormReport, StormRun};

/// The process-fault runs side by side: the kill, how fast the app was
/// back, what users saw, what was lost.
pub(super) fn process_table(
    process: &std::collections::BTreeMap<String, crate::report::ProcessReport>,
) -> Table {
    type Cell = fn(&crate::report::ProcessReport) -> String;
    let rows: [(&str, Cell); 10] = [
        ("instances", |p| p.faults.instances.to_string()),
        ("kills (SIGKILL)", |p| p.faults.kills.to_string()),
        ("back up in (s)", |p| {
            format!("{:.2}", p.faults.recovery_secs)
        }),
        ("first try ok", |p| pct(p.first_try_success_rate)),
        ("ok after pressing again", |p| pct(p.success_rate)),
        ("acknowledged writes lost", |p| {
            p.faults.acknowledged_writes_lost.to_string()
        }),
        ("emails lost", |p| {
            format!("{} of {}", p.faults.emails_lost, p.faults.emails_expected)
        }),
        ("emails sent twice", |p| {
            p.faults.emails_duplicated.to_string()
        }),
        ("emails waiting at the kill", |p| {
            p.faults.emails_waiting_at_kill.to_string()
        }),
        ("sessions lost", |p| {
            format!(
                "{} of {}",
                p.faults.sessions_lost, p.faults.sessions_checked
            )
        }),
    ];
    let mut header = vec!["".to_owned()];
    header.extend(process.keys().cloned());
    Table {
        title: "Process faults: an instance killed with SIGKILL mid-run, restarted".into(),
        header,
        rows: rows
            .iter()
            .map(|(name, cell)| {
                let mut row = vec![(*name).to_owned()];
                row.extend(process.values().map(cell));
                row
            })
            .collect(),
    }
}

/// The open-loop storm: requests keep arriving at a fixed rate while the
/// AI upstream is down, then back.
pub(super) fn open_loop_storm_table(storms: &[crate::report::OpenLoopStorm]) -> Table {
    let baseline = storms
        .iter()
        .find(|s| s.variant == crate::report::StormVariant::NoHealing);
    let secs = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |s| format!("{s:.1}"));
    Table {
        title: format!(
            "Storm: {:.0} requests/s offered, the AI upstream down for {:.0} s of {:.0} s",
            storms[0].offered_rate, storms[0].outage_secs, storms[0].duration_secs
        ),
        header: [
            "policy",
            "requests",
            "upstream calls/s while down",
            "upstream calls/s overall",
            "fail fast after (s)",
            "recovered after (s)",
            "p95 while down (ms)",
            "ok",
            "degraded",
            "failed",
            "ok: against no healing",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: storms
            .iter()
            .map(|s| {
                let against = baseline.filter(|b| b.variant != s.variant).map_or_else(
                    || "-".to_owned(),
                    |b| {
                        proportion_verdict(
                            (s.success_rate, s.requests as f64),
                            (b.success_rate, b.requests as f64),
                        )
                    },
                );
                vec![
                    s.variant.label().to_owned(),
                    s.requests.to_string(),
                    format!("{:.1}", s.upstream_calls_per_sec_down),
                    format!("{:.1}", s.upstream_calls_per_sec_overall),
                    secs(s.time_to_fail_fast_secs),
                    secs(s.time_to_recover_secs),
                    ms(s.latency_p95_down_ms),
                    pct(s.success_rate),
                    pct(s.degraded_rate),
                    pct(s.failed_rate),
                    against,
                ]
            })
            .collect(),
    }
}

/// The storm comparison, retry budget on and off.
pub(super) fn storm_table(storm: &StormReport) -> Table {
    let row = |name: &str, s: &StormRun| {
        vec![
            name.to_owned(),
            s.requests.to_string(),
            s.upstream_calls.to_string(),
            format!("{:.2}", s.upstream_calls_per_request),
            pct(s.success_rate),
        ]
    };
    Table {
        title: "Storm: upstream completely down".into(),
        header: [
            "run",
            "requests",
            "upstream calls",
            "calls per request",
            "ok",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: vec![
            row("with retry budget", &storm.with_budget),
            row("without retry budget", &storm.without_budget),
        ],
    }
}
