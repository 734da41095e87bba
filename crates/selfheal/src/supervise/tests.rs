use std::any::Any;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::*;
use tokio::time::Instant;

use crate::health::Status;
use crate::observe::HealKind;
use crate::retry::Jitter;

fn monitor() -> Monitor {
    Monitor::builder().with_global(false).build().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Advances the paused clock (the runtime runs every task that is ready).
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

#[derive(Debug)]
struct SmtpError(&'static str);

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "smtp: {}", self.0)
    }
}

/// Panics with `payload` (a task "returning" this never returns).
fn panic_with<P: Any + Send>(payload: P) -> Result<(), SmtpError> {
    std::panic::panic_any(payload)
}

fn restarted_heals(m: &Monitor) -> u64 {
    m.report(secs(3600))
        .heals
        .get(&HealKind::WorkerRestarted)
        .copied()
        .unwrap_or(0)
}

fn errors_for(m: &Monitor, fingerprint: &str) -> u64 {
    m.report(secs(3600))
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == fingerprint)
        .map_or(0, |f| f.count)
}

#[tokio::test(start_paused = true)]
async fn a_task_that_panics_twice_is_restarted_twice_and_recorded() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("email").with_monitor(m.clone()).spawn({
        let runs = runs.clone();
        move |mut shutdown| {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run <= 2 {
                    panic!("outbox row {run} is malformed");
                }
                shutdown.recv().await;
                Ok::<(), SmtpError>(())
            }
        }
    });
    run_for(secs(5)).await;

    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(!handle.is_finished());
    assert_eq!(restarted_heals(&m), 2);
    assert_eq!(errors_for(&m, "Panic@worker:email"), 2);
    let report = m.report(secs(3600));
    assert_eq!(report.total_errors, 2);
    assert!(
        report
            .recent_heals
            .iter()
            .all(|h| h.operation == "worker:email")
    );
    let sample = &report.fingerprints[0].sample;
    assert!(sample.contains("is malformed"), "{sample}");
    assert_eq!(m.status(), Status::Healthy);

    assert_eq!(handle.shutdown().await, Exit::ShutDown);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_always_fails_gives_up_at_the_intensity_limit() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("email")
        .with_intensity(3, secs(60))
        .unwrap()
        .with_escalation(Escalation::Stop)
        .with_monitor(m.clone())
        .spawn({
            let runs = runs.clone();
            move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err(SmtpError("connection refused")) }
            }
        });
    let started = Instant::now();
    let exit = handle.wait().await;

    // The first run and 3 restarts; the 4th failure gives up.
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        exit,
        Exit::GaveUp {
            restarts: 3,
            last_error: "smtp: connection refused".into()
        }
    );
    // Backoff waits (at most 100 + 200 + 400 ms) stayed within the window.
    assert!(started.elapsed() < secs(1));
    assert_eq!(errors_for(&m, "SmtpError@worker:email"), 4);
    assert_eq!(restarted_heals(&m), 3);
    let (status, reasons) = m.status_with_reasons();
    assert_eq!(status, Status::Critical);
    assert_eq!(
        reasons,
        ["worker 'email' failed 4 times in 60s: smtp: connection refused"]
    );

    // Nothing runs any more.
    run_for(secs(600)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn failures_spaced_wider_than_the_window_never_give_up() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("digest")
        .with_intensity(3, secs(60))
        .unwrap()
        .with_monitor(m.clone())
        .spawn({
            let runs = runs.clone();
            move |mut shutdown| {
                runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::select! {
                        () = tokio::time::sleep(secs(120)) => Err(SmtpError("timeout")),
                        () = shutdown.recv() => Ok(()),
                    }
                }
            }
        });
    // 20 failures, each 2 minutes after the previous restart; after each run
    // of 2 minutes the backoff starts over (at most 100 ms).
    run_for(secs(20 * 120 + 5)).await;

    assert!(!handle.is_finished());
    assert_eq!(runs.load(Ordering::SeqCst), 21);
    assert_eq!(restarted_heals(&m), 20);
    assert_eq!(errors_for(&m, "SmtpError@worker:digest"), 20);
    assert_ne!(m.status(), Status::Critical);
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_returns_ok_is_not_restarted() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("migrate_avatars")
        .with_monitor(m.clone())
        .spawn({
            let runs = runs.clone();
            move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), SmtpError>(()) }
            }
        });
    assert_eq!(handle.wait().await, Exit::Completed);
    run_for(secs(60)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(restarted_heals(&m), 0);
    assert_eq!(m.report(secs(3600)).total_errors, 0);
}

