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
//! arrives, but it can tell from its own past: a burst's queue drains
//! within a short interval; an overload's queue stands. This is CoDel's
//! idea as Facebook applied it to server queues ("controlled delay", Ben
//! Maurer, *Fail at Scale*, ACM Queue 2015): a request beyond the limit
//! may wait up to `interval` for a slot, unless the queue is overloaded,
//! when it waits only up to `target`. The queue counts as overloaded
//! when it has not been empty for a whole `interval` (it stands), or when
//! a request gave up waiting within the last `interval`. So a burst is
//! absorbed whole (it drains before anyone gives up), and under a
//! sustained overload what is admitted has waited at most `target` while
//! the rest is shed after it. The second rule is ours: with the first
//! alone, a queue whose waiters give up after `target` empties in every
//! gap between arrivals longer than `target`, and each arrival after such
//! a gap would wait the long `interval` again.
//!
//! Arrivals that find a free slot take it even while others wait (no
//! hand-off): under a standing queue this serves the newest requests first,
//! the other half of Facebook's recipe (adaptive LIFO), and waiters are
//! bounded by their own deadline anyway.
//!
//! Cost: nothing on the request path while nobody waits but one atomic
//! load on each release; waiting requests hold a `tokio::sync::Notify`
//! registration and one timer each, and the request that waits is boxed
//! (the wait path only).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{AdaptiveLimit, Inner};
use crate::ConfigError;

/// The longest `interval` accepted: a request that waits longer than this
/// for a slot is better answered (and retried after `Retry-After`).
const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// The waiting settings of [`AdaptiveLimit::with_wait`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Wait {
    target: Duration,
    interval: Duration,
}

/// The queue's shared state.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    /// Requests waiting now.
    count: AtomicU32,
    /// When the queue was last empty (ms since the limit was made): when the
    /// first of the waiting requests came, or the last one left.
    empty_at_ms: AtomicU64,
    /// Until when (ms since the limit was made) the queue counts as
    /// overloaded because a request gave up waiting.
    overloaded_until_ms: AtomicU64,
    /// Given once per slot freed while someone waits.
    freed: Notify,
}

impl Waiters {
    /// A slot was given back: wake one waiting request, if any.
    #[inline]
    pub(super) fn slot_freed(&self) {
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
    /// `target` while the queue is overloaded: it has not been empty for a
    /// whole `interval`, or a request gave up waiting within the last
    /// `interval` (waiting then only adds latency). A request that gets no
    /// slot in time is shed as before. This is CoDel's idea as Facebook
    /// applies it to server queues ("controlled delay"); their figures are
    /// a 5 ms target and a 100 ms interval. Off by default: requests beyond
    /// the limit are shed at once.
    ///
    /// Requests wait only behind [`layer`](Self::layer) (a route's own
    /// limit); a [`HealLayer`](super::super::HealLayer)'s app-wide limit
    /// sheds at once. Time spent waiting is not a latency sample: the limit
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
            || queue.joined_ms < inner.waiters.overloaded_until_ms.load(Ordering::Relaxed);
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
                    let now_ms = inner.ms_since_created(Instant::now());
                    let until = now_ms.saturating_add(wait.interval.as_millis() as u64);
                    (inner.waiters.overloaded_until_ms).fetch_max(until, Ordering::Relaxed);
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
        let standing_for = if waiters.count.fetch_add(1, Ordering::Relaxed) == 0 {
            waiters.empty_at_ms.store(now_ms, Ordering::Relaxed);
            Duration::ZERO
        } else {
            Duration::from_millis(
                now_ms.saturating_sub(waiters.empty_at_ms.load(Ordering::Relaxed)),
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
            let now_ms = self.inner.ms_since_created(Instant::now());
            waiters.empty_at_ms.store(now_ms, Ordering::Relaxed);
        }
    }
}
