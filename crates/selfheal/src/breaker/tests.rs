//! Behaviour of the breaker, on tokio's paused clock.

use std::future::pending;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use tokio::time::advance;

use super::*;
use crate::observe::{Event, Observer};

/// Records every breaker event as `(from, to)` for transitions and
/// `retry_in` for rejections.
#[derive(Default)]
struct Recorder {
    transitions: Mutex<Vec<(BreakerState, BreakerState)>>,
    rejections: Mutex<Vec<Duration>>,
}

impl Recorder {
    fn observer(self: &Arc<Self>) -> Arc<dyn Observer> {
        let this = Arc::clone(self);
        Arc::new(move |event: &Event<'_>| match *event {
            Event::BreakerTransition { from, to, .. } => {
                this.transitions.lock().unwrap().push((from, to));
            }
            Event::BreakerRejected { retry_in, .. } => {
                this.rejections.lock().unwrap().push(retry_in);
            }
            _ => {}
        })
    }

    fn transitions(&self) -> Vec<(BreakerState, BreakerState)> {
        self.transitions.lock().unwrap().clone()
    }

    fn rejections(&self) -> Vec<Duration> {
        self.rejections.lock().unwrap().clone()
    }
}

use BreakerState::{Closed, HalfOpen, Open as Opened};

fn record(breaker: &Breaker, successes: u32, failures: u32) {
    for _ in 0..successes {
        breaker.try_acquire().expect("admitted").success();
    }
    for _ in 0..failures {
        breaker.try_acquire().expect("admitted").failure();
    }
}

/// A ratio breaker with the defaults and a recorder.
fn ratio_breaker() -> (Breaker, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let breaker = Breaker::builder("api")
        .with_observer(recorder.observer())
        .build()
        .unwrap();
    (breaker, recorder)
}

