//! A short open-loop storm (6 s, the AI upstream down from 1 s to 5 s),
//! with no healing and with the retry budget and the breaker: the same
//! arrivals (same seed) in both.
//!
//! What it shows, as directions rather than timings: without healing every
//! request calls the upstream at least once, outage or not; with the
//! breaker the upstream gets fewer calls per second while it is down, and
//! the users fewer failures (truthful "temporarily unavailable" pages
//! instead).

use std::time::Duration;

use chaos::driver::AppMode;
use chaos::driver::storm::{self, StormOptions};
use chaos::progress::Progress;
use chaos::report::{OpenLoopStorm, Recorder, StormVariant};

async fn storm(variant: StormVariant) -> OpenLoopStorm {
    let options = StormOptions {
        variant,
        rate: 40.0,
        duration: Duration::from_secs(6),
        outage_start: Duration::from_secs(1),
        outage_end: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        sessions: 4,
        max_in_flight: 400,
        seed: 6,
        database_url: None,
        app: AppMode::InProcess,
    };
    let measured = storm::run(options, &Recorder::new(), &Progress::hidden())
        .await
        .unwrap();
    println!("{measured:#?}");
    measured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_spares_the_upstream_that_no_healing_hammers() {
    let no_healing = storm(StormVariant::NoHealing).await;
    let breaker = storm(StormVariant::BudgetBreaker).await;
    // The same schedule: the same arrivals.
    assert_eq!(no_healing.requests, breaker.requests);
    assert!(no_healing.requests > 100, "{}", no_healing.requests);
    // No healing: one call (at least) per request.
    assert!(
        no_healing.upstream_calls >= no_healing.requests,
        "{} calls for {} requests",
        no_healing.upstream_calls,
        no_healing.requests
    );
    // The breaker: fewer calls per second while the upstream is down.
    assert!(
        breaker.upstream_calls_per_sec_down < no_healing.upstream_calls_per_sec_down,
        "breaker {} calls/s vs no healing {} calls/s",
        breaker.upstream_calls_per_sec_down,
        no_healing.upstream_calls_per_sec_down
    );
    // And the users: error pages without healing, truthful ones with it.
    assert_eq!(no_healing.degraded_rate_down, 0.0);
    assert!(breaker.degraded_rate_down > 0.0);
    assert!(breaker.failed_rate_down < no_healing.failed_rate_down);
}
