//! The controlled-delay rule for a queue you drain yourself: a pool of
//! worker threads (password hashing, image resizing, PDF rendering) fed
//! from a bounded channel.
//!
//! [`AdaptiveLimit::with_wait`](super::AdaptiveLimit::with_wait) makes
//! requests wait for a *slot*; in front of a worker pool that costs a
//! hand-off each time a job ends: the slot goes back on the worker
//! thread, the waiting request's task has to be scheduled, build its job
//! and queue it, and meanwhile the worker idles. Measured on cozmic's
//! hashing threads (two cores, a login rush at 3× what they serve), that
//! bubble cost 5–10 % of the goodput. Applied where the queue is drained,
//! the same rule has no hand-off at all: each job carries the time it was
//! queued, and a worker that takes a job that waited too long sheds it (in
//! microseconds: the requester is answered "busy") and takes the next one.
//! No worker idles while a fresh job waits.
//!
//! The rule is CoDel's as Facebook applies it to server queues ("controlled
//! delay", *Fail at Scale*, 2015), with the same overload signals as the
//! limit's wait: a job may have waited up to `interval` (a burst, which
//! drains) unless the queue is overloaded, when only up to `target`. It
//! counts as overloaded when no job has been taken within `target` of its
//! queueing (and no worker found the queue empty) for a whole `interval`,
//! or the workers were busy at least 90 % of the last `interval`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::busy::BusyWindow;
use crate::ConfigError;
use crate::observe::{self, Event, Observer};

/// The controlled-delay rule for a queue drained by `workers` threads
/// (CoDel as Facebook applies it to server queues, *Fail at Scale*, 2015).
/// Each job carries the time it was queued; a worker that takes a job asks
/// [`admit`](Self::admit), and sheds the job (in microseconds: the
/// requester is answered "busy") when it waited longer than it may, then
/// takes the next one. A job may wait up to `interval` (a burst, which
/// drains) unless the queue is overloaded, when only up to `target`: no
/// job was taken within `target` of its queueing (and no worker found the
/// queue empty) for a whole `interval`, or the workers were busy at least
/// 90 % of the last `interval`. The same rule as
/// [`AdaptiveLimit::with_wait`](super::AdaptiveLimit::with_wait), applied
/// where the queue is drained, so no worker idles while a fresh job waits
/// (a limit in front of a worker pool hands each freed slot to a waiting
/// task first). Share it (`Arc`) between the workers.
///
/// ```
/// use std::sync::{Arc, mpsc};
/// use std::time::{Duration, Instant};
/// use selfheal::web::ControlledDelay;
///
/// let rule = Arc::new(ControlledDelay::new(
///     Duration::from_millis(10),
///     Duration::from_secs(1),
///     1,
/// )?);
/// let (queue, jobs) = mpsc::sync_channel::<(Instant, u32)>(64);
/// let worker = {
///     let rule = rule.clone();
///     std::thread::spawn(move || {
///         let mut served = 0;
///         while let Ok((queued_at, job)) = jobs.recv() {
///             if !rule.admit(queued_at) {
///                 continue; // answer the requester "busy, try again"
///             }
///             let started = Instant::now();
///             served += job; // the expensive part
///             rule.worked(started.elapsed());
///         }
///         served
///     })
/// };
/// queue.send((Instant::now(), 1)).unwrap();
/// drop(queue);
/// assert_eq!(worker.join().unwrap(), 1);
/// assert_eq!(rule.shed(), 0);
/// # Ok::<(), selfheal::ConfigError>(())
/// ```
pub struct ControlledDelay {
    target: Duration,
    interval: Duration,
    workers: u32,
    epoch: Instant,
    /// When (ms since `epoch`) a worker last found the queue empty or took
    /// a job that had waited less than `target`.
    good_ms: AtomicU64,
    busy: BusyWindow,
    shed: AtomicU64,
    running: AtomicU32,
    /// When (ms since `epoch`) the last report went out.
    reported_ms: AtomicU64,
    report: Option<(String, Arc<dyn Observer>)>,
}