/// Opens `breaker` (default ratio settings) with 20 failures.
fn trip(breaker: &Breaker) {
    record(breaker, 0, 20);
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn opens_when_the_failure_ratio_crosses_the_threshold() {
    let (breaker, recorder) = ratio_breaker();
    record(&breaker, 11, 9);
    advance(Duration::from_secs(10)).await;
    // 10 failures out of 21: still under half.
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Closed);
    let snapshot = breaker.snapshot();
    assert_eq!((snapshot.failures, snapshot.total), (10, 21));
    // 11 out of 22 is half: open.
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Opened);
    assert_eq!(recorder.transitions(), [(Closed, Opened)]);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_minimum_throughput() {
    let (breaker, recorder) = ratio_breaker();
    // 19 failures out of 19 is a 100% ratio, but not enough calls to judge.
    record(&breaker, 0, 19);
    assert_eq!(breaker.state(), Closed);
    assert!(recorder.transitions().is_empty());
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn old_buckets_age_out_of_the_window() {
    let (breaker, _) = ratio_breaker();
    record(&breaker, 0, 19);
    // Failures 31 s ago no longer count...
    advance(Duration::from_secs(31)).await;
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Closed);
    assert_eq!(breaker.snapshot().total, 1);

    // ...while failures 20 s ago still do.
    record(&breaker, 0, 18);
    advance(Duration::from_secs(20)).await;
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_with_the_time_until_the_next_probe() {
    let (breaker, recorder) = ratio_breaker();
    trip(&breaker);
    advance(Duration::from_millis(1_800)).await;

    let open = breaker.try_acquire().unwrap_err();
    assert_eq!(open.retry_in(), Duration::from_millis(3_200));
    assert_eq!(open.state(), Opened);
    assert_eq!(open.breaker(), "api");
    assert_eq!(
        open.to_string(),
        "circuit breaker 'api' is open; next probe in 3.2s"
    );
    assert_eq!(recorder.rejections(), [Duration::from_millis(3_200)]);

    let refused = breaker.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(refused.unwrap_err().is_open());
    let snapshot = breaker.snapshot();
    assert_eq!(snapshot.state, Opened);
    assert_eq!(snapshot.retry_in, Some(Duration::from_millis(3_200)));
    assert_eq!((snapshot.failures, snapshot.total), (20, 20));
    // Rejections are not transitions.
    assert_eq!(recorder.transitions(), [(Closed, Opened)]);
}

#[tokio::test(start_paused = true)]
async fn probe_success_closes_and_resets_the_window() {
    let (breaker, recorder) = ratio_breaker();
    trip(&breaker);
    advance(Duration::from_millis(4_999)).await;
    assert!(breaker.try_acquire().is_err(), "the break is not over");
    advance(Duration::from_millis(1)).await;

    let probe = breaker
        .try_acquire()
        .expect("first caller after the break probes");
    assert!(probe.is_probe());
    assert_eq!(breaker.state(), HalfOpen);
    assert_eq!(breaker.snapshot().probes_in_flight, 1);

    // Only one probe at a time.
    let second = breaker.try_acquire().unwrap_err();
    assert_eq!(second.state(), HalfOpen);
    assert_eq!(second.retry_in(), Duration::ZERO);

    probe.success();
    assert_eq!(breaker.state(), Closed);
    let snapshot = breaker.snapshot();
    assert_eq!((snapshot.failures, snapshot.total), (0, 0));
    assert_eq!(
        recorder.transitions(),
        [(Closed, Opened), (Opened, HalfOpen), (HalfOpen, Closed)]
    );

    // The failures that opened it are forgotten: one more does not reopen it.
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Closed);
    assert!(!breaker.try_acquire().unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens_for_another_break() {
    let (breaker, recorder) = ratio_breaker();
    trip(&breaker);
    advance(Duration::from_secs(5)).await;
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), Opened);
    assert_eq!(
        breaker.try_acquire().unwrap_err().retry_in(),
        Duration::from_secs(5)
    );
    advance(Duration::from_secs(5)).await;
    breaker.try_acquire().unwrap().success();
    assert_eq!(
        recorder.transitions(),
        [
            (Closed, Opened),
            (Opened, HalfOpen),
            (HalfOpen, Opened),
            (Opened, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn several_probes_must_all_succeed() {
    let breaker = Breaker::builder("api")
        .with_consecutive_failures(1)
        .with_half_open_probes(2)
        .build()
        .unwrap();
    record(&breaker, 0, 1);
    advance(Duration::from_secs(5)).await;

    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    assert!(first.is_probe() && second.is_probe());
    assert!(breaker.try_acquire().is_err(), "at most 2 probes in flight");
    first.success();
    assert_eq!(breaker.state(), HalfOpen);
    // One success is in: only one more probe is needed, and it is in flight.
    assert!(breaker.try_acquire().is_err());
    second.success();
    assert_eq!(breaker.state(), Closed);

    // And one failing probe among them reopens it.
    record(&breaker, 0, 1);
    advance(Duration::from_secs(5)).await;
    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    first.success();
    second.failure();
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_mode() {
    let recorder = Arc::new(Recorder::default());
    let breaker = Breaker::builder("smtp")
        .with_trip_mode(TripMode::ConsecutiveFailures)
        .with_observer(recorder.observer())
        .build()
        .unwrap();
    // The default streak is 5; a success breaks it.
    record(&breaker, 0, 4);
    record(&breaker, 1, 4);
    assert_eq!(breaker.state(), Closed);
    assert_eq!(breaker.snapshot().failures, 4);
    // No window: old failures count as long as the streak is unbroken.
    advance(Duration::from_secs(3_600)).await;
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Opened);
    assert_eq!(recorder.transitions(), [(Closed, Opened)]);

    advance(Duration::from_secs(5)).await;
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), Closed);
    // The streak was reset on closing.
    record(&breaker, 0, 4);
    assert_eq!(breaker.state(), Closed);
    record(&breaker, 0, 1);
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot_and_records_nothing() {
    let (breaker, recorder) = ratio_breaker();
    trip(&breaker);
    advance(Duration::from_secs(5)).await;

    let probe = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err());
    drop(probe);
    assert_eq!(breaker.state(), HalfOpen);
    assert_eq!(breaker.snapshot().probes_in_flight, 0);

    // A cancelled call through `call` frees the slot as well.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(1),
        breaker.call(pending::<Result<(), ()>>),
    )
    .await;
    assert!(cancelled.is_err(), "the call timed out");
    assert_eq!(breaker.state(), HalfOpen);

    breaker.try_acquire().expect("the slot is free").success();
    assert_eq!(breaker.state(), Closed);
    assert_eq!(
        recorder.transitions(),
        [(Closed, Opened), (Opened, HalfOpen), (HalfOpen, Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_admitted_before_the_breaker_opened_are_ignored() {
    let (breaker, recorder) = ratio_breaker();
    let late = breaker.try_acquire().unwrap();
    trip(&breaker);
    advance(Duration::from_secs(5)).await;
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), Closed);
    // A call admitted in the previous closed period fails now: ignored.
    late.failure();
    assert_eq!(breaker.snapshot().failures, 0);
    assert_eq!(recorder.transitions().len(), 3);
}

#[derive(Debug, PartialEq)]
enum HttpError {
    BadRequest,
    Unavailable,
}

fn classify(error: &HttpError) -> Verdict {
    match error {
        HttpError::BadRequest => Verdict::Permanent,
        HttpError::Unavailable => Verdict::RetryAfter(Duration::from_secs(1)),
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_do_not_trip_the_breaker() {
    let (breaker, _) = ratio_breaker();
    for _ in 0..50 {
        let result = breaker
            .call_classified(&classify, || async { Err::<(), _>(HttpError::BadRequest) })
            .await;
        assert_eq!(
            result.unwrap_err().into_inner(),
            Some(HttpError::BadRequest)
        );
    }
    assert_eq!(breaker.state(), Closed);
    let snapshot = breaker.snapshot();
    assert_eq!((snapshot.failures, snapshot.total), (0, 50));

    for _ in 0..50 {
        let _ = breaker
            .call_classified(&classify, || async { Err::<(), _>(HttpError::Unavailable) })
            .await;
    }
    assert_eq!(breaker.state(), Opened, "RetryAfter verdicts are failures");
}

#[tokio::test(start_paused = true)]
async fn rejected_ok_values_count_as_failures() {
    /// Responses with a status of 500 and up are failures.
    struct Status;
    impl Classify<u16, ()> for Status {
        fn classify_error(&self, _error: &()) -> Verdict {
            Verdict::Transient
        }
        fn classify_ok(&self, status: &u16) -> Option<Verdict> {
            match status {
                500.. => Some(Verdict::Transient),
                400.. => Some(Verdict::Permanent),
                _ => None,
            }
        }
    }
    let breaker = Breaker::builder("api")
        .with_consecutive_failures(3)
        .build()
        .unwrap();
    for status in [503, 503, 404, 200, 503, 503] {
        let result = breaker
            .call_classified(&Status, || async move { Ok(status) })
            .await;
        assert_eq!(result.unwrap(), status, "the value is returned as it is");
    }
    assert_eq!(breaker.state(), Closed, "404 and 200 broke the streaks");
    let result = breaker.call_classified(&Status, || async { Ok(502) }).await;
    assert_eq!(result.unwrap(), 502);
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn call_counts_every_error_as_a_failure() {
    let breaker = Breaker::builder("api")
        .with_consecutive_failures(2)
        .build()
        .unwrap();
    let ok = breaker.call(|| async { Ok::<_, &str>(7) }).await;
    assert_eq!(ok.unwrap(), 7);
    let error = breaker.call(|| async { Err::<u8, _>("boom") }).await;
    assert_eq!(error.unwrap_err().into_inner(), Some("boom"));
    assert_eq!(breaker.state(), Closed);
    let _ = breaker.call(|| async { Err::<u8, _>("boom") }).await;
    assert_eq!(breaker.state(), Opened);
}

#[tokio::test(start_paused = true)]
async fn clones_share_state() {
    let (breaker, _) = ratio_breaker();
    let clone = breaker.clone();
    trip(&clone);
    assert_eq!(breaker.state(), Opened);
    assert_eq!(breaker.name(), "api");
    assert!(format!("{breaker:?}").contains("Open"));
}

/// Web frameworks need `Send` futures and shareable handles.
#[test]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let breaker = Breaker::new("x");
    send_sync(&breaker);
    send_sync(&breaker.try_acquire().unwrap());
    send_sync(&breaker.call(|| async { Ok::<_, ()>(()) }));
    send_sync(
        &breaker.call_classified(&crate::retry::AlwaysTransient, || async { Ok::<_, ()>(()) }),
    );
    send_sync(&breaker.snapshot());
}

#[test]
fn misconfiguration_is_rejected_with_a_clear_message() {
    fn error(builder: Builder) -> String {
        builder.build().unwrap_err().to_string()
    }
    let builder = || Breaker::builder("db");
    let cases = [
        (
            builder().with_failure_ratio(0.0),
            "failure_ratio must be in (0, 1], got 0",
        ),
        (
            builder().with_failure_ratio(1.5),
            "failure_ratio must be in (0, 1], got 1.5",
        ),
        (
            builder().with_failure_ratio(f64::NAN),
            "failure_ratio must be in (0, 1], got NaN",
        ),
        (
            builder().with_buckets(0),
            "buckets must be between 1 and 1000, got 0",
        ),
        (
            builder().with_buckets(1_001),
            "buckets must be between 1 and 1000, got 1001",
        ),
        (
            builder().with_sampling_duration(Duration::from_micros(999)),
            "sampling_duration must be at least 1ms, got 999µs",
        ),
        (
            builder().with_buckets(1).with_minimum_throughput(70_000),
            "minimum_throughput 70000 can never be reached with 1 buckets (at most 65535)",
        ),
        (
            builder().with_break_duration(Duration::ZERO),
            "break_duration must not be zero",
        ),
        (
            builder().with_half_open_probes(0),
            "half_open_probes must be between 1 and 65535, got 0",
        ),
        (
            builder().with_half_open_probes(70_000),
            "half_open_probes must be between 1 and 65535, got 70000",
        ),
        (
            builder().with_consecutive_failures(0),
            "consecutive_failures must be at least 1",
        ),
    ];
    for (builder, message) in cases {
        assert_eq!(
            error(builder),
            format!("invalid configuration: circuit breaker 'db': {message}")
        );
    }
    // Edges that are valid.
    assert!(builder().with_failure_ratio(1.0).build().is_ok());
    assert!(
        builder()
            .with_sampling_duration(Duration::from_millis(1))
            .with_buckets(1_000)
            .build()
            .is_ok()
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let builder = Breaker::builder("x");
    let debug = format!("{builder:?}");
    for field in [
        "mode: FailureRatio",
        "failure_ratio: 0.5",
        "minimum_throughput: 20",
        "sampling_duration: 30s",
        "buckets: 10",
        "consecutive_failures: 5",
        "break_duration: 5s",
        "half_open_probes: 1",
    ] {
        assert!(debug.contains(field), "{field} missing from {debug}");
    }
    let breaker = Breaker::new("x");
    assert_eq!(breaker.state(), Closed);
}

/// Counts transitions by kind, from any thread.
fn counting_observer() -> (Arc<dyn Observer>, Arc<[AtomicU32; 3]>) {
    let counts = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let seen = Arc::clone(&counts);
    let observer: Arc<dyn Observer> = Arc::new(move |event: &Event<'_>| {
        if let Event::BreakerTransition { to, .. } = *event {
            let index = match to {
                Closed => 0,
                Opened => 1,
                HalfOpen => 2,
            };
            seen[index].fetch_add(1, Ordering::SeqCst);
        }
    });
    (observer, counts)
}

const THREADS: usize = 4;

/// Runs `work` on `THREADS` threads that start together. Inside a runtime,
/// the threads enter its context so that they read its (paused) clock.
fn race(work: impl Fn() + Sync) {
    let handle = tokio::runtime::Handle::try_current().ok();
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                let _runtime = handle.as_ref().map(tokio::runtime::Handle::enter);
                barrier.wait();
                work();
            });
        }
    });
}

