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
//! kept 87–89 % of the peak goodput. Applied where the queue is drained,
//! the same rule has no hand-off at all: each job carries the time it was
//! queued, and a worker that takes a job that waited too long sheds it (in
//! microseconds: the requester is answered "busy") and takes the next one.
//!
//! Three choices differ from the limit's wait, each from a review's model
//! of a two-thread pool at 0.9–3× its capacity:
//!
//! - **A late job is shed only with a job per worker behind it.**
//!   Shedding a stale job helps the jobs behind it; with none behind, it
//!   idles workers as soon as arrivals pause. (CoDel itself never drops
//!   below one packet in the queue; under a heavy overload, below, we do.)
//!   In the unit tests' simulation (two
//!   workers, 17 ms jobs, 10 ms target, Poisson arrivals): shedding any
//!   late job kept 0.89 of capacity at 1.2× load; keeping one job per
//!   worker behind, 0.92 (1.00 at 3×) with a p99 wait of 20 ms at 1.2× and
//!   16 ms at 3×; one more job, 0.95 but 26 ms and 20 ms. The reserve is a
//!   trade between a mild overload's goodput and a heavy one's latency; we
//!   keep the shorter wait, because a pool that must shed is one whose
//!   requesters are already waiting (cozmic's login rush at 3× measured
//!   an accepted p99 of 2.0× the unloaded one with the larger reserve).
//!   What is admitted has waited at most "late" (below), or behind one
//!   job per worker. **Under a heavy overload (twice the workers' time asked) no
//!   job is kept:** arrivals then come faster than jobs end, so a shed
//!   idles a worker for a fraction of a job at most, and the reserve is
//!   only wait. Measured in cozmic's hashing queue at 3×, the reserve was
//!   the largest part of an accepted login's p99 (a queue wait of 12 ms,
//!   against a hash of 18 ms and 5 ms of the rest); in the simulation at
//!   3× the p99 wait falls from 16 ms to the target (10), at 0.995 of
//!   capacity instead of 1.000. Averaged over intervals, the judgement
//!   lags a falling load by about one interval; a quiet spell of two
//!   intervals clears it.
//! - **Late means past the target or half a job, whichever is longer.**
//!   A worker that comes free and finds only late jobs sheds them all and
//!   idles until the next arrival; how often that happens depends on how
//!   many jobs arrive within "late", so with a fixed target it grows with
//!   the job time, and a machine that hashes slower one hour than the
//!   next (11–22 ms on the same host) loses more of its capacity to the
//!   rule. In the simulation at 3× with a 5 ms target: 0.983 of capacity
//!   with 12 ms jobs, 0.952 with 22 ms and 0.932 with 30 ms; with the floor
//!   of half a job, 0.989 for each, at a p99 wait of half a job. The
//!   overload suite measured it in cozmic: a slow hour (22 ms hashes) kept
//!   80 % of the peak with the fixed target against 95 % without any rule.
//! - **Overload is judged on demand, not on work done.** A shed job counts
//!   as busy time (the mean of the jobs that ran), so the workers'
//!   "busy" is what was asked of them. Counting only the work done, the
//!   shedding itself pulled "busy" under the threshold, the next window
//!   let jobs wait the whole interval again, and the rule swung between the
//!   two: at 0.9× load it shed work the pool could serve, with a *worse*
//!   p99 than no rule.
//! - **Overload is the work asked filling all of the workers' time
//!   (averaged over intervals), or a queue that stands**, and "stands"
//!   means no job taken within *two job times* (or `target`, if longer) and
//!   no empty queue for a whole `interval`. CoDel's "no packet left within
//!   `target`" assumes a target well above the time a packet takes; with
//!   10 ms against 17 ms hashes, a 0.9× load has busy spells of over a
//!   second in which no job starts within 10 ms of its queueing, and that
//!   signal shed 2.4 % of a load a plain queue serves with a p99 wait of
//!   140 ms. Demand alone is not enough either: behind a concurrency limit
//!   of 16, an overload reaches the pool as a closed loop of 16 jobs, the
//!   work asked stays just under the workers' time, and every job waited
//!   eight job times (the overload suite measured a p99 ten times the
//!   unloaded one until the standing signal came back, with this meaning).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::busy::{BusyWindow, Judge};
use crate::ConfigError;
use crate::observe::{self, Event, Observer};

/// An overload: the work asked of the workers filled all of their time,
/// on a moving average of intervals (one interval's arrivals wander: at
/// 0.9× load, one second in eight asks more than the workers have).
const SATURATED: Judge = Judge {
    percent: 100,
    smooth: true,
};

/// A heavy overload: the work asked of the workers (averaged as for
/// [`SATURATED`]) was twice their time; no job is kept in reserve.
const HEAVY_PERCENT: u64 = 200;

