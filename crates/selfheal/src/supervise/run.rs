//! The supervision loop itself: run the worker, catch its panic or error,
//! tell a crash from an outage of a dependency, report, back off, restart,
//! and escalate past the intensity.
//!
//! Everything it reports goes through the one observer channel
//! ([`observe::emit`]) to the supervisor's monitor (or the global
//! observer); conditions and dependency checks need the monitor itself.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Escalation, Exit, MESSAGE_CHARS, ShutdownSignal, Supervisor, operation};
use crate::health::{Status, truncate};
use crate::observe::{self, Event, HealKind, Observer, short_type_name};
use crate::retry::{Random, ThreadRandom};

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
pub(super) async fn run<F, Fut, E>(
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
