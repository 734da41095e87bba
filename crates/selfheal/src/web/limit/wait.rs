//! Waiting for a slot, the controlled-delay way.
//!
//! Shedding at once everything beyond the limit is right under sustained
//! overload and wrong for a burst: thirty-two sign-ups arriving together
//! on a route limited to four are served by two hashing threads in a third
//! of a second, and shedding twenty-eight of them turns a blip users would
//! not notice into twenty-eight error pages. Queueing them all is right for
//! the burst and wrong for an overload, where the queue never drains and
//! every request waits behind it (latency grows until clients time out).
//!
//! A queue cannot know which of the two it is facing when a request
//! arrives, but it can tell from its recent past. This is CoDel's idea as
//! Facebook applied it to server queues ("controlled delay", Ben Maurer,
//! *Fail at Scale*, ACM Queue 2015): a request beyond the limit may wait up
//! to `interval` for a slot, unless the limit is overloaded, when it waits
//! only up to `target`. It counts as overloaded when
//!
//! - the queue has not been empty for a whole `interval` (it stands:
//!   CoDel's own signal), or
//! - the slots were busy at least 90 % of the last `interval` (measured
//!   from the time each slot was held, summed when it is given back).
//!
//! So a burst is absorbed whole (it drains within the interval, and a
//! burst after a quiet spell finds the slots idle), and under a sustained
//! overload what is admitted has waited at most `target` while the rest is
//! shed after it. Why the second signal, not "a request gave up": with
//! short waits, the queue empties in every gap between arrivals longer than
//! `target`, so the first signal alone lets a long wait back in after each
//! gap; and a give-up is no evidence of overload when `target` is shorter
//! than one service time (at 70 % load a 5 ms wait for a 40 ms hash gives
//! up often), so treating it as such kept the limit shedding at loads it
//! could serve (a reviewer simulated 22–33 % shed at 70–90 % load). How
//! busy the slots were is what tells "more work than capacity" from "work
//! arriving in clumps".
//!
//! Waiting requests are woken in the order they started waiting, one per
//! slot given back; a request that arrives as a slot frees may take it
//! first, and a woken one that finds it taken waits again, behind the
//! others, until its own deadline. No request waits past its deadline.
//!
//! Cost: nothing for a limit that does not wait. For one that does, on
//! each release a clock read, an atomic add, a fence and an atomic load; waiting requests hold a `tokio::sync::Notify`
//! registration and one timer each, and the request that waits is boxed
//! (the wait path only).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::busy::{BusyWindow, Judge};
use super::{AdaptiveLimit, Inner};
use crate::ConfigError;

/// The longest `interval` accepted: a request that waits longer than this
/// for a slot is better answered (and retried after `Retry-After`).
pub(super) const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// The waiting settings of [`AdaptiveLimit::with_wait`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Wait {
    target: Duration,
    interval: Duration,
}

/// `formed_at_ms` while nobody waits.
const EMPTY: u64 = u64::MAX;

/// The queue's shared state.
#[derive(Debug)]
pub(super) struct Waiters {
    /// Requests waiting now.
    count: AtomicU32,
    /// When the present queue formed (ms since the limit was made), or
    /// [`EMPTY`].
    formed_at_ms: AtomicU64,
    /// How busy the slots were (time summed as they are given back).
    busy: BusyWindow,
    /// Given once per slot freed while someone waits.
    freed: Notify,
}

impl Default for Waiters {
    fn default() -> Self {
        Self {
            count: AtomicU32::new(0),
            formed_at_ms: AtomicU64::new(EMPTY),
            busy: BusyWindow::default(),
            freed: Notify::new(),
        }
    }
}

impl Waiters {
    /// A slot held for `held` was given back: count the busy time, and
    /// wake one waiting request, if any.
    #[inline]
    pub(super) fn slot_freed(&self, held: Duration) {
        self.busy.add(held);
        // Pairs with the fence in `Queued::join`: either this release sees
        // the waiter counted, or the waiter sees the slot free.
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::Relaxed) > 0 {
            self.freed.notify_one();
        }
    }

    /// The limit grew by `added`: wake as many waiting requests (at most
    /// those waiting).
    pub(super) fn slots_added(&self, added: u32) {
        for _ in 0..added.min(self.count.load(Ordering::Relaxed)) {
            self.freed.notify_one();
        }
    }
}

