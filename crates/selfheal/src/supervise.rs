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
//! **Restart intensity, and who is the parent.** Restarting a worker that
//! dies again as soon as it starts hides a bug behind a steady trickle of
//! log lines. So, as in OTP, a supervisor allows at most `max_restarts`
//! restarts within a sliding window of time (5 in 60 s by default). But
//! Erlang's intensity limit *escalates to a parent supervisor*; a tokio task
//! has none, and "give up" without a parent means "dead until someone
//! restarts the process", usually noticed when users ask where their emails
//! went. So what happens past the limit is an explicit choice, an
//! [`Escalation`] per worker:
//!
//! | escalation | past the intensity limit | for |
//! |---|---|---|
//! | [`Escalation::KeepRestarting`] (default) | restarts go on at the backoff's ceiling (30 s by default); the worker is reported *degraded* with its last error until a run lasts [`stable_after`](Supervisor::with_stable_after) | workers whose job must get done eventually: an outbox, a queue consumer |
//! | [`Escalation::ExitProcess`] | logs at `ERROR` and exits the process with the given code, so that its orchestrator (systemd, Kubernetes) restarts it | workers without which the process is useless, under an orchestrator |
//! | [`Escalation::Stop`] | stops, marks the monitor critical, [`Exit::GaveUp`] from the handle | a caller that awaits the handle and acts (it is the parent) |
//!
//! **A dependency that is down is not a crash.** The intensity limit is a
//! bug detector: it counts runs that crash *by themselves*. A worker that
//! fails because the database is unreachable is not buggy, and neither
//! restarting it less nor giving up on it helps; what helps is to keep
//! trying, with backoff, until the database is back, and to say so. Name
//! the monitor's checks a worker needs with [`Supervisor::depends_on`]: after
//! a failure the supervisor runs them at once, and if one fails, the failure
//! is a dependency outage: not counted against the intensity, the worker is
//! reported *degraded* ("waiting for 'database'"), and it is restarted with
//! capped backoff for as long as the outage lasts. A worker therefore never
//! silently stops: whatever the escalation, it is running, restarting, or
//! has escalated to someone.
//!
//! **Reported, never latched.** Each failure is recorded on the
//! [health monitor](crate::health) as an error (kind `Panic` or the error's
//! type name, operation `worker:<name>`; during a dependency outage only the
//! first, the rest are the same outage), each restart as a
//! [`WorkerRestarted`](crate::health::HealKind::WorkerRestarted) heal. A
//! worker that is struggling sets a *condition* on the monitor (key
//! `worker:<name>`, degraded, with the reason): the dashboard and
//! `health.json` show it, `/readyz` does not (readiness means "can serve
//! now"), and it is cleared as soon as a run has lasted `stable_after`.
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
//!     // Failures while the `database` check fails are an outage, not a bug.
//!     .depends_on("database")
//!     .spawn(email_outbox);
//!
//! // … serve requests …
//!
//! // Runs until Ctrl-C or SIGTERM (then stops the worker cleanly), or until
//! // the worker completes (by default it never gives up).
//! let exit = outbox.shutdown_on(ctrl_c_or_terminate()).await;
//! assert!(matches!(exit, Exit::ShutDown | Exit::Aborted | Exit::Completed));
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
use crate::health::{Monitor, Status, truncate};
use crate::observe::{self, Event, HealKind, Observer, short_type_name};
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
/// | past the intensity | [`Escalation::KeepRestarting`]: restarts at the backoff's ceiling, reported degraded |
/// | dependencies | none (every failure counts against the intensity) |
/// | stable after | a run of 10 s clears the worker's condition and restarts the backoff |
/// | grace period on shutdown | 10 s, then the task is aborted |
/// | monitor | none: failures and restarts go to the global observer (the monitor, once started); no conditions, no dependency checks |
/// | jitter source | thread-local `fastrand` |
///
/// The backoff grows with consecutive failures (the `n`-th restart in a row
/// waits `backoff.delay(n - 1)`) and starts over after a run that lasted
/// [`stable_after`](Self::with_stable_after): a worker that ran fine for a
/// while and then failed is restarted quickly, as if for the first time.
///
/// ```
/// use std::time::Duration;
/// use selfheal::supervise::{Escalation, Exit, Supervisor};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), selfheal::ConfigError> {
/// let worker = Supervisor::new("cache_warmer")
///     .with_intensity(3, Duration::from_secs(60))?
///     .with_escalation(Escalation::Stop)
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
    escalation: Escalation,
    depends_on: Vec<Cow<'static, str>>,
    stable_after: Duration,
    grace: Duration,
    monitor: Option<Monitor>,
    random: Option<Arc<dyn Random>>,
}

