//! The overload suite, short (about 55 s of wall clock, everything on
//! loopback): what must hold even on a loaded CI machine, as directions
//! and ratios rather than timings.
//!
//! * Metastability (naive retries and adaptive selfheal side by side, the
//!   same arrivals, each against its own finite-capacity upstream, the
//!   capacity halved for 5 s): during the trigger the naive client sends
//!   at least twice as many upstream calls per user request as adaptive
//!   selfheal; after it, adaptive selfheal's goodput comes back to at least
//!   80 % of what it was before, within the run.
//! * App overload (cozmic as a child process, logins at 3× its peak): with
//!   the adaptive concurrency limit some requests are shed (the limit's own
//!   count, on `/metrics`), and the p99 of the logins it accepts is below
//!   the p99 without the limit.

use std::time::Duration;

use chaos::driver::overload::{self, AppOverloadOptions, AppOverloadRun};
use chaos::overload::figures::Schedule;
use chaos::overload::metastable::{self, ClientVariant, MetastableOptions, MetastableRun};

/// The two scenarios one after the other: each loads the machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn short(variant: ClientVariant) -> MetastableOptions {
    let mut options = MetastableOptions::full(variant, 15);
    options.schedule = Schedule {
        duration: Duration::from_secs(16),
        warmup: Duration::from_secs(2),
        trigger_start: Duration::from_secs(4),
        trigger_end: Duration::from_secs(9),
    };
    options
}

/// Goodput over the last `secs` seconds of the run, from its curve.
fn goodput_at_the_end(run: &MetastableRun, secs: usize) -> f64 {
    let curve = &run.goodput_per_second;
    curve[curve.len() - secs..].iter().sum::<f64>() / secs as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_retries_amplify_the_trigger_and_adaptive_selfheal_recovers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (naive, adaptive) = (short(ClientVariant::Naive), short(ClientVariant::Adaptive));
    let (naive, adaptive) = tokio::join!(metastable::run(&naive), metastable::run(&adaptive));
    let (naive, adaptive) = (naive.unwrap(), adaptive.unwrap());
    println!("{naive:#?}\n{adaptive:#?}");
    assert_eq!(naive.requests, adaptive.requests, "the same arrivals");
    assert!(adaptive.goodput_before > 40.0, "{adaptive:?}");
    // Retries multiply the load exactly when the upstream can least take it.
    assert!(
        naive.calls_per_request_during >= 2.0 * adaptive.calls_per_request_during,
        "naive {:.2} calls per request during the trigger, adaptive {:.2}",
        naive.calls_per_request_during,
        adaptive.calls_per_request_during
    );
    // Adaptive selfheal comes back once the trigger is gone.
    let end = goodput_at_the_end(&adaptive, 4);
    assert!(
        end >= 0.8 * adaptive.goodput_before,
        "adaptive: {end:.1}/s in the last 4 s against {:.1}/s before",
        adaptive.goodput_before
    );
}

async fn apps() -> [AppOverloadRun; 2] {
    let mut options = AppOverloadOptions::full(env!("CARGO_BIN_EXE_chaos").into(), 15);
    options.unloaded = Duration::from_secs(1);
    options.peak = Duration::from_secs(3);
    // The limit starts at 64 and comes down a window (1 s) at a time: the
    // figures are from the overload's 5th second.
    options.overload = Duration::from_secs(10);
    options.rounds = 1;
    options.settle = Duration::from_secs(4);
    let runs = overload::run(&options).await.unwrap();
    println!("{runs:#?}");
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_sheds_the_excess_and_keeps_accepted_latency_down() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let [unlimited, limited] = apps().await;
    assert!(!unlimited.limit && limited.limit);
    assert_eq!(unlimited.offered_rate, limited.offered_rate);
    assert_eq!(unlimited.peaks.len(), 2, "{unlimited:?}");
    assert!(unlimited.peak_goodput > 0.0, "{unlimited:?}");
    assert!(limited.goodput > 0.0, "{limited:?}");
    assert_eq!(unlimited.shed_by_limit.unwrap_or(0), 0);
    assert!(
        limited.shed_by_limit.is_some_and(|n| n > 0),
        "the limit shed nothing: {limited:?}"
    );
    assert!(
        limited.accepted_p99_ms < unlimited.accepted_p99_ms,
        "accepted p99 {:.0} ms with the limit, {:.0} ms without",
        limited.accepted_p99_ms,
        unlimited.accepted_p99_ms
    );
}
