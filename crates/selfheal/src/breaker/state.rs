//! The breaker's state machine: the state word, admissions ([`Ticket`]s),
//! outcomes and transitions.
//!
//! Everything here is private to the breaker. It lives apart from the public
//! handle in the [parent module](super) so that the lock-free part, where
//! every line is about memory orderings and compare-exchanges, can be read
//! (and reviewed) on its own.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::window::Window;
use super::{Open, Snapshot};
use crate::observe::{self, BreakerState, Event, Observer};

/// One admission: which state the call was admitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ticket {
    /// Admitted while closed; holds the state word at admission, so that a
    /// failure can only trip the closed period it belongs to.
    Closed(u64),
    /// A half-open probe of this episode.
    Probe(u32),
    /// The outcome was recorded.
    Done,
}

/// A ticket together with the breaker it came from: records nothing on drop
/// unless finished, but frees a probe slot. Borrowed in `call`, owned (an
/// `Arc`) in a [`Permit`].
pub(super) struct Held<P: Deref<Target = Inner>> {
    pub(super) inner: P,
    pub(super) ticket: Ticket,
}

impl<P: Deref<Target = Inner>> Held<P> {
    #[inline]
    pub(super) fn finish(mut self, failed: bool) {
        let ticket = std::mem::replace(&mut self.ticket, Ticket::Done);
        self.inner.record(ticket, failed);
    }
}

impl<P: Deref<Target = Inner>> Drop for Held<P> {
    #[inline]
    fn drop(&mut self) {
        if let Ticket::Probe(episode) = self.ticket {
            self.inner.release_probe(episode);
        }
    }
}

