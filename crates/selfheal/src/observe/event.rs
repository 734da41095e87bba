//! What a component reports: the [`Event`] vocabulary and the small types it
//! carries.
//!
//! Kept apart from the plumbing ([`emit`](super::emit), the global observer)
//! because this is the part users read and match on, and the part that grows
//! as components learn to report new things (the enum is `#[non_exhaustive]`).

use std::fmt;
use std::hash::BuildHasher;
use std::time::Duration;

/// A failure, as reported in an [`Event`].
///
/// `kind` is a short, stable, low-cardinality name (an error type such as
/// `"Error"`, or a classifier's label such as `"503"`): together with the
/// operation name it forms the fingerprint the health monitor groups by.
/// `message` is the human-readable error; it may contain user data and must not
/// be used as a grouping key.
#[derive(Clone, Copy)]
pub struct Failure<'a> {
    /// Stable, low-cardinality name of the failure (an error type or a label).
    pub kind: &'a str,
    /// The failure's message (its `Display`).
    pub message: &'a dyn fmt::Display,
}

impl fmt::Debug for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("kind", &self.kind)
            .field("message", &format_args!("{}", self.message))
            .finish()
    }
}

/// Why the retry engine stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    /// The classifier said the failure is permanent: retrying cannot help.
    Permanent,
    /// The maximum number of attempts was reached.
    MaxAttempts,
    /// The next wait (a backoff delay or a server's hint) would cross the deadline.
    Deadline,
    /// The dependency's retry budget is spent: retrying now would feed a retry storm.
    Budget,
    /// The dependency's [adaptive throttle](crate::throttle) refused the
    /// retry: it has been refusing or failing more than it can take.
    Throttled,
    /// This server is shedding its own requests
    /// ([`server_is_shedding`](crate::throttle::server_is_shedding)): a
    /// retry would hold the request longer and add load.
    Overloaded,
}

impl GiveUpReason {
    /// A short lowercase name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::MaxAttempts => "max_attempts",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
            Self::Throttled => "throttled",
            Self::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permanent => "the error is permanent",
            Self::MaxAttempts => "the maximum number of attempts was reached",
            Self::Deadline => "the next wait would cross the deadline",
            Self::Budget => "the retry budget is exhausted",
            Self::Throttled => "the dependency's throttle refused the retry",
            Self::Overloaded => "the server is shedding load",
        })
    }
}

/// The state of a circuit breaker. Serialized as its
/// [`as_str`](BreakerState::as_str) name (`closed`, `open`, `half_open`), as
/// in metrics labels and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls fail fast until the break duration has passed.
    Open,
    /// A limited number of probe calls are let through to test the dependency.
    HalfOpen,
}

impl BreakerState {
    /// A short lowercase name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kinds of healing, counted per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealKind {
    /// An operation succeeded after retrying.
    RetryRecovered,
    /// A fallback value replaced a failure.
    FallbackUsed,
    /// Session data was missing or corrupt and was repaired.
    SessionRepaired,
    /// A panic was caught and answered with a friendly error.
    PanicCaught,
    /// A circuit breaker opened (stopped calling a failing dependency).
    BreakerOpened,
    /// A circuit breaker closed again (the dependency recovered).
    BreakerClosed,
    /// A database transaction was re-run after a transient failure.
    TransactionRerun,
    /// A supervised background task was restarted.
    WorkerRestarted,
    /// The database schema was repaired at start-up.
    SchemaRepaired,
}

