//! Supervised background tasks: restart what dies, give up on what keeps
//! dying, stop cleanly when asked.
//!
//! A service runs work that no request waits for: the email outbox, a cache
//! warmer, a queue consumer. Retrying each call (the guide's `@auto_retry`)
//! heals a flaky SMTP server, but not a worker that panics on a malformed row
//! or returns an error from its main loop: nothing restarts it, nothing
//! notices, and the emails silently stop. A [`Supervisor`] runs such a worker
//! as a tokio task and owns its life cycle.
//!
//! **Let it crash.** Erlang/OTP's lesson is that a worker should not try to
//! defend against every unexpected state: it is simpler and more robust to
//! let it fail and start it again from a known-good state. Every run is a
//! fresh task built by your factory closure, so a panic is contained (caught
//! as a [`JoinError`](tokio::task::JoinError), never unwinding into the
//! supervisor) and the next run starts clean. Restarts are spaced by a
//! [`Backoff`] with jitter, so a dependency that is down is not hammered and
//! many workers failing together do not restart together.
//!
//! **Restart intensity.** Restarting forever is not healing. A worker that
//! dies again as soon as it starts has a bug or a broken environment that a
//! restart cannot fix; restarting it in a loop hides the problem behind a
//! steady trickle of log lines, burns CPU, connections and rate limits, and
//! may do damage (a half-sent batch, again and again). So, as in OTP, a
//! supervisor allows at most `max_restarts` restarts within a sliding window
//! of time (5 in 60 s by default); one more failure in that window and it
//! gives up. A worker that fails rarely (once an hour, after a database
//! failover) is restarted every time, forever.
//!
//! **Giving up is loud.** A worker that stopped is an outage even if every
//! HTTP request succeeds: the service is not doing its job. So giving up marks
//! the [health monitor](crate::health) critical (`/readyz` fails, the
//! dashboard and alerts say which worker and why) and logs at `ERROR`; the
//! mark stays until an operator acts: spawns the worker again, or calls
//! [`Monitor::clear_critical`] with `worker:<name>`. Each failure is recorded
//! on the monitor as an error (kind `Panic` or the error's type name,
//! operation `worker:<name>`), each restart as a
//! [`WorkerRestarted`](crate::health::HealKind::WorkerRestarted) heal.
//!
//! **Clean shutdown.** The factory receives a [`ShutdownSignal`]; a worker
//! awaits it between units of work and returns. Shutting down a
//! [`SupervisedHandle`] raises the signal, waits for the worker to finish its
//! current unit, and aborts it only if it ignores the signal for a grace
//! period. [`ctrl_c_or_terminate`] turns Ctrl-C and `SIGTERM` into that
//! signal.
//!
//! ```no_run
//! use std::time::Duration;
//! use selfheal::health::Monitor;
//! use selfheal::supervise::{Exit, ShutdownSignal, Supervisor, ctrl_c_or_terminate};
//!
//! # #[derive(Debug)] struct SmtpError;
//! # impl std::fmt::Display for SmtpError {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("smtp") }
//! # }
//! # async fn send_pending_emails() -> Result<(), SmtpError> { Ok(()) }
//! async fn email_outbox(mut shutdown: ShutdownSignal) -> Result<(), SmtpError> {
//!     loop {
//!         tokio::select! {
//!             () = shutdown.recv() => return Ok(()),
//!             () = tokio::time::sleep(Duration::from_secs(5)) => send_pending_emails().await?,
//!         }
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let monitor = Monitor::builder().start()?;
//! let outbox = Supervisor::new("email")
//!     .with_intensity(5, Duration::from_secs(60))?
//!     .with_monitor(monitor.clone())
//!     .spawn(email_outbox);
//!
//! // … serve requests …
//!
//! // Runs until Ctrl-C or SIGTERM (then stops the worker cleanly), or until
//! // the worker stops by itself.
//! match outbox.shutdown_on(ctrl_c_or_terminate()).await {
//!     Exit::GaveUp { last_error, .. } => eprintln!("the outbox gave up: {last_error}"),
//!     exit => println!("outbox: {exit:?}"),
//! }
//! # Ok(()) }
//! ```

