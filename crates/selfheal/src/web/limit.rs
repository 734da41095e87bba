//! The adaptive concurrency limit of the server: see [`AdaptiveLimit`].

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::ConfigError;
use crate::observe::{self, Event, Observer};

mod busy;
mod codel;
mod gradient;
mod permit;
mod wait;

use self::gradient::Gradient;

pub use self::codel::{ControlledDelay, Turn};
pub use self::permit::{LimitFull, Permit};

/// An adaptive concurrency limit for a server. Give it to
/// [`HealLayer::with_adaptive_limit`](super::HealLayer::with_adaptive_limit).
///
/// Adaptive concurrency: the server finds how much work it can take at
/// once from its own latency, and answers the excess at once with a
/// friendly `503` and `Retry-After` instead of queueing it.
///
/// # Why
///
/// A server that accepts everything under overload serves nobody: every
/// request waits behind every other, latency grows past every client's
/// timeout, clients retry, memory grows with the queue (this project's
/// reference app reached gigabytes of RSS at 128 virtual users). A fixed
/// limit is wrong the day it is set: the right number depends on the
/// machine, the database, the mix of requests. Netflix's
/// `concurrency-limits` (and Envoy's adaptive concurrency filter) find it
/// the way TCP congestion control finds a window: while latency stays near
/// its baseline the limit grows; when requests start to queue (latency
/// rises above the baseline) it shrinks.
///
/// This is their **Gradient2** algorithm. Requests are sampled in windows
/// (1 s, at least 10 samples); at the end of each window
///
/// ```text
/// short    = the window's average latency
/// long     = an exponential average of `short` over ~600 windows (a 10-window warm-up)
/// gradient = clamp(tolerance × long / short, 0.5, 1)        tolerance 1.5
/// limit    = (1 − smoothing) × limit + smoothing × (gradient × limit + queue)
/// ```
///
/// clamped to `[min, max]`, with `queue = 4`: room to grow while latency is
/// within 1.5× its baseline, shrinking by up to half a window's worth when
/// it is not. Two details from the original: the limit does not move while
/// the server uses less than half of it (no signal), and a long average far
/// above the short one (after an overload) decays by 5 % a window so that
/// the baseline comes back down.
///
/// **Why our own and not `tower-acc` or `tower-resilience-adaptive`.** Both
/// wait for a permit in `poll_ready`: behind axum's router (which clones and
/// calls a service per request) that is an unbounded queue, not shedding,
/// and adding tower's `LoadShed` answers with an error instead of a page.
/// Both take a mutex on every completed request, read `std`'s clock (so
/// they cannot be tested under tokio's paused clock), and `tower-acc`'s
/// Gradient2 uses each single request's latency as the short average
/// (noisy). Neither knows probes and admin pages must not be shed.
///
/// **What is never shed:** `/healthz`, `/readyz`, `/metrics` and `/admin/`
/// (the paths [`with_exempt_path`](Self::with_exempt_path) adds to), so that a
/// loaded instance still answers its orchestrator and its operator.
///
/// **Shedding is not an error.** A shed request is the server protecting
/// itself, not a failure of the request or of the server's health: it is
/// not recorded as an error nor as a request (the monitor's error rate and
/// status do not move, readiness does not change), only counted; the limit,
/// the requests in flight and the count are on the dashboard and
/// `/metrics`. While the app-wide limit sheds, outbound retries are
/// suppressed ([`server_is_shedding`](crate::throttle::server_is_shedding)).
///
/// # A limit of its own for an expensive route (a bulkhead)
///
/// One app-wide limit settles where the app's *average* request queues,
/// which is far too many for an expensive route: a login verifies an
/// argon2 hash on a fixed pool of hashing threads, and sixteen logins in
/// flight on two threads wait eight hash times each, where sixteen lesson
/// pages are nothing. Put a limit of its own on that route's handler with
/// [`layer`](Self::layer) (and a small [queue](Self::with_queue)): it
/// settles near what the pool runs and sheds the rest at once; a rush on
/// it takes no slot from the pages; its sheds do not mark the server as
/// shedding (a busy pool is not an overloaded server, and outbound retries
/// go on). Inside the router, the slot is taken once the route is matched
/// and the layers outside it (a CSRF check that reads the form, say) are
/// done, so a client trickling its body does not hold one.
///
/// When the scarce thing is not the whole route but one resource inside it
/// (the hashing threads, not the database reads and session write around
/// them), hold a slot around that resource alone with
/// [`acquire`](Self::acquire): the slot then covers only the work that
/// needs it, and a limit of exactly the resource's capacity keeps it busy
/// without queueing behind it.
///
/// # Bursts and standing queues
///
/// Shedding at once everything beyond the limit sheds a burst that the
/// resource would have served in a fraction of a second.
/// [`with_wait`](Self::with_wait) lets requests beyond the limit wait for a
/// slot the controlled-delay way (CoDel, as Facebook applies it to server
/// queues): a burst waits up to an interval and is served whole; once the
/// queue stands (an overload), a request waits only a short target and is
/// then shed, so what is admitted has not queued long.
///
/// # Cost
///
/// Per request: two atomic adds on the in-flight count, two clock reads,
/// three atomic adds into the window; at a window's end one thread (the
/// one that finds it ended and takes a `try_lock`) computes the new limit.
/// No allocation, no lock on the request path.
///
/// # Settings
///
/// Cheap to clone; clones share the limit.
///
/// Defaults: initial limit 20, min 4, max 1,000, window 1 s of at least 10
/// samples, tolerance 1.5, smoothing 0.2, queue 4.
///
/// ```
/// use selfheal::web::{AdaptiveLimit, HealLayer};
/// # let monitor = selfheal::health::Monitor::builder().with_global(false).build().unwrap();
/// let limit = AdaptiveLimit::new("web")
///     .with_limits(8, 4, 200)?
///     .with_exempt_path("/internal/");
/// let layer = HealLayer::new(monitor).with_adaptive_limit(limit.clone());
/// assert_eq!(limit.limit(), 8);
/// # let _ = layer;
/// # Ok::<(), selfheal::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct AdaptiveLimit {
    inner: Arc<Inner>,
}

