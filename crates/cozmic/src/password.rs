//! Password hashing, bounded.
//!
//! argon2 is slow and memory-hard on purpose (about 19 MiB and tens of
//! milliseconds per hash with the default parameters): that is what makes a
//! stolen hash expensive to crack, and also what makes every sign-up and
//! every login expensive for *us*. Run without a bound, a burst of logins
//! (or an attacker posting passwords) runs as many hashes at once as the
//! blocking thread pool allows (512 threads), each with its 19 MiB: a
//! memory exhaustion attack that any anonymous client can mount.
//!
//! So hashing goes through [`PasswordWork`]: a fixed set of threads, one
//! per core, hashes in turn from a bounded queue ([`PasswordWork::max_waiting`]
//! requests; each waits at most [`MAX_WAIT`]), and past that the answer is
//! an immediate, honest [`Busy`] that the page turns into a 503 with
//! `Retry-After`. Dedicated threads rather than tokio's blocking pool:
//! the allocator keeps a freed 19 MiB buffer in the arena of the thread that
//! used it, and the blocking pool would spread hashes over up to 512
//! threads, so memory would still grow with the burst. With one thread per
//! core, memory for hashing is bounded by the number of cores, whatever
//! the load.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use selfheal::web::ControlledDelay;
use tokio::sync::oneshot;

/// The longest a request waits for its turn to hash.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Too many password checks are running or waiting: try again shortly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once; try again in a few seconds")]
pub struct Busy;

/// A queued piece of work: when it was queued, and what to do when a
/// thread takes it (`true`: run it; `false`: it waited too long, shed it).
struct Job {
    queued_at: Instant,
    /// Returns whether it did any work.
    run: Box<dyn FnOnce(bool) -> bool + Send>,
}

/// The least wait worth shedding a login for once the queue stands. The
/// rule's bound is the longer of this and half the hash time it measures,
/// and argon2's defaults take 11–29 ms on the machines we measured on, so
/// in practice a login waits at most half a hash: a fixed 5 ms left the
/// threads idle between arrivals on a slow day (one seed: 80 % of the peak
/// against 95 % with no rule; `docs/adaptive.md` §5).
pub const QUEUE_TARGET: Duration = Duration::from_millis(5);

/// How long a login may wait for a hashing thread in a burst.
pub const QUEUE_INTERVAL: Duration = Duration::from_secs(1);

/// The controlled-delay rule for the hashing queue of `threads` threads,
/// reporting to `observer` as the limiter `cozmic-passwords`.
///
/// Why: under a login rush beyond what the threads serve, a plain queue
/// makes every login wait behind it (p99 20–30× the unloaded p99 at 3×
/// load, with the queue's 5 s bound); the rule keeps what is admitted
/// within half a hash of its turn and sheds the rest early, while a
/// burst that drains within [`QUEUE_INTERVAL`] (the chaos journey's 32
/// sign-ups at once take two threads about a third of a second) is served
/// whole.
///
/// Why in the queue rather than a limit in front of it (the previous
/// design: [`AdaptiveLimit::acquire`](selfheal::web::AdaptiveLimit::acquire)
/// with a wait, one slot per thread): a slot given back on a hashing
/// thread had to wake a waiting request's task before its job reached the
/// queue, and the thread idled meanwhile. Under a login rush at 3× what
/// two threads serve (three seeds each), that kept 88 % of the peak
/// goodput; the rule in the queue keeps 96 %, as much as no limit at all,
/// with an accepted p99 1.8× the unloaded one (`docs/adaptive.md` §7).
///
/// Why 5 ms (Facebook's target for its RPC queues) and not 10: what an
/// admitted login waits under overload was about the target, plus one hash
/// where a job is kept in reserve per thread, and a hash takes 11–17 ms,
/// so 10 ms let the wait reach two hashes. A first version of the rule,
/// which shed every late job, lost goodput with 5 ms (101.8 logins/s
/// against 109.7/s): it idled a thread whenever no job had arrived within
/// the target; the reserve fixed that.
pub fn rule(threads: usize, observer: Arc<dyn selfheal::observe::Observer>) -> ControlledDelay {
    let threads = u32::try_from(threads).unwrap_or(u32::MAX).max(1);
    ControlledDelay::new(QUEUE_TARGET, QUEUE_INTERVAL, threads)
        .expect("valid controlled delay")
        .with_observer("cozmic-passwords", observer)
}

/// The gate in front of password hashing: its threads and its queue.
/// Cheap to clone; the threads end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PasswordWork {
    queue: SyncSender<Job>,
    threads: usize,
    max_waiting: usize,
    done: Arc<AtomicU64>,
    rule: Arc<OnceLock<ControlledDelay>>,
    /// Jobs in the queue (what the rule needs to know: whether a late job
    /// has others behind it).
    waiting: Arc<AtomicUsize>,
}