#[tokio::test(start_paused = true)]
async fn a_task_that_awaits_the_signal_shuts_down_cleanly() {
    let ticks = Arc::new(AtomicU32::new(0));
    let stopped_cleanly = Arc::new(AtomicBool::new(false));
    let handle = Supervisor::new("outbox").spawn({
        let ticks = ticks.clone();
        let stopped_cleanly = stopped_cleanly.clone();
        move |mut shutdown| {
            let ticks = ticks.clone();
            let stopped_cleanly = stopped_cleanly.clone();
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.recv() => {
                            stopped_cleanly.store(true, Ordering::SeqCst);
                            return Ok::<(), SmtpError>(());
                        }
                        () = tokio::time::sleep(secs(1)) => {
                            ticks.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
    });
    run_for(ms(10_500)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), 10);

    let asked = Instant::now();
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
    assert_eq!(
        asked.elapsed(),
        Duration::ZERO,
        "no grace period was needed"
    );
    assert!(stopped_cleanly.load(Ordering::SeqCst));
}

/// Sets its flag when dropped: shows that an aborted task's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_that_ignores_the_signal_is_aborted_after_the_grace_period() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handle = Supervisor::new("stubborn").spawn({
        let dropped = dropped.clone();
        move |_ignored| {
            let guard = DropFlag(dropped.clone());
            async move {
                let _guard = guard;
                for _ in 0_u64.. {
                    tokio::time::sleep(secs(1)).await;
                }
                Ok::<(), SmtpError>(())
            }
        }
    });
    run_for(secs(3)).await;

    let asked = Instant::now();
    assert_eq!(handle.shutdown().await, Exit::Aborted);
    assert_eq!(asked.elapsed(), secs(10), "the default grace period");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the task was really stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn the_grace_period_is_configurable() {
    let handle = Supervisor::new("stubborn")
        .with_grace(secs(2))
        .spawn(|_| async {
            std::future::pending::<()>().await;
            Ok::<(), SmtpError>(())
        });
    run_for(secs(1)).await;
    let asked = Instant::now();
    assert_eq!(handle.shutdown().await, Exit::Aborted);
    assert_eq!(asked.elapsed(), secs(2));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_consecutive_failures_and_starts_over_after_a_long_run() {
    let backoff = Backoff::exponential(ms(100), 2.0, secs(30))
        .unwrap()
        .with_jitter(Jitter::None);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let origin = Instant::now();
    let handle = Supervisor::new("indexer").with_backoff(backoff).spawn({
        let starts = starts.clone();
        move |mut shutdown| {
            let run = {
                let mut starts = starts.lock().unwrap();
                starts.push(origin.elapsed());
                starts.len()
            };
            async move {
                match run {
                    // Runs 1-3 and 5 fail at once; run 4 works for 61 s first.
                    1..=3 | 5 => Err(SmtpError("boom")),
                    4 => {
                        tokio::time::sleep(secs(61)).await;
                        Err(SmtpError("boom"))
                    }
                    _ => {
                        shutdown.recv().await;
                        Ok(())
                    }
                }
            }
        }
    });
    run_for(secs(120)).await;
    assert_eq!(handle.shutdown().await, Exit::ShutDown);

    let starts = starts.lock().unwrap().clone();
    assert_eq!(
        starts,
        [
            ms(0),
            ms(100),
            ms(300),
            ms(700),
            // 61 s of work, then the backoff starts over at 100 ms …
            ms(700) + secs(61) + ms(100),
            // … and grows again.
            ms(700) + secs(61) + ms(300),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_the_backoff_wait_does_not_restart() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("email")
        .with_backoff(Backoff::constant(secs(10)))
        .with_monitor(m.clone())
        .spawn({
            let runs = runs.clone();
            move |_| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err(SmtpError("down")) }
            }
        });
    run_for(secs(5)).await;
    let asked = Instant::now();
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(errors_for(&m, "SmtpError@worker:email"), 1);
    assert_eq!(restarted_heals(&m), 0, "no restart happened");
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_signal_is_recorded_but_not_restarted() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("email").with_monitor(m.clone()).spawn({
        let runs = runs.clone();
        move |mut shutdown| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                shutdown.recv().await;
                Err(SmtpError("could not flush the outbox"))
            }
        }
    });
    run_for(secs(1)).await;
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(errors_for(&m, "SmtpError@worker:email"), 1);
    assert_eq!(restarted_heals(&m), 0);
}

