//! The server's own overload, as seen by outbound calls.
//!
//! When this process sheds its own requests (an
//! [adaptive concurrency limit](crate::web::AdaptiveLimit) refused some
//! recently), retrying an outbound call makes things worse twice: it holds
//! the request that made it in flight longer, keeping the server's
//! concurrency high, and it adds load to a dependency that is likely slow
//! for the same reason. So the retry engine asks here before each retry
//! and gives up with [`GiveUpReason::Overloaded`](crate::observe::GiveUpReason::Overloaded)
//! while the server sheds.
//!
//! **The signal expires by itself.** Each shed request marks the server
//! as shedding until one limit window (1 s by default) after it; nothing
//! has to clear it. An earlier design kept a count of limiters "in their
//! shedding state", cleared when a limiter closed a window without a shed,
//! and that could stay set for good: a window only closes when a request
//! completes, so after a burst followed by silence (or a limiter dropped
//! while shedding) every outbound retry of the process, background workers
//! included, was suppressed until the next request came. Healing must
//! never stop silently.
//!
//! Cost: one clock read and one atomic load, before retries only (the
//! failure path); one clock read and an atomic max per shed request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Runs `f` on the mark: until when the server counts as shedding, in ms
/// since [`origin`] (0: never shed). The OS clock: the signal is
/// process-wide, shared by every runtime, so it cannot follow one
/// runtime's (pausable) clock.
///
/// In this crate's unit tests the mark is per thread: tests run side by
/// side in one process, and a test that sheds on purpose must not suppress
/// the retries another test counts (that flaked in CI). Each unit test
/// runs its runtime on its own thread, so it sees only its own sheds; the
/// integration tests (`tests/limit.rs`) exercise the process-wide mark.
#[inline]
fn with_mark<R>(f: impl FnOnce(&AtomicU64) -> R) -> R {
    #[cfg(not(test))]
    {
        static SHED_UNTIL_MS: AtomicU64 = AtomicU64::new(0);
        f(&SHED_UNTIL_MS)
    }
    #[cfg(test)]
    {
        thread_local! {
            static SHED_UNTIL_MS: AtomicU64 = const { AtomicU64::new(0) };
        }
        SHED_UNTIL_MS.with(f)
    }
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1: a mark made at the origin's first millisecond is not "never".
    origin().elapsed().as_millis() as u64 + 1
}

/// Whether some adaptive concurrency limit of this process shed a request
/// within its last window: the server is overloaded and outbound retries
/// are suppressed.
#[inline]
pub fn server_is_shedding() -> bool {
    let until = with_mark(|mark| mark.load(Ordering::Relaxed));
    until != 0 && now_ms() < until
}

/// A limiter shed a request: the server counts as shedding for `hold`
/// from now (its window).
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn shed_for(hold: Duration) {
    let until = now_ms().saturating_add(hold.as_millis() as u64);
    with_mark(|mark| mark.fetch_max(until, Ordering::Relaxed));
}

/// Forgets this thread's mark (tests that shed on purpose clean up after
/// themselves).
#[cfg(test)]
pub(crate) fn clear() {
    with_mark(|mark| mark.store(0, Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_expires_by_itself() {
        shed_for(Duration::from_millis(30));
        assert!(server_is_shedding());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!server_is_shedding(), "still shedding after the hold");
        clear();
    }
}
