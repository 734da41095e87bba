//! The server's own overload, as seen by outbound calls.
//!
//! When this process sheds its own requests (the
//! [adaptive concurrency limit](crate::web::AdaptiveLimit) refused some
//! recently), retrying an outbound call makes things worse twice: it holds
//! the request that made it in flight longer, keeping the server's
//! concurrency high, and it adds load to a dependency that is likely slow
//! for the same reason. So the retry engine asks here before each retry
//! and gives up with [`GiveUpReason::Overloaded`](crate::observe::GiveUpReason::Overloaded)
//! while the server sheds. One atomic load, on the failure path only.

use std::sync::atomic::{AtomicU32, Ordering};

/// How many limiters are shedding now (each sets and clears its own bit of
/// state through [`set_shedding`]).
static SHEDDING: AtomicU32 = AtomicU32::new(0);

/// Whether some adaptive concurrency limit of this process has shed
/// requests in its last window: the server is overloaded and outbound
/// retries are suppressed.
#[inline]
pub fn server_is_shedding() -> bool {
    SHEDDING.load(Ordering::Relaxed) != 0
}

/// A limiter enters (`true`) or leaves (`false`) its shedding state; calls
/// must pair up per limiter.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn set_shedding(on: bool) {
    if on {
        SHEDDING.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = SHEDDING.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}