impl HealKind {
    /// Every kind, in declaration order.
    pub const ALL: [HealKind; 9] = [
        Self::RetryRecovered,
        Self::FallbackUsed,
        Self::SessionRepaired,
        Self::PanicCaught,
        Self::BreakerOpened,
        Self::BreakerClosed,
        Self::TransactionRerun,
        Self::WorkerRestarted,
        Self::SchemaRepaired,
    ];

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RetryRecovered => "retry_recovered",
            Self::FallbackUsed => "fallback_used",
            Self::SessionRepaired => "session_repaired",
            Self::PanicCaught => "panic_caught",
            Self::BreakerOpened => "breaker_opened",
            Self::BreakerClosed => "breaker_closed",
            Self::TransactionRerun => "transaction_rerun",
            Self::WorkerRestarted => "worker_restarted",
            Self::SchemaRepaired => "schema_repaired",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for HealKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a selfheal component did to heal (or failed to).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// An attempt failed with a transient failure and will be retried after `delay`.
    Retry {
        /// The operation's name.
        operation: &'a str,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// How long the engine waits before the next attempt.
        delay: Duration,
        /// The failure of this attempt.
        failure: Failure<'a>,
    },
    /// The operation succeeded after at least one retry.
    Recovered {
        /// The operation's name.
        operation: &'a str,
        /// Attempts made, including the successful one.
        attempts: u32,
        /// Total time spent waiting between attempts (backoff and server
        /// hints; not the attempts themselves, so that recording a recovery
        /// needs no clock read).
        waited: Duration,
    },
    /// The engine stopped retrying and returned the last failure.
    GaveUp {
        /// The operation's name.
        operation: &'a str,
        /// Attempts made.
        attempts: u32,
        /// Why the engine stopped.
        reason: GiveUpReason,
        /// The last failure.
        failure: Failure<'a>,
    },
    /// An operation failed and a fallback value was returned instead.
    FallbackUsed {
        /// The operation's name.
        operation: &'a str,
        /// The failure that was replaced by the fallback.
        failure: Failure<'a>,
    },
    /// A circuit breaker changed state.
    BreakerTransition {
        /// The breaker's name (usually the dependency).
        breaker: &'a str,
        /// The previous state.
        from: BreakerState,
        /// The new state.
        to: BreakerState,
    },
    /// A call was refused because the breaker is open (or its half-open probes are taken).
    BreakerRejected {
        /// The breaker's name.
        breaker: &'a str,
        /// How long until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// An [adaptive throttle](crate::throttle) started (`throttling`) or
    /// stopped refusing calls locally.
    ThrottleChanged {
        /// The throttle's name (the dependency).
        throttle: &'a str,
        /// Whether it now refuses a share of the calls.
        throttling: bool,
        /// The share of the calls in its window that the dependency
        /// refused or failed.
        failure_ratio: f64,
    },
    /// A call (or a retry) was refused locally by an adaptive throttle.
    ThrottleRejected {
        /// The throttle's name.
        throttle: &'a str,
        /// The probability of refusal it drew against.
        probability: f64,
    },
    /// A policy changed because of what the health monitor reports: calls
    /// to `dependency` now fail fast because its health check `check` is
    /// failing (`failing_fast`), or go out again because it passes
    /// ([`Builder::with_check`](crate::http::Builder::with_check)). Once
    /// per change; the monitor shows it in its notes while the check fails.
    Steered {
        /// The dependency whose calls are steered.
        dependency: &'a str,
        /// The health check whose verdict steers them.
        check: &'a str,
        /// Whether its calls now fail fast (`false`: they go out again).
        failing_fast: bool,
    },
    /// An adaptive concurrency limit closed a window: its limit, the
    /// requests in flight and the requests it shed since it started. At
    /// most once a window (1 s by default); shedding is the server
    /// protecting itself, never an error.
    LimitChanged {
        /// The limiter's name.
        limiter: &'a str,
        /// The concurrency limit now.
        limit: u32,
        /// Requests in flight.
        in_flight: u32,
        /// Requests shed since the limiter started.
        shed: u64,
    },
    /// An error was recorded (a 5xx or a panic answered by the web layer, a
    /// worker that failed, a transaction given up on, an alert that could
    /// not be delivered…). The health monitor records these and passes each
    /// one it records to its listener, so the metrics count exactly what the
    /// dashboard shows.
    Error {
        /// Where it happened (a route template, `worker:<name>`, a dependency).
        operation: &'a str,
        /// What happened.
        failure: Failure<'a>,
        /// Whose request it was, when a client's request caused it (see
        /// [`ClientId`]: one client's input must not move the server's
        /// health); `None` for the server's own work (a worker, a check).
        client: Option<ClientId>,
    },
    /// A client's attempt was refused by a throttle (too many failed
    /// sign-ins, say: see [`LoginThrottle`](crate::web::LoginThrottle)).
    /// Counted on the monitor and in the metrics, shown on the dashboard,
    /// and never a cause of the server's status or an alert: it is the
    /// server doing its job against a client's input.
    Throttled {
        /// What was refused (`login`, `admin:login`).
        operation: &'a str,
        /// Whose attempt it was, when known.
        client: Option<ClientId>,
        /// How long the client was told to wait.
        retry_after: Duration,
    },
    /// Something healed: a session repaired, a panic caught, a worker
    /// restarted, a transaction re-run, a schema repaired… (retry recoveries,
    /// fallbacks and breaker transitions are their own events, which the
    /// monitor turns into heals of their kind).
    Heal {
        /// Which kind.
        kind: HealKind,
        /// Where.
        operation: &'a str,
    },
}

/// Who an error happened to: a hash of the client's address (or any stable
/// key of the caller's: a session, an account), for
/// [`Monitor::record_error_from`](crate::health::Monitor::record_error_from).
///
/// **A client's input is not the server's health.** A request whose content
/// makes the server fail (a byte the database refuses, a value a handler
/// did not expect) is a bug worth seeing on the dashboard, but if one client
/// can send thirty of them and turn the status critical or fire the
/// repeated-error alert, then any anonymous visitor can page the on-call
/// engineer, and (with shedding on) take the instance out of service. A
/// real fault of the server hurts many clients. So errors recorded with a
/// client count for the status and the alert rules only once their
/// fingerprint was seen from [`min_clients`](crate::health::MonitorBuilder::with_min_clients)
/// distinct clients (3 by default) within the rule's window; until then
/// they are shown (every count, on the dashboard and in `health.json`) but
/// do not move anything. Errors without a client (workers, checks, alert
/// sinks: the server's own work) always count.
///
/// Distinct clients are counted in a 32-bit sketch per bucket: no memory
/// grows with the number of clients, and one client's storm costs one
/// atomic load per error. An attacker with many addresses is a distributed
/// attack; rate limiting at the edge is the answer to that.
///
/// ```
/// use selfheal::health::{ClientId, Monitor, Status};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let monitor = Monitor::builder().with_global(false).build().unwrap();
/// let attacker = ClientId::of("203.0.113.9");
/// for _ in 0..50 {
///     monitor.record_error_from("500", "/login", &"invalid byte sequence", Some(attacker));
/// }
/// monitor.evaluate();
/// assert_eq!(monitor.status(), Status::Healthy, "one client moves nothing");
/// assert_eq!(monitor.report(std::time::Duration::from_secs(900)).fingerprints[0].count, 50);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(pub(crate) u64);

impl ClientId {
    /// The id of `key` (an address, a session id…), hashed.
    pub fn of(key: impl std::hash::Hash) -> Self {
        Self(foldhash::quality::FixedState::default().hash_one(key))
    }
}
