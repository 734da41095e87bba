//! A recording observer for tests (feature `test-util`).
//!
//! Code that reports through selfheal (a handler using a retry policy, a
//! worker under a supervisor, a db runner) is tested by asserting on what it
//! reported. [`Event`]s are borrowed views that live only during the call, so
//! a test needs an observer that copies them: [`Recorder`] keeps an owned
//! [`Recorded`] copy of each, in order.
//!
//! ```
//! use selfheal::observe::testing::{Recorded, Recorder};
//! use selfheal::retry::Policy;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let recorder = Recorder::new();
//! let policy = Policy::default().with_observer(recorder.observer());
//! let mut calls = 0;
//! let _ = policy
//!     .retry_named("send_email", || {
//!         calls += 1;
//!         let fail = calls < 2;
//!         async move { if fail { Err("timeout") } else { Ok(()) } }
//!     })
//!     .await;
//! assert_eq!(recorder.lines(), ["retry str@send_email #1", "recovered send_email #2"]);
//! assert!(matches!(recorder.events()[1], Recorded::Recovered { attempts: 2, .. }));
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BreakerState, ClientId, Event, GiveUpReason, HealKind, Observer};

/// An owned copy of an [`Event`] (the failure's message kept as text).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded {
    /// [`Event::Retry`].
    Retry {
        /// The operation's name.
        operation: String,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// The failure's kind.
        kind: String,
        /// The failure's message.
        message: String,
    },
    /// [`Event::Recovered`].
    Recovered {
        /// The operation's name.
        operation: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent waiting.
        waited: Duration,
    },
    /// [`Event::GaveUp`].
    GaveUp {
        /// The operation's name.
        operation: String,
        /// Attempts made.
        attempts: u32,
        /// Why the engine stopped.
        reason: GiveUpReason,
        /// The last failure's kind.
        kind: String,
        /// The last failure's message.
        message: String,
    },
    /// [`Event::FallbackUsed`].
    FallbackUsed {
        /// The operation's name.
        operation: String,
        /// The failure's kind.
        kind: String,
        /// The failure's message.
        message: String,
    },
    /// [`Event::BreakerTransition`].
    BreakerTransition {
        /// The breaker's name.
        breaker: String,
        /// The previous state.
        from: BreakerState,
        /// The new state.
        to: BreakerState,
    },
    /// [`Event::BreakerRejected`].
    BreakerRejected {
        /// The breaker's name.
        breaker: String,
        /// How long until a probe is let through.
        retry_in: Duration,
    },
    /// [`Event::ThrottleChanged`].
    ThrottleChanged {
        /// The throttle's name.
        throttle: String,
        /// Whether it now refuses a share of the calls.
        throttling: bool,
        /// The failure ratio, in whole percent.
        failure_percent: u32,
    },
    /// [`Event::ThrottleRejected`].
    ThrottleRejected {
        /// The throttle's name.
        throttle: String,
    },
    /// [`Event::Steered`].
    Steered {
        /// The dependency.
        dependency: String,
        /// The check.
        check: String,
        /// Whether its calls fail fast now.
        failing_fast: bool,
    },
    /// [`Event::LimitChanged`].
    LimitChanged {
        /// The limiter's name.
        limiter: String,
        /// The limit.
        limit: u32,
        /// Requests in flight.
        in_flight: u32,
        /// Requests shed since start.
        shed: u64,
    },
    /// [`Event::Error`].
    Error {
        /// Where it happened.
        operation: String,
        /// The failure's kind.
        kind: String,
        /// The failure's message.
        message: String,
        /// Whose request it was.
        client: Option<ClientId>,
    },
    /// [`Event::Throttled`].
    Throttled {
        /// What was refused.
        operation: String,
        /// Whose attempt it was.
        client: Option<ClientId>,
        /// How long the client was told to wait.
        retry_after: Duration,
    },
    /// [`Event::Heal`].
    Heal {
        /// Which kind.
        kind: HealKind,
        /// Where.
        operation: String,
    },
}

