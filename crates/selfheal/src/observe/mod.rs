//! The observer hook: one place where every healing decision is reported.
//!
//! Why a hook and not just logs? A retry that recovered is not an error, yet an
//! operator wants to know that the database needed three tries at 3 a.m.; a
//! breaker that opened is a fact the health page, the metrics and the alert rules
//! all need. Every selfheal component (the retry engine, fallbacks, the circuit
//! breaker, and the integrations built on them) reports through [`emit`], which
//! writes one `tracing` event and hands the same [`Event`] to an [`Observer`].
//!
//! The hook is designed to cost nothing when nothing happens: a call that succeeds
//! on its first attempt emits no event at all, so it never reaches this module.
//! Events are borrowed views ([`Event`] holds references), so emitting one does
//! not allocate; an observer that wants to keep data copies what it needs.
//!
//! An observer can be attached to one policy or breaker, or installed process-wide
//! with [`set_global`]; a component with no observer of its own reports to the
//! global one. The health monitor installs itself there.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use selfheal::observe::{Event, Observer};
//!
//! #[derive(Debug, Default)]
//! struct CountRetries(AtomicU32);
//!
//! impl Observer for CountRetries {
//!     fn on_event(&self, event: &Event<'_>) {
//!         if let Event::Retry { .. } = event {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let counter = Arc::new(CountRetries::default());
//! let policy = selfheal::retry::Policy::default().with_observer(counter.clone());
//! # let _ = policy;
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

mod event;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use event::{BreakerState, ClientId, Event, Failure, GiveUpReason, HealKind};

/// Receives every [`Event`] of the components it is attached to.
///
/// Implementations must be cheap and must not block: events are emitted on the
/// request path (when a retry happens, a breaker trips, a fallback is used).
/// Anything slow (I/O, alerting) belongs on a background task fed by a bounded
/// channel, which is what the health monitor does.
///
/// Closures `Fn(&Event<'_>)` are observers too.
pub trait Observer: Send + Sync + 'static {
    /// Called once per event, synchronously, on the task that caused it.
    fn on_event(&self, event: &Event<'_>);
}

impl<F> Observer for F
where
    F: Fn(&Event<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<'_>) {
        self(event)
    }
}

type Shared = Arc<dyn Observer>;

static GLOBAL: RwLock<Option<Shared>> = RwLock::new(None);

/// Bumped on every change of [`GLOBAL`]; threads cache the observer they last
/// read with the generation they read it at, so reporting to the global
/// observer is an atomic load and a thread-local read, not a lock (a read lock
/// writes to a shared cache line, which is what every thread would do at once
/// during an error storm).
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static CACHED: RefCell<(u64, Option<Shared>)> = const { RefCell::new((0, None)) };
}

/// Installs `observer` as the process-wide observer, replacing any previous one.
///
/// Components without an observer of their own report here. Returns the
/// previous observer, if any.
pub fn set_global(observer: Arc<dyn Observer>) -> Option<Arc<dyn Observer>> {
    swap_global(Some(observer)).0
}

/// Installs `observer` globally and returns the generation it was installed
/// at: while [`generation`] answers the same, it is still the global one.
pub(crate) fn install_global(observer: Arc<dyn Observer>) -> u64 {
    swap_global(Some(observer)).1
}

/// Puts `observer` in the global slot: the previous one, and the new
/// generation (bumped under the slot's lock, so the two agree).
fn swap_global(observer: Option<Arc<dyn Observer>>) -> (Option<Arc<dyn Observer>>, u64) {
    let mut slot = crate::sync::write(&GLOBAL);
    let previous = std::mem::replace(&mut *slot, observer);
    (previous, GENERATION.fetch_add(1, Ordering::Release) + 1)
}

/// The generation of the global observer (bumped by every change).
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Removes the process-wide observer, returning it.
pub fn clear_global() -> Option<Arc<dyn Observer>> {
    swap_global(None).0
}

/// Reports `event`: one `tracing` event, then the `local` observer if there is
/// one, else the global observer.
///
/// Every selfheal component calls this, so that logs and observers always agree.
/// Nothing here logs at `ERROR`: a retry is `DEBUG`, a recovery `INFO` (a call
/// that recovered is not an error), a give-up on a transient failure, a fallback
/// and a breaker transition `WARN`; a permanent failure and a budget refusal
/// `DEBUG` (the caller decides whether its own request failed, and logs that;
/// during an outage a line per refused call would be a log storm).
///
/// Inlined into its callers: while no `tracing` subscriber wants `WARN` or
/// finer (the least verbose level used here), an event costs one relaxed load
/// and the observer's call, nothing else.
#[inline]
pub fn emit(local: Option<&dyn Observer>, event: &Event<'_>) {
    // The same check every `tracing` macro starts with, once for all of them.
    // Recorded errors and heals are logged by the component that reports
    // them, with its own context: not here.
    if tracing::level_filters::STATIC_MAX_LEVEL >= tracing::level_filters::LevelFilter::WARN
        && !matches!(event, Event::Error { .. } | Event::Heal { .. })
        && tracing::level_filters::LevelFilter::current()
            >= tracing::level_filters::LevelFilter::WARN
    {
        trace_event(event);
    }
    match local {
        Some(observer) => observer.on_event(event),
        None => emit_global(event),
    }
}