use std::any::Any;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ConfigError;
use crate::health::{HealKind, Monitor, truncate};
use crate::observe::short_type_name;
use crate::retry::{Backoff, Random, ThreadRandom};

/// The largest `max_restarts` [`Supervisor::with_intensity`] accepts: the
/// supervisor keeps one timestamp per restart within the window.
pub const MAX_RESTARTS_LIMIT: u32 = 10_000;

/// Failure messages (in [`Exit::GaveUp`], the critical reason and logs) are
/// truncated to this many characters.
const MESSAGE_CHARS: usize = 200;

/// Runs a background task and restarts it when it fails. A `Clone` config
/// holder: the work starts with [`Supervisor::spawn`]. See the
/// [module docs](self) for the why.
///
/// Defaults ([`Supervisor::new`]):
///
/// | setting | default |
/// |---|---|
/// | backoff between restarts | exponential 100 ms × 2 up to 30 s, full jitter |
/// | intensity | at most 5 restarts within 60 s |
/// | grace period on shutdown | 10 s, then the task is aborted |
/// | monitor | none (failures and restarts are only logged) |
/// | jitter source | thread-local `fastrand` |
///
/// The backoff grows with consecutive failures (the `n`-th restart in a row
/// waits `backoff.delay(n - 1)`) and starts over after a run that lasted at
/// least the intensity window: a worker that ran fine for a minute and then
/// failed is restarted quickly, as if for the first time.
///
/// ```
/// use std::time::Duration;
/// use selfheal::supervise::{Exit, Supervisor};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), selfheal::ConfigError> {
/// let worker = Supervisor::new("cache_warmer")
///     .with_intensity(3, Duration::from_secs(60))?
///     .with_grace(Duration::from_secs(5))
///     .spawn(|mut shutdown| async move {
///         // Real work would loop here; this one just waits to be stopped.
///         shutdown.recv().await;
///         Ok::<(), std::io::Error>(())
///     });
///
/// assert_eq!(worker.shutdown().await, Exit::ShutDown);
///
/// // A zero window cannot work.
/// assert!(Supervisor::new("x").with_intensity(3, Duration::ZERO).is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Supervisor {
    name: Cow<'static, str>,
    backoff: Backoff,
    max_restarts: u32,
    within: Duration,
    grace: Duration,
    monitor: Option<Monitor>,
    random: Option<Arc<dyn Random>>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .field("max_restarts", &self.max_restarts)
            .field("within", &self.within)
            .field("grace", &self.grace)
            .field("monitor", &self.monitor)
            .field("random", &self.random.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Supervisor {
    /// A supervisor for the worker called `name` (in logs, and as the
    /// operation `worker:<name>` on the monitor), with the defaults listed on
    /// [`Supervisor`].
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            backoff: Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(30))
                .expect("valid default backoff"),
            max_restarts: 5,
            within: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            monitor: None,
            random: None,
        }
    }

    /// The wait between a failure and the restart.
    pub const fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up when a restart would be the `max_restarts + 1`-th within
    /// `within` (a sliding window on tokio's clock, counted at each failure).
    ///
    /// `max_restarts` may be 0 (run once; any failure gives up) and at most
    /// [`MAX_RESTARTS_LIMIT`]; `within` must be greater than zero.
    pub fn with_intensity(
        mut self,
        max_restarts: u32,
        within: Duration,
    ) -> Result<Self, ConfigError> {
        if within.is_zero() {
            return Err(ConfigError::new(
                "restart intensity window must be greater than zero",
            ));
        }
        if max_restarts > MAX_RESTARTS_LIMIT {
            return Err(ConfigError::new(format!(
                "max restarts must be at most {MAX_RESTARTS_LIMIT}, got {max_restarts}"
            )));
        }
        self.max_restarts = max_restarts;
        self.within = within;
        Ok(self)
    }

    /// How long a task may keep running after the shutdown signal before it
    /// is aborted. Zero aborts at once.
    pub const fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Records failures, restarts and giving up on `monitor`.
    pub fn with_monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Draws backoff jitter from `random` (for deterministic tests).
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = Some(random);
        self
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts supervising: calls `make_task` and spawns the future it
    /// returns, and does so again after each failure until the task returns
    /// `Ok(())`, the supervisor gives up, or it is shut down through the
    /// returned handle.
    ///
    /// A failure is an `Err` from the task, a panic in the task, or a panic in
    /// `make_task` itself. A task that returns `Ok(())` is done and is not
    /// restarted ([`Exit::Completed`]).
    ///
    /// Spawning clears a critical mark left on the monitor by an earlier
    /// supervisor of the same name: starting it again is the operator's
    /// answer to it.
    ///
    /// Must be called within a tokio runtime (it calls `tokio::spawn`).
    #[must_use = "dropping the handle detaches the worker: it can no longer be shut down"]
    pub fn spawn<F, Fut, E>(self, make_task: F) -> SupervisedHandle
    where
        F: FnMut(ShutdownSignal) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        if let Some(monitor) = &self.monitor {
            monitor.clear_critical(&operation(&self.name));
        }
        let (tx, rx) = watch::channel(false);
        let stop = Arc::new(tx);
        let name = self.name.clone();
        let join = tokio::spawn(run(self, make_task, ShutdownSignal { rx }, stop.clone()));
        SupervisedHandle { name, stop, join }
    }
}

