use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::observe::testing::{Recorded, Recorder};
use crate::observe::{Event, GiveUpReason};

#[derive(Debug, Clone, PartialEq)]
enum Fail {
    Flaky,
    Fatal,
    SlowDown(Duration),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

fn classify(e: &Fail) -> Verdict {
    match e {
        Fail::Flaky => Verdict::Transient,
        Fail::Fatal => Verdict::Permanent,
        Fail::SlowDown(d) => Verdict::RetryAfter(*d),
    }
}

/// What `recorder` saw so far, a line each (see [`Recorded`]), a retry's
/// with its delay and a give-up's with its message; the record is emptied.
fn take_lines(recorder: &Recorder) -> Vec<String> {
    recorder
        .take()
        .iter()
        .map(|event| match event {
            Recorded::Retry { delay, .. } => format!("{event} {delay:?}"),
            Recorded::GaveUp { message, .. } => format!("{event}: {message}"),
            _ => event.to_string(),
        })
        .collect()
}

fn policy(recorder: &Recorder) -> Policy<fn(&Fail) -> Verdict> {
    Policy::default()
        .with_backoff(Backoff::constant(Duration::from_millis(100)))
        .with_observer(recorder.observer())
        .with_classifier(classify as fn(&Fail) -> Verdict)
}

/// An operation that fails with the given errors, then succeeds.
fn script(
    failures: Vec<Fail>,
) -> (
    Arc<AtomicU32>,
    impl FnMut() -> std::future::Ready<Result<u32, Fail>>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let op = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(match failures.get(n as usize) {
            Some(e) => Err(e.clone()),
            None => Ok(n + 1),
        })
    };
    (calls, op)
}

