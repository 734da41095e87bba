//! A slot held by any piece of work, not only a route: see
//! [`AdaptiveLimit::acquire`].

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::AdaptiveLimit;

/// A slot of an [`AdaptiveLimit`], held while a piece of work runs; given
/// back when dropped. Its latency is a sample of the limit only when the
/// work is marked [`succeeded`](Self::succeeded) (a failure or an abandoned
/// piece of work says nothing about capacity).
///
/// It may be dropped on any thread (a worker thread that ran the work gives
/// the slot back the moment the work ends). Under tokio's paused test
/// clock, though, a thread outside the runtime reads the real clock, so
/// the latency samples of permits dropped there are meaningless.
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct Permit {
    limit: AdaptiveLimit,
    start: Instant,
    sample: bool,
}

impl Permit {
    pub(crate) fn new(limit: AdaptiveLimit, start: Instant) -> Self {
        Self {
            limit,
            start,
            sample: false,
        }
    }

    /// The work succeeded: its latency counts as a sample when the permit
    /// is dropped.
    pub fn succeeded(&mut self) {
        self.sample = true;
    }

    /// Whether the latency will count as a sample.
    pub(crate) fn set_sample(&mut self, sample: bool) {
        self.sample = sample;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.release(self.start, self.sample);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("limit", &self.limit.name())
            .field("held", &self.start.elapsed())
            .finish()
    }
}

/// The limit is full (and the wait, if any, gave up): the work was shed.
/// Answer it as busy, with [`retry_after`](Self::retry_after).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too busy right now: try again in a moment")]
pub struct LimitFull;

impl LimitFull {
    /// How long a client should wait before trying again (what the route
    /// layer puts in `Retry-After`).
    pub const fn retry_after(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The answer to work shed by a limit, in a handler that used
/// [`acquire`](AdaptiveLimit::acquire): `503`, `Retry-After`, a short text,
/// and the mark that makes an outer [`HealLayer`](crate::web::HealLayer)
/// answer it with its friendly page and not record it (shedding is not an
/// error).
impl axum::response::IntoResponse for LimitFull {
    fn into_response(self) -> axum::response::Response {
        super::super::bulkhead::shed()
    }
}

impl AdaptiveLimit {
    /// Takes a slot for a piece of work, waiting for one if the limit
    /// [waits](Self::with_wait): a bulkhead around a resource that is not a
    /// whole route (a pool of hashing threads, a connection to a slow
    /// backend), used inside a handler. The slot comes back when the
    /// [`Permit`] is dropped; mark the work
    /// [`succeeded`](Permit::succeeded) to make its latency a sample.
    ///
    /// # Errors
    ///
    /// [`LimitFull`] when the work is shed (counted in
    /// [`shed`](Self::shed)).
    ///
    /// ```
    /// use selfheal::web::AdaptiveLimit;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let hashing = AdaptiveLimit::new("hashing").with_limits(1, 1, 1)?;
    /// let mut permit = hashing.acquire().await?;
    /// assert!(hashing.acquire().await.is_err(), "one at a time");
    /// // ... the work ...
    /// permit.succeeded();
    /// drop(permit);
    /// assert!(hashing.acquire().await.is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn acquire(&self) -> Result<Permit, LimitFull> {
        let admitted = match self.try_admit() {
            Some(start) => Some(start),
            None => self.wait_for_slot().await,
        };
        admitted
            .map(|start| Permit::new(self.clone(), start))
            .ok_or(LimitFull)
    }
}
