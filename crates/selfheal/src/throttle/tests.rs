use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::observe::testing::Recorder;
use crate::retry::{Policy, SeededRandom};

fn throttle(events: &Recorder) -> AdaptiveThrottle {
    AdaptiveThrottle::builder("dep")
        .with_observer(events.observer())
        .with_random(Arc::new(SeededRandom::new(3)))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn nothing_is_throttled_while_more_than_one_call_in_k_is_accepted() {
    let events = Recorder::new();
    let t = throttle(&events);
    // 60 % accepted: 100 − 2·60 < 0.
    for i in 0..100 {
        assert!(t.admit());
        t.record(i % 5 < 3);
    }
    assert_eq!(t.rejection_probability(), 0.0);
    assert!(events.lines().is_empty(), "{:?}", events.lines());
}

#[tokio::test(start_paused = true)]
async fn the_probability_follows_the_books_formula_and_is_reported() {
    let events = Recorder::new();
    let t = throttle(&events);
    // 100 requests, 20 accepted: (100 − 40) / 101.
    for i in 0..100 {
        t.record(i % 5 == 0);
    }
    let p = t.rejection_probability();
    assert!((p - 60.0 / 101.0).abs() < 1e-4, "{p}");
    assert_eq!(events.lines(), ["throttle dep on"]);
    let snapshot = t.snapshot();
    assert_eq!((snapshot.requests, snapshot.accepts), (100, 20));
    // Refusals are drawn against it, and reported.
    let admitted = (0..1000).filter(|_| t.admit()).count();
    assert!((300..500).contains(&admitted), "{admitted}");
    assert!(
        events
            .lines()
            .iter()
            .filter(|l| *l == "throttled dep")
            .count()
            > 500
    );
}

#[tokio::test(start_paused = true)]
async fn below_the_minimum_of_requests_nothing_is_throttled() {
    let events = Recorder::new();
    let t = throttle(&events);
    for _ in 0..9 {
        t.record(false);
    }
    assert!(t.admit());
    assert_eq!(t.rejection_probability(), 0.0);
    t.record(false);
    assert!(t.rejection_probability() > 0.9);
}

#[tokio::test(start_paused = true)]
async fn throttling_ends_as_the_window_slides_past_the_failures() {
    let events = Recorder::new();
    let t = throttle(&events);
    for _ in 0..50 {
        t.record(false);
    }
    assert!(t.rejection_probability() > 0.9);
    tokio::time::advance(Duration::from_secs(31)).await;
    // The next admission recomputes: the window is empty.
    assert!(t.admit());
    assert_eq!(t.rejection_probability(), 0.0);
    assert_eq!(events.lines(), ["throttle dep on", "throttle dep off"]);
}

#[tokio::test(start_paused = true)]
async fn call_refuses_without_running_and_records_outcomes() {
    let events = Recorder::new();
    let t = throttle(&events);
    let mut refused = 0;
    let mut ran = 0;
    for _ in 0..200 {
        match t
            .call(|| {
                ran += 1;
                async { Err::<(), _>("503") }
            })
            .await
        {
            Err(ThrottleError::Throttled(e)) => {
                assert!(e.to_string().starts_with("throttle 'dep' refused the call"));
                refused += 1;
            }
            Err(ThrottleError::Inner("503")) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ran + refused, 200);
    assert!(refused > 150, "{refused}");
}

/// The gate: evidence at the extremes at once, none from a small window
/// near one accept in `K`; at confidence 0 it is the book's `p > 0`.
#[test]
fn evidence_is_the_wilson_bound_below_one_in_k() {
    let z = Builder::DEFAULT_CONFIDENCE;
    // An outage is evidence from the tenth call.
    assert!(evidence(10, 0, 2000, z));
    // 20 calls: 3 accepts is evidence, 4 is not (upper bounds 0.49, 0.53).
    assert!(evidence(20, 3, 2000, z));
    assert!(!evidence(20, 4, 2000, z));
    // 45 % accepted: not evidence at 300 calls, evidence at 1,000.
    assert!(!evidence(300, 135, 2000, z));
    assert!(evidence(1000, 450, 2000, z));
    // Confidence 0: exactly `requests − K·accepts > 0`.
    for requests in 1..60 {
        for accepts in 0..=requests {
            assert_eq!(
                evidence(requests, accepts, 2000, 0.0),
                requests > 2 * accepts,
                "{accepts} / {requests}"
            );
        }
    }
}

/// A dependency that accepts a share of its calls at random, about 20
/// calls in the window (one every 1.5 s), 2,000 calls: how many the throttle
/// refuses, and how many times it starts refusing.
async fn at_random(confidence: f64, multiplier: f64, accept: f64) -> (u32, usize) {
    let events = Recorder::new();
    let t = AdaptiveThrottle::builder("dep")
        .with_observer(events.observer())
        .with_random(Arc::new(SeededRandom::new(3)))
        .with_multiplier(multiplier)
        .with_confidence(confidence)
        .build()
        .unwrap();
    let coin = SeededRandom::new(11);
    let mut refused = 0;
    for _ in 0..2000 {
        tokio::time::advance(Duration::from_millis(1500)).await;
        if t.admit() {
            t.record(coin.next_f64() < accept);
        } else {
            refused += 1;
        }
    }
    let starts = events
        .lines()
        .iter()
        .filter(|l| *l == "throttle dep on")
        .count();
    (refused, starts)
}

/// Half of the calls accepted at random: the book's throttle refuses by
/// noise (190 of 2,000); the default (nearly) never does (10).
#[tokio::test(start_paused = true)]
async fn one_accept_in_k_at_random_is_not_throttled_by_noise() {
    let z = Builder::DEFAULT_CONFIDENCE;
    let (book, _) = at_random(0.0, 2.0, 0.5).await;
    let (default, _) = at_random(z, 2.0, 0.5).await;
    assert!(book > 150, "the book's throttle refused {book} of 2000");
    assert!(default < 25, "the default refused {default} of 2000");
    // A clear shortfall at the same pace is still throttled, starting less
    // often than the book's (once on, it stays on while the book does).
    let (refused, starts) = at_random(z, 2.0, 0.2).await;
    let (_, book_starts) = at_random(0.0, 2.0, 0.2).await;
    assert!(refused > 300, "{refused}");
    assert!(
        starts * 2 < book_starts,
        "{starts} starts, the book {book_starts}"
    );
}

/// An outage is throttled as by the book whatever `K`: a window without an
/// accept needs no more evidence (the Wilson bound alone would wait for 36
/// calls with `K = 5`, more than this window ever holds).
#[tokio::test(start_paused = true)]
async fn an_outage_is_throttled_as_by_the_book_whatever_k() {
    for k in [1.1, 2.0, 3.0, 5.0] {
        let (default, _) = at_random(Builder::DEFAULT_CONFIDENCE, k, 0.0).await;
        let (book, _) = at_random(0.0, k, 0.0).await;
        assert_eq!(default, book, "K = {k}");
        assert!(book > 900, "K = {k}: {book}");
    }
}

/// Where the dependency really accepts less than one call in `K`, the
/// default refuses what the book does.
#[tokio::test(start_paused = true)]
async fn a_clear_shortfall_is_throttled_as_the_book_says() {
    let events = Recorder::new();
    let t = throttle(&events);
    // 100 requests, 30 accepted: (100 − 60) / 101.
    for i in 0..100 {
        t.record(i % 10 < 3);
    }
    let p = t.rejection_probability();
    assert!((p - 40.0 / 101.0).abs() < 1e-4, "{p}");
    assert_eq!(events.lines(), ["throttle dep on"]);
}

#[test]
fn bad_settings_are_rejected() {
    for confidence in [-0.1, 10.1, f64::NAN, f64::INFINITY] {
        assert!(
            AdaptiveThrottle::builder("x")
                .with_confidence(confidence)
                .build()
                .is_err()
        );
    }
    assert!(
        AdaptiveThrottle::builder("x")
            .with_multiplier(0.9)
            .build()
            .is_err()
    );
    assert!(
        AdaptiveThrottle::builder("x")
            .with_multiplier(f64::NAN)
            .build()
            .is_err()
    );
    assert!(
        AdaptiveThrottle::builder("x")
            .with_window(Duration::from_millis(1), 10)
            .build()
            .is_err()
    );
    assert!(
        AdaptiveThrottle::builder("x")
            .with_window(Duration::from_secs(1), 0)
            .build()
            .is_err()
    );
}

/// The engine side: a policy with a throttle retries a flaky operation,
/// and stops retrying (reason `throttled`) once the dependency refuses
/// most of what it is sent; first attempts are never refused.
#[tokio::test(start_paused = true)]
async fn the_engine_cuts_retries_the_throttle_refuses_but_never_first_attempts() {
    let events = Recorder::new();
    let t = throttle(&events);
    let policy = Policy::default()
        .with_backoff(crate::retry::Backoff::immediate())
        .without_budget()
        .with_throttle(t.clone())
        .with_observer(events.observer())
        .with_name("op");
    let calls = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..100 {
        let _ = policy
            .retry(|| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Err::<(), _>("down") }
            })
            .await;
    }
    let calls = calls.load(std::sync::atomic::Ordering::Relaxed);
    // Every logical call made its first attempt; retries were cut.
    assert!((100..=115).contains(&calls), "{calls}");
    let lines = events.lines();
    assert!(lines.iter().filter(|l| l.ends_with("(throttled)")).count() > 80);
}

