//! The ledger's background work: copy closed buckets, flush them, beat,
//! evaluate the fleet's alerts, prune; and the fallback when the database
//! is away.
//!
//! One supervised task does all of it, in that order, once per flush
//! interval. Nothing here is on a request's path: the buffer is a
//! `VecDeque` behind a mutex only this task and the report touch, and a
//! database that hangs holds this task, nobody else.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::time::floor;
use super::write::{self, Beat};
use super::{AttemptCount, BucketRecord, HOUR_MS, Ledger, Monitor};
use crate::health::{LedgerStats, Status};
use crate::supervise::{SupervisedHandle, Supervisor};
use crate::sync::lock;

/// The monitor condition set while the database is unreachable.
pub const CONDITION: &str = "health.ledger";

/// What this instance recorded that is not in the database yet.
#[derive(Debug, Default)]
pub(super) struct Unflushed {
    /// Counted errors per fingerprint.
    pub(super) errors: HashMap<String, u64>,
    pub(super) requests: u64,
    pub(super) failed: u64,
}

#[derive(Debug)]
pub(super) struct State {
    /// The first monitor epoch not copied yet.
    next_epoch: u32,
    pending: VecDeque<BucketRecord>,
    stats: LedgerStats,
    last_prune_ms: i64,
    /// Retry tallies waiting for the next closed bucket.
    carry: Vec<AttemptCount>,
}

impl State {
    pub(super) fn new(monitor: &Monitor, instance: &str, fleet_alerts: bool) -> Self {
        Self {
            next_epoch: monitor
                .epoch_now()
                .saturating_sub(monitor.inner.buckets.saturating_sub(1)),
            pending: VecDeque::new(),
            stats: LedgerStats {
                instance: instance.to_owned(),
                fleet_alerts,
                ..LedgerStats::default()
            },
            last_prune_ms: i64::MIN / 2,
            carry: Vec::new(),
        }
    }
}

impl Ledger {
    /// Starts the ledger's supervised task (named `health_ledger` on the
    /// monitor): every flush interval it copies the monitor's closed
    /// buckets, writes them, heartbeats, evaluates the fleet's alerts and,
    /// once an hour, prunes. On shutdown it flushes what is closed and marks
    /// the instance stopped (a stopped instance is not "silent").
    #[must_use = "dropping the handle detaches the worker: it can no longer be shut down"]
    pub fn start(&self) -> SupervisedHandle {
        let monitor = &self.inner.monitor;
        monitor.keep_attempts();
        if self.inner.fleet_alerts {
            monitor.inner.fleet_alerts.store(true, Ordering::Release);
        }
        let ledger = self.clone();
        Supervisor::new("health_ledger")
            .with_monitor(monitor.clone())
            .spawn(move |mut shutdown| {
                let ledger = ledger.clone();
                async move {
                    let mut ticker = tokio::time::interval(ledger.inner.flush_every);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    // Alerts are evaluated more often than buckets close
                    // (every 5 s at most, the monitor's interval at least).
                    let every = ledger
                        .inner
                        .monitor
                        .inner
                        .evaluation_interval
                        .max(Duration::from_secs(5))
                        .min(ledger.inner.flush_every);
                    let mut evaluator = tokio::time::interval(every);
                    evaluator.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut healthy = false;
                    loop {
                        tokio::select! {
                            () = shutdown.recv() => {
                                ledger.stop_at(ledger.now_ms()).await;
                                return Ok::<(), Infallible>(());
                            }
                            _ = ticker.tick() => {
                                healthy = ledger.tick_at(ledger.now_ms()).await;
                            }
                            _ = evaluator.tick(), if healthy && ledger.inner.fleet_alerts => {
                                let now = ledger.now_ms();
                                if let Err(error) = ledger.evaluate_fleet_at(now).await {
                                    ledger.fall_back(&error);
                                    healthy = false;
                                }
                            }
                        }
                    }
                }
            })
    }

    /// One round now (see [`Ledger::tick_at`]).
    pub async fn flush(&self) -> bool {
        self.tick_at(self.now_ms()).await
    }

