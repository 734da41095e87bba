//! The monitor as an [`Observer`]: how each event of the
//! [observer hook](crate::observe) is recorded.
//!
//! This is the one channel into the monitor: every component (the retry
//! engine, fallbacks, breakers, the db runner, the web layer, sessions,
//! supervised workers, schema healing) reports through
//! [`observe::emit`](crate::observe::emit), and the monitor passes what it
//! records on to its [listener](Monitor::set_listener) (the Prometheus
//! metrics), so that the dashboard and `/metrics` can never disagree.
//!
//! What each event becomes:
//!
//! | event | recorded as |
//! |---|---|
//! | `Retry` | a retry count (not an error: the call may still recover) |
//! | `Recovered` | a `retry_recovered` heal |
//! | `GaveUp` on a transient failure | an error (kind, operation); a budget refusal is counted too |
//! | `GaveUp` on a permanent failure | nothing: it is the operation's answer, and the caller decides whether it is an error |
//! | `FallbackUsed` | an error and a `fallback_used` heal |
//! | `BreakerTransition` | the breaker's state; `breaker_opened` / `breaker_closed` heals |
//! | `BreakerRejected` | a rejection count |
//! | `ThrottleChanged` | the throttle's regime, shown in the report's notes (never the status: throttling is the healing working) |
//! | `Steered` | a dependency failing fast on a health check's word, shown in the notes while the check fails (the check itself moves the status) |
//! | `ThrottleRejected` | a throttle rejection count |
//! | `LimitChanged` | the concurrency limit's last window (limit, in flight, shed), shown in the report's notes (never the status: shedding is the server protecting itself) |
//! | `Error`, `Heal` | recorded as they are (an error with its client, if any) |

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::attempts::Outcome;
use super::{HealKind, Monitor};
use crate::observe::{BreakerState, Event, GiveUpReason, Observer};
use crate::sync::lock;

impl Observer for Monitor {
    /// Errors (the hot case: an error storm) go straight to the record path;
    /// everything else is handled out of line, so this call stays small.
    #[inline]
    fn on_event(&self, event: &Event<'_>) {
        match *event {
            Event::Error {
                operation,
                failure,
                client,
            } => self.record_error_from(failure.kind, operation, failure.message, client),
            _ => self.on_other_event(event),
        }
    }
}

impl Monitor {
    /// Tallies a retry outcome for the health ledger, when one asked.
    fn tally(&self, operation: &str, outcome: Outcome, attempt: u32, waited: Duration) {
        if self.inner.keep_attempts.load(Ordering::Relaxed) {
            let waited_ms = waited.as_millis().min(u128::from(u64::MAX)) as u64;
            lock(&self.inner.attempts).add(operation, outcome, attempt, waited_ms);
        }
    }

    #[inline(never)]
    fn on_other_event(&self, event: &Event<'_>) {
        let m = self;
        // Recorded, and passed on to the listener by the recording.
        if let Event::Heal { kind, operation } = *event {
            m.record_heal(kind, operation);
            return;
        }
        match *event {
            Event::Retry {
                operation,
                attempt,
                delay,
                ..
            } => {
                m.inner.retries.fetch_add(1, Ordering::Relaxed);
                m.tally(operation, Outcome::Retry, attempt, delay);
            }
            Event::Recovered {
                operation,
                attempts,
                waited,
            } => {
                m.tally(operation, Outcome::Recovered, attempts, waited);
                m.record_heal(HealKind::RetryRecovered, operation)
            }
            Event::GaveUp {
                reason: GiveUpReason::Permanent,
                ..
            } => {}
            Event::GaveUp {
                operation,
                reason,
                failure,
                attempts,
            } => {
                m.tally(operation, Outcome::GaveUp(reason), attempts, Duration::ZERO);
                if reason == GiveUpReason::Budget {
                    m.inner.budget_refusals.fetch_add(1, Ordering::Relaxed);
                }
                m.record_error(failure.kind, operation, failure.message);
            }
            Event::FallbackUsed { operation, failure } => {
                m.record_error(failure.kind, operation, failure.message);
                m.record_heal(HealKind::FallbackUsed, operation);
            }
            Event::BreakerTransition { breaker, to, .. } => {
                {
                    let mut breakers = lock(&m.inner.breakers);
                    if breakers.len() < 256 || breakers.contains_key(breaker) {
                        breakers.insert(breaker.to_owned(), (to, m.now().ms));
                    }
                }
                match to {
                    BreakerState::Open => m.record_heal(HealKind::BreakerOpened, breaker),
                    BreakerState::Closed => m.record_heal(HealKind::BreakerClosed, breaker),
                    BreakerState::HalfOpen => {}
                }
            }
            Event::BreakerRejected { .. } => {
                m.inner.breaker_rejections.fetch_add(1, Ordering::Relaxed);
            }
            Event::ThrottleRejected { .. } => {
                m.inner.throttle_rejections.fetch_add(1, Ordering::Relaxed);
            }
            Event::ThrottleChanged {
                throttle,
                throttling,
                failure_ratio,
            } => {
                let mut throttles = lock(&m.inner.throttles);
                if throttles.len() < 256 || throttles.contains_key(throttle) {
                    throttles.insert(throttle.to_owned(), (throttling, failure_ratio, m.now().ms));
                }
            }
            Event::Steered {
                dependency,
                check,
                failing_fast,
            } => {
                let mut steered = lock(&m.inner.steered);
                if steered.len() < 256 || steered.contains_key(dependency) {
                    steered.insert(
                        dependency.to_owned(),
                        (check.to_owned(), failing_fast, m.now().ms),
                    );
                }
            }
            Event::LimitChanged {
                limiter,
                limit,
                in_flight,
                shed,
            } => {
                let mut limiters = lock(&m.inner.limiters);
                if limiters.len() < 64 || limiters.contains_key(limiter) {
                    limiters.insert(
                        limiter.to_owned(),
                        super::LimiterReport {
                            name: limiter.to_owned(),
                            limit,
                            in_flight,
                            shed,
                        },
                    );
                }
            }
            // Counted, never recorded as an error: a client's input is not
            // the server's health.
            Event::Throttled { .. } => {
                m.inner.throttled.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        // The event itself (retries, give-ups, breaker states) for the
        // listener; the errors and heals it caused reached it as they were
        // recorded above.
        if let Some(listener) = m.inner.listener.get() {
            listener.on_event(event);
        }
    }
}