impl fmt::Debug for ControlledDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlledDelay")
            .field("target", &self.target)
            .field("interval", &self.interval)
            .field("workers", &self.workers)
            .field("running", &self.running.load(Ordering::Relaxed))
            .field("shed", &self.shed())
            .finish_non_exhaustive()
    }
}

impl ControlledDelay {
    /// The rule for a queue drained by `workers` threads: a job may wait
    /// up to `interval`, only up to `target` while the queue is
    /// overloaded. Rejected unless `0 < target ≤ interval ≤ 10 s` and
    /// `workers > 0`.
    ///
    /// How to choose `target`: a fraction of the time a worker takes for
    /// one job. Shorter, and under overload the workers idle whenever no
    /// job arrived within the last `target` (they shed every older one);
    /// longer, and admitted jobs wait longer. Measured on cozmic's 17 ms
    /// hashes at 3× overload, one run each: 101.8 logins/s with 5 ms,
    /// 109.7/s with 10 ms (no rule at all: 109.7/s, with a p99 22× the
    /// unloaded one, against 1.6× with the rule).
    pub fn new(target: Duration, interval: Duration, workers: u32) -> Result<Self, ConfigError> {
        if target.is_zero() || target > interval || interval > super::wait::MAX_INTERVAL {
            return Err(ConfigError::new(format!(
                "controlled delay needs 0 < target <= interval <= 10 s, got {target:?} and {interval:?}"
            )));
        }
        if workers == 0 {
            return Err(ConfigError::new(
                "controlled delay needs at least one worker",
            ));
        }
        Ok(Self {
            target,
            interval,
            workers,
            epoch: Instant::now(),
            good_ms: AtomicU64::new(0),
            busy: BusyWindow::default(),
            shed: AtomicU64::new(0),
            running: AtomicU32::new(0),
            reported_ms: AtomicU64::new(0),
            report: None,
        })
    }

    /// Reports to `observer`, at most once an `interval` while jobs come,
    /// as a limiter called `name`: [`Event::LimitChanged`] with the workers
    /// as the limit, the jobs running and the jobs shed so far (so the
    /// dashboard and `/metrics` show it beside the adaptive limits).
    #[must_use]
    pub fn with_observer(mut self, name: impl Into<String>, observer: Arc<dyn Observer>) -> Self {
        self.report = Some((name.into(), observer));
        self
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether a job queued at `queued_at`, taken by a worker now, may run;
    /// `false`: it waited too long, answer it as shed (and count it).
    pub fn admit(&self, queued_at: Instant) -> bool {
        let now = Instant::now();
        let waited = now.saturating_duration_since(queued_at);
        let now_ms = self.ms(now);
        let admitted = if waited < self.target {
            self.good_ms.store(now_ms, Ordering::Relaxed);
            true
        } else {
            let standing = now_ms.saturating_sub(self.good_ms.load(Ordering::Relaxed))
                > self.interval.as_millis() as u64;
            let overloaded = standing || self.busy.saturated(now_ms, self.workers, self.interval);
            waited
                <= if overloaded {
                    self.target
                } else {
                    self.interval
                }
        };
        if admitted {
            self.running.fetch_add(1, Ordering::Relaxed);
        } else {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
        self.maybe_report(now_ms);
        admitted
    }

    /// At most once an interval, the state to the observer.
    fn maybe_report(&self, now_ms: u64) {
        let Some((name, observer)) = &self.report else {
            return;
        };
        let last = self.reported_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < self.interval.as_millis() as u64
            || self
                .reported_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        observe::emit(
            Some(observer.as_ref()),
            &Event::LimitChanged {
                limiter: name,
                limit: self.workers,
                in_flight: self.running.load(Ordering::Relaxed),
                shed: self.shed(),
            },
        );
    }

    /// A worker found the queue empty: no queue stands.
    pub fn idle(&self) {
        self.good_ms
            .store(self.ms(Instant::now()), Ordering::Relaxed);
    }

    /// A worker spent `busy` on an admitted job (what tells an overload
    /// from a clump of arrivals).
    /// Call it once for every job [`admit`](Self::admit) let run, when it
    /// ends (panicked or not).
    pub fn worked(&self, busy: Duration) {
        self.busy.add(busy);
        let _ = self
            .running
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Jobs shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}
