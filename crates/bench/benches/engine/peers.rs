//! The peers' glue: what it takes to drive tower, seatbelt and tower-resilience the same way.

use super::*;

// ---------------------------------------------------------------------------
// tower's own retry: a Policy with at most 2 retries and no wait
// ---------------------------------------------------------------------------

/// tower's `Retry` clones the policy per call, so the counter is per call.
#[derive(Clone, Copy)]
pub(crate) struct TowerAttempts {
    pub(crate) retries_left: u32,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for TowerAttempts {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.retries_left > 0 => {
                self.retries_left -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

// ---------------------------------------------------------------------------
// Contenders
// ---------------------------------------------------------------------------

pub(crate) fn noop_observer() -> Arc<dyn selfheal::observe::Observer> {
    Arc::new(|event: &Event<'_>| {
        black_box(event);
    })
}

/// A `tick` clock without a runtime (seatbelt needs one; zero delays never
/// touch its timers). The driver must outlive the clock's users.
pub(crate) fn seatbelt_clock() -> (tick::Clock, tick::runtime::ClockDriver) {
    tick::runtime::InactiveClock::default().activate(Waker::noop().clone())
}

pub(crate) fn seatbelt_recovery<T>(out: &Result<T, Flake>) -> seatbelt::RecoveryInfo {
    match out {
        Ok(_) => seatbelt::RecoveryInfo::never(),
        Err(_) => seatbelt::RecoveryInfo::retry(),
    }
}

/// A seatbelt retry (3 attempts in all, constant zero delay, no jitter) around
/// `op`, through seatbelt's native (`layered`) service API.
pub(crate) fn seatbelt_retry<Op, Fut>(
    clock: &tick::Clock,
    op: Op,
) -> impl layered::Service<u64, Out = Result<u64, Flake>> + use<Op, Fut>
where
    Op: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, Flake>> + Send + 'static,
{
    let context = seatbelt::ResilienceContext::<u64, Result<u64, Flake>>::new(clock);
    let layer = seatbelt::retry::Retry::layer("bench", &context)
        .clone_input()
        .recovery_with(|out: &Result<u64, Flake>, _| seatbelt_recovery(out))
        .max_retry_attempts(2)
        .backoff(seatbelt::retry::Backoff::Constant)
        .base_delay(Duration::ZERO)
        .use_jitter(false);
    layered::Layer::layer(&layer, layered::Execute::new(op))
}

/// tower-resilience's retry: 3 attempts in all, fixed zero backoff.
pub(crate) fn tower_resilience_retry<S>(
    service: S,
) -> tower_resilience::retry::Retry<S, u64, u64, Flake> {
    let layer = tower_resilience::retry::RetryLayer::<u64, u64, Flake>::builder()
        .max_attempts(3)
        .fixed_backoff(Duration::ZERO)
        .build();
    tower::Layer::layer(&layer, service)
}

/// Drives a tower service for one request: `poll_ready`, then `call`.
#[inline(always)]
pub(crate) async fn tower_call<S, Req>(
    service: &mut S,
    request: Req,
) -> Result<S::Response, S::Error>
where
    S: tower::Service<Req>,
{
    use tower::ServiceExt;
    service.ready().await?.call(request).await
}

/// Checks the output of case (a) and (c) contenders.
pub(crate) fn is_42(output: &Option<u64>) -> bool {
    *output == Some(INPUT)
}

/// Checks the output of case (b) contenders: a success, and the attempt
/// counter back at an even value (exactly two attempts were made).
pub(crate) fn failed_once(output: &Option<u64>) -> bool {
    output.is_some() && FLAKY_ATTEMPTS.load(Ordering::Relaxed).is_multiple_of(2)
}
