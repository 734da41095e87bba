//! The engine: what happens between two attempts, written once for every
//! driver.
//!
//! A driver (the async and blocking loops in [`drive`](super::drive), the
//! tower service, the HTTP middleware, the db runner through
//! [`Policy::retry_with`]) makes an attempt and hands its outcome to
//! [`Policy::after_attempt`]; the engine counts it, classifies it, spends
//! or refills the budget, reports the event, and answers with one
//! [`Step`]: done, retry after a delay, or give up. Drivers own only what is
//! theirs: how to wait (tokio's timer, `thread::sleep`, a `Sleep` in a
//! hand-written future) and how to make the next attempt.

use std::fmt;
use std::time::Duration;

use super::{Classify, Policy, Random, RetryError, ThreadRandom, Verdict};
use crate::observe::{self, Event, Failure, GiveUpReason};

/// What the engine decided after one attempt: the one decision every driver
/// (async, blocking, tower, context-carrying, the HTTP middleware) acts on.
///
/// `O` is what the decision carries: the attempt's outcome for a driver
/// (`Step<Result<T, E>>`), nothing inside the engine's own planning
/// (`Step<()>`). A retry carries no outcome: it is dropped before the wait,
/// which frees what it holds (a connection, a response body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step<O> {
    /// A success (the classifier's word): return it.
    Done(O),
    /// Wait this long (a zero wait must not touch the timer), then try again.
    Retry(Duration),
    /// Stop and return the last outcome.
    GiveUp {
        /// The last outcome.
        outcome: O,
        /// Why the engine stopped.
        reason: GiveUpReason,
        /// The server's last retry-after hint, if any.
        hint: Option<Duration>,
    },
}

impl<T, E> Step<Result<T, E>> {
    /// The caller's result: a success as it is, a give-up with its failure
    /// wrapped in a [`RetryError`] (a response the classifier refused is
    /// returned as it is: the caller reads its status). Drivers call it on
    /// the steps that end the call, having handled [`Step::Retry`] first.
    #[inline]
    pub(crate) fn into_result(self, attempts: u32) -> Result<T, RetryError<E>> {
        match self {
            Step::Done(outcome) => outcome.map_err(|_| unreachable!("a success is Ok")),
            Step::Retry(_) => unreachable!("a retry does not end the call"),
            Step::GiveUp {
                outcome,
                reason,
                hint,
            } => outcome.map_err(|e| RetryError::new(e, reason, attempts, hint)),
        }
    }
}

/// The state of one logical call, shared by every driver (async, blocking,
/// tower). `I` is the driver's clock instant type.
#[derive(Debug)]
pub(crate) struct Run<I> {
    /// Attempts completed so far.
    pub(crate) attempts: u32,
    previous_delay: Duration,
    /// When the call started; only read when the policy has a deadline.
    pub(crate) started: Option<I>,
    /// Total time spent waiting between attempts.
    pub(crate) waited: Duration,
    /// A limit of this call's own below the policy's maximum attempts (a
    /// request that must not be repeated): the engine gives up with
    /// [`GiveUpReason::MaxAttempts`] once it is reached.
    attempt_cap: u32,
}

impl<I> Run<I> {
    pub(crate) fn new(started: Option<I>) -> Self {
        Self {
            attempts: 0,
            previous_delay: Duration::ZERO,
            started,
            waited: Duration::ZERO,
            attempt_cap: u32::MAX,
        }
    }

    /// Allows no attempt beyond those already made: the next failure gives
    /// up with [`GiveUpReason::MaxAttempts`], reported like any other
    /// give-up. For a driver that finds out mid-call that the operation must
    /// not be repeated (a request body that cannot be replayed, a
    /// non-idempotent HTTP request that may have reached the server).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn no_more_attempts(&mut self) {
        self.attempt_cap = self.attempts;
    }
}

/// The clock readings a driver keeps in its [`Run`]: tokio's for the async
/// and tower drivers, std's for the blocking one.
pub(crate) trait Elapsed {
    fn elapsed(&self) -> Duration;
}

impl Elapsed for tokio::time::Instant {
    #[inline]
    fn elapsed(&self) -> Duration {
        tokio::time::Instant::elapsed(self)
    }
}

impl Elapsed for std::time::Instant {
    #[inline]
    fn elapsed(&self) -> Duration {
        std::time::Instant::elapsed(self)
    }
}

impl<C> Policy<C> {
    /// The whole engine between two attempts, shared by every driver: counts
    /// the attempt, classifies the outcome, records a success or decides (and
    /// reports) what follows a failure.
    ///
    /// `inline(always)`: the success path must fold into the caller's future
    /// (measured: +2.5 ns per call when it is left to the inliner).
    #[inline(always)]
    pub(crate) fn after_attempt<I: Elapsed, T, E>(
        &self,
        run: &mut Run<I>,
        outcome: Result<T, E>,
        operation: &str,
    ) -> Step<Result<T, E>>
    where
        C: Classify<T, E>,
        E: fmt::Display,
    {
        self.after_attempt_with(run, outcome, operation, |_, _, _| {})
    }