#[tokio::test(start_paused = true)]
async fn zero_restarts_gives_up_at_the_first_failure_with_a_truncated_panic_message() {
    let m = monitor();
    let handle = Supervisor::new("once")
        .with_intensity(0, secs(60))
        .unwrap()
        .with_escalation(Escalation::Stop)
        .with_monitor(m.clone())
        .spawn(|_| async { panic_with("x".repeat(500)) });
    let Exit::GaveUp {
        restarts,
        last_error,
    } = handle.wait().await
    else {
        panic!("expected GaveUp");
    };
    assert_eq!(restarts, 0);
    assert_eq!(
        last_error.chars().count(),
        201,
        "200 characters and an ellipsis"
    );
    assert!(last_error.ends_with('…'));
    assert_eq!(errors_for(&m, "Panic@worker:once"), 1);
    assert_eq!(m.status(), Status::Critical);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_factory_is_a_failure_like_any_other() {
    let m = monitor();
    let calls = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("factory").with_monitor(m.clone()).spawn({
        let calls = calls.clone();
        move |mut shutdown| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("config not loaded yet");
            }
            async move {
                shutdown.recv().await;
                Ok::<(), SmtpError>(())
            }
        }
    });
    run_for(secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(errors_for(&m, "Panic@worker:factory"), 1);
    assert_eq!(restarted_heals(&m), 1);
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
}

#[tokio::test(start_paused = true)]
async fn a_non_string_panic_payload_is_described() {
    let handle = Supervisor::new("odd")
        .with_intensity(0, secs(1))
        .unwrap()
        .with_escalation(Escalation::Stop)
        .spawn(|_| async { panic_with(42_u32) });
    assert_eq!(
        handle.wait().await,
        Exit::GaveUp {
            restarts: 0,
            last_error: "panic with a non-string payload".into()
        }
    );
}

