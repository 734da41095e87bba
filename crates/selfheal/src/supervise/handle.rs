//! What the caller holds once a worker is spawned: the handle, the
//! shutdown signal the worker listens to, how it ended ([`Exit`]), and
//! the process's own shutdown signal ([`ctrl_c_or_terminate`]).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    /// intensity limit, and the escalation was [`Escalation::Stop`](super::Escalation::Stop). The
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
    pub(super) rx: watch::Receiver<bool>,
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
    pub(super) name: Cow<'static, str>,
    pub(super) stop: Arc<watch::Sender<bool>>,
    pub(super) join: JoinHandle<Exit>,
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