#[inline(never)]
fn emit_global(event: &Event<'_>) {
    let generation = GENERATION.load(Ordering::Acquire);
    if generation == 0 {
        return; // no global observer was ever installed
    }
    CACHED.with(|cache| {
        if cache.borrow().0 != generation {
            match cache.try_borrow_mut() {
                Ok(mut cache) => {
                    let slot = crate::sync::read(&GLOBAL);
                    *cache = (generation, slot.clone());
                }
                // An observer replaced the global observer from inside its
                // own callback: read the slot directly this once.
                Err(_) => {
                    let slot = crate::sync::read(&GLOBAL);
                    if let Some(observer) = slot.as_ref() {
                        observer.on_event(event);
                    }
                    return;
                }
            }
        }
        // A shared borrow: an observer that emits events itself re-enters here
        // without trouble, and no reference count is touched.
        if let Some(observer) = cache.borrow().1.as_ref() {
            observer.on_event(event);
        }
    });
}

#[cold]
#[inline(never)]
fn trace_event(event: &Event<'_>) {
    match *event {
        Event::Retry {
            operation,
            attempt,
            delay,
            failure,
        } => tracing::debug!(
            target: "selfheal",
            operation,
            attempt,
            delay_ms = delay.as_millis() as u64,
            error.kind = failure.kind,
            error.message = %failure.message,
            "transient failure, retrying"
        ),
        Event::Recovered {
            operation,
            attempts,
            waited,
        } => tracing::info!(
            target: "selfheal",
            operation,
            attempts,
            waited_ms = waited.as_millis() as u64,
            "recovered after retrying"
        ),
        Event::GaveUp {
            operation,
            attempts,
            reason,
            failure,
        } => {
            // One field list for every reason; `tracing` wants the level and
            // the message as literals.
            macro_rules! gave_up {
                ($level:ident, $message:literal) => {
                    tracing::$level!(
                        target: "selfheal",
                        operation,
                        attempts,
                        reason = reason.as_str(),
                        error.kind = failure.kind,
                        error.message = %failure.message,
                        $message
                    )
                };
            }
            match reason {
                // A permanent failure is the operation's own answer, not a
                // healing failure: the caller reports it as it sees fit.
                GiveUpReason::Permanent => gave_up!(debug, "permanent failure, not retried"),
                // During an outage the budget refuses every call: a WARN line
                // per call would be a log storm of its own. The health monitor
                // counts them.
                GiveUpReason::Budget => gave_up!(debug, "retry budget exhausted, not retrying"),
                // Throttled and overloaded give-ups are the healing working:
                // during an overload they come by the thousand.
                GiveUpReason::Throttled => gave_up!(debug, "throttle refused the retry"),
                GiveUpReason::Overloaded => gave_up!(debug, "server shedding, not retrying"),
                GiveUpReason::MaxAttempts | GiveUpReason::Deadline => gave_up!(warn, "gave up"),
            }
        }
        Event::FallbackUsed { operation, failure } => tracing::warn!(
            target: "selfheal",
            operation,
            error.kind = failure.kind,
            error.message = %failure.message,
            "operation failed, fallback used"
        ),
        Event::BreakerTransition { breaker, from, to } => tracing::warn!(
            target: "selfheal",
            breaker,
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker changed state"
        ),
        Event::BreakerRejected { breaker, retry_in } => tracing::debug!(
            target: "selfheal",
            breaker,
            retry_in_ms = retry_in.as_millis() as u64,
            "circuit breaker open, call rejected"
        ),
        Event::ThrottleChanged {
            throttle,
            throttling,
            failure_ratio,
        } => tracing::warn!(
            target: "selfheal",
            throttle,
            throttling,
            failure_ratio,
            "adaptive throttle changed regime"
        ),
        Event::ThrottleRejected {
            throttle,
            probability,
        } => tracing::debug!(
            target: "selfheal",
            throttle,
            probability,
            "adaptive throttle refused a call"
        ),
        Event::Steered {
            dependency,
            check,
            failing_fast,
        } => tracing::warn!(
            target: "selfheal",
            dependency,
            check,
            failing_fast,
            "health check steers calls"
        ),
        Event::LimitChanged {
            limiter,
            limit,
            in_flight,
            shed,
        } => tracing::debug!(
            target: "selfheal",
            limiter,
            limit,
            in_flight,
            shed,
            "adaptive concurrency window"
        ),
        // One line per refused attempt would let a client fill the log:
        // debug only; the monitor counts them.
        Event::Throttled {
            operation,
            retry_after,
            ..
        } => tracing::debug!(
            target: "selfheal",
            operation,
            retry_after_secs = retry_after.as_secs(),
            "attempt refused by a throttle"
        ),
        // Recorded errors and heals are logged by the component that reports
        // them, with its own context.
        Event::Error { .. } | Event::Heal { .. } => {}
    }
}