#[test]
fn misconfigured_intensity_is_rejected() {
    let zero = Supervisor::new("x")
        .with_intensity(3, Duration::ZERO)
        .unwrap_err();
    assert!(zero.message().contains("window"), "{zero}");
    let huge = Supervisor::new("x")
        .with_intensity(MAX_RESTARTS_LIMIT + 1, secs(60))
        .unwrap_err();
    assert!(huge.message().contains("max restarts"), "{huge}");
    assert!(
        Supervisor::new("x")
            .with_intensity(MAX_RESTARTS_LIMIT, secs(60))
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_on_stops_the_worker_when_the_signal_fires() {
    let handle = Supervisor::new("outbox").spawn(|mut shutdown| async move {
        shutdown.recv().await;
        Ok::<(), SmtpError>(())
    });
    let started = Instant::now();
    let exit = handle.shutdown_on(tokio::time::sleep(secs(30))).await;
    assert_eq!(exit, Exit::ShutDown);
    assert_eq!(started.elapsed(), secs(30));
}

#[tokio::test(start_paused = true)]
async fn shutdown_on_returns_early_when_the_worker_ends_by_itself() {
    let handle = Supervisor::new("once").spawn(|_| async {
        tokio::time::sleep(secs(2)).await;
        Ok::<(), SmtpError>(())
    });
    let started = Instant::now();
    let exit = handle.shutdown_on(std::future::pending::<()>()).await;
    assert_eq!(exit, Exit::Completed);
    assert_eq!(started.elapsed(), secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_detaches_the_worker() {
    let ticks = Arc::new(AtomicU32::new(0));
    let handle = Supervisor::new("detached").spawn({
        let ticks = ticks.clone();
        move |mut shutdown| {
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.recv() => return Ok::<(), SmtpError>(()),
                        () = tokio::time::sleep(secs(1)) => { ticks.fetch_add(1, Ordering::SeqCst); }
                    }
                }
            }
        }
    });
    drop(handle);
    run_for(ms(5_500)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        5,
        "still running, signal never fired"
    );
}

#[tokio::test(start_paused = true)]
async fn spawning_again_clears_the_critical_mark_of_a_worker_that_gave_up() {
    let m = monitor();
    let config = Supervisor::new("email")
        .with_intensity(0, secs(60))
        .unwrap()
        .with_escalation(Escalation::Stop)
        .with_monitor(m.clone());
    let failing = config.clone().spawn(|_| async { Err(SmtpError("down")) });
    assert!(matches!(failing.wait().await, Exit::GaveUp { .. }));
    assert_eq!(m.status(), Status::Critical);

    let fixed = config.spawn(|mut shutdown| async move {
        shutdown.recv().await;
        Ok::<(), SmtpError>(())
    });
    assert_eq!(m.status(), Status::Healthy);
    assert_eq!(fixed.shutdown().await, Exit::ShutDown);
}

#[tokio::test(start_paused = true)]
async fn the_signal_reports_and_resolves_once_requested() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = Supervisor::new("probe").spawn({
        let seen = seen.clone();
        move |mut shutdown| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(shutdown.is_shutdown());
                let sub_task = shutdown.clone();
                shutdown.recv().await;
                seen.lock().unwrap().push(sub_task.is_shutdown());
                // Resolves at once once requested.
                shutdown.recv().await;
                Ok::<(), SmtpError>(())
            }
        }
    });
    run_for(secs(1)).await;
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
    assert_eq!(*seen.lock().unwrap(), [false, true]);
}

/// Sends a real SIGTERM to this test process: safe because the handler is
/// installed before the signal is sent (it is installed when
/// `ctrl_c_or_terminate` is called, not when it is first polled).
#[cfg(unix)]
#[tokio::test]
async fn ctrl_c_or_terminate_resolves_on_sigterm() {
    let signal = ctrl_c_or_terminate();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    tokio::time::timeout(secs(10), signal)
        .await
        .expect("SIGTERM resolves the future");
}