    /// [`Policy::after_attempt`] with a hook that sees the classified
    /// outcome before the engine decides: the HTTP middleware records it on
    /// its breaker, redacts an error's URL, and caps the attempts of a
    /// request that must not be repeated ([`Run::no_more_attempts`]).
    #[inline(always)]
    pub(crate) fn after_attempt_with<I: Elapsed, T, E>(
        &self,
        run: &mut Run<I>,
        mut outcome: Result<T, E>,
        operation: &str,
        hook: impl FnOnce(&mut Run<I>, &mut Result<T, E>, Option<Verdict>),
    ) -> Step<Result<T, E>>
    where
        C: Classify<T, E>,
        E: fmt::Display,
    {
        run.attempts += 1;
        let verdict = self.verdict(&outcome);
        hook(run, &mut outcome, verdict);
        let Some(verdict) = verdict else {
            self.on_success(run, operation);
            return Step::Done(outcome);
        };
        self.after_failure(run, outcome, verdict, operation)
    }

    /// The failure half of [`Policy::after_attempt`], kept out of line.
    #[inline(never)]
    fn after_failure<I: Elapsed, T, E>(
        &self,
        run: &mut Run<I>,
        outcome: Result<T, E>,
        verdict: Verdict,
        operation: &str,
    ) -> Step<Result<T, E>>
    where
        C: Classify<T, E>,
        E: fmt::Display,
    {
        let elapsed = run.started.as_ref().map(Elapsed::elapsed);
        match self.on_failure(run, &outcome, verdict, elapsed, operation) {
            Step::Done(()) => unreachable!("a failure is never done"),
            Step::Retry(delay) => Step::Retry(delay),
            Step::GiveUp { reason, hint, .. } => Step::GiveUp {
                outcome,
                reason,
                hint,
            },
        }
    }

    /// Classifies an outcome: `None` when it is a success to return.
    #[inline]
    fn verdict<T, E>(&self, outcome: &Result<T, E>) -> Option<Verdict>
    where
        C: Classify<T, E>,
    {
        super::verdict_of(&self.classifier, outcome)
    }

    /// Records a success; reports a recovery when it took more than one attempt.
    #[inline]
    fn on_success<I>(&self, run: &Run<I>, operation: &str) {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        if let Some(throttle) = &self.throttle {
            throttle.record(true);
        }
        if run.attempts > 1 {
            observe::emit(
                self.observer.as_deref(),
                &Event::Recovered {
                    operation,
                    attempts: run.attempts,
                    waited: run.waited,
                },
            );
        }
    }

    /// Decides what to do after a failed attempt and reports it.
    ///
    /// `elapsed` is the time since the call started; drivers only measure it
    /// when the policy has a deadline.
    pub(crate) fn on_failure<I, T, E>(
        &self,
        run: &mut Run<I>,
        outcome: &Result<T, E>,
        verdict: Verdict,
        elapsed: Option<Duration>,
        operation: &str,
    ) -> Step<()>
    where
        C: Classify<T, E>,
        E: fmt::Display,
    {
        if let Some(throttle) = &self.throttle {
            throttle.observe(self.classifier.throttle_signal(outcome.as_ref(), verdict));
        }
        let step = self.plan(run, verdict, elapsed);
        let kind = self.classifier.failure_kind(outcome.as_ref());
        let message: &dyn fmt::Display = match outcome {
            Err(error) => error,
            Ok(_) => &kind,
        };
        let failure = Failure {
            kind: &kind,
            message,
        };
        let event = match step {
            Step::Retry(delay) => Event::Retry {
                operation,
                attempt: run.attempts,
                delay,
                failure,
            },
            Step::GiveUp { reason, .. } => Event::GaveUp {
                operation,
                attempts: run.attempts,
                reason,
                failure,
            },
            Step::Done(()) => unreachable!("the plan never answers done"),
        };
        observe::emit(self.observer.as_deref(), &event);
        step
    }

    /// The decision itself, without reporting.
    fn plan<I>(&self, run: &mut Run<I>, verdict: Verdict, elapsed: Option<Duration>) -> Step<()> {
        let hint = match verdict {
            Verdict::Permanent => {
                return Step::GiveUp {
                    outcome: (),
                    reason: GiveUpReason::Permanent,
                    hint: None,
                };
            }
            Verdict::RetryAfter(hint) => Some(hint),
            Verdict::Transient => None,
        };
        // Every transient failure costs a token, retried or not (gRPC A6).
        let budget_allows = self.budget.as_ref().is_none_or(|b| b.withdraw());
        let give_up = |reason| Step::GiveUp {
            outcome: (),
            reason,
            hint,
        };
        if run.attempts >= self.max_attempts.min(run.attempt_cap) {
            return give_up(GiveUpReason::MaxAttempts);
        }
        let delay = match hint {
            Some(hint) => hint.min(self.max_delay),
            None => {
                let random: &dyn Random = match &self.random {
                    Some(random) => random.as_ref(),
                    None => &ThreadRandom,
                };
                self.backoff
                    .delay(run.attempts - 1, run.previous_delay, random)
            }
        };
        if let (Some(deadline), Some(elapsed)) = (self.deadline, elapsed) {
            // A server hint past the deadline gives up even when it would be
            // capped below it: the server said it will not be ready in time.
            let wait = hint.unwrap_or(delay).max(delay);
            if elapsed.saturating_add(wait) > deadline {
                return give_up(GiveUpReason::Deadline);
            }
        }
        if !budget_allows {
            return give_up(GiveUpReason::Budget);
        }
        if let Some(throttle) = &self.throttle {
            // Health steers the policy: the server's own overload first (no
            // event of the throttle's for a retry it never asked about).
            if crate::throttle::server_is_shedding() {
                return give_up(GiveUpReason::Overloaded);
            }
            if !throttle.admit() {
                return give_up(GiveUpReason::Throttled);
            }
        }
        run.previous_delay = delay;
        run.waited += delay;
        Step::Retry(delay)
    }
}