/// What a supervisor does when a worker keeps crashing past its restart
/// intensity: who its parent is. See the [module docs](self) for the why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Escalation {
    /// No parent: keep restarting at the backoff's ceiling, and report the
    /// worker degraded (with its last error) on the monitor until a run
    /// lasts [`stable_after`](Supervisor::with_stable_after). The default:
    /// the worker never stops while the process runs.
    #[default]
    KeepRestarting,
    /// The process is the parent: log at `ERROR`, mark the monitor critical
    /// and exit the process with this code (`std::process::exit`), so that
    /// its orchestrator restarts it from a clean state. Other tasks get no
    /// graceful shutdown: choose it for workers without which the process is
    /// useless.
    ExitProcess(i32),
    /// The caller is the parent: stop, mark the monitor critical (until the
    /// worker is spawned again or the mark is cleared) and end with
    /// [`Exit::GaveUp`]. Only if something awaits the handle and acts on it.
    Stop,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .field("backoff", &self.backoff)
            .field("max_restarts", &self.max_restarts)
            .field("within", &self.within)
            .field("escalation", &self.escalation)
            .field("depends_on", &self.depends_on)
            .field("stable_after", &self.stable_after)
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
            escalation: Escalation::KeepRestarting,
            depends_on: Vec::new(),
            stable_after: Duration::from_secs(10),
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

    /// What happens past the restart intensity. Default
    /// [`Escalation::KeepRestarting`].
    pub const fn with_escalation(mut self, escalation: Escalation) -> Self {
        self.escalation = escalation;
        self
    }

    /// The worker needs the monitor's check `check` (registered with
    /// [`Monitor::register_check`]): after a failure the supervisor runs it,
    /// and while it fails, failures are a dependency outage, not a crash:
    /// they do not count against the intensity, the worker is reported
    /// degraded ("waiting for 'database'", say) and restarted with capped backoff
    /// until the dependency is back. Call once per dependency. Needs
    /// [`with_monitor`](Self::with_monitor); a check that does not exist is
    /// ignored.
    pub fn depends_on(mut self, check: impl Into<Cow<'static, str>>) -> Self {
        self.depends_on.push(check.into());
        self
    }

    /// A run that lasts this long is healthy again: the worker's condition
    /// on the monitor is cleared and the backoff starts over. Default 10 s.
    pub const fn with_stable_after(mut self, stable_after: Duration) -> Self {
        self.stable_after = stable_after;
        self
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
    /// Spawning clears a condition left on the monitor by an earlier
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
    /// intensity limit, and the escalation was [`Escalation::Stop`]. The
    /// monitor is marked critical.
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
    // Whether a condition is set on the monitor for this worker.
    let mut struggling = false;
    // Whether the last failure came while a dependency was down.
    let mut waiting = false;

    loop {
        if shutdown.is_shutdown() {
            tracing::info!(target: "selfheal", worker = name, "worker shut down");
            return Exit::ShutDown;
        }
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            make_task(shutdown.clone())
        })) {
            Err(payload) => Err(Failure::panic(payload.as_ref())),
            Ok(task) => {
                let mut task = tokio::spawn(task);
                let stable = tokio::time::sleep(config.stable_after);
                tokio::pin!(stable);
                let mut stable_reached = false;
                let joined = loop {
                    tokio::select! {
                        joined = &mut task => break joined,
                        () = &mut stable, if !stable_reached => {
                            // Healthy again: the backoff starts over and the
                            // condition goes.
                            stable_reached = true;
                            waiting = false;
                            consecutive = 0;
                            previous_delay = Duration::ZERO;
                            if struggling {
                                struggling = false;
                                if let Some(monitor) = &config.monitor {
                                    monitor.clear_condition(&operation);
                                }
                                tracing::info!(target: "selfheal", worker = name, "worker is running again");
                            }
                        }
                        () = shutdown.recv() => {
                            match tokio::time::timeout(config.grace, &mut task).await {
                                Ok(joined) => break joined,
                                Err(_) => {
                                    task.abort();
                                    let _ = task.await;
                                    tracing::warn!(
                                        target: "selfheal",
                                        worker = name,
                                        grace_ms = config.grace.as_millis() as u64,
                                        "worker ignored the shutdown signal for the grace period, aborted"
                                    );
                                    clear(&config, &operation, struggling);
                                    return Exit::Aborted;
                                }
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
                clear(&config, &operation, struggling);
                return Exit::ShutDown;
            }
            Ok(()) => {
                tracing::info!(target: "selfheal", worker = name, "worker completed");
                clear(&config, &operation, struggling);
                return Exit::Completed;
            }
            Err(failure) => failure,
        };
        if stopping {
            report_failure(&config, &operation, &failure);
            tracing::warn!(
                target: "selfheal",
                worker = name,
                error.kind = failure.kind,
                error.message = %failure.message,
                "worker failed while shutting down"
            );
            clear(&config, &operation, struggling);
            return Exit::ShutDown;
        }

        let dependency = failing_dependency(&config).await;
        // A failure while already waiting for a dependency is the same
        // outage again: the condition says so, and recording it on every
        // restart would turn one outage into a repeated-error alert that
        // outlives it by an hour.
        if !(waiting && dependency.is_some()) {
            report_failure(&config, &operation, &failure);
        }
        waiting = dependency.is_some();
        let delay = if let Some(dependency) = dependency {
            // An outage, not a crash: not counted; keep trying with backoff.
            let reason = format!(
                "worker '{name}' is waiting for '{dependency}' (failing); last error: {}",
                failure.message
            );
            set_condition(&config, &operation, Status::Degraded, &reason);
            struggling = true;
            let delay = config.backoff.delay(consecutive, previous_delay, random);
            tracing::warn!(
                target: "selfheal",
                worker = name,
                dependency = %dependency,
                delay_ms = delay.as_millis() as u64,
                error.kind = failure.kind,
                error.message = %failure.message,
                "worker failed while a dependency is down; restarting"
            );
            delay
        } else {
            let now = Instant::now();
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= config.within)
            {
                window.pop_front();
            }
            if window.len() >= config.max_restarts as usize {
                let reason = format!(
                    "worker '{name}' failed {} times in {:?}: {}",
                    window.len() + 1,
                    config.within,
                    failure.message
                );
                match config.escalation {
                    Escalation::Stop => {
                        tracing::error!(
                            target: "selfheal",
                            worker = name,
                            restarts,
                            error.kind = failure.kind,
                            error.message = %failure.message,
                            "{reason}; giving up (escalation: stop)"
                        );
                        set_condition(&config, &operation, Status::Critical, &reason);
                        return Exit::GaveUp {
                            restarts,
                            last_error: failure.message,
                        };
                    }
                    Escalation::ExitProcess(code) => {
                        tracing::error!(
                            target: "selfheal",
                            worker = name,
                            restarts,
                            exit_code = code,
                            error.kind = failure.kind,
                            error.message = %failure.message,
                            "{reason}; exiting the process so that its orchestrator restarts it"
                        );
                        set_condition(&config, &operation, Status::Critical, &reason);
                        std::process::exit(code);
                    }
                    Escalation::KeepRestarting => {
                        let (_, ceiling) = config.backoff.bounds();
                        let delay = ceiling / 2 + (ceiling / 2).mul_f64(random.next_f64());
                        let reason = format!(
                            "{reason}; restarting every {:?} or so",
                            ceiling.mul_f64(0.75)
                        );
                        tracing::error!(
                            target: "selfheal",
                            worker = name,
                            restarts,
                            delay_ms = delay.as_millis() as u64,
                            error.kind = failure.kind,
                            error.message = %failure.message,
                            "{reason}"
                        );
                        set_condition(&config, &operation, Status::Degraded, &reason);
                        struggling = true;
                        window.pop_front();
                        window.push_back(now);
                        delay
                    }
                }
            } else {
                window.push_back(now);
                let delay = config.backoff.delay(consecutive, previous_delay, random);
                tracing::warn!(
                    target: "selfheal",
                    worker = name,
                    restart = restarts + 1,
                    delay_ms = delay.as_millis() as u64,
                    error.kind = failure.kind,
                    error.message = %failure.message,
                    "worker failed, restarting"
                );
                delay
            }
        };
        consecutive = consecutive.saturating_add(1);
        previous_delay = delay;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.recv() => {
                tracing::info!(target: "selfheal", worker = name, "worker shut down while waiting to restart");
                clear(&config, &operation, struggling);
                return Exit::ShutDown;
            }
        }
        restarts = restarts.saturating_add(1);
        observe::emit(
            reporter(&config),
            &Event::Heal {
                kind: HealKind::WorkerRestarted,
                operation: &operation,
            },
        );
    }
}