impl PasswordWork {
    /// One hashing thread per core (`std::thread::available_parallelism`),
    /// and 32 waiting requests per core.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, cores * 32)
    }

    /// `threads` hashing threads (at least 1), `max_waiting` requests
    /// waiting for one.
    pub fn new(threads: usize, max_waiting: usize) -> Self {
        let threads = threads.max(1);
        let (queue, jobs) = sync_channel::<Job>(max_waiting);
        let jobs = Arc::new(Mutex::new(jobs));
        let rule = Arc::new(OnceLock::new());
        let waiting = Arc::new(AtomicUsize::new(0));
        for n in 0..threads {
            let (jobs, rule, waiting) = (jobs.clone(), rule.clone(), waiting.clone());
            std::thread::Builder::new()
                .name(format!("cozmic-password-{n}"))
                .spawn(move || work(&jobs, &rule, &waiting))
                .expect("cannot start a password hashing thread");
        }
        Self {
            queue,
            threads,
            max_waiting,
            done: Arc::default(),
            rule,
            waiting,
        }
    }

    /// Applies `rule` to the queue (see [`rule`]): a request waits at
    /// most the rule's interval for its turn while the queue keeps draining
    /// (a burst is served whole), and at most its target once the queue
    /// stands or the threads are saturated; past that a thread that reaches
    /// it sheds it in microseconds with
    /// [`LimitFull`](selfheal::web::LimitFull) (the friendly 503 with
    /// `Retry-After`, not recorded as an error) and takes the next one.
    /// Set once; a later call is ignored.
    #[must_use]
    pub fn with_controlled_delay(self, rule: ControlledDelay) -> Self {
        let _ = self.rule.set(rule);
        self
    }

    /// Requests shed by the controlled-delay rule so far.
    pub fn shed(&self) -> u64 {
        self.rule.get().map_or(0, ControlledDelay::shed)
    }

    /// Jobs run to completion so far (hashes and verifications).
    pub fn completed(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hashes that may run at once.
    pub fn max_running(&self) -> usize {
        self.threads
    }

    /// Requests that may wait for a turn.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Runs `work` on a hashing thread; [`Busy`] if the queue is full or
    /// the turn does not come within [`MAX_WAIT`]. The outer error is a
    /// panic in `work`, or [`LimitFull`](selfheal::web::LimitFull): the
    /// [controlled-delay rule](Self::with_controlled_delay) shed the
    /// request (answered as shedding, not recorded as an error).
    pub async fn run<T, F>(&self, work: F) -> anyhow::Result<Result<T, Busy>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let done = self.done.clone();
        let run = Box::new(move |admitted: bool| {
            // The requester gave up waiting: skip the expensive part.
            if tx.is_closed() {
                return false;
            }
            if !admitted {
                let _ = tx.send(None);
                return false;
            }
            let value = work();
            done.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Some(value));
            true
        });
        let job = Job {
            queued_at: Instant::now(),
            run,
        };
        // Counted before it can be taken, so the count never goes below
        // the jobs a thread can see.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(error) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                match error {
                    TrySendError::Full(_) => {
                        // Turned away at the door: asked of the threads too.
                        if let Some(rule) = self.rule.get() {
                            rule.refused();
                        }
                        return Ok(Err(Busy));
                    }
                    TrySendError::Disconnected(_) => {
                        anyhow::bail!("the hashing threads are gone")
                    }
                }
            }
        }
        match tokio::time::timeout(MAX_WAIT, rx).await {
            Ok(Ok(Some(value))) => Ok(Ok(value)),
            Ok(Ok(None)) => Err(selfheal::web::LimitFull.into()),
            Ok(Err(_)) => anyhow::bail!("password hashing panicked"),
            Err(_) => Ok(Err(Busy)),
        }
    }
}

/// A hashing thread: takes jobs until the queue's sender is gone.
fn work(jobs: &Mutex<Receiver<Job>>, rule: &OnceLock<ControlledDelay>, waiting: &AtomicUsize) {
    loop {
        let job = {
            let Ok(jobs) = jobs.lock() else { return };
            match jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    if let Some(rule) = rule.get() {
                        // It may report: an observer's panic must not end
                        // the thread.
                        let _ =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rule.idle()));
                    }
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
            }
        };
        let behind = waiting.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        // The rule, once per job (it may be set while the thread runs).
        let rule = rule.get();
        // A panicking job (or observer) loses its answer (the requester
        // sees an error); the thread lives on, and the turn, dropped while
        // unwinding, still counts the job's time.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let turn = rule.map(|rule| rule.admit(job.queued_at, behind));
            let admitted = !matches!(turn, Some(None));
            let worked = (job.run)(admitted);
            match turn {
                // Its requester had gone: no time to count.
                Some(Some(turn)) if !worked => turn.forget(),
                turn => drop(turn),
            }
        }));
    }
}

