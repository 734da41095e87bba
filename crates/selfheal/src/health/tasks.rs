//! The monitor's background work: registered checks, the evaluation
//! ticker (which also drives the coarse clock of the record path), and
//! alert delivery to the sinks.
//!
//! All of it holds the monitor weakly: dropping the last [`Monitor`] ends
//! every task, and none of it ever runs on a request's path.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::check::Check;
use super::{Alert, CheckOptions, Inner, Monitor};
use crate::observe::{self, Event, Failure};
use crate::sync::lock;

impl Monitor {
    /// Registers a check: `probe` runs every `options.interval` (bounded by
    /// `options.timeout`), and its cached result feeds the status and
    /// `/readyz`. When the monitor was started, the probe's task starts now
    /// and runs once at once.
    pub fn register_check<F, Fut>(
        &self,
        name: impl Into<Cow<'static, str>>,
        options: CheckOptions,
        probe: F,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check = Arc::new(Check::new(
            name.into(),
            options,
            Box::new(move || Box::pin(probe())),
        ));
        lock(&self.inner.checks).push(check.clone());
        if self.inner.started.load(Ordering::Acquire) {
            spawn_check(Arc::downgrade(&self.inner), check);
        }
    }

    /// A watch on the registered check `name`: its last verdict in one
    /// atomic load, for a policy that acts on it (the HTTP middleware's
    /// [`with_check`](crate::http::Builder::with_check)). `None` if no
    /// check has that name yet: register the check first.
    ///
    /// ```
    /// use selfheal::health::{CheckOptions, Monitor};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let monitor = Monitor::builder().with_global(false).build().unwrap();
    /// monitor.register_check("payments", CheckOptions::default(), || async {
    ///     Err::<(), _>("connection refused".to_owned())
    /// });
    /// let watch = monitor.watch_check("payments").unwrap();
    /// assert!(!watch.is_failing()); // not run yet: no verdict
    /// monitor.run_checks().await;
    /// assert!(watch.is_failing());
    /// assert!(monitor.watch_check("nothing").is_none());
    /// # }
    /// ```
    pub fn watch_check(&self, name: &str) -> Option<super::CheckWatch> {
        lock(&self.inner.checks)
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.watch())
    }

    /// Runs every registered check once, now. Returns whether all passed.
    pub async fn run_checks(&self) -> bool {
        let checks: Vec<_> = lock(&self.inner.checks).clone();
        let mut all = true;
        for check in checks {
            all &= check.run().await;
        }
        all
    }

    /// Runs the registered check `name` once, now (its cached result is
    /// updated). `None` if no check has that name.
    ///
    /// A supervisor uses this to ask whether a worker failed because a
    /// dependency it [`depends_on`](crate::supervise::Supervisor::depends_on)
    /// is down, rather than because of a bug in the worker.
    pub async fn run_check(&self, name: &str) -> Option<bool> {
        let check = lock(&self.inner.checks)
            .iter()
            .find(|c| c.name == name)
            .cloned()?;
        Some(check.run().await)
    }

    pub(super) fn spawn_tasks(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        for check in lock(&self.inner.checks).iter() {
            spawn_check(weak.clone(), check.clone());
        }
        let interval = self.inner.evaluation_interval;
        let tick = interval
            .min(Duration::from_millis(250))
            .min(Duration::from_nanos(self.inner.width_nanos / 4))
            .max(Duration::from_millis(1));
        let evaluator = weak.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_evaluation: Option<Instant> = None;
            loop {
                ticker.tick().await;
                let Some(inner) = evaluator.upgrade() else {
                    return;
                };
                let monitor = Monitor { inner };
                monitor.tick_coarse_clock();
                if last_evaluation.is_none_or(|t| t.elapsed() >= interval) {
                    last_evaluation = Some(Instant::now());
                    monitor.evaluate();
                }
            }
        });
        if let Some(rx) = lock(&self.inner.rx).take() {
            tokio::spawn(deliver_alerts(weak, rx));
        }
    }
}

fn spawn_check(inner: Weak<Inner>, check: Arc<Check>) {
    tokio::spawn(async move {
        loop {
            if inner.strong_count() == 0 {
                return;
            }
            check.run().await;
            tokio::time::sleep(check.options.interval).await;
        }
    });
}

async fn deliver_alerts(inner: Weak<Inner>, mut rx: mpsc::Receiver<Alert>) {
    while let Some(alert) = rx.recv().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let monitor = Monitor { inner: strong };
        let sinks = monitor.inner.sinks.clone();
        let mut deliveries = tokio::task::JoinSet::new();
        for sink in sinks {
            let alert = alert.clone();
            let monitor = monitor.clone();
            deliveries.spawn(async move {
                let operation = format!("alert_sink:{}", sink.name());
                let outcome = monitor
                    .inner
                    .sink_policy
                    .retry_named(&operation, || sink.deliver(&alert))
                    .await;
                match outcome {
                    Ok(()) => {
                        monitor
                            .inner
                            .alerts_delivered
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        monitor
                            .inner
                            .delivery_failures
                            .fetch_add(1, Ordering::Relaxed);
                        observe::emit(
                            Some(&monitor),
                            &Event::Error {
                                operation: &operation,
                                failure: Failure {
                                    kind: "AlertSinkError",
                                    message: &error,
                                },
                                client: None,
                            },
                        );
                    }
                }
            });
        }
        drop(monitor);
        while deliveries.join_next().await.is_some() {}
    }
}
