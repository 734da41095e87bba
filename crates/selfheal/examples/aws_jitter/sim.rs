//! The simulation behind the `aws_jitter` example and the `aws_jitter` test: N
//! clients, one contended row, optimistic concurrency, in virtual time.
//!
//! Shared by `examples/aws_jitter/main.rs` and `tests/aws_jitter.rs` through
//! `#[path]`, so the table and the test run the very same model.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use selfheal::ConfigError;
use selfheal::retry::{Backoff, Jitter, Random, SeededRandom};

/// The four jitter kinds of the study, in the order the table prints them.
pub(crate) const KINDS: [Jitter; 4] = [
    Jitter::None,
    Jitter::Full,
    Jitter::Equal,
    Jitter::Decorrelated,
];

/// The parameters of the simulated world.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Model {
    /// One-way network latency between a client and the server. An attempt
    /// reads the row's version, and its compare-and-set reaches the server a
    /// round trip (`2 * latency`) later: that round trip is the conflict window.
    pub(crate) latency: Duration,
    /// Each one-way trip takes `latency` plus or minus up to this much,
    /// uniformly (zero: every trip takes exactly `latency`).
    pub(crate) latency_spread: Duration,
    /// The exponential backoff's base delay (first retry), doubling per retry.
    pub(crate) base: Duration,
    /// The exponential backoff's cap.
    pub(crate) cap: Duration,
}

impl Model {
    /// The study's world with a fixed network: 10 ms each way, backoff from
    /// 10 ms doubling up to 2 s. The study wrote its backoff as
    /// `min(2 s, 5 ms * 2^attempt)` with attempts from 1, which is exactly
    /// selfheal's `min(cap, base * 2^retry)` with retries from 0 and a 10 ms
    /// base; the one difference is the floor of decorrelated jitter, which is
    /// the base (10 ms here, 5 ms in the study).
    pub(crate) const STUDY: Model = Model {
        latency: Duration::from_millis(10),
        latency_spread: Duration::ZERO,
        base: Duration::from_millis(10),
        cap: Duration::from_secs(2),
    };

    /// [`Model::STUDY`] with the study's noisy network: each trip is uniform in
    /// 10 ms ± 3.46 ms, a standard deviation of 2 ms like the study's
    /// normally distributed trips.
    pub(crate) const STUDY_NOISY: Model = Model {
        latency_spread: Duration::from_micros(3_464),
        ..Model::STUDY
    };

    /// The backoff every client uses, with `jitter`.
    pub(crate) fn backoff(&self, jitter: Jitter) -> Result<Backoff, ConfigError> {
        Ok(Backoff::exponential(self.base, 2.0, self.cap)?.with_jitter(jitter))
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Compare-and-set calls made by all clients together (the work).
    pub(crate) calls: u64,
    /// When the last client learned that its write succeeded.
    pub(crate) completion: Duration,
}

/// Means over several seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    /// Mean calls per run.
    pub(crate) calls: f64,
    /// Mean completion time per run, in milliseconds.
    pub(crate) completion_ms: f64,
}

/// What arrives at the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// A compare-and-set of the version read earlier.
    Commit { read_version: u64 },
    /// A read of the row's current version.
    Read,
}

/// An arrival at the server, ordered by time; at the same instant commits go
/// before reads (a read at the very instant of a commit sees the new version),
/// then first scheduled, first served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Duration,
    /// 0 for a commit, 1 for a read.
    rank: u8,
    seq: u64,
    client: usize,
    step: Step,
}

/// The arrivals still to come, earliest first.
#[derive(Debug, Default)]
struct Agenda {
    queue: BinaryHeap<Reverse<Event>>,
    scheduled: u64,
}

impl Agenda {
    fn schedule(&mut self, at: Duration, client: usize, step: Step) {
        let rank = match step {
            Step::Commit { .. } => 0,
            Step::Read => 1,
        };
        self.queue.push(Reverse(Event {
            at,
            rank,
            seq: self.scheduled,
            client,
            step,
        }));
        self.scheduled += 1;
    }

    fn next(&mut self) -> Option<Event> {
        self.queue.pop().map(|Reverse(event)| event)
    }
}

/// Per-client backoff state, as the retry engine keeps it.
#[derive(Clone, Copy, Debug, Default)]
struct Client {
    /// Retries so far (0 before the first retry).
    retries: u32,
    /// The previous delay, for decorrelated jitter (zero before the first).
    previous: Duration,
}

/// Runs one simulation: `clients` clients all start at time zero and each
/// retries, with `backoff`, until its one write lands.
///
/// One attempt, in network trips (`latency`, give or take the spread):
///
/// ```text
/// t            the client's read reaches the server: it reads version v
/// t + 2 trips  its compare-and-set of v arrives: it lands iff the version is
///              still v (no other write landed in between), else it fails
/// t + 3 trips  the client learns the outcome; after a failure it waits
///              backoff.delay(..) and its next read arrives one trip later
/// ```
pub(crate) fn run(model: &Model, backoff: &Backoff, clients: usize, seed: u64) -> Outcome {
    // Two independent streams: one for jitter, one for the network.
    let jitter_random = SeededRandom::new(seed);
    let net_random = SeededRandom::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let trip = || {
        if model.latency_spread.is_zero() {
            model.latency
        } else {
            let offset = model.latency_spread.mul_f64(net_random.next_f64() * 2.0);
            (model.latency + offset).saturating_sub(model.latency_spread)
        }
    };

    let mut clients_state = vec![Client::default(); clients];
    let mut agenda = Agenda::default();
    for client in 0..clients {
        agenda.schedule(trip(), client, Step::Read);
    }

    let mut version = 0;
    let mut calls = 0;
    let mut completion = Duration::ZERO;
    while let Some(event) = agenda.next() {
        match event.step {
            Step::Read => {
                let step = Step::Commit {
                    read_version: version,
                };
                agenda.schedule(event.at + trip() + trip(), event.client, step);
            }
            Step::Commit { read_version } => {
                calls += 1;
                let reply_at = event.at + trip();
                if read_version == version {
                    version += 1;
                    completion = completion.max(reply_at);
                } else {
                    let client = &mut clients_state[event.client];
                    let delay = backoff.delay(client.retries, client.previous, &jitter_random);
                    client.retries += 1;
                    client.previous = delay;
                    agenda.schedule(reply_at + delay + trip(), event.client, Step::Read);
                }
            }
        }
    }
    debug_assert_eq!(version, clients as u64, "every client wrote exactly once");
    Outcome { calls, completion }
}

/// Runs `seeds` simulations (seeds `0..seeds`) and averages them.
pub(crate) fn average(model: &Model, backoff: &Backoff, clients: usize, seeds: u64) -> Summary {
    let (mut calls, mut completion) = (0u64, Duration::ZERO);
    for seed in 0..seeds {
        let outcome = run(model, backoff, clients, seed);
        calls += outcome.calls;
        completion += outcome.completion;
    }
    Summary {
        calls: calls as f64 / seeds as f64,
        completion_ms: completion.as_secs_f64() * 1e3 / seeds as f64,
    }
}