/// While the server sheds load, a policy with a throttle does not retry.
#[tokio::test(start_paused = true)]
async fn the_servers_shedding_suppresses_retries() {
    let events = Recorder::new();
    let policy = Policy::default()
        .with_backoff(crate::retry::Backoff::immediate())
        .with_throttle(throttle(&events))
        .with_observer(events.observer())
        .with_name("op");
    crate::throttle::shed_for(std::time::Duration::from_millis(200));
    let result = policy.retry(|| async { Err::<(), _>("busy") }).await;
    crate::throttle::clear_shedding();
    let error = result.unwrap_err();
    assert_eq!(error.reason(), crate::observe::GiveUpReason::Overloaded);
    assert_eq!(error.attempts(), 1);
}

// ------------------------------------------------------------ coarse clock

/// A throttle and its twin that reads the clock on every outcome.
fn twins() -> (AdaptiveThrottle, AdaptiveThrottle) {
    let build = |exact| {
        AdaptiveThrottle::builder("dep")
            .with_observer(Recorder::new().observer())
            .with_random(Arc::new(SeededRandom::new(3)))
            .with_exact_clock(exact)
            .build()
            .unwrap()
    };
    (build(false), build(true))
}

fn coarse_clock_in_use(t: &AdaptiveThrottle) -> bool {
    t.inner.coarse.load(std::sync::atomic::Ordering::Relaxed) & USABLE != 0
}