thread_local! {
    /// This thread's argon2 working memory, allocated once (19 MiB with the
    /// default parameters) and reused by every hash on the thread: a fresh
    /// 19 MiB buffer per hash is what fragments the allocator's arenas and
    /// makes memory creep up under a login burst.
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn argon2_into(
    argon: &argon2::Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    MEMORY.with_borrow_mut(|blocks| {
        let needed = argon.params().block_count();
        if blocks.len() < needed {
            blocks.resize(needed, argon2::Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
    })
}

/// An argon2id hash of `password` (PHC string, argon2's default
/// parameters), with a fresh salt.
pub fn hash(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString, rand_core::OsRng};
    let failed = |e: &dyn std::fmt::Display| anyhow::anyhow!("password hashing failed: {e}");
    let argon = argon2::Argon2::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| failed(&e))?;
    let length = argon
        .params()
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(length, |out| {
        argon2_into(&argon, password.as_bytes(), salt_bytes, out).map_err(Into::into)
    })
    .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// A hash of a random password, made once (at start: `AppState::open`
/// makes it, so that no login pays for it): what a login for an unknown
/// email is checked against, with the same parameters as every stored
/// hash, so that it costs what a wrong password costs.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = format!("{:032x}", fastrand::u128(..));
        hash(&random).unwrap_or_default()
    })
}

/// Whether `password` matches the PHC string `hash` (an argon2 hash; the
/// comparison is constant-time).
pub fn verify(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{Output, PasswordHash};
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon = argon2::Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    argon2_into(&argon, password.as_bytes(), salt_bytes, &mut out).is_ok()
        && Output::new(&out).is_ok_and(|actual| actual == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify("correct horse", &hash));
        assert!(!verify("wrong horse", &hash));
        assert!(!verify("correct horse", "not a hash"));
    }

    /// Hashes made by the argon2 crate's own API (as every account created
    /// before this module) verify, and ours verify with it.
    #[test]
    fn hashes_are_interchangeable_with_the_argon2_crate() {
        use argon2::password_hash::{
            PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
        };
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon2::Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify("correct horse", &theirs));
        assert!(!verify("correct horsE", &theirs));
        let ours = hash("correct horse").unwrap();
        argon2::Argon2::default()
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .unwrap();
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_threads_run_and_the_queue_is_bounded() {
        let work = PasswordWork::new(2, 3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (work, running, peak) = (work.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                work.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
                .unwrap()
            }));
        }
        let mut done = 0;
        let mut busy = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => done += 1,
                Err(Busy) => busy += 1,
            }
        }
        assert!(
            peak.load(Ordering::SeqCst) <= 2,
            "never more than the permits"
        );
        assert!(done >= 2, "{done} done");
        assert!(
            done <= 10,
            "running + waiting (+ a few that got in as others left): {done}"
        );
        assert_eq!(done + busy, 20);
    }

    /// With the controlled-delay rule (5 ms / 1 s): a burst of six 50 ms
    /// jobs on one thread is served whole (the last waits a quarter of a
    /// second, within the interval). Thirty at once (1.5 s of work) are not: the
    /// jobs that would wait past the interval are shed with `LimitFull`
    /// (the error `AppError` answers as shedding), and no admitted job
    /// waited much past the interval. Without the rule all thirty would be
    /// served, the last after 1.5 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_controlled_delay_serves_a_burst_and_sheds_a_standing_queue() {
        async fn rush(work: &PasswordWork, n: usize, each: Duration) -> (Vec<Duration>, usize) {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let work = work.clone();
                    tokio::spawn(async move {
                        let start = std::time::Instant::now();
                        let outcome = work.run(move || std::thread::sleep(each)).await;
                        (start.elapsed(), outcome)
                    })
                })
                .collect();
            let (mut served, mut shed) = (Vec::new(), 0);
            for task in tasks {
                match task.await.unwrap() {
                    (took, Ok(Ok(()))) => served.push(took),
                    (_, Err(error)) => {
                        assert!(
                            error.downcast_ref::<selfheal::web::LimitFull>().is_some(),
                            "{error:#}"
                        );
                        shed += 1;
                    }
                    (_, Ok(Err(Busy))) => panic!("the queue has room for all"),
                }
            }
            (served, shed)
        }
        let work = PasswordWork::new(1, 64)
            .with_controlled_delay(rule(1, Arc::new(|_: &selfheal::observe::Event<'_>| {})));
        let (served, shed) = rush(&work, 6, Duration::from_millis(50)).await;
        assert_eq!((served.len(), shed), (6, 0));

        let work = PasswordWork::new(1, 64)
            .with_controlled_delay(rule(1, Arc::new(|_: &selfheal::observe::Event<'_>| {})));
        let (served, shed) = rush(&work, 30, Duration::from_millis(50)).await;
        assert!(shed >= 5, "{shed} shed, {} served", served.len());
        assert_eq!(work.shed() as usize, shed);
        let longest = served.iter().max().unwrap();
        assert!(*longest < Duration::from_millis(1400), "{longest:?}");
    }
}