/// The controlled-delay rule for a queue drained by `workers` threads
/// (CoDel as Facebook applies it to server queues, *Fail at Scale*, 2015).
/// Each job carries the time it was queued; a worker that takes a job asks
/// [`admit`](Self::admit) and either runs it (holding the [`Turn`]) or sheds
/// it (the requester is answered "busy") and takes the next one. A job may
/// have waited up to `interval` (a burst, which drains) unless the queue is
/// overloaded, when only up to `target`, and a late job is shed only if
/// at least one job per worker waits behind it (shedding it otherwise
/// idles workers when arrivals pause), or at once if twice the workers'
/// time is asked. "Up to `target`" is up to half the mean job time where
/// that is longer: a target far below the job time idles the workers. Overloaded: the work asked of the
/// workers (the jobs run, and the jobs shed or [refused](Self::refused)
/// at the mean time of a job), averaged over intervals, filled all of their
/// time; or no job was taken within two job times (or `target`) and no
/// worker found the queue empty for a whole `interval`. Share it (`Arc`)
/// between the workers.
///
/// ```
/// use std::sync::mpsc::{self, TryRecvError};
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
/// use selfheal::web::ControlledDelay;
///
/// let rule = Arc::new(ControlledDelay::new(
///     Duration::from_millis(10),
///     Duration::from_secs(1),
///     1,
/// )?);
/// let (queue, jobs) = mpsc::sync_channel::<(Instant, u32)>(64);
/// queue.send((Instant::now(), 1)).unwrap();
/// drop(queue);
/// let worker = {
///     let rule = rule.clone();
///     std::thread::spawn(move || {
///         let mut served = 0;
///         loop {
///             let (queued_at, job) = match jobs.try_recv() {
///                 Ok(job) => job,
///                 Err(TryRecvError::Empty) => {
///                     rule.idle(); // no queue stands
///                     match jobs.recv() {
///                         Ok(job) => job,
///                         Err(_) => break,
///                     }
///                 }
///                 Err(TryRecvError::Disconnected) => break,
///             };
///             // How many jobs still wait behind this one (a counter the
///             // producers keep; none here).
///             let behind = 0;
///             let Some(turn) = rule.admit(queued_at, behind) else {
///                 continue; // shed: answer the requester "busy, try again"
///             };
///             served += job; // the expensive part
///             drop(turn); // its time counts as the workers' busy time
///         }
///         served
///     })
/// };
/// assert_eq!(worker.join().unwrap(), 1);
/// assert_eq!(rule.shed(), 0);
/// # Ok::<(), selfheal::ConfigError>(())
/// ```
pub struct ControlledDelay {
    target: Duration,
    interval: Duration,
    workers: u32,
    epoch: Instant,
    /// Work asked of the workers: time run, plus the mean job time per shed.
    demand: BusyWindow,
    /// When (ms since `epoch`) a worker last found the queue empty or took
    /// a job that had waited less than two jobs' time (or `target`).
    good_ms: AtomicU64,
    /// Mean time of a job run (µs, moving average; 0 before the first).
    mean_micros: AtomicU64,
    shed: AtomicU64,
    running: AtomicU32,
    /// When (ms since `epoch`) the last report went out, and its shed count.
    reported_ms: AtomicU64,
    reported_shed: AtomicU64,
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

/// A job [admitted](ControlledDelay::admit) to run. Dropping it (when the
/// job ends, panicked or not) counts its time as the workers' busy time.
#[must_use = "dropping the turn at once counts the job as done"]
#[derive(Debug)]
pub struct Turn<'a> {
    rule: &'a ControlledDelay,
    started: Instant,
    ended: bool,
}

impl Turn<'_> {
    /// Ends the turn of a job that did no work (its requester had gone
    /// before it started): it is not counted as the workers' time, nor in
    /// the mean job time, which a run of empty jobs would otherwise pull
    /// toward zero.
    pub fn forget(mut self) {
        self.ended = true;
        self.rule.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Ends the turn at `end` (tests drive the rule on a simulated clock).
    #[cfg(test)]
    pub(super) fn end_at(mut self, end: Instant) {
        self.end(end);
    }

    fn end(&mut self, end: Instant) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let rule = self.rule;
        let took = end.saturating_duration_since(self.started);
        rule.demand.add(took);
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        // A moving average over about eight jobs; racing updates lose one
        // sample at worst.
        let mean = rule.mean_micros.load(Ordering::Relaxed);
        let next = if mean == 0 {
            micros
        } else {
            mean - mean / 8 + micros / 8
        };
        rule.mean_micros.store(next.max(1), Ordering::Relaxed);
        rule.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.end(Instant::now());
    }
}

