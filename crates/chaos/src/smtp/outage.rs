//! Scheduled SMTP outages: a task that flips an [`SmtpServer`] down and up
//! following the plan, and what it did.
//!
//! Separate from the server because the server only knows how to be up or
//! down; when and for how long is the fault plan's business, and the driver
//! needs the schedule's numbers (outages started, time down) for its
//! counters.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::SmtpServer;
use crate::plan::SmtpPlan;

impl SmtpServer {
    /// Starts flipping the server down and up following `plan`: periods of a
    /// random length within `plan.period`, each one down with probability
    /// `plan.down_fraction`. Stop it with [`Outage::stop`] (which leaves the
    /// server up).
    pub fn start_outages(&self, plan: &SmtpPlan, seed: u64) -> Outage {
        let server = self.clone();
        let plan = plan.clone();
        let stats = Arc::new(Mutex::new(OutageStats::default()));
        let task_stats = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            loop {
                let down = rng.f64() < plan.down_fraction;
                let period = plan.period.sample(&mut rng);
                if server.set_up(!down).await.is_err() {
                    // The port could not be re-bound: retry shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let began = Instant::now();
                {
                    let mut s = task_stats.lock().expect("outage stats");
                    if down {
                        s.outages += 1;
                        s.down_time += period;
                        s.windows.push((began, began + period));
                    } else {
                        s.up_time += period;
                    }
                }
                tokio::time::sleep(period).await;
            }
        });
        Outage {
            server: self.clone(),
            stats,
            task: Some(task),
        }
    }
}

/// What an [`Outage`] did (scheduled times; the last period may be cut short).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutageStats {
    /// Down periods started.
    pub outages: u64,
    /// Scheduled time down.
    pub down_time: Duration,
    /// Scheduled time up.
    pub up_time: Duration,
    /// Each down period: when it began and when it ended (the last one
    /// ends when the schedule was stopped, if that was earlier).
    pub windows: Vec<(Instant, Instant)>,
}

/// A task flipping an [`SmtpServer`] up and down. Dropping it stops the
/// flipping (the server keeps its current state).
#[derive(Debug)]
pub struct Outage {
    server: SmtpServer,
    stats: Arc<Mutex<OutageStats>>,
    task: Option<JoinHandle<()>>,
}

impl Outage {
    /// What it did so far.
    pub fn stats(&self) -> OutageStats {
        self.stats.lock().expect("outage stats").clone()
    }

    /// Stops flipping and brings the server back up.
    pub async fn stop(mut self) -> io::Result<OutageStats> {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.server.set_up(true).await?;
        let mut stats = self.stats();
        let now = Instant::now();
        for window in &mut stats.windows {
            window.1 = window.1.min(now);
        }
        Ok(stats)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