struct Settings {
    min: u32,
    max: u32,
    window: Duration,
    min_samples: u32,
    tolerance: f64,
    smoothing: f64,
    queue: f64,
    exempt: Vec<Cow<'static, str>>,
    /// How long a request beyond the limit may wait for a slot (none: it is
    /// shed at once).
    wait: Option<wait::Wait>,
}

struct Inner {
    name: Arc<str>,
    settings: Settings,
    created: Instant,
    in_flight: AtomicU32,
    limit: AtomicU32,
    shed: AtomicU64,
    /// This window: latency sum (µs), samples, highest in-flight.
    sum_micros: AtomicU64,
    samples: AtomicU32,
    max_in_flight: AtomicU32,
    /// When the window ends, in ms since `created`.
    window_end_ms: AtomicU64,
    /// Requests waiting for a slot, when the queue was last empty, and the
    /// wake-up a release gives one of them (see [`wait`]).
    waiters: wait::Waiters,
    gradient: Mutex<Gradient>,
    observer: OnceLock<Arc<dyn Observer>>,
    /// Whether this is a [`HealLayer`](super::HealLayer)'s app-wide limit,
    /// whose sheds mark the server as shedding.
    app_wide: AtomicBool,
}

impl AdaptiveLimit {
    /// A limit named `name` (in events, the dashboard and `/metrics`) with
    /// the defaults.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        let name: Cow<'static, str> = name.into();
        Self {
            inner: Arc::new(Inner {
                name: Arc::from(&*name),
                settings: Settings {
                    min: 4,
                    max: 1000,
                    window: Duration::from_secs(1),
                    min_samples: 10,
                    tolerance: 1.5,
                    smoothing: 0.2,
                    queue: 4.0,
                    exempt: vec![
                        Cow::Borrowed("/healthz"),
                        Cow::Borrowed("/readyz"),
                        Cow::Borrowed("/metrics"),
                        Cow::Borrowed("/admin/"),
                    ],
                    wait: None,
                },
                created: Instant::now(),
                in_flight: AtomicU32::new(0),
                limit: AtomicU32::new(20),
                shed: AtomicU64::new(0),
                sum_micros: AtomicU64::new(0),
                samples: AtomicU32::new(0),
                max_in_flight: AtomicU32::new(0),
                window_end_ms: AtomicU64::new(1000),
                waiters: wait::Waiters::default(),
                gradient: Mutex::new(Gradient::new(20)),
                observer: OnceLock::new(),
                app_wide: AtomicBool::new(false),
            }),
        }
    }

    fn settings_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("settings are set before the limit is shared")
    }

    /// The initial limit, and the bounds it moves within. Rejected unless
    /// `1 ≤ min ≤ initial ≤ max`. Default 20 within 4 to 1,000.
    ///
    /// # Panics
    ///
    /// When called on a limit already cloned (set settings first).
    pub fn with_limits(mut self, initial: u32, min: u32, max: u32) -> Result<Self, ConfigError> {
        if !(1 <= min && min <= initial && initial <= max) {
            return Err(ConfigError::new(format!(
                "adaptive limit needs 1 <= min <= initial <= max, got {min}, {initial}, {max}"
            )));
        }
        let inner = self.settings_mut();
        inner.settings.min = min;
        inner.settings.max = max;
        inner.limit = AtomicU32::new(initial);
        inner.gradient = Mutex::new(Gradient::new(initial));
        Ok(self)
    }

    /// The sampling window (at least 10 ms) and the samples it needs before
    /// the limit moves (at least 1). Default 1 s and 10.
    ///
    /// # Panics
    ///
    /// When called on a limit already cloned.
    pub fn with_window(mut self, window: Duration, min_samples: u32) -> Result<Self, ConfigError> {
        if window < Duration::from_millis(10) || min_samples == 0 {
            return Err(ConfigError::new(
                "adaptive limit window must be at least 10 ms with at least 1 sample",
            ));
        }
        let inner = self.settings_mut();
        inner.settings.window = window;
        inner.settings.min_samples = min_samples;
        inner.window_end_ms = AtomicU64::new(window.as_millis() as u64);
        Ok(self)
    }

    /// Never sheds requests whose path starts with `prefix` (added to
    /// `/healthz`, `/readyz`, `/metrics` and `/admin/`).
    ///
    /// # Panics
    ///
    /// When called on a limit already cloned.
    pub fn with_exempt_path(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.settings_mut().settings.exempt.push(prefix.into());
        self
    }

    /// How far above its baseline latency may rise before the limit
    /// shrinks (Gradient2's `rttTolerance`): at least 1.0. Default 1.5.
    ///
    /// With tolerance `t` and a resource that serves `n` requests at once,
    /// latency holds until about `n` in flight and grows with the queue
    /// beyond, so the limit settles near `t × n` plus the queue: a lower
    /// tolerance trades throughput for less waiting.
    ///
    /// # Panics
    ///
    /// When called on a limit already cloned.
    pub fn with_tolerance(mut self, tolerance: f64) -> Result<Self, ConfigError> {
        if !(tolerance.is_finite() && tolerance >= 1.0) {
            return Err(ConfigError::new(format!(
                "adaptive limit tolerance must be at least 1.0, got {tolerance}"
            )));
        }
        self.settings_mut().settings.tolerance = tolerance;
        Ok(self)
    }

    /// Gradient2's *queue*: what the limit adds in a window when latency
    /// holds (times the smoothing). Default 4, at least 0.1.
    ///
    /// It also sets how low the limit can settle: at the steepest gradient
    /// (latency at twice the tolerated level and more) the limit tends to
    /// `2 × queue`, so with the default the limit does not go below about
    /// 8 requests whatever `min` says. That suits an app-wide limit in the
    /// tens or hundreds; a route whose right limit is a handful (a pool of
    /// two hashing threads, behind [`layer`](Self::layer)) needs a queue
    /// of about 1.
    ///
    /// # Panics
    ///
    /// When called on a limit already cloned.
    pub fn with_queue(mut self, queue: f64) -> Result<Self, ConfigError> {
        if !(queue.is_finite() && queue >= 0.1) {
            return Err(ConfigError::new(format!(
                "adaptive limit queue must be at least 0.1, got {queue}"
            )));
        }
        self.settings_mut().settings.queue = queue;
        Ok(self)
    }

    /// Reports its windows to `observer` (the [`HealLayer`](super::HealLayer)
    /// sets its monitor when none is set; otherwise the global observer).
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Self {
        let _ = self.inner.observer.set(observer);
        self
    }

    /// Made the app-wide limit of a [`HealLayer`](super::HealLayer): its
    /// windows go to `observer` (unless it has one), its sheds mark the
    /// server as shedding.
    pub(crate) fn serve_app_wide(&self, observer: Arc<dyn Observer>) {
        let _ = self.inner.observer.set(observer);
        self.inner.app_wide.store(true, Ordering::Relaxed);
    }

    /// A tower layer that limits the requests through it (a route's
    /// handler) with this limit: see the type's docs, "a limit of its own
    /// for an expensive route". A request it sheds is answered `503` with
    /// `Retry-After`, marked so that an outer [`HealLayer`](super::HealLayer)
    /// answers it with its friendly page and does not record it. Clones
    /// share the limit. A request's latency is a sample only when it is
    /// answered with a success or a redirect (a fast error says nothing
    /// about the route's capacity).
    ///
    /// ```
    /// use axum::{Router, handler::Handler, routing::post};
    /// use selfheal::web::AdaptiveLimit;
    ///
    /// async fn login() -> &'static str { "signed in" }
    ///
    /// let passwords = AdaptiveLimit::new("passwords")
    ///     .with_limits(4, 2, 16)?
    ///     .with_queue(1.0)?;
    /// let app: Router = Router::new()
    ///     .route("/login", post(login.layer(passwords.layer())));
    /// # let _ = app;
    /// # Ok::<(), selfheal::ConfigError>(())
    /// ```
    pub fn layer(&self) -> super::bulkhead::LimitLayer {
        super::bulkhead::LimitLayer::new(self.clone())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The concurrency limit now.
    pub fn limit(&self) -> u32 {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Requests shed since the limit was made.
    pub fn shed(&self) -> u64 {
        self.inner.shed.load(Ordering::Relaxed)
    }

    /// Whether requests to `path` are never shed.
    #[inline]
    pub(crate) fn is_exempt(&self, path: &str) -> bool {
        self.inner
            .settings
            .exempt
            .iter()
            .any(|prefix| path.starts_with(&**prefix))
    }

    /// Admits one request (the instant it was admitted; give it back to
    /// [`release`](Self::release)), or `None`: shed it.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<Instant> {
        let admitted = self.inner.admit();
        if admitted.is_none() {
            self.inner.on_shed();
        }
        admitted
    }

    /// Whether an answer with `status` is a latency sample: successes and
    /// redirects only (a fast error says nothing about capacity, and a
    /// warm-up full of them would set the baseline far too low).
    #[inline]
    pub(crate) fn is_sample(status: axum::http::StatusCode) -> bool {
        status.is_success() || status.is_redirection()
    }

    /// Gives back the slot of a request admitted at `start`; its latency is
    /// a sample when it was `answered` (an abandoned request says nothing
    /// about latency).
    #[inline]
    pub(crate) fn release(&self, start: Instant, answered: bool) {
        self.inner.release(start, answered);
    }
}

