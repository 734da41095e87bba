//! How a call already under way waits for an open circuit breaker.
//!
//! The middleware's breaker fails calls fast once a dependency stops
//! answering. A call that was already retrying when it opened was made
//! while the dependency answered and has time left; failing it at once
//! turns a provider's restart into a user's error. This module decides how
//! long such a call waits for the breaker's probes (see
//! `docs/adaptive.md` §2 in the repository).

use std::time::Duration;

use tokio::time::Instant;

use crate::retry::Run;

/// How long, in all, one call may wait for an open breaker.
///
/// A call whose retries trip the breaker (or find it tripped by others)
/// was made while the dependency answered, and has time left: failing it at
/// once turns a blip (a provider restarting for a few seconds) into a
/// user's error. So it waits for the breaker's probes, up to 5 s in all: if
/// the dependency is back, a probe closes the breaker and the call goes on;
/// if not, the call gives up with the circuit open. Only within the call's
/// deadline, leaving room for an attempt after the wait (never without a
/// deadline); only for calls under way: a call that starts while the
/// breaker is open still fails in nanoseconds.
const MAX_BREAKER_WAIT: Duration = Duration::from_secs(5);

/// While the breaker is half-open with its probe taken, waiters look again
/// after a jittered 25–100 ms: the probe's answer may close it any moment.
const HALF_OPEN_POLL: (u64, u64) = (25, 100);

/// The room an attempt needs after a wait: the attempt timeout, at most 1 s.
const ATTEMPT_ROOM: Duration = Duration::from_secs(1);

/// How long to wait for an open breaker whose next probe is `retry_in`
/// away, having waited `waited` already; `None`: fail now.
///
/// Open: until the probe, plus up to half as long again, so that the
/// calls waiting do not come back in one burst. Half-open with the probe
/// taken (`retry_in` zero or nearly): a short jittered poll, which does not
/// use up the wait any faster than time does.
pub(super) fn breaker_wait(
    run: &Run<Instant>,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    retry_in: Duration,
    waited: Duration,
) -> Option<Duration> {
    let (Some(deadline), Some(started)) = (deadline, run.started) else {
        return None;
    };
    let (low, high) = HALF_OPEN_POLL;
    let wait = if retry_in < Duration::from_millis(low) {
        Duration::from_millis(fastrand::u64(low..=high))
    } else {
        retry_in + retry_in.mul_f64(fastrand::f64() / 2.0)
    };
    let room = attempt_timeout.map_or(ATTEMPT_ROOM, |t| t.min(ATTEMPT_ROOM));
    (waited + wait <= MAX_BREAKER_WAIT && started.elapsed() + wait + room < deadline)
        .then_some(wait)
}
