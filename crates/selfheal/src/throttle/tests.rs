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

#[test]
fn bad_settings_are_rejected() {
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
    set_shedding(true);
    let result = policy.retry(|| async { Err::<(), _>("busy") }).await;
    set_shedding(false);
    let error = result.unwrap_err();
    assert_eq!(error.reason(), crate::observe::GiveUpReason::Overloaded);
    assert_eq!(error.attempts(), 1);
}