/// Where the worker's failures and restarts are reported: its monitor, or
/// the global observer when it has none.
fn reporter(config: &Supervisor) -> Option<&dyn Observer> {
    config.monitor.as_ref().map(|m| m as &dyn Observer)
}

/// Reports a failed run as an error of `worker:<name>`.
fn report_failure(config: &Supervisor, operation: &str, failure: &Failure) {
    observe::emit(
        reporter(config),
        &Event::Error {
            operation,
            failure: observe::Failure {
                kind: failure.kind,
                message: &failure.message,
            },
            client: None,
        },
    );
}

/// The first of the worker's dependencies whose check fails when run now.
async fn failing_dependency(config: &Supervisor) -> Option<&str> {
    let monitor = config.monitor.as_ref()?;
    for dependency in &config.depends_on {
        if monitor.run_check(dependency).await == Some(false) {
            return Some(dependency);
        }
    }
    None
}

fn set_condition(config: &Supervisor, operation: &str, status: Status, reason: &str) {
    if let Some(monitor) = &config.monitor {
        monitor.set_condition(operation, status, reason);
    }
}

/// A worker that stopped cleanly takes its condition with it.
fn clear(config: &Supervisor, operation: &str, struggling: bool) {
    if struggling && let Some(monitor) = &config.monitor {
        monitor.clear_condition(operation);
    }
}

#[cfg(test)]
mod tests;
