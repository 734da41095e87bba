//! The recorder: what every virtual user calls, concurrently, while a run is
//! live.
//!
//! It lives apart from the summaries because it is the only part of the
//! report on the hot path: samples go into a few mutex-protected shards
//! picked round-robin, live counts (for the progress bar) and named counters
//! are atomics behind read-mostly maps, so that recording never contends
//! enough to distort the latencies it records. Turning samples into numbers
//! is left to `summary` once the run is over.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{Outcome, RunSummary, ratio};

/// One recorded user action.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) run: Arc<str>,
    pub(super) step: &'static str,
    pub(super) started_at: Duration,
    pub(super) latency: Duration,
    pub(super) outcome: Outcome,
}

/// Live counts of one run, for the progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Actions recorded.
    pub actions: u64,
    /// Of which `Success`.
    pub successes: u64,
    /// Of which `Degraded`.
    pub degraded: u64,
}

impl LiveStats {
    /// `successes / actions` (0 when there is none).
    pub fn success_rate(&self) -> f64 {
        ratio(self.successes, self.actions)
    }
}

#[derive(Debug)]
struct LiveCounts {
    name: Arc<str>,
    actions: AtomicU64,
    successes: AtomicU64,
    degraded: AtomicU64,
}

/// A handle on one named counter: increments are a single atomic add.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds 1.
    pub fn incr(&self) {
        self.add(1);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const SHARDS: usize = 16;

#[derive(Debug)]
struct RecorderInner {
    shards: Vec<Mutex<Vec<Sample>>>,
    next: AtomicUsize,
    live: RwLock<HashMap<String, Arc<LiveCounts>>>,
    counters: RwLock<BTreeMap<(String, String), Counter>>,
}

/// Records every user action and named counters, per run. Cheap to clone
/// (an `Arc`); safe to call from many tasks at once.
#[derive(Debug, Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RecorderInner {
                shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
                next: AtomicUsize::new(0),
                live: RwLock::new(HashMap::new()),
                counters: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// Records one user action of `run` (e.g. `"heal_on"`) at journey `step`
    /// (e.g. `"dashboard"`), started `started_at` after the run began.
    pub fn record(
        &self,
        run: &str,
        step: &'static str,
        started_at: Duration,
        latency: Duration,
        outcome: Outcome,
    ) {
        let live = self.live_counts(run);
        live.actions.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Success => {
                live.successes.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Degraded => {
                live.degraded.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::SignedOut | Outcome::HardFailure(_) => {}
        }
        let sample = Sample {
            run: Arc::clone(&live.name),
            step,
            started_at,
            latency,
            outcome,
        };
        let shard = self.inner.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.inner.shards[shard]
            .lock()
            .expect("recorder shard")
            .push(sample);
    }

    /// The counter `name` of `run` (created at 0 on first use).
    pub fn counter(&self, run: &str, name: &str) -> Counter {
        let key = (run.to_owned(), name.to_owned());
        if let Some(c) = self.inner.counters.read().expect("counters").get(&key) {
            return c.clone();
        }
        self.inner
            .counters
            .write()
            .expect("counters")
            .entry(key)
            .or_insert_with(|| Counter(Arc::new(AtomicU64::new(0))))
            .clone()
    }

    /// Adds `n` to the counter `name` of `run`.
    pub fn add(&self, run: &str, name: &str, n: u64) {
        self.counter(run, name).add(n);
    }

    /// Every counter of `run`.
    pub fn counters(&self, run: &str) -> BTreeMap<String, u64> {
        self.inner
            .counters
            .read()
            .expect("counters")
            .iter()
            .filter(|((r, _), _)| r == run)
            .map(|((_, name), c)| (name.clone(), c.get()))
            .collect()
    }

    /// Live counts of `run`.
    pub fn live(&self, run: &str) -> LiveStats {
        let live = self.inner.live.read().expect("live");
        live.get(run)
            .map(|c| LiveStats {
                actions: c.actions.load(Ordering::Relaxed),
                successes: c.successes.load(Ordering::Relaxed),
                degraded: c.degraded.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// The summary of `run` from every sample recorded so far.
    pub fn summary(&self, run: &str) -> RunSummary {
        RunSummary::from_samples(run, &self.samples(run), self.counters(run))
    }

    /// Every sample of `run`, in the order the actions started.
    fn samples(&self, run: &str) -> Vec<Sample> {
        let mut samples = Vec::new();
        for shard in &self.inner.shards {
            let shard = shard.lock().expect("recorder shard");
            samples.extend(shard.iter().filter(|s| &*s.run == run).cloned());
        }
        samples.sort_by_key(|s| s.started_at);
        samples
    }

    fn live_counts(&self, run: &str) -> Arc<LiveCounts> {
        if let Some(c) = self.inner.live.read().expect("live").get(run) {
            return Arc::clone(c);
        }
        let mut live = self.inner.live.write().expect("live");
        Arc::clone(live.entry(run.to_owned()).or_insert_with(|| {
            Arc::new(LiveCounts {
                name: Arc::from(run),
                actions: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                degraded: AtomicU64::new(0),
            })
        }))
    }
}