fn both(twins: &(AdaptiveThrottle, AdaptiveThrottle), accepted: bool) {
    twins.0.record(accepted);
    twins.1.record(accepted);
}

/// At a high pace accepts skip the clock, and the window still holds what
/// the exact clock would, give or take the 31 accepts the docs allow
/// (counted early, never late: never more than the exact count).
#[tokio::test(start_paused = true)]
async fn at_a_high_pace_accepts_skip_the_clock_and_stay_in_their_window() {
    let twins = twins();
    // 500 calls a second for a minute: 50 every 100 ms.
    for _ in 0..600 {
        for _ in 0..50 {
            both(&twins, true);
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(coarse_clock_in_use(&twins.0));
    assert!(!coarse_clock_in_use(&twins.1));
    let (coarse, exact) = (twins.0.snapshot(), twins.1.snapshot());
    assert!(exact.accepts > 10_000, "{exact:?}");
    assert!(
        coarse.accepts <= exact.accepts && coarse.accepts + 31 >= exact.accepts,
        "{coarse:?} vs {exact:?}"
    );
}

/// The aging the coarse clock must not break: after an idle period the
/// accepts from before it are gone, whether the next outcomes are failures
/// (which must be throttled at once) or accepts (which must count).
#[tokio::test(start_paused = true)]
async fn after_an_idle_period_only_new_outcomes_count() {
    let twins = twins();
    for _ in 0..1000 {
        both(&twins, true);
    }
    assert!(coarse_clock_in_use(&twins.0));
    tokio::time::advance(Duration::from_secs(600)).await;
    for _ in 0..20 {
        both(&twins, false);
    }
    for t in [&twins.0, &twins.1] {
        let snapshot = t.snapshot();
        assert_eq!((snapshot.requests, snapshot.accepts), (20, 0));
        assert!(t.rejection_probability() > 0.9);
        assert!(!t.admit() || !t.admit() || !t.admit());
    }

    let twins = self::twins();
    for _ in 0..1000 {
        both(&twins, true);
    }
    tokio::time::advance(Duration::from_secs(600)).await;
    for _ in 0..100 {
        both(&twins, true);
    }
    for _ in 0..20 {
        both(&twins, false);
    }
    let (coarse, exact) = (twins.0.snapshot(), twins.1.snapshot());
    assert_eq!((exact.requests, exact.accepts), (120, 100));
    // At most 31 accepts after the pause went to the slice before it.
    assert!(coarse.accepts >= 100 - 31, "{coarse:?}");
    assert_eq!(coarse.requests - coarse.accepts, 20);
    assert_eq!(twins.0.rejection_probability(), 0.0);
    assert_eq!(twins.1.rejection_probability(), 0.0);
}

/// When traffic slows down, the coarse clock is dropped within 32 outcomes
/// and every outcome reads the clock again: the window is then exact.
#[tokio::test(start_paused = true)]
async fn when_traffic_slows_down_every_outcome_reads_the_clock_again() {
    let twins = twins();
    for _ in 0..1000 {
        both(&twins, true);
    }
    assert!(coarse_clock_in_use(&twins.0));
    // One call a second for 70 s.
    for i in 0..70 {
        tokio::time::advance(Duration::from_secs(1)).await;
        both(&twins, true);
        if i >= 32 {
            assert!(!coarse_clock_in_use(&twins.0), "call {i}");
        }
    }
    assert_eq!(twins.0.snapshot(), twins.1.snapshot());
}

/// A dependency that was refused most calls is admitted again once its
/// failures have left the window (within one bucket of it), with accepts
/// recorded by the coarse clock before and after.
#[tokio::test(start_paused = true)]
async fn a_recovered_dependency_is_admitted_again_one_window_later() {
    let events = Recorder::new();
    let t = throttle(&events);
    for _ in 0..1000 {
        t.record(true);
    }
    assert!(coarse_clock_in_use(&t));
    // It goes down for 3 s: it fails everything it is sent.
    tokio::time::advance(Duration::from_secs(30)).await;
    for _ in 0..30 {
        for _ in 0..100 {
            if t.admit() {
                t.record(false);
            }
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(
        t.rejection_probability() > 0.9,
        "{}",
        t.rejection_probability()
    );
    // It is back, but sent only a trickle while refused; after the window
    // (30 s) plus one bucket (3 s), the failures are gone.
    tokio::time::advance(Duration::from_secs(33)).await;
    assert!(t.admit());
    assert_eq!(t.rejection_probability(), 0.0);
    for _ in 0..1000 {
        assert!(t.admit());
        t.record(true);
    }
    assert!(coarse_clock_in_use(&t));
    // A few failures now: the window holds the new accepts only, so no
    // refusal.
    for _ in 0..20 {
        t.record(false);
    }
    assert_eq!(t.rejection_probability(), 0.0);
    let snapshot = t.snapshot();
    assert_eq!((snapshot.requests, snapshot.accepts), (1020, 1000));
    let changes: Vec<String> = events
        .lines()
        .into_iter()
        .filter(|l| l != "throttled dep")
        .collect();
    assert_eq!(changes, ["throttle dep on", "throttle dep off"]);
}