impl AdaptiveLimit {
    /// Lets a request beyond the limit wait for a slot instead of being
    /// shed at once: up to `interval` (a burst, which drains), or only up to
    /// `target` while the limit is overloaded: its queue has not been empty
    /// for a whole `interval`, or its slots were busy at least 90 % of the
    /// last `interval` (waiting then only adds latency). A request that gets no
    /// slot in time is shed as before. This is CoDel's idea as Facebook
    /// applies it to server queues ("controlled delay"); their figures are
    /// a 5 ms target and a 100 ms interval. Off by default: requests beyond
    /// the limit are shed at once.
    ///
    /// Requests wait behind [`layer`](Self::layer) (a route's own limit)
    /// and in [`acquire`](Self::acquire); a
    /// [`HealLayer`](super::super::HealLayer)'s app-wide limit sheds at
    /// once. Time spent waiting is not a latency sample: the limit
    /// still follows how long admitted requests take.
    ///
    /// Rejected unless `0 < target ≤ interval ≤ 10 s`.
    ///
    /// # Panics
    ///
    /// When called on a limit already cloned (set settings first).
    ///
    /// ```
    /// use std::time::Duration;
    /// use selfheal::web::AdaptiveLimit;
    ///
    /// // A burst of sign-ups waits up to half a second for a hashing
    /// // thread; a standing queue waits 5 ms at most, then is shed.
    /// let passwords = AdaptiveLimit::new("passwords")
    ///     .with_limits(2, 1, 8)?
    ///     .with_wait(Duration::from_millis(5), Duration::from_millis(500))?;
    /// # let _ = passwords;
    /// # Ok::<(), selfheal::ConfigError>(())
    /// ```
    pub fn with_wait(mut self, target: Duration, interval: Duration) -> Result<Self, ConfigError> {
        if target.is_zero() || target > interval || interval > MAX_INTERVAL {
            return Err(ConfigError::new(format!(
                "adaptive limit wait needs 0 < target <= interval <= 10 s, got {target:?} and {interval:?}"
            )));
        }
        self.settings_mut().settings.wait = Some(Wait { target, interval });
        Ok(self)
    }

    /// Whether requests beyond the limit may wait for a slot.
    #[inline]
    pub(crate) fn waits(&self) -> bool {
        self.inner.settings.wait.is_some()
    }

    /// Takes a slot if one is free now, without counting a shed.
    #[inline]
    pub(crate) fn try_admit(&self) -> Option<Instant> {
        self.inner.admit()
    }

    /// Waits for a slot as [`with_wait`](Self::with_wait) says (the instant
    /// it was taken), or gives up and counts the request shed (`None`).
    /// Dropping the future leaves the queue.
    pub(crate) async fn wait_for_slot(&self) -> Option<Instant> {
        let inner = &*self.inner;
        let Some(wait) = inner.settings.wait else {
            return self.try_acquire();
        };
        let queue = Queued::join(inner);
        let overloaded = queue.standing_for >= wait.interval
            || inner.waiters.busy.saturated(
                queue.joined_ms,
                inner.limit.load(Ordering::Relaxed),
                wait.interval,
                Judge {
                    percent: 90,
                    smooth: false,
                },
            );
        let patience = if overloaded {
            wait.target
        } else {
            wait.interval
        };
        let deadline = queue.joined + patience;
        loop {
            let freed = inner.waiters.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so that a slot given back between
            // the look and the wait still wakes this request.
            freed.as_mut().enable();
            if let Some(start) = inner.admit() {
                return Some(start);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // A last look: the slot may have come with the deadline.
                let admitted = inner.admit();
                if admitted.is_none() {
                    inner.on_shed();
                }
                return admitted;
            }
        }
    }
}

#[cfg(test)]
impl Inner {
    /// Requests waiting now.
    pub(super) fn waiters_now(&self) -> u32 {
        self.waiters.count.load(Ordering::Relaxed)
    }
}

/// One request in the queue; leaves it when dropped.
struct Queued<'a> {
    inner: &'a Inner,
    joined: Instant,
    joined_ms: u64,
    /// How long the queue had been non-empty when this request joined.
    standing_for: Duration,
}

impl<'a> Queued<'a> {
    fn join(inner: &'a Inner) -> Self {
        let joined = Instant::now();
        let now_ms = inner.ms_since_created(joined);
        let waiters = &inner.waiters;
        let first = waiters.count.fetch_add(1, Ordering::Relaxed) == 0;
        // Pairs with the fence in `Waiters::slot_freed`.
        fence(Ordering::SeqCst);
        let standing_for = if first {
            waiters.formed_at_ms.store(now_ms, Ordering::Relaxed);
            Duration::ZERO
        } else {
            // `EMPTY` (the first waiter has not stored its time yet, or a
            // leaving last waiter overwrote it) reads as a queue just
            // formed: this signal errs towards waiting longer, and the
            // busy-slots signal still sees an overload.
            Duration::from_millis(
                now_ms.saturating_sub(waiters.formed_at_ms.load(Ordering::Relaxed)),
            )
        };
        Self {
            inner,
            joined,
            joined_ms: now_ms,
            standing_for,
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let waiters = &self.inner.waiters;
        if waiters.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            waiters.formed_at_ms.store(EMPTY, Ordering::Relaxed);
        }
    }
}
