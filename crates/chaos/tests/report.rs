//! The recorder, the summaries and the three outputs.

use std::time::Duration;

use chaos::ledger::{Fault, Target, TryRecord, Verdict, judge};
use chaos::plan::Plan;
use chaos::report::{
    FailureKind, Integrity, OpenLoopStorm, Outcome, Recorder, Report, ReportMeta, RunReport,
    SeedRuns, StormReport, StormRun, StormSchedule, StormVariant, UpstreamCalls, counters,
    percentile, runs,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn nearest_rank_percentiles_on_known_samples() {
    let samples: Vec<Duration> = (1..=100).map(ms).collect();
    assert_eq!(percentile(&samples, 0.50), Some(ms(50)));
    assert_eq!(percentile(&samples, 0.95), Some(ms(95)));
    assert_eq!(percentile(&samples, 0.99), Some(ms(99)));
    assert_eq!(percentile(&samples, 1.0), Some(ms(100)));
    assert_eq!(percentile(&samples, 0.0), Some(ms(1)));
    assert_eq!(percentile(&[ms(7)], 0.95), Some(ms(7)));
    assert_eq!(percentile(&[], 0.5), None);
    let five: Vec<Duration> = [10, 20, 30, 40, 50].map(ms).to_vec();
    assert_eq!(percentile(&five, 0.5), Some(ms(30)));
    assert_eq!(percentile(&five, 0.95), Some(ms(50)));
}

const STEPS: [&str; 3] = ["dashboard", "ask_tutor", "buy_course"];

/// heal_on: mostly success; heal_off: a third hard failures.
fn filled() -> Recorder {
    let rec = Recorder::new();
    for i in 0..300u64 {
        let step = STEPS[(i % 3) as usize];
        let at = Duration::from_millis(i * 20);
        let on = if i % 10 == 0 {
            Outcome::Degraded
        } else {
            Outcome::Success
        };
        rec.record(runs::HEAL_ON, step, at, ms(10 + i % 50), on);
        let off = match i % 3 {
            0 => Outcome::HardFailure(FailureKind::Connection),
            _ => Outcome::Success,
        };
        rec.record(runs::HEAL_OFF, step, at, ms(100 + i % 400), off);
    }
    rec.add(runs::HEAL_ON, counters::UPSTREAM_CALLS, 450);
    rec.add(runs::HEAL_OFF, counters::UPSTREAM_CALLS, 300);
    rec
}

fn report(rec: &Recorder) -> Report {
    Report {
        meta: ReportMeta {
            users: 32,
            duration_secs: 6.0,
            seed: 1,
            seeds: vec![1],
            plan: Plan::default(),
        },
        heal_on: Some(RunReport::new(
            rec.summary(runs::HEAL_ON),
            Integrity {
                emails_duplicated: 0,
                ..Integrity::default()
            },
        )),
        heal_off: Some(RunReport::new(
            rec.summary(runs::HEAL_OFF),
            Integrity {
                integrity_violations: 2,
                emails_lost: 5,
                emails_duplicated: 1,
                payments_duplicated: 3,
                ..Integrity::default()
            },
        )),
        runs: Vec::new(),
        process: Default::default(),
        storm: Some(StormReport {
            with_budget: StormRun::new(100, 120, 0.0),
            without_budget: StormRun::new(100, 400, 0.0),
        }),
        open_loop_storm: vec![OpenLoopStorm::measure(
            StormVariant::Budget,
            50.0,
            StormSchedule {
                duration: Duration::from_secs(25),
                outage_start: Duration::from_secs(5),
                outage_end: Duration::from_secs(15),
            },
            &[],
            UpstreamCalls {
                during_outage: 25,
                total: 600,
            },
        )],
    }
}

#[test]
fn summary_counts_rates_steps_and_timeline() {
    let rec = filled();
    let on = rec.summary(runs::HEAL_ON);
    assert_eq!(on.overall.total, 300);
    assert_eq!(on.overall.degraded, 30);
    assert!((on.overall.success_rate - 0.9).abs() < 1e-9);
    assert_eq!(on.steps.len(), 3);
    assert_eq!(on.steps["dashboard"].total, 100);
    assert!((on.upstream_calls_per_action - 1.5).abs() < 1e-9);
    let off = rec.summary(runs::HEAL_OFF);
    assert_eq!(off.overall.hard_failures.connection, 100);
    assert_eq!(off.steps["dashboard"].hard_failures.connection, 100);
    assert_eq!(off.steps["ask_tutor"].success_rate, 1.0);
    // 300 actions, 20 ms apart: 6 one-second buckets of 50.
    assert_eq!(on.timeline.len(), 6);
    assert!(on.timeline.iter().all(|b| b.actions == 50));
    assert_eq!(rec.live(runs::HEAL_ON).actions, 300);
    assert_eq!(rec.live("nope").actions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_takes_concurrent_records_from_many_tasks() {
    let rec = Recorder::new();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let rec = rec.clone();
        tasks.push(tokio::spawn(async move {
            let calls = rec.counter(runs::HEAL_ON, counters::UPSTREAM_CALLS);
            for i in 0..200u64 {
                rec.record(
                    runs::HEAL_ON,
                    "dashboard",
                    ms(i),
                    ms(t + 1),
                    Outcome::Success,
                );
                calls.incr();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = rec.summary(runs::HEAL_ON);
    assert_eq!(s.overall.total, 32 * 200);
    assert_eq!(s.counters[counters::UPSTREAM_CALLS], 32 * 200);
    assert_eq!(s.overall.latency.max_ms, 32.0);
}

#[test]
fn json_has_the_required_keys() {
    let report = report(&filled());
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let num = |path: &str| {
        v.pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("missing {path}"))
    };
    assert!((num("/heal_on/success_rate") - 0.9).abs() < 1e-9);
    assert!((num("/heal_off/success_rate") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(num("/heal_on/integrity_violations"), 0.0);
    assert_eq!(num("/heal_on/emails_lost"), 0.0);
    assert_eq!(num("/heal_on/emails_duplicated"), 0.0);
    assert_eq!(num("/heal_off/emails_lost"), 5.0);
    assert_eq!(num("/heal_off/payments_duplicated"), 3.0);
    assert_eq!(num("/storm/with_budget/upstream_calls_per_request"), 1.2);
    assert_eq!(num("/storm/without_budget/upstream_calls_per_request"), 4.0);
    assert_eq!(
        num("/heal_off/steps/dashboard/hard_failures/connection"),
        100.0
    );
    assert!(num("/heal_on/steps/ask_tutor/latency/p95_ms") > 0.0);
    assert!(v.pointer("/heal_on/timeline/0/p95_ms").is_some());
    assert_eq!(v.pointer("/meta/plan/storm/duration").unwrap(), "20s");
    assert_eq!(v.pointer("/open_loop_storm/0/variant").unwrap(), "budget");
    assert_eq!(num("/open_loop_storm/0/upstream_calls_per_sec_down"), 2.5);
    assert!(
        v.pointer("/open_loop_storm/0/time_to_recover_secs")
            .unwrap()
            .is_null()
    );
}

#[test]
fn svg_has_both_series_titles_and_axis_labels() {
    let svg = report(&filled()).svg().unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    for text in [
        "heal on",
        "heal off",
        "Success % over time",
        "p95 latency over time",
        "time since start (s)",
        "p95 latency (ms)",
    ] {
        assert!(svg.contains(text), "SVG lacks {text:?}");
    }
    assert!(
        svg.matches("<polyline").count() >= 4,
        "two series in two panels"
    );
}

#[test]
fn tables_cover_every_step_and_section() {
    let report = report(&filled());
    let text = report.text();
    for step in STEPS.iter().chain(&["overall"]) {
        assert!(
            text.lines().any(|l| l.starts_with(step)),
            "no row for {step}:\n{text}"
        );
    }
    for word in [
        "heal on: ok",
        "heal off: ok",
        "90.00%",
        "66.67%",
        "acknowledged write missing",
        "email lost",
        "email sent twice",
        "charged twice",
        "charge without premium",
        "all defects",
        "Storm:",
        "retry budget",
        "upstream calls/s while down",
        "connection",
    ] {
        assert!(text.contains(word), "text lacks {word:?}:\n{text}");
    }
    let md = report.markdown();
    assert!(md.contains("| step | heal on: actions"), "{md}");
    assert!(md.contains("| :--- | ---: |"), "{md}");
    assert!(md.contains("| buy_course | 100 | 90.00%"), "{md}");
}

#[test]
fn a_single_run_report_and_written_files() {
    let rec = filled();
    let mut report = report(&rec);
    report.heal_off = None;
    report.storm = None;
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(v.get("heal_off").is_none());
    assert!(!report.text().contains("heal off"));
    let dir = std::env::temp_dir().join(format!("chaos-report-test-{}", std::process::id()));
    let files = report.write_to(&dir).unwrap();
    for f in [&files.json, &files.text, &files.markdown, &files.svg] {
        assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A lost session is its own class: not degraded, not a hard failure, and
/// the four rates still add up to 1.
#[test]
fn a_lost_session_is_counted_as_signed_out() {
    let rec = Recorder::new();
    for (i, outcome) in [
        Outcome::Success,
        Outcome::SignedOut,
        Outcome::Degraded,
        Outcome::HardFailure(FailureKind::ServerError),
    ]
    .into_iter()
    .enumerate()
    {
        rec.record(runs::HEAL_ON, "dashboard", ms(i as u64), ms(1), outcome);
    }
    let s = rec.summary(runs::HEAL_ON).overall;
    assert_eq!((s.success, s.degraded, s.signed_out), (1, 1, 1));
    assert_eq!(s.hard_failures.total(), 1);
    assert_eq!(s.signed_out_rate, 0.25);
    let sum = s.success_rate + s.degraded_rate + s.signed_out_rate + s.hard_failure_rate;
    assert!((sum - 1.0).abs() < 1e-12, "{sum}");
}

/// `n` first tries of `step`, the first `ok` of them hidden, the rest
/// failed; every failed one struck by an `upstream_reset` fault.
fn tries(step: &'static str, n: usize, ok: usize) -> (Vec<TryRecord>, Vec<Fault>) {
    let mut tries = Vec::new();
    let mut faults = Vec::new();
    for i in 0..n {
        let tag = format!("{step}-{i}");
        let verdict = if i < ok {
            Verdict::Hidden
        } else {
            Verdict::Failed
        };
        if verdict == Verdict::Failed {
            faults.push(Fault {
                id: i as u64,
                kind: "upstream_reset",
                at: Duration::ZERO,
                target: Target::Request(tag.clone()),
            });
        }
        tries.push(TryRecord {
            tag,
            step,
            attempt: 1,
            started: Duration::ZERO,
            ended: ms(1),
            verdict,
        });
    }
    (tries, faults)
}

/// A heal run of `n` tutor first tries of which `ok` succeeded.
fn tutor_run(n: usize, ok: usize) -> RunReport {
    let rec = Recorder::new();
    for _ in 0..n {
        rec.record(runs::HEAL_ON, "tutor", ms(0), ms(5), Outcome::Success);
    }
    let (tries, faults) = tries("tutor", n, ok);
    let judged = judge(&faults, &tries, &[]);
    RunReport::new(rec.summary(runs::HEAL_ON), Integrity::default()).with_ledger(&tries, &judged)
}

#[test]
fn first_tries_and_faults_come_from_the_ledger_and_a_loss_is_said_plainly() {
    let on = tutor_run(200, 120);
    assert!((on.first_try_success_rate - 0.6).abs() < 1e-9);
    assert!((on.steps["tutor"].first_try_success_rate - 0.6).abs() < 1e-9);
    assert_eq!(on.steps["tutor"].first_try_causes["upstream_reset"], 80);
    assert_eq!(on.faults["upstream_reset"].injected, 80);
    assert_eq!(on.faults["upstream_reset"].failed, 80);
    assert_eq!(on.faults_hidden_rate, 0.0);
    let off = tutor_run(200, 180);
    let mut report = report(&filled());
    report.heal_on = Some(on.clone());
    report.heal_off = Some(off.clone());
    let text = report.text();
    assert!(text.contains("First try, per journey step"), "{text}");
    assert!(text.contains("upstream_reset 80"), "{text}");
    assert!(text.contains("-30.0 pts, HEALING LOSES"), "{text}");
    // A difference chance explains is not called a loss.
    report.heal_off = Some(tutor_run(200, 122));
    assert!(report.text().contains("-1.0 pts, within noise"));
    // Nor is one measured on a handful of tries.
    report.heal_on = Some(tutor_run(3, 2));
    report.heal_off = Some(tutor_run(29, 28));
    assert!(
        report.text().contains("too few to tell"),
        "{}",
        report.text()
    );
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for key in [
        "/heal_on/first_try_success_rate",
        "/heal_on/steps/tutor/first_try_success_rate",
        "/heal_on/faults/upstream_reset/injected",
        "/heal_on/faults/upstream_reset/hidden",
        "/heal_on/faults/upstream_reset/degraded",
        "/heal_on/faults/upstream_reset/failed",
        "/heal_on/faults_hidden_rate",
        "/heal_on/peak_rss_bytes",
    ] {
        assert!(v.pointer(key).is_some(), "report.json lacks {key}");
    }
}

#[test]
fn several_seeds_report_the_mean_and_the_range() {
    let seeds = [tutor_run(100, 50), tutor_run(100, 70), tutor_run(100, 90)];
    let mean = chaos::report::mean(&seeds).unwrap();
    assert!((mean.first_try_success_rate - 0.7).abs() < 1e-9);
    assert_eq!(mean.faults["upstream_reset"].injected, 30);
    let mut report = report(&filled());
    report.heal_on = Some(mean);
    report.heal_off = None;
    report.meta.seeds = vec![1, 2, 3];
    report.runs = seeds
        .iter()
        .zip(1..)
        .map(|(r, seed)| SeedRuns {
            seed,
            heal_on: Some(r.clone()),
            heal_off: None,
        })
        .collect();
    let text = report.text();
    assert!(text.contains("70.00% (50.0–90.0)"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v.pointer("/runs").unwrap().as_array().unwrap().len(), 3);
    assert!(
        v.pointer("/runs/2/heal_on/first_try_success_rate")
            .is_some()
    );
}
