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

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

mod handle;
mod run;

pub use handle::{Exit, ShutdownSignal, SupervisedHandle, ctrl_c_or_terminate};

use crate::ConfigError;
use crate::health::Monitor;
use crate::retry::{Backoff, Random};

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
        let join = tokio::spawn(run::run(
            self,
            make_task,
            ShutdownSignal { rx },
            stop.clone(),
        ));
        SupervisedHandle { name, stop, join }
    }
}

fn operation(name: &str) -> String {
    format!("worker:{name}")
}

#[cfg(test)]
mod tests;