#[tokio::test(start_paused = true)]
async fn a_success_at_once_reports_nothing() {
    let rec = Recorder::new();
    let (calls, op) = script(vec![]);
    assert_eq!(policy(&rec).retry(op).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(rec.take().is_empty());
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_then_recovered() {
    let rec = Recorder::new();
    let (calls, op) = script(vec![Fail::Flaky, Fail::Flaky]);
    let start = Instant::now();
    let out = policy(&rec).retry_named("save_progress", op).await.unwrap();
    assert_eq!(out, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(
        take_lines(&rec),
        [
            "retry Fail@save_progress #1 100ms",
            "retry Fail@save_progress #2 100ms",
            "recovered save_progress #3",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_tried_exactly_once() {
    let rec = Recorder::new();
    let (calls, op) = script(vec![Fail::Fatal, Fail::Fatal]);
    let err = policy(&rec).retry(op).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(err.reason(), GiveUpReason::Permanent);
    assert!(err.is_permanent());
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.inner(), &Fail::Fatal);
    assert_eq!(
        take_lines(&rec),
        ["gave_up Fail@operation #1 (permanent): Fatal"]
    );
}

#[tokio::test(start_paused = true)]
async fn max_attempts_are_respected() {
    let rec = Recorder::new();
    let (calls, op) = script(vec![Fail::Flaky; 10]);
    let p = policy(&rec).with_max_attempts(4).unwrap();
    let err = p.retry(op).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(err.reason(), GiveUpReason::MaxAttempts);
    assert_eq!(
        err.to_string(),
        "gave up after 4 attempts (the maximum number of attempts was reached): Flaky"
    );
}

#[tokio::test(start_paused = true)]
async fn hints_are_honoured_and_capped() {
    let rec = Recorder::new();
    let p = policy(&rec).with_max_delay(Duration::from_secs(5));

    let (_, op) = script(vec![Fail::SlowDown(Duration::from_secs(2))]);
    let start = Instant::now();
    p.retry(op).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let (_, op) = script(vec![Fail::SlowDown(Duration::from_secs(120))]);
    let start = Instant::now();
    p.retry(op).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "capped at max delay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_the_deadline_gives_up_at_once_with_the_hint() {
    let rec = Recorder::new();
    let p = policy(&rec)
        .with_deadline(Duration::from_secs(10))
        .unwrap()
        .with_max_delay(Duration::from_secs(5));
    // The hint (60 s) is past the deadline even though the cap (5 s) is not:
    // the server said it will not be ready in time.
    let (calls, op) = script(vec![Fail::SlowDown(Duration::from_secs(60))]);
    let start = Instant::now();
    let err = p.retry(op).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(err.reason(), GiveUpReason::Deadline);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_never_exceeded() {
    // Many shapes of policy and operation latency; in each, the call returns
    // no later than the deadline plus the one attempt already running.
    for seed in 0..200u64 {
        let deadline = Duration::from_millis(500 + seed * 37 % 4_000);
        let attempt_time = Duration::from_millis(seed * 13 % 300);
        let backoff = Backoff::exponential(
            Duration::from_millis(1 + seed % 50),
            1.0 + (seed % 4) as f64,
            Duration::from_millis(100 + seed * 7 % 2_000),
        )
        .unwrap()
        .with_jitter(
            [
                Jitter::None,
                Jitter::Full,
                Jitter::Equal,
                Jitter::Decorrelated,
            ][seed as usize % 4],
        );
        let p = Policy::default()
            .with_max_attempts(u32::MAX)
            .unwrap()
            .with_deadline(deadline)
            .unwrap()
            .with_backoff(backoff)
            .with_random(Arc::new(SeededRandom::new(seed)))
            .without_budget()
            .with_observer(Arc::new(|_: &Event<'_>| {}));
        let start = Instant::now();
        let err = p
            .retry(|| async {
                tokio::time::sleep(attempt_time).await;
                Err::<(), _>("down")
            })
            .await
            .unwrap_err();
        let waited = start.elapsed();
        assert_eq!(err.reason(), GiveUpReason::Deadline, "seed {seed}");
        // Every wait ended before the deadline, so the last attempt started
        // before it: the call overran by at most one attempt's duration.
        assert!(
            waited <= deadline + attempt_time,
            "seed {seed}: waited {waited:?} > {deadline:?} + {attempt_time:?}"
        );
        assert!(err.attempts() >= 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_deadline_or_zero_attempts_is_rejected() {
    assert!(Policy::default().with_max_attempts(0).is_err());
    assert!(Policy::default().with_deadline(Duration::ZERO).is_err());
}

async fn outage_attempts(policy: Policy) -> u32 {
    let attempts = Arc::new(AtomicU32::new(0));
    for _ in 0..1_000 {
        let attempts = attempts.clone();
        let _ = policy
            .retry(move || {
                attempts.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Err::<(), _>("connection refused"))
            })
            .await;
    }
    attempts.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn a_budget_stops_a_retry_storm() {
    let quiet = Arc::new(|_: &Event<'_>| {});
    let base = Policy::default()
        .with_max_attempts(3)
        .unwrap()
        .with_observer(quiet);
    let with_budget = outage_attempts(base.clone()).await;
    let without_budget = outage_attempts(base.without_budget()).await;
    println!(
        "1,000 calls, 100% failing: {with_budget} attempts with the budget, {without_budget} without"
    );
    assert!(with_budget <= 1_100, "{with_budget}");
    assert!(with_budget > 1_000, "the floor still allows a few retries");
    assert_eq!(without_budget, 3_000);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_fails_at_once_and_says_so() {
    let rec = Recorder::new();
    let budget = Arc::new(Budget::new(2, 0.1).unwrap());
    let p = policy(&rec).with_budget(budget.clone());
    // Two tokens, threshold one: the first failure leaves exactly one, not above
    // the threshold: no retry.
    let (calls, op) = script(vec![Fail::Flaky; 3]);
    let start = Instant::now();
    let err = p.retry(op).await.unwrap_err();
    assert_eq!(err.reason(), GiveUpReason::Budget);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Successes refill it.
    for _ in 0..20 {
        let (_, op) = script(vec![]);
        p.retry(op).await.unwrap();
    }
    assert!(budget.can_retry());
}

#[test]
fn the_blocking_api_works_from_a_plain_thread() {
    let rec = Recorder::new();
    let p = Policy::default()
        .with_backoff(Backoff::immediate())
        .with_observer(rec.observer())
        .with_classifier(classify as fn(&Fail) -> Verdict);
    let handle = std::thread::spawn(move || {
        let mut n = 0;
        p.retry_blocking_named("send_email", || {
            n += 1;
            if n < 3 { Err(Fail::Flaky) } else { Ok(n) }
        })
    });
    assert_eq!(handle.join().unwrap().unwrap(), 3);
    assert_eq!(take_lines(&rec).last().unwrap(), "recovered send_email #3");
}

#[test]
fn the_blocking_api_sleeps_the_backoff() {
    let p = Policy::default()
        .with_backoff(Backoff::constant(Duration::from_millis(5)))
        .with_max_attempts(2)
        .unwrap()
        .with_observer(Arc::new(|_: &Event<'_>| {}));
    let start = std::time::Instant::now();
    let err = p.retry_blocking(|| Err::<(), _>("nope")).unwrap_err();
    assert_eq!(err.attempts(), 2);
    assert!(start.elapsed() >= Duration::from_millis(5));
}

#[cfg(feature = "tower")]
mod tower_layer {
    use super::*;
    use http::{Response, StatusCode};
    use std::convert::Infallible;
    use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

    /// Retries 503 responses, honouring `Retry-After` seconds.
    #[derive(Clone, Copy, Debug)]
    struct Unavailable;

    impl Classify<Response<()>, Infallible> for Unavailable {
        fn classify_error(&self, _: &Infallible) -> Verdict {
            Verdict::Permanent
        }
        fn classify_ok(&self, res: &Response<()>) -> Option<Verdict> {
            if res.status() != StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            let hint = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map(Duration::from_secs);
            Some(hint.map_or(Verdict::Transient, Verdict::RetryAfter))
        }
    }

    fn upstream(
        statuses: Vec<u16>,
    ) -> (
        Arc<AtomicU32>,
        impl tower::Service<&'static str, Response = Response<()>, Error = Infallible, Future: Send>
        + Clone,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let statuses = Arc::new(statuses);
        let svc = service_fn(move |_req: &'static str| {
            let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
            let status = *statuses.get(n).unwrap_or(&200);
            let mut res = Response::new(());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            if status == 503 {
                res.headers_mut()
                    .insert(http::header::RETRY_AFTER, "1".parse().unwrap());
            }
            std::future::ready(Ok::<_, Infallible>(res))
        });
        (calls, svc)
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_retries_a_503_response_and_honours_its_hint() {
        let rec = Recorder::new();
        let (calls, svc) = upstream(vec![503, 503, 200]);
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(
                Policy::default()
                    .with_name("inventory")
                    .with_observer(rec.observer())
                    .with_classifier(Unavailable),
            ))
            .service(svc);
        let start = Instant::now();
        let res = svc.oneshot("GET /stock").await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(
            take_lines(&rec),
            [
                "retry rejected@inventory #1 1s",
                "retry rejected@inventory #2 1s",
                "recovered inventory #3",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_does_not_retry_a_400() {
        let (calls, svc) = upstream(vec![400, 200]);
        let svc = RetryLayer::new(Policy::default().with_classifier(Unavailable)).layer(svc);
        let res = svc.oneshot("GET /stock").await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_returns_the_last_response_when_it_gives_up() {
        let (calls, svc) = upstream(vec![503; 10]);
        let svc = RetryLayer::new(
            Policy::default()
                .with_max_attempts(3)
                .unwrap()
                .with_observer(Arc::new(|_: &Event<'_>| {}))
                .with_classifier(Unavailable),
        )
        .layer(svc);
        let res = svc.oneshot("GET /stock").await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}

#[test]
fn a_run_told_no_more_attempts_gives_up_with_max_attempts_and_reports_it() {
    let recorder = Recorder::new();
    let policy = Policy::default()
        .with_max_attempts(5)
        .unwrap()
        .with_classifier(classify)
        .with_observer(recorder.observer());
    let mut run: Run<Instant> = Run::new(None);
    let failed: Result<(), Fail> = Err(Fail::Flaky);

    run.attempts = 1;
    let step = policy.on_failure(&mut run, &failed, Verdict::Transient, None, "op");
    assert!(matches!(step, Step::Retry(_)), "{step:?}");

    // The driver learns that the operation must not be repeated.
    run.attempts = 2;
    run.no_more_attempts();
    let step = policy.on_failure(&mut run, &failed, Verdict::Transient, None, "op");
    assert_eq!(
        step,
        Step::GiveUp {
            outcome: (),
            reason: GiveUpReason::MaxAttempts,
            hint: None
        }
    );
    let events = recorder.take();
    assert_eq!(events.len(), 2);
    assert!(
        matches!(
            events[1],
            Recorded::GaveUp {
                reason: GiveUpReason::MaxAttempts,
                ..
            }
        ),
        "{events:?}"
    );
}
