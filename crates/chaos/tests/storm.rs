//! A short open-loop storm (6 s, the AI upstream down from 1 s to 5 s),
//! with no healing and with selfheal's defaults (budget, throttle, breaker):
//! the same arrivals (same seed) in both.
//!
//! What it shows, as directions rather than timings: without healing every
//! request calls the upstream at least once, outage or not; with healing
//! retries never multiply the load (at most 1.1 calls per request), and
//! the users get fewer failures (truthful "temporarily unavailable" pages
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
async fn selfheal_never_amplifies_an_outage_and_answers_truthfully() {
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
    // selfheal's defaults (budget, throttle, breaker): retries never
    // multiply the load on a dead upstream — at most 1.1 calls per request
    // over the run (issue 15's bound; three attempts each would be 3). Whether
    // the breaker also cuts first attempts within this 4 s outage depends on
    // timing (it did on a quiet machine, not under CI's load), so it is the
    // CLI's storm table that shows it, not an assertion here.
    assert!(
        breaker.upstream_calls_per_request <= 1.1,
        "{} calls per request with selfheal's defaults",
        breaker.upstream_calls_per_request
    );
    // And the users: error pages without healing, truthful ones with it.
    assert_eq!(no_healing.degraded_rate_down, 0.0);
    assert!(breaker.degraded_rate_down > 0.0);
    assert!(breaker.failed_rate_down < no_healing.failed_rate_down);
}