/// The default escalation has no parent to give up to: past the intensity
/// the worker keeps being restarted at the backoff's ceiling, reported
/// degraded (never critical, never a readiness failure), and the condition
/// goes once a run lasts `stable_after`.
#[tokio::test(start_paused = true)]
async fn by_default_a_worker_past_its_intensity_keeps_restarting_and_recovers() {
    let m = monitor();
    let runs = Arc::new(AtomicU32::new(0));
    let broken = Arc::new(AtomicBool::new(true));
    let handle = Supervisor::new("outbox")
        .with_intensity(3, secs(60))
        .unwrap()
        .with_random(Arc::new(crate::retry::SeededRandom::new(7)))
        .with_monitor(m.clone())
        .spawn({
            let (runs, broken) = (runs.clone(), broken.clone());
            move |mut shutdown| {
                runs.fetch_add(1, Ordering::SeqCst);
                let broken = broken.load(Ordering::SeqCst);
                async move {
                    if broken {
                        return Err(SmtpError("bad row"));
                    }
                    shutdown.recv().await;
                    Ok(())
                }
            }
        });
    // Ten minutes of failing: restarts go on, at most every 30 s or so.
    run_for(secs(600)).await;
    assert!(!handle.is_finished(), "never gives up");
    let runs_after_ten_minutes = runs.load(Ordering::SeqCst);
    assert!(
        (4 + 600 / 30..=4 + 600 / 15).contains(&runs_after_ten_minutes),
        "{runs_after_ten_minutes} runs"
    );
    let (status, reasons) = m.status_with_reasons();
    assert_eq!(status, Status::Degraded);
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("worker 'outbox' failed 4 times in 60s: smtp: bad row")),
        "{reasons:?}"
    );
    assert!(
        m.is_ready(),
        "a struggling worker is not a readiness failure"
    );

    // Fixed (the bad row is gone): the next restart runs, and after
    // `stable_after` (10 s) the condition is cleared.
    broken.store(false, Ordering::SeqCst);
    run_for(secs(41)).await;
    let (status, reasons) = m.status_with_reasons();
    assert!(
        !reasons.iter().any(|r| r.contains("worker 'outbox'")),
        "{reasons:?}"
    );
    assert_ne!(status, Status::Critical);
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
}

/// Failures while a dependency's check fails are an outage, not a crash:
/// with an intensity of one restart and the `Stop` escalation, a two-minute
/// outage still never gives up; the worker says what it waits for, and runs
/// again within one capped backoff of the dependency's return.
#[tokio::test(start_paused = true)]
async fn failures_while_a_dependency_is_down_do_not_count_against_the_intensity() {
    let m = monitor();
    let database_up = Arc::new(AtomicBool::new(false));
    m.register_check("database", crate::health::CheckOptions::default(), {
        let up = database_up.clone();
        move || {
            let up = up.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused".to_owned())
                }
            }
        }
    });
    let backoff = Backoff::exponential(ms(100), 2.0, secs(5)).unwrap();
    let delivered = Arc::new(AtomicBool::new(false));
    let handle = Supervisor::new("outbox")
        .with_intensity(1, secs(60))
        .unwrap()
        .with_escalation(Escalation::Stop)
        .with_backoff(backoff)
        .with_random(Arc::new(crate::retry::SeededRandom::new(7)))
        .with_monitor(m.clone())
        .depends_on("database")
        .spawn({
            let (up, delivered) = (database_up.clone(), delivered.clone());
            move |mut shutdown| {
                let (up, delivered) = (up.load(Ordering::SeqCst), delivered.clone());
                async move {
                    if !up {
                        return Err(SmtpError("database unreachable"));
                    }
                    delivered.store(true, Ordering::SeqCst);
                    shutdown.recv().await;
                    Ok(())
                }
            }
        });
    run_for(secs(120)).await;
    assert!(
        !handle.is_finished(),
        "an outage never exhausts the intensity"
    );
    assert!(restarted_heals(&m) > 20, "kept trying");
    assert_eq!(
        errors_for(&m, "SmtpError@worker:outbox"),
        1,
        "one outage, one error: no repeated-error alert that outlives it"
    );
    let (status, reasons) = m.status_with_reasons();
    assert_eq!(
        status,
        Status::Critical,
        "the database check itself is critical"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("worker 'outbox' is waiting for 'database'")),
        "{reasons:?}"
    );

    database_up.store(true, Ordering::SeqCst);
    run_for(secs(5)).await;
    assert!(
        delivered.load(Ordering::SeqCst),
        "running within one capped backoff"
    );
    run_for(secs(10)).await;
    m.run_checks().await;
    let (status, reasons) = m.status_with_reasons();
    assert_eq!(status, Status::Healthy, "{reasons:?}");
    assert_eq!(handle.shutdown().await, Exit::ShutDown);
}