/// Hands every event to each of several observers, in order: to give the
/// monitor more than one [listener](crate::health::Monitor::set_listener),
/// or a policy more than one observer.
///
/// ```
/// use std::sync::Arc;
/// use selfheal::observe::{Event, Fanout, Observer};
///
/// let log = |event: &Event<'_>| println!("{event:?}");
/// let count = |_: &Event<'_>| {};
/// let both: Arc<dyn Observer> = Arc::new(Fanout::new(vec![Arc::new(log), Arc::new(count)]));
/// # let _ = both;
/// ```
pub struct Fanout {
    observers: Vec<Arc<dyn Observer>>,
}

impl Fanout {
    /// Every event goes to each of `observers`, in this order.
    pub fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Self { observers }
    }
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl Observer for Fanout {
    fn on_event(&self, event: &Event<'_>) {
        for observer in &self.observers {
            observer.on_event(event);
        }
    }
}

/// The last path segment of a type's name, without generic arguments:
/// `sqlx_core::error::Error` becomes `Error`, `std::io::Error` becomes `Error`,
/// `alloc::string::String` becomes `String`.
///
/// Used as the default failure kind: short, stable across builds, and never
/// derived from an error's message.
///
/// It runs on every failed attempt, so it is one inlined pass over the bytes:
/// a `str` pattern such as `"::"` builds a two-way substring searcher on every
/// call (that cost more than the rest of a retry), and even `char` searches
/// are out-of-line `memchr` calls, slower than this loop on names this short.
#[inline]
pub fn short_type_name<T: ?Sized>() -> &'static str {
    let mut full = std::any::type_name::<T>().trim_start_matches('&');
    while let Some(rest) = full.strip_prefix("mut ") {
        full = rest;
    }
    // The last path segment before the generic arguments: path separators
    // are always `::`, so the segment starts after the last `:`.
    let (mut start, mut end) = (0, full.len());
    for (i, byte) in full.bytes().enumerate() {
        match byte {
            b'<' => {
                end = i;
                break;
            }
            b':' => start = i + 1,
            _ => {}
        }
    }
    &full[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn short_type_names() {
        assert_eq!(short_type_name::<std::io::Error>(), "Error");
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(short_type_name::<Vec<std::io::Error>>(), "Vec");
        assert_eq!(short_type_name::<u32>(), "u32");
        assert_eq!(short_type_name::<&'static str>(), "str");
        assert_eq!(short_type_name::<&mut &mut std::io::Error>(), "Error");
        assert_eq!(short_type_name::<(String, u32)>(), "String, u32)");
        assert_eq!(short_type_name::<[u8]>(), "[u8]");
    }

    /// Counts the `tracing` events it sees.
    struct CountEvents(std::sync::atomic::AtomicUsize);

    impl tracing::Subscriber for CountEvents {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn the_global_observer_can_be_replaced_and_cleared() {
        use std::sync::atomic::AtomicUsize;
        let event = Event::BreakerRejected {
            breaker: "b",
            retry_in: Duration::ZERO,
        };
        let first = Arc::new(AtomicUsize::new(0));
        let second = Arc::new(AtomicUsize::new(0));
        let counter = |c: &Arc<AtomicUsize>| -> Arc<dyn Observer> {
            let c = c.clone();
            Arc::new(move |_: &Event<'_>| {
                c.fetch_add(1, Ordering::SeqCst);
            })
        };
        // This is the only test of the library that installs a global observer.
        set_global(counter(&first));
        emit(None, &event);
        set_global(counter(&second));
        emit(None, &event);
        emit(None, &event);
        clear_global();
        emit(None, &event);
        assert_eq!(first.load(Ordering::SeqCst), 1);
        assert_eq!(second.load(Ordering::SeqCst), 2);
        // A fresh thread (empty cache) finds the current observer.
        set_global(counter(&second));
        std::thread::spawn(|| {
            emit(
                None,
                &Event::BreakerRejected {
                    breaker: "b",
                    retry_in: Duration::ZERO,
                },
            )
        })
        .join()
        .unwrap();
        assert_eq!(second.load(Ordering::SeqCst), 3);
        clear_global();
    }

    #[test]
    fn events_reach_tracing_when_a_subscriber_listens() {
        let subscriber = Arc::new(CountEvents(Default::default()));
        let event = Event::Recovered {
            operation: "op",
            attempts: 2,
            waited: Duration::ZERO,
        };
        tracing::subscriber::with_default(subscriber.clone(), || {
            emit(None, &event);
            emit(None, &event);
        });
        assert_eq!(subscriber.0.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