    /// One round at `now_ms`: copies the closed buckets into the buffer,
    /// heartbeats, writes the buffer, evaluates the fleet's alerts, prunes
    /// (at most hourly). Returns whether the database took everything; on
    /// failure the buckets stay buffered, the monitor's alerts fall back to
    /// this instance's view, and a degraded condition says so.
    pub async fn tick_at(&self, now_ms: i64) -> bool {
        self.collect();
        let outcome = async {
            self.beat(now_ms, false).await?;
            self.write_pending().await?;
            if self.inner.fleet_alerts {
                self.evaluate_fleet_at(now_ms).await?;
            }
            let due = now_ms - lock(&self.inner.state).last_prune_ms >= HOUR_MS;
            if due {
                write::prune(
                    &self.inner.pool,
                    self.inner.width_ms,
                    &self.inner.retention,
                    now_ms,
                )
                .await?;
                lock(&self.inner.state).last_prune_ms = now_ms;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        let monitor = &self.inner.monitor;
        let ok = outcome.is_ok();
        let stats = {
            let mut state = lock(&self.inner.state);
            state.stats.pending_buckets = state.pending.len() as u64;
            match outcome {
                Ok(()) => {
                    state.stats.last_error = None;
                    state.stats.fleet_alerts = self.inner.fleet_alerts;
                }
                Err(error) => {
                    state.stats.failed_flushes += 1;
                    state.stats.last_error = Some(crate::redact::redact(&error.to_string()));
                    state.stats.fleet_alerts = false;
                }
            }
            state.stats.clone()
        };
        if ok {
            monitor.clear_condition(CONDITION);
            if self.inner.fleet_alerts {
                monitor.inner.fleet_alerts.store(true, Ordering::Release);
            }
        } else {
            self.local_view(&stats);
        }
        *lock(&monitor.inner.ledger) = Some(stats);
        ok
    }

    /// A fleet evaluation failed between flushes: the same fallback as a
    /// failed flush.
    fn fall_back(&self, error: &sqlx::Error) {
        let stats = {
            let mut state = lock(&self.inner.state);
            state.stats.failed_flushes += 1;
            state.stats.last_error = Some(crate::redact::redact(&error.to_string()));
            state.stats.fleet_alerts = false;
            state.stats.clone()
        };
        self.local_view(&stats);
        *lock(&self.inner.monitor.inner.ledger) = Some(stats);
    }

    /// Alerts from this instance's own view, and a condition that says so.
    fn local_view(&self, stats: &LedgerStats) {
        let monitor = &self.inner.monitor;
        monitor.inner.fleet_alerts.store(false, Ordering::Release);
        lock(&monitor.inner.fleet_firing).clear();
        monitor.set_condition(
            CONDITION,
            Status::Degraded,
            format!(
                "health ledger: database unreachable; alerts from this instance's own view \
                 ({} buckets waiting, {} dropped)",
                stats.pending_buckets, stats.dropped_buckets
            ),
        );
    }

    /// Writes an explicit bucket for this instance (an import, a test with
    /// its own timeline); `false` if a bucket at or after its start was
    /// written already. Registers the instance first.
    pub async fn write_at(&self, bucket: &BucketRecord, now_ms: i64) -> Result<bool, sqlx::Error> {
        self.beat(now_ms, false).await?;
        write::write_bucket(
            &self.inner.pool,
            &self.inner.instance,
            &self.inner.version,
            self.inner.width_ms,
            bucket,
        )
        .await
    }

    /// Deletes what is past retention at `now_ms` (the task does it hourly).
    pub async fn prune_at(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        write::prune(
            &self.inner.pool,
            self.inner.width_ms,
            &self.inner.retention,
            now_ms,
        )
        .await
    }

    /// Flushes what is closed and marks the instance stopped.
    pub async fn stop_at(&self, now_ms: i64) {
        self.collect();
        let done = async {
            self.write_pending().await?;
            self.beat(now_ms, true).await
        }
        .await;
        if let Err(error) = done {
            tracing::warn!(target: "selfheal", %error, "health ledger: last flush failed");
        }
        self.inner
            .monitor
            .inner
            .fleet_alerts
            .store(false, Ordering::Release);
    }

    /// This instance's counts not in the database yet: the buffered
    /// buckets and the open one. Added to the fleet's counts, so that an
    /// alert does not wait for its bucket to close and be written.
    pub(super) fn unflushed(&self) -> Unflushed {
        let monitor = &self.inner.monitor;
        let now = monitor.epoch_now();
        let state = lock(&self.inner.state);
        let mut out = Unflushed::default();
        let open = (state.next_epoch..=now).map(|epoch| monitor.snapshot(epoch, 0));
        let open: Vec<BucketRecord> = open.collect();
        for bucket in state.pending.iter().chain(open.iter()) {
            out.requests += bucket.requests;
            out.failed += bucket.failed;
            for e in &bucket.errors {
                *out.errors.entry(e.fingerprint.clone()).or_default() += e.counted;
            }
        }
        out
    }

    /// Copies every closed bucket not copied yet into the buffer.
    fn collect(&self) {
        let monitor = &self.inner.monitor;
        let now = monitor.epoch_now();
        let ring = monitor.inner.buckets;
        let width = self.inner.width_ms;
        let mut state = lock(&self.inner.state);
        let mut attempts = std::mem::take(&mut state.carry);
        merge(&mut attempts, monitor.drain_attempts());
        while state.next_epoch < now {
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            if now - epoch >= ring {
                // Overwritten before it was copied (the task did not run
                // for longer than the monitor's horizon).
                state.stats.dropped_buckets += 1;
                continue;
            }
            let start = floor(
                self.inner.monitor_origin_ms + i64::from(epoch) * width,
                width,
            );
            let mut record = monitor.snapshot(epoch, start);
            if epoch + 1 == now {
                record.attempts = std::mem::take(&mut attempts);
            }
            if !record.is_empty() {
                state.pending.push_back(record);
            }
        }
        // No bucket closed since the last round: the tallies wait for the
        // next one.
        state.carry = attempts;
        while state.pending.len() > self.inner.buffer {
            state.pending.pop_front();
            state.stats.dropped_buckets += 1;
        }
        state.stats.pending_buckets = state.pending.len() as u64;
    }

    async fn write_pending(&self) -> Result<(), sqlx::Error> {
        loop {
            let Some(bucket) = lock(&self.inner.state).pending.pop_front() else {
                return Ok(());
            };
            let written = write::write_bucket(
                &self.inner.pool,
                &self.inner.instance,
                &self.inner.version,
                self.inner.width_ms,
                &bucket,
            )
            .await;
            let mut state = lock(&self.inner.state);
            match written {
                Ok(_) => state.stats.flushed_buckets += 1,
                Err(error) => {
                    state.pending.push_front(bucket);
                    return Err(error);
                }
            }
        }
    }

    async fn beat(&self, now_ms: i64, stopped: bool) -> Result<(), sqlx::Error> {
        let (status, reasons) = self.inner.monitor.status_with_reasons();
        let dropped = lock(&self.inner.state).stats.dropped_buckets;
        let reasons = crate::health::truncate(&reasons.join("; "), 1000);
        let beat = Beat {
            instance: &self.inner.instance,
            version: &self.inner.version,
            host: &self.inner.host,
            started_ms: self.inner.started_ms,
            heartbeat_ms: self.inner.flush_every.as_millis().min(i64::MAX as u128) as i64,
            status: status.as_str(),
            reasons: &reasons,
            dropped,
            stopped,
        };
        write::heartbeat(&self.inner.pool, &beat, now_ms).await
    }
}

/// Adds `more` into `into`, one tally per (operation, outcome, cause, attempt).
fn merge(into: &mut Vec<AttemptCount>, more: Vec<AttemptCount>) {
    for a in more {
        match into.iter_mut().find(|b| {
            b.operation == a.operation
                && b.outcome == a.outcome
                && b.cause == a.cause
                && b.attempt == a.attempt
        }) {
            Some(b) => {
                b.count += a.count;
                b.waited_ms = b.waited_ms.saturating_add(a.waited_ms);
            }
            None => into.push(a),
        }
    }
}