/// Keeps a hot atomic on its own cache lines, so that writes to neighbouring
/// data do not slow down the readers of the state word.
#[repr(align(128))]
pub(super) struct CachePadded<T>(pub(super) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// How the closed state decides to open, with the counts it needs.
pub(super) enum Trip {
    Ratio {
        window: Window,
        ratio: f64,
        minimum_throughput: u64,
    },
    Consecutive {
        streak: CachePadded<AtomicU32>,
        threshold: u32,
    },
}

/// The state word: every transition is one compare-exchange on it.
///
/// ```text
/// closed:    [ closed_at: 62 bits                                 | 00 ]
/// open:      [ opened_at: 62 bits                                 | 01 ]
/// half-open: [ episode: 30 | probes in flight: 16 | successes: 16 | 10 ]
/// ```
///
/// Times are nanoseconds since the breaker was created. Every closed and open
/// word is unique (a breaker must stay open for a non-zero break before it
/// can close again), so a compare-exchange from a word read earlier fails if
/// the breaker has been through any transition since: no ABA.
pub(super) mod word {
    use crate::observe::BreakerState;

    const TAG_MASK: u64 = 0b11;
    const CLOSED: u64 = 0b00;
    const OPEN: u64 = 0b01;
    const HALF_OPEN: u64 = 0b10;
    const TIME_MASK: u64 = u64::MAX >> 2;
    pub(super) const EPISODE_MASK: u32 = (1 << 30) - 1;

    pub(super) const fn closed(at: u64) -> u64 {
        ((at & TIME_MASK) << 2) | CLOSED
    }

    pub(super) const fn open(at: u64) -> u64 {
        ((at & TIME_MASK) << 2) | OPEN
    }

    pub(super) const fn half_open(episode: u32, in_flight: u32, successes: u32) -> u64 {
        let payload = ((episode & EPISODE_MASK) as u64) << 32
            | ((in_flight & 0xffff) as u64) << 16
            | (successes & 0xffff) as u64;
        (payload << 2) | HALF_OPEN
    }

    pub(in crate::breaker) const fn state(word: u64) -> BreakerState {
        match word & TAG_MASK {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// `closed_at` or `opened_at`.
    pub(super) const fn time(word: u64) -> u64 {
        word >> 2
    }

    /// `(episode, in_flight, successes)` of a half-open word.
    pub(super) const fn probes(word: u64) -> (u32, u32, u32) {
        let payload = word >> 2;
        (
            (payload >> 32) as u32,
            ((payload >> 16) & 0xffff) as u32,
            (payload & 0xffff) as u32,
        )
    }
}

/// A breaker's shared state, behind the [`Breaker`](super::Breaker)'s `Arc`.
pub(super) struct Inner {
    pub(super) state: CachePadded<AtomicU64>,
    trip: Trip,
    /// Source of half-open episode numbers.
    episodes: AtomicU32,
    pub(super) name: Arc<str>,
    created: Instant,
    break_nanos: u64,
    probes: u32,
    observer: Option<Arc<dyn Observer>>,
}

impl Inner {
    /// A closed breaker's state, created now.
    pub(super) fn closed(
        name: Arc<str>,
        trip: Trip,
        break_nanos: u64,
        probes: u32,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        Self {
            state: CachePadded(AtomicU64::new(word::closed(0))),
            trip,
            episodes: AtomicU32::new(0),
            name,
            created: Instant::now(),
            break_nanos,
            probes,
            observer,
        }
    }

    /// Nanoseconds since the breaker was created.
    #[inline]
    fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.created)
            .as_nanos() as u64
    }

    /// Admits a call: inline for the closed path, out of line otherwise.
    #[inline]
    pub(super) fn acquire(&self) -> Result<Ticket, Open> {
        let current = self.state.load(Ordering::Acquire);
        if word::state(current) == BreakerState::Closed {
            return Ok(Ticket::Closed(current));
        }
        self.acquire_slow(current)
    }

    #[inline(never)]
    fn acquire_slow(&self, mut current: u64) -> Result<Ticket, Open> {
        loop {
            match word::state(current) {
                BreakerState::Closed => return Ok(Ticket::Closed(current)),
                BreakerState::Open => {
                    let now = self.now();
                    let until = word::time(current).saturating_add(self.break_nanos);
                    if now < until {
                        let retry_in = Duration::from_nanos(until - now);
                        return Err(self.reject(BreakerState::Open, retry_in));
                    }
                    // The break is over: this caller becomes the first probe.
                    let episode =
                        self.episodes.fetch_add(1, Ordering::Relaxed) & word::EPISODE_MASK;
                    let next = word::half_open(episode, 1, 0);
                    match self.transition(current, next) {
                        Ok(()) => return Ok(Ticket::Probe(episode)),
                        Err(actual) => current = actual,
                    }
                }
                BreakerState::HalfOpen => {
                    let (episode, in_flight, successes) = word::probes(current);
                    // Admit only the probes still needed to close.
                    if in_flight + successes >= self.probes {
                        return Err(self.reject(BreakerState::HalfOpen, Duration::ZERO));
                    }
                    let next = word::half_open(episode, in_flight + 1, successes);
                    match self.update_probes(current, next) {
                        Ok(()) => return Ok(Ticket::Probe(episode)),
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }

    #[inline]
    fn record(&self, ticket: Ticket, failed: bool) {
        match (ticket, failed) {
            (Ticket::Closed(_), false) => self.closed_success(),
            (Ticket::Closed(admitted), true) => self.closed_failure(admitted),
            (Ticket::Probe(episode), false) => self.probe_success(episode),
            (Ticket::Probe(episode), true) => self.probe_failure(episode),
            (Ticket::Done, _) => {}
        }
    }

    #[inline]
    fn closed_success(&self) {
        match &self.trip {
            Trip::Ratio { window, .. } => {
                window.record(window.epoch(self.now()), false);
            }
            Trip::Consecutive { streak, .. } => {
                // Only write when there is a streak to break: a shared cache
                // line is not dirtied by every success.
                if streak.load(Ordering::Relaxed) != 0 {
                    streak.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    fn closed_failure(&self, admitted: u64) {
        // A call admitted before the breaker opened (and perhaps closed again)
        // says nothing about the current closed period.
        if self.state.load(Ordering::Acquire) != admitted {
            return;
        }
        match &self.trip {
            Trip::Ratio {
                window,
                ratio,
                minimum_throughput,
            } => {
                let now = self.now();
                let epoch = window.epoch(now);
                window.record(epoch, true);
                // Only a failure can push the ratio over the threshold.
                let counts = window.counts(epoch);
                if counts.total >= *minimum_throughput
                    && counts.failures as f64 >= ratio * counts.total as f64
                {
                    let _ = self.transition(admitted, word::open(now));
                }
            }
            Trip::Consecutive { streak, threshold } => {
                let streak = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                if streak >= *threshold {
                    let _ = self.transition(admitted, word::open(self.now()));
                }
            }
        }
    }

    fn probe_success(&self, episode: u32) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if !self.is_episode(current, episode) {
                return;
            }
            let (_, in_flight, successes) = word::probes(current);
            if successes + 1 >= self.probes {
                // Forget the outcomes that opened the breaker before any
                // caller can see it closed.
                let now = self.now();
                self.reset_counts(now);
                match self.transition(current, word::closed(now)) {
                    Ok(()) => return,
                    Err(actual) => current = actual,
                }
            } else {
                let next = word::half_open(episode, in_flight.saturating_sub(1), successes + 1);
                match self.update_probes(current, next) {
                    Ok(()) => return,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    fn probe_failure(&self, episode: u32) {
        let now = self.now();
        let mut current = self.state.load(Ordering::Acquire);
        while self.is_episode(current, episode) {
            match self.transition(current, word::open(now)) {
                Ok(()) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// A probe was dropped without an outcome: free its slot.
    fn release_probe(&self, episode: u32) {
        let mut current = self.state.load(Ordering::Acquire);
        while self.is_episode(current, episode) {
            let (_, in_flight, successes) = word::probes(current);
            let next = word::half_open(episode, in_flight.saturating_sub(1), successes);
            match self.update_probes(current, next) {
                Ok(()) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Moves the half-open word from `current` to `next` within one episode
    /// (probe counts only: no transition, nothing to report); `Err` holds the
    /// word found instead. May fail spuriously: call it in a loop.
    #[inline]
    fn update_probes(&self, current: u64, next: u64) -> Result<(), u64> {
        self.state
            .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    fn is_episode(&self, current: u64, episode: u32) -> bool {
        word::state(current) == BreakerState::HalfOpen && word::probes(current).0 == episode
    }

    fn reset_counts(&self, now: u64) {
        match &self.trip {
            Trip::Ratio { window, .. } => window.reset(window.epoch(now)),
            Trip::Consecutive { streak, .. } => streak.store(0, Ordering::Relaxed),
        }
    }

    /// Moves from `from` to `to` if the state is still `from`, and reports
    /// the transition. Only the thread whose compare-exchange succeeds
    /// reports, so each transition is reported exactly once.
    fn transition(&self, from: u64, to: u64) -> Result<(), u64> {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)?;
        observe::emit(
            self.observer.as_deref(),
            &Event::BreakerTransition {
                breaker: &self.name,
                from: word::state(from),
                to: word::state(to),
            },
        );
        Ok(())
    }

    fn reject(&self, state: BreakerState, retry_in: Duration) -> Open {
        observe::emit(
            self.observer.as_deref(),
            &Event::BreakerRejected {
                breaker: &self.name,
                retry_in,
            },
        );
        Open::new(Arc::clone(&self.name), state, retry_in)
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let current = self.state.load(Ordering::Acquire);
        let now = self.now();
        let state = word::state(current);
        let (failures, total) = match &self.trip {
            Trip::Ratio { window, .. } => {
                let counts = window.counts(window.epoch(now));
                (counts.failures, counts.total)
            }
            Trip::Consecutive { streak, .. } => {
                let streak = u64::from(streak.load(Ordering::Relaxed));
                (streak, streak)
            }
        };
        let retry_in = (state == BreakerState::Open).then(|| {
            let until = word::time(current).saturating_add(self.break_nanos);
            Duration::from_nanos(until.saturating_sub(now))
        });
        let probes_in_flight = if state == BreakerState::HalfOpen {
            word::probes(current).1
        } else {
            0
        };
        Snapshot {
            name: Arc::clone(&self.name),
            state,
            failures,
            total,
            retry_in,
            probes_in_flight,
        }
    }
}