impl ControlledDelay {
    /// The rule for a queue drained by `workers` threads: a job may wait
    /// up to `interval`, only up to `target` (or half the mean job time,
    /// if longer, never past `interval`) while the queue is overloaded.
    /// Rejected unless `0 < target ≤ interval ≤ 10 s` and `workers > 0`.
    ///
    /// How to choose `target`: the least wait worth shedding for, well
    /// under the latency you promise (an admitted job waits about the
    /// longer of `target` and half a job at most, then runs). Under
    /// overload a worker sheds the jobs older than that which have others
    /// behind them. The rule never holds a job to less than half the mean
    /// job time it measures, so a target chosen on a fast machine does not
    /// idle a slow one.
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
            demand: BusyWindow::default(),
            mean_micros: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            running: AtomicU32::new(0),
            reported_ms: AtomicU64::new(0),
            reported_shed: AtomicU64::new(0),
            report: None,
        })
    }

    /// Reports to `observer` as a limiter called `name`
    /// ([`Event::LimitChanged`]: the workers as the limit, the jobs running,
    /// the jobs shed so far), at most once an `interval` while jobs come
    /// and when the queue empties after sheds, so the dashboard and
    /// `/metrics` show it beside the adaptive limits.
    #[must_use]
    pub fn with_observer(mut self, name: impl Into<String>, observer: Arc<dyn Observer>) -> Self {
        self.report = Some((name.into(), observer));
        self
    }

    /// The instant the rule counts from (tests build a simulated clock on it).
    #[cfg(test)]
    pub(super) fn epoch(&self) -> Instant {
        self.epoch
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A worker took a job queued at `queued_at`, with `behind` more jobs
    /// still waiting (an estimate is fine: a counter the producers raise
    /// before queueing and the workers lower as they take): its [`Turn`]
    /// if it may run, `None` if it waited too long (answer it as shed; it
    /// is counted).
    pub fn admit(&self, queued_at: Instant, behind: usize) -> Option<Turn<'_>> {
        self.admit_at(Instant::now(), queued_at, behind)
    }

    /// [`admit`](Self::admit) at `now`.
    pub(super) fn admit_at(
        &self,
        now: Instant,
        queued_at: Instant,
        behind: usize,
    ) -> Option<Turn<'_>> {
        let waited = now.saturating_duration_since(queued_at);
        let now_ms = self.ms(now);
        let mean = Duration::from_micros(self.mean_micros.load(Ordering::Relaxed));
        if waited < self.target.max(2 * mean) {
            // A job that waited less than two jobs' time: no queue stands.
            self.good_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
        // Late: past the target, or past half a job if that is longer;
        // never past the interval.
        let late = self.target.max(mean / 2).min(self.interval);
        let admitted = if waited < late {
            true
        } else if waited > self.interval {
            false
        } else {
            let standing = now_ms.saturating_sub(self.good_ms.load(Ordering::Relaxed))
                > self.interval.as_millis() as u64;
            let saturated = self
                .demand
                .saturated(now_ms, self.workers, self.interval, SATURATED);
            // Keep one job per worker behind: shedding below that idles
            // workers whenever arrivals pause. Not when twice the workers'
            // time is asked: arrivals then come faster than jobs end, a
            // shed idles nobody for long, and the reserve is only wait.
            let reserve = behind < self.workers as usize && !self.demand.reached(HEAVY_PERCENT);
            reserve || !(standing || saturated)
        };
        let turn = if admitted {
            self.running.fetch_add(1, Ordering::Relaxed);
            Some(Turn {
                rule: self,
                started: now,
                ended: false,
            })
        } else {
            self.shed.fetch_add(1, Ordering::Relaxed);
            // Asked work, as a refused job: the mean already read above.
            self.demand.add(mean);
            None
        };
        self.maybe_report(now_ms, false);
        turn
    }

    /// A worker found the queue empty: no queue stands, and the state is
    /// reported if jobs were shed since the last report (so the dashboard
    /// does not keep showing a rush that is over).
    pub fn idle(&self) {
        self.idle_at(Instant::now());
    }

    /// [`idle`](Self::idle) at `now`.
    pub(super) fn idle_at(&self, now: Instant) {
        let now_ms = self.ms(now);
        self.good_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.maybe_report(now_ms, true);
    }

    /// A job was turned away before it was queued (the queue was full): it
    /// was asked of the workers too. Without it, an overload that keeps a
    /// bounded queue full reads as workers busy 100 % of the time and no
    /// more, never as more work than they have.
    pub fn refused(&self) {
        let mean = self.mean_micros.load(Ordering::Relaxed);
        self.demand.add(Duration::from_micros(mean));
    }

    /// Jobs shed so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Reports at most once an interval, or (`settled`: the queue emptied)
    /// whenever jobs were shed since the last report.
    fn maybe_report(&self, now_ms: u64, settled: bool) {
        let Some((name, observer)) = &self.report else {
            return;
        };
        let shed = self.shed();
        let last = self.reported_ms.load(Ordering::Relaxed);
        let due = now_ms.saturating_sub(last) >= self.interval.as_millis() as u64
            || (settled && shed != self.reported_shed.load(Ordering::Relaxed));
        if !due
            || self
                .reported_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.reported_shed.store(shed, Ordering::Relaxed);
        observe::emit(
            Some(observer.as_ref()),
            &Event::LimitChanged {
                limiter: name,
                limit: self.workers,
                in_flight: self.running.load(Ordering::Relaxed),
                shed,
            },
        );
    }
}