impl Inner {
    /// Takes a slot if one is free (the instant it was taken).
    #[inline]
    fn admit(&self) -> Option<Instant> {
        // A compare-and-swap, not add-then-undo: a refused request never
        // raises the count, even for an instant, so it cannot make a woken
        // waiter find a free slot taken.
        let limit = self.limit.load(Ordering::Relaxed);
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.max_in_flight.fetch_max(current + 1, Ordering::Relaxed);
        Some(Instant::now())
    }

    /// Milliseconds since the limit was made.
    #[inline]
    fn ms_since_created(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.created).as_millis() as u64
    }

    #[cold]
    #[inline(never)]
    fn on_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        if self.app_wide.load(Ordering::Relaxed) {
            crate::throttle::shed_for(self.settings.window);
        }
    }

    #[inline]
    fn release(&self, start: Instant, completed: bool) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let waits = self.settings.wait.is_some();
        if !(waits || completed) {
            return;
        }
        // One clock read for both uses.
        let now = Instant::now();
        let held = now.saturating_duration_since(start);
        if waits {
            self.waiters.slot_freed(held);
        }
        if !completed {
            // A request the client abandoned says nothing about latency.
            return;
        }
        let micros = held.as_micros() as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.ms_since_created(now);
        if now_ms >= self.window_end_ms.load(Ordering::Relaxed) {
            self.close_window(now_ms);
        }
    }

    /// Ends the window: one thread computes the new limit.
    #[cold]
    #[inline(never)]
    fn close_window(&self, now_ms: u64) {
        let Ok(mut gradient) = self.gradient.try_lock() else {
            return;
        };
        if now_ms < self.window_end_ms.load(Ordering::Relaxed)
            || self.samples.load(Ordering::Relaxed) < self.settings.min_samples
        {
            return;
        }
        let samples = self.samples.swap(0, Ordering::Relaxed).max(1);
        let sum = self.sum_micros.swap(0, Ordering::Relaxed);
        let max_in_flight = self.max_in_flight.swap(0, Ordering::Relaxed);
        self.window_end_ms.store(
            now_ms + self.settings.window.as_millis() as u64,
            Ordering::Relaxed,
        );
        let short = (sum as f64 / f64::from(samples)).max(1.0);
        let limit = gradient.update(&self.settings, short, max_in_flight);
        let before = self.limit.swap(limit, Ordering::Relaxed);
        drop(gradient);
        self.waiters.slots_added(limit.saturating_sub(before));
        observe::emit(
            self.observer.get().map(|o| &**o),
            &Event::LimitChanged {
                limiter: &self.name,
                limit,
                in_flight: self.in_flight.load(Ordering::Relaxed),
                shed: self.shed.load(Ordering::Relaxed),
            },
        );
    }
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("name", &self.inner.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("shed", &self.shed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