/// Outside a runtime (tokio's clock is then the real one, and no mutex
/// serializes the threads), as a server's worker threads would.
#[test]
fn racing_failures_report_one_transition() {
    for mode in [TripMode::FailureRatio, TripMode::ConsecutiveFailures] {
        for _ in 0..200 {
            let (observer, counts) = counting_observer();
            let breaker = Breaker::builder("race")
                .with_trip_mode(mode)
                .with_observer(observer)
                .build()
                .unwrap();
            race(|| {
                for _ in 0..100 {
                    if let Ok(permit) = breaker.try_acquire() {
                        permit.failure();
                    }
                }
            });
            assert_eq!(breaker.state(), Opened);
            assert_eq!(counts[1].load(Ordering::SeqCst), 1, "{mode:?}");
            assert_eq!(counts[0].load(Ordering::SeqCst), 0);
            assert_eq!(counts[2].load(Ordering::SeqCst), 0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn racing_callers_after_the_break_admit_one_probe() {
    for _ in 0..200 {
        let (observer, counts) = counting_observer();
        let breaker = Breaker::builder("race")
            .with_observer(observer)
            .build()
            .unwrap();
        trip(&breaker);
        advance(Duration::from_secs(5)).await;
        let admitted = Mutex::new(Vec::new());
        race(|| {
            for _ in 0..10 {
                if let Ok(permit) = breaker.try_acquire() {
                    admitted.lock().unwrap().push(permit);
                }
            }
        });
        let admitted = admitted.into_inner().unwrap();
        assert_eq!(admitted.len(), 1, "exactly one probe");
        assert!(admitted[0].is_probe());
        assert_eq!(counts[2].load(Ordering::SeqCst), 1, "one Open -> HalfOpen");
    }
}

#[tokio::test(start_paused = true)]
async fn racing_probe_outcomes_report_one_transition() {
    for round in 0..200 {
        let (observer, counts) = counting_observer();
        let breaker = Breaker::builder("race")
            .with_consecutive_failures(1)
            .with_half_open_probes(THREADS as u32)
            .with_observer(observer)
            .build()
            .unwrap();
        record(&breaker, 0, 1);
        advance(Duration::from_secs(5)).await;
        let probes: Mutex<Vec<Permit>> = Mutex::new(
            (0..THREADS)
                .map(|_| breaker.try_acquire().unwrap())
                .collect(),
        );
        // Even rounds: all succeed (one close). Odd rounds: all fail (one reopen).
        race(|| {
            let permit = probes.lock().unwrap().pop().unwrap();
            if round % 2 == 0 {
                permit.success();
            } else {
                permit.failure();
            }
        });
        if round % 2 == 0 {
            assert_eq!(breaker.state(), Closed);
            assert_eq!(counts[0].load(Ordering::SeqCst), 1);
            assert_eq!(counts[1].load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(breaker.state(), Opened);
            assert_eq!(counts[0].load(Ordering::SeqCst), 0);
            assert_eq!(counts[1].load(Ordering::SeqCst), 2);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_on_a_real_runtime_report_one_transition() {
    let (observer, counts) = counting_observer();
    let breaker = Breaker::builder("tasks")
        .with_minimum_throughput(100)
        .with_observer(observer)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    let _ = breaker.call(|| async { Err::<(), _>(()) }).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(breaker.state(), Opened);
    assert_eq!(counts[1].load(Ordering::SeqCst), 1);
}