fn operation(name: &str) -> String {
    format!("worker:{name}")
}

/// How a supervised worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// The task returned `Ok(())` without being asked to stop. Its work is
    /// done; it was not restarted.
    Completed,
    /// The supervisor was shut down and the task stopped within the grace
    /// period (or was not running: shutdown during a backoff wait).
    ShutDown,
    /// The supervisor was shut down and the task ignored the signal for the
    /// whole grace period, so it was aborted (at its next `.await`).
    Aborted,
    /// The task kept failing: one more restart would have exceeded the
    /// intensity limit. The monitor is marked critical.
    GaveUp {
        /// Restarts made over the supervisor's whole life.
        restarts: u32,
        /// The last failure's message (a panic's message), truncated to 200
        /// characters.
        last_error: String,
    },
}

/// The stop request a supervised task receives. Cheap to clone; hand clones
/// to sub-tasks.
///
/// Await [`ShutdownSignal::recv`] in a `tokio::select!` next to the work, or
/// check [`ShutdownSignal::is_shutdown`] between units of work, then return
/// `Ok(())`.
#[derive(Clone, Debug)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl ShutdownSignal {
    /// Resolves once shutdown has been requested (at once if it already
    /// was). Never resolves if the handle was dropped without a request.
    ///
    /// Cancel-safe: use it in a `tokio::select!` loop.
    pub async fn recv(&mut self) {
        if self.rx.wait_for(|stop| *stop).await.is_err() {
            // The sender is gone without a request: no shutdown will come.
            std::future::pending::<()>().await;
        }
    }

    /// Whether shutdown has been requested.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Controls a supervised worker: ask it to stop, wait for it to end.
///
/// Dropping the handle **detaches** the worker (as dropping a tokio
/// `JoinHandle` does): it stays supervised until the runtime shuts down, and
/// its signal never fires. It is not aborted, because a worker that silently
/// stops when a value goes out of scope is exactly the failure supervision
/// exists to prevent. Keep the handle to stop the worker cleanly.
#[derive(Debug)]
pub struct SupervisedHandle {
    name: Cow<'static, str>,
    stop: Arc<watch::Sender<bool>>,
    join: JoinHandle<Exit>,
}

