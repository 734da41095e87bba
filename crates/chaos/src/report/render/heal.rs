//! The tables of the heal runs, one column per run: first try per step,
//! the injected faults and whether a user saw them, the final outcome per
//! step, the failures by kind, integrity and resources.

use std::collections::BTreeSet;

use super::{Col, IntegrityField, Table, ms, pct, run_header, verdict};
use crate::ledger::Tally;
use crate::report::{FailureKind, Integrity, RunReport, StepSummary};

/// The headline: first-try success per step (what healing alone
/// achieved), with what struck the tries that missed.
pub(super) fn first_try_table(cols: &[Col<'_>]) -> Table {
    let mut header = vec!["step".to_owned()];
    for c in cols {
        header.push(format!("{}: first try ok", c.name));
        header.push(format!("{}: misses by cause", c.name));
    }
    header.push("on − off".to_owned());
    let steps: BTreeSet<&String> = cols.iter().flat_map(|c| c.mean.steps.keys()).collect();
    let mut rows = Vec::new();
    for step in steps {
        let get = |r: &RunReport| r.steps.get(step).map(|s| s.first_try_success_rate);
        let mut row = vec![step.clone()];
        let n = |r: &RunReport| r.steps.get(step).map(|s| s.total as f64);
        for c in cols {
            row.push(c.pct(&get));
            row.push(top_causes(c.mean.steps.get(step)));
        }
        row.push(verdict(cols, &get, &n));
        rows.push(row);
    }
    let get = |r: &RunReport| Some(r.first_try_success_rate);
    let mut row = vec!["overall".to_owned()];
    for c in cols {
        row.push(c.pct(&get));
        let mut all = std::collections::BTreeMap::<String, u64>::new();
        for s in c.mean.steps.values() {
            for (k, v) in &s.first_try_causes {
                *all.entry(k.clone()).or_default() += v;
            }
        }
        row.push(format_causes(&all));
    }
    row.push(verdict(cols, &get, &|r| Some(r.actions as f64)));
    rows.push(row);
    Table {
        title: "First try, per journey step (before anyone pressed again)".into(),
        header,
        rows,
    }
}

fn top_causes(step: Option<&StepSummary>) -> String {
    step.map_or_else(|| "-".to_owned(), |s| format_causes(&s.first_try_causes))
}

/// The three most frequent causes, `kind n`, most frequent first.
fn format_causes(causes: &std::collections::BTreeMap<String, u64>) -> String {
    let mut sorted: Vec<(&String, &u64)> = causes.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = sorted
        .iter()
        .take(3)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let rest: u64 = sorted.iter().skip(3).map(|(_, v)| **v).sum();
    match (shown.is_empty(), rest) {
        (true, _) => "none".to_owned(),
        (false, 0) => shown.join(", "),
        (false, rest) => format!("{}, other {rest}", shown.join(", ")),
    }
}

/// Per fault kind: injected, and what the users who met them saw; the
/// share no user saw is the guide's "auto-recover" figure.
pub(super) fn fault_table(cols: &[Col<'_>]) -> Table {
    let mut header = vec!["fault".to_owned()];
    for c in cols {
        for col in ["injected", "hidden", "degraded", "failed", "no user saw"] {
            header.push(format!("{}: {col}", c.name));
        }
    }
    header.push("on − off".to_owned());
    let kinds: BTreeSet<&String> = cols.iter().flat_map(|c| c.mean.faults.keys()).collect();
    let mut rows = Vec::new();
    let tally_cells =
        |c: &Col<'_>, t: Option<&Tally>, get: &dyn Fn(&RunReport) -> Option<f64>| match t {
            Some(t) => vec![
                t.injected.to_string(),
                t.hidden.to_string(),
                t.degraded.to_string(),
                t.failed.to_string(),
                c.pct(get),
            ],
            None => vec!["-".to_owned(); 5],
        };
    for kind in kinds {
        let get = |r: &RunReport| r.faults.get(kind).map(Tally::hidden_rate);
        let n = |r: &RunReport| r.faults.get(kind).map(judged);
        let mut row = vec![kind.clone()];
        for c in cols {
            row.extend(tally_cells(c, c.mean.faults.get(kind), &get));
        }
        row.push(verdict(cols, &get, &n));
        rows.push(row);
    }
    // The upstream faults together: the "faults no user saw" target
    // is stated for them.
    let upstream = |r: &RunReport| {
        Tally::sum(
            r.faults
                .iter()
                .filter(|(kind, _)| kind.starts_with("upstream_"))
                .map(|(_, t)| t),
        )
    };
    if cols
        .iter()
        .any(|c| c.mean.faults.keys().any(|k| k.starts_with("upstream_")))
    {
        let get = |r: &RunReport| {
            let t = upstream(r);
            (judged(&t) > 0.0).then(|| t.hidden_rate())
        };
        let mut row = vec!["upstream faults".to_owned()];
        for c in cols {
            row.extend(tally_cells(c, Some(&upstream(c.mean)), &get));
        }
        row.push(verdict(cols, &get, &|r| Some(judged(&upstream(r)))));
        rows.push(row);
    }
    let get = |r: &RunReport| Some(r.faults_hidden_rate);
    let mut row = vec!["all faults".to_owned()];
    for c in cols {
        let total = Tally::sum(c.mean.faults.values());
        row.extend(tally_cells(c, Some(&total), &get));
    }
    row.push(verdict(cols, &get, &|r| {
        Some(judged(&Tally::sum(r.faults.values())))
    }));
    rows.push(row);
    Table {
        title: "Injected faults, and whether a user saw them".into(),
        header,
        rows,
    }
}

/// The faults of a tally that were judged (not unlinked).
fn judged(t: &Tally) -> f64 {
    (t.hidden + t.degraded + t.failed) as f64
}

/// Outcomes and latency per journey step, then overall, runs side by side,
/// after the user pressed again once.
pub(super) fn step_table(cols: &[Col<'_>]) -> Table {
    let mut header = vec!["step".to_owned()];
    for c in cols {
        for col in [
            "actions",
            "ok",
            "degraded",
            "signed out",
            "hard",
            "p50 ms",
            "p95 ms",
        ] {
            header.push(format!("{}: {col}", c.name));
        }
    }
    header.push("on − off".to_owned());
    let steps: BTreeSet<&String> = cols.iter().flat_map(|c| c.mean.steps.keys()).collect();
    let cells =
        |c: &Col<'_>, s: Option<&StepSummary>, get: &dyn Fn(&RunReport) -> Option<f64>| match s {
            Some(s) => vec![
                s.total.to_string(),
                c.pct(get),
                pct(s.degraded_rate),
                pct(s.signed_out_rate),
                pct(s.hard_failure_rate),
                ms(s.latency.p50_ms),
                ms(s.latency.p95_ms),
            ],
            None => vec!["-".to_owned(); 7],
        };
    let mut rows = Vec::new();
    for step in steps {
        let get = |r: &RunReport| r.steps.get(step).map(|s| s.success_rate);
        let n = |r: &RunReport| r.steps.get(step).map(|s| s.total as f64);
        let mut row = vec![step.clone()];
        for c in cols {
            row.extend(cells(c, c.mean.steps.get(step), &get));
        }
        row.push(verdict(cols, &get, &n));
        rows.push(row);
    }
    let get = |r: &RunReport| Some(r.success_rate);
    let mut row = vec!["overall".to_owned()];
    for c in cols {
        row.extend(cells(c, Some(&c.mean.overall()), &get));
    }
    row.push(verdict(cols, &get, &|r| Some(r.actions as f64)));
    rows.push(row);
    Table {
        title: "After pressing again once (the final outcome), per journey step".into(),
        header,
        rows,
    }
}

/// Hard failures by kind, and the upstream calls per action.
pub(super) fn failure_table(cols: &[Col<'_>]) -> Table {
    let mut rows: Vec<Vec<String>> = FailureKind::ALL
        .iter()
        .map(|k| {
            let mut row = vec![k.name().to_owned()];
            row.extend(
                cols.iter()
                    .map(|c| c.mean.hard_failures.get(*k).to_string()),
            );
            row
        })
        .collect();
    let mut row = vec!["upstream calls per action".to_owned()];
    row.extend(
        cols.iter()
            .map(|c| c.num(&|r| Some(r.upstream_calls_per_action), 2)),
    );
    rows.push(row);
    Table {
        title: "Hard failures by kind (final outcome)".into(),
        header: run_header("hard failure", cols),
        rows,
    }
}

/// The integrity numbers measured after each run.
pub(super) fn integrity_table(cols: &[Col<'_>]) -> Table {
    let fields: [(&str, IntegrityField); 10] = [
        ("acknowledged write missing", |i| i.acknowledged_missing),
        ("write never sent", |i| i.writes_never_sent),
        ("XP not the ledger's sum", |i| i.xp_ledger_mismatches),
        ("email lost", |i| i.emails_lost),
        ("email sent twice", |i| i.emails_duplicated),
        ("charged twice", |i| i.payments_duplicated),
        ("charge without premium", |i| i.charges_without_premium),
        ("premium without charge", |i| i.premium_without_charge),
        ("tutor answer stored twice", |i| i.answers_duplicated),
        ("all defects", Integrity::defects),
    ];
    let rows = fields
        .iter()
        .map(|(name, get)| {
            let mut row = vec![(*name).to_owned()];
            row.extend(
                cols.iter()
                    .map(|c| c.num(&|r| Some(get(&r.integrity) as f64), 0)),
            );
            row
        })
        .collect();
    Table {
        title: "Integrity".into(),
        header: run_header("integrity", cols),
        rows,
    }
}

/// What each run cost the process that ran the app.
pub(super) fn resource_table(cols: &[Col<'_>]) -> Table {
    let mut rss = vec!["peak RSS (MiB)".to_owned()];
    rss.extend(
        cols.iter()
            .map(|c| c.num(&|r| Some(r.peak_rss_bytes as f64 / (1024.0 * 1024.0)), 0)),
    );
    let mut cpu = vec!["CPU ms per action".to_owned()];
    cpu.extend(
        cols.iter()
            .map(|c| c.num(&|r| Some(r.cpu_ms_per_action), 2)),
    );
    Table {
        title: "Resources (the process running the app and the virtual users)".into(),
        header: run_header("resource", cols),
        rows: vec![rss, cpu],
    }
}