impl Recorded {
    /// Copies `event`.
    pub fn of(event: &Event<'_>) -> Self {
        let text = |d: &dyn fmt::Display| d.to_string();
        match *event {
            Event::Retry {
                operation,
                attempt,
                delay,
                failure,
            } => Self::Retry {
                operation: operation.into(),
                attempt,
                delay,
                kind: failure.kind.into(),
                message: text(failure.message),
            },
            Event::Recovered {
                operation,
                attempts,
                waited,
            } => Self::Recovered {
                operation: operation.into(),
                attempts,
                waited,
            },
            Event::GaveUp {
                operation,
                attempts,
                reason,
                failure,
            } => Self::GaveUp {
                operation: operation.into(),
                attempts,
                reason,
                kind: failure.kind.into(),
                message: text(failure.message),
            },
            Event::FallbackUsed { operation, failure } => Self::FallbackUsed {
                operation: operation.into(),
                kind: failure.kind.into(),
                message: text(failure.message),
            },
            Event::BreakerTransition { breaker, from, to } => Self::BreakerTransition {
                breaker: breaker.into(),
                from,
                to,
            },
            Event::BreakerRejected { breaker, retry_in } => Self::BreakerRejected {
                breaker: breaker.into(),
                retry_in,
            },
            Event::ThrottleChanged {
                throttle,
                throttling,
                failure_ratio,
            } => Self::ThrottleChanged {
                throttle: throttle.into(),
                throttling,
                failure_percent: (failure_ratio * 100.0).round() as u32,
            },
            Event::ThrottleRejected { throttle, .. } => Self::ThrottleRejected {
                throttle: throttle.into(),
            },
            Event::Steered {
                dependency,
                check,
                failing_fast,
            } => Self::Steered {
                dependency: dependency.into(),
                check: check.into(),
                failing_fast,
            },
            Event::LimitChanged {
                limiter,
                limit,
                in_flight,
                shed,
            } => Self::LimitChanged {
                limiter: limiter.into(),
                limit,
                in_flight,
                shed,
            },
            Event::Error {
                operation,
                failure,
                client,
            } => Self::Error {
                operation: operation.into(),
                kind: failure.kind.into(),
                message: text(failure.message),
                client,
            },
            Event::Throttled {
                operation,
                client,
                retry_after,
            } => Self::Throttled {
                operation: operation.into(),
                client,
                retry_after,
            },
            Event::Heal { kind, operation } => Self::Heal {
                kind,
                operation: operation.into(),
            },
        }
    }
}

/// One line per event, for assertions that read like a log:
/// `retry KIND@OPERATION #ATTEMPT`, `recovered OPERATION #ATTEMPTS`,
/// `gave_up KIND@OPERATION #ATTEMPTS (REASON)`, `fallback KIND@OPERATION`,
/// `breaker NAME FROM->TO`, `rejected NAME`, `throttle NAME on|off`,
/// `throttled NAME` (an adaptive throttle refused a call),
/// `limit NAME LIMIT`, `error KIND@OPERATION`, `refused OPERATION` (a
/// login throttle refused an attempt), `heal KIND@OPERATION`.
impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry {
                operation,
                attempt,
                kind,
                ..
            } => write!(f, "retry {kind}@{operation} #{attempt}"),
            Self::Recovered {
                operation,
                attempts,
                ..
            } => write!(f, "recovered {operation} #{attempts}"),
            Self::GaveUp {
                operation,
                attempts,
                reason,
                kind,
                ..
            } => write!(
                f,
                "gave_up {kind}@{operation} #{attempts} ({})",
                reason.as_str()
            ),
            Self::FallbackUsed {
                operation, kind, ..
            } => write!(f, "fallback {kind}@{operation}"),
            Self::BreakerTransition { breaker, from, to } => {
                write!(f, "breaker {breaker} {from}->{to}")
            }
            Self::BreakerRejected { breaker, .. } => write!(f, "rejected {breaker}"),
            Self::ThrottleChanged {
                throttle,
                throttling,
                ..
            } => write!(
                f,
                "throttle {throttle} {}",
                if *throttling { "on" } else { "off" }
            ),
            Self::ThrottleRejected { throttle } => write!(f, "throttled {throttle}"),
            Self::Steered {
                dependency,
                failing_fast,
                ..
            } => write!(
                f,
                "steered {dependency} {}",
                if *failing_fast {
                    "fail-fast"
                } else {
                    "resumed"
                }
            ),
            Self::LimitChanged { limiter, limit, .. } => write!(f, "limit {limiter} {limit}"),
            Self::Error {
                operation, kind, ..
            } => write!(f, "error {kind}@{operation}"),
            Self::Throttled { operation, .. } => write!(f, "refused {operation}"),
            Self::Heal { kind, operation } => write!(f, "heal {kind}@{operation}"),
        }
    }
}

/// Keeps a [`Recorded`] copy of every event it observes. Cheap to clone;
/// clones share the record.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// This recorder as a shared observer (for `with_observer`, a
    /// [`Fanout`](super::Fanout), or [`set_global`](super::set_global)).
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(self.clone())
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Recorded> {
        crate::sync::lock(&self.events).clone()
    }

    /// Every event so far as a line (see [`Recorded`]'s `Display`).
    pub fn lines(&self) -> Vec<String> {
        crate::sync::lock(&self.events)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Takes the events so far, leaving the record empty.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *crate::sync::lock(&self.events))
    }

    /// How many events so far match `predicate`.
    pub fn count(&self, predicate: impl Fn(&Recorded) -> bool) -> usize {
        crate::sync::lock(&self.events)
            .iter()
            .filter(|e| predicate(e))
            .count()
    }
}

impl Observer for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        crate::sync::lock(&self.events).push(Recorded::of(event));
    }
}