impl SupervisedHandle {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raises the shutdown signal without waiting. No further restart happens;
    /// a running task gets the grace period to return before it is aborted.
    /// Use it to stop many workers at once, then [`SupervisedHandle::wait`]
    /// for each.
    pub fn request_shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the supervisor has stopped (the worker will not run again).
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Raises the shutdown signal and waits for the worker to end (at most
    /// the grace period, plus the time to abort it).
    ///
    /// Returns [`Exit::ShutDown`] or [`Exit::Aborted`], or how the worker
    /// had already ended.
    pub async fn shutdown(self) -> Exit {
        self.request_shutdown();
        self.wait().await
    }

    /// Waits for the worker to end by itself ([`Exit::Completed`],
    /// [`Exit::GaveUp`]) or after a [`SupervisedHandle::request_shutdown`].
    pub async fn wait(self) -> Exit {
        join(self.join).await
    }

    /// Waits for `signal` (for example [`ctrl_c_or_terminate`]), then shuts
    /// down as [`SupervisedHandle::shutdown`] does; returns early if the
    /// worker ends by itself first.
    pub async fn shutdown_on<S: Future>(mut self, signal: S) -> Exit {
        tokio::select! {
            exit = &mut self.join => unwrap_join(exit),
            _ = signal => self.shutdown().await,
        }
    }
}

async fn join(handle: JoinHandle<Exit>) -> Exit {
    unwrap_join(handle.await)
}

fn unwrap_join(outcome: Result<Exit, tokio::task::JoinError>) -> Exit {
    match outcome {
        Ok(exit) => exit,
        // The supervisor catches panics of the task and of the factory: a
        // panic here is a bug in the supervisor itself, so it propagates.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only the runtime shutting down cancels the supervisor task.
        Err(_) => Exit::Aborted,
    }
}

/// Resolves on Ctrl-C (`SIGINT`) or, on Unix, `SIGTERM` (what `docker stop`,
/// Kubernetes and systemd send): pass it to
/// [`SupervisedHandle::shutdown_on`], or to axum's graceful shutdown.
///
/// The signal handlers are installed when this function is called, not when
/// the future is first polled, so a signal that arrives in between is not
/// lost. Must be called within a tokio runtime with I/O enabled
/// (`#[tokio::main]` has it). Once installed, the handlers replace the default
/// action (terminate the process) for the rest of its life. A handler that
/// cannot be installed is logged at `WARN` and that signal keeps its default
/// action.
pub fn ctrl_c_or_terminate() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, label: &'static str| {
            let registered = signal(kind);
            async move {
                match registered {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(error) => {
                        tracing::warn!(target: "selfheal", signal = label, %error, "cannot listen for signal");
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            tokio::select! {
                () = interrupt => {}
                () = terminate => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::warn!(target: "selfheal", %error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// One failed run.
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn panic(payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            truncate(s, MESSAGE_CHARS)
        } else if let Some(s) = payload.downcast_ref::<String>() {
            truncate(s, MESSAGE_CHARS)
        } else {
            "panic with a non-string payload".to_owned()
        };
        Self {
            kind: "Panic",
            message,
        }
    }

    fn error<E: fmt::Display>(error: &E) -> Self {
        Self {
            kind: short_type_name::<E>(),
            message: truncate(&error.to_string(), MESSAGE_CHARS),
        }
    }
}

/// The supervisor loop; runs as its own task.
async fn run<F, Fut, E>(
    config: Supervisor,
    mut make_task: F,
    mut shutdown: ShutdownSignal,
    // Held so that the signal never reads as "sender gone" while the loop runs.
    _stop: Arc<watch::Sender<bool>>,
) -> Exit
where
    F: FnMut(ShutdownSignal) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let name: &str = &config.name;
    let operation = operation(name);
    let random: &dyn Random = match &config.random {
        Some(random) => random.as_ref(),
        None => &ThreadRandom,
    };
    // Restart times within the window, oldest first; at most `max_restarts`.
    let mut window: VecDeque<Instant> = VecDeque::new();
    let mut restarts: u32 = 0;
    let mut consecutive: u32 = 0;
    let mut previous_delay = Duration::ZERO;

    loop {
        if shutdown.is_shutdown() {
            tracing::info!(target: "selfheal", worker = name, "worker shut down");
            return Exit::ShutDown;
        }
        let started = Instant::now();
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            make_task(shutdown.clone())
        })) {
            Err(payload) => Err(Failure::panic(payload.as_ref())),
            Ok(task) => {
                let mut task = tokio::spawn(task);
                let joined = tokio::select! {
                    joined = &mut task => joined,
                    () = shutdown.recv() => {
                        match tokio::time::timeout(config.grace, &mut task).await {
                            Ok(joined) => joined,
                            Err(_) => {
                                task.abort();
                                let _ = task.await;
                                tracing::warn!(
                                    target: "selfheal",
                                    worker = name,
                                    grace_ms = config.grace.as_millis() as u64,
                                    "worker ignored the shutdown signal for the grace period, aborted"
                                );
                                return Exit::Aborted;
                            }
                        }
                    }
                };
                match joined {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(Failure::error(&error)),
                    Err(error) if error.is_panic() => Err(Failure::panic(&*error.into_panic())),
                    // Nobody else holds the task's handle: only the runtime
                    // shutting down cancels it, and this loop goes with it.
                    Err(_) => return Exit::Aborted,
                }
            }
        };
        let stopping = shutdown.is_shutdown();

        let failure = match outcome {
            Ok(()) if stopping => {
                tracing::info!(target: "selfheal", worker = name, "worker shut down");
                return Exit::ShutDown;
            }
            Ok(()) => {
                tracing::info!(target: "selfheal", worker = name, "worker completed");
                return Exit::Completed;
            }
            Err(failure) => failure,
        };
        if let Some(monitor) = &config.monitor {
            monitor.record_error(failure.kind, &operation, &failure.message);
        }
        if stopping {
            tracing::warn!(
                target: "selfheal",
                worker = name,
                error.kind = failure.kind,
                error.message = %failure.message,
                "worker failed while shutting down"
            );
            return Exit::ShutDown;
        }

        let now = Instant::now();
        if now.duration_since(started) >= config.within {
            // It ran well for a whole window: this failure is a fresh one.
            consecutive = 0;
            previous_delay = Duration::ZERO;
        }
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= config.within)
        {
            window.pop_front();
        }
        if window.len() >= config.max_restarts as usize {
            let reason = format!(
                "worker '{name}' gave up after {} restarts in {:?}: {}",
                window.len(),
                config.within,
                failure.message
            );
            tracing::error!(
                target: "selfheal",
                worker = name,
                restarts,
                error.kind = failure.kind,
                error.message = %failure.message,
                "{reason}"
            );
            if let Some(monitor) = &config.monitor {
                monitor.set_critical(operation, reason);
            }
            return Exit::GaveUp {
                restarts,
                last_error: failure.message,
            };
        }
        window.push_back(now);

        let delay = config.backoff.delay(consecutive, previous_delay, random);
        consecutive = consecutive.saturating_add(1);
        previous_delay = delay;
        tracing::warn!(
            target: "selfheal",
            worker = name,
            restart = restarts + 1,
            delay_ms = delay.as_millis() as u64,
            error.kind = failure.kind,
            error.message = %failure.message,
            "worker failed, restarting"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.recv() => {
                tracing::info!(target: "selfheal", worker = name, "worker shut down while waiting to restart");
                return Exit::ShutDown;
            }
        }
        restarts = restarts.saturating_add(1);
        if let Some(monitor) = &config.monitor {
            monitor.record_heal(HealKind::WorkerRestarted, &operation);
        }
    }
}

#[cfg(test)]
mod tests;
