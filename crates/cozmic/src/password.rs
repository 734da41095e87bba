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

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use selfheal::web::AdaptiveLimit;
use tokio::sync::oneshot;

/// The longest a request waits for its turn to hash.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Too many password checks are running or waiting: try again shortly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once; try again in a few seconds")]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

/// The passwords' own limit (a bulkhead in front of the hashing gate),
/// for `threads` hashing threads; its windows go to `observer`.
///
/// Why a limit of its own: one app-wide limit settles where the app's
/// *average* request queues (cozmic's, at its floor of 16, let 16 logins
/// queue on two hashing threads: accepted p99 14x the unloaded p99 under a
/// login rush at 3x what the app serves). Why in front of the gate rather
/// than on the login and sign-up handlers (the first version, a route
/// layer): on the handler, a slot also covers the database reads and the
/// session write, during which the hashing thread idles, so a limit of as
/// many logins as threads lost ~13 % of the goodput and one more queued a
/// whole hash inside the gate (p99 2.1x). Here the slot covers the hash
/// alone and is given back on the hashing thread as it ends, so a limit
/// of one slot per thread keeps every thread busy and nothing queues
/// behind a running hash: its capacity is known, there is nothing to find,
/// so the limit is fixed at the thread count.
///
/// A request beyond it waits for a slot the controlled-delay way
/// ([`AdaptiveLimit::with_wait`]): up to 1 s in a burst (the chaos
/// journey's 32 sign-ups at once take two hashing threads about a third of
/// a second; shed at once, half of them failed), only 5 ms once the queue
/// stands (an overload, where waiting only adds latency); then it is shed
/// with `HealLayer`'s friendly 503, not recorded.
pub fn limit(threads: usize, observer: Arc<dyn selfheal::observe::Observer>) -> AdaptiveLimit {
    let threads = u32::try_from(threads).unwrap_or(u32::MAX).max(1);
    AdaptiveLimit::new("cozmic-passwords")
        .with_limits(threads, threads, threads)
        .and_then(|l| l.with_wait(Duration::from_millis(5), Duration::from_secs(1)))
        .expect("valid limits")
        .with_observer(observer)
}

/// The gate in front of password hashing: its threads and its queue.
/// Cheap to clone; the threads end when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PasswordWork {
    queue: SyncSender<Job>,
    threads: usize,
    max_waiting: usize,
    done: Arc<std::sync::atomic::AtomicU64>,
    limit: Option<AdaptiveLimit>,
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
        for n in 0..threads {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("cozmic-password-{n}"))
                .spawn(move || work(&jobs))
                .expect("cannot start a password hashing thread");
        }
        Self {
            queue,
            threads,
            max_waiting,
            done: Arc::default(),
            limit: None,
        }
    }

    /// Puts `limit` in front of the queue: a hash runs only with one of its
    /// slots, and a request beyond it waits the limit's way
    /// ([`AdaptiveLimit::with_wait`]) or is shed ([`LimitFull`](selfheal::web::LimitFull) in
    /// [`run`](Self::run)'s error). The slot is given back on the hashing
    /// thread the moment the hash is done, so with as many slots as
    /// threads no thread idles while a request waits, and nothing queues
    /// here behind a running hash.
    #[must_use]
    pub fn with_limit(mut self, limit: AdaptiveLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The limit in front of the queue, if any.
    pub fn limit(&self) -> Option<&AdaptiveLimit> {
        self.limit.as_ref()
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
    /// panic in `work`, or [`LimitFull`](selfheal::web::LimitFull): the [limit](Self::with_limit)
    /// shed the request (answered as the limit's own shedding, not
    /// recorded as an error).
    pub async fn run<T, F>(&self, work: F) -> anyhow::Result<Result<T, Busy>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut permit = match &self.limit {
            Some(limit) => Some(limit.acquire().await?),
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        let done = self.done.clone();
        let job: Job = Box::new(move || {
            // The requester gave up waiting: skip the expensive part.
            if tx.is_closed() {
                return;
            }
            let value = work();
            if let Some(permit) = permit.as_mut() {
                permit.succeeded();
            }
            drop(permit);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(value);
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Ok(Err(Busy)),
            Err(TrySendError::Disconnected(_)) => anyhow::bail!("the hashing threads are gone"),
        }
        match tokio::time::timeout(MAX_WAIT, rx).await {
            Ok(Ok(value)) => Ok(Ok(value)),
            Ok(Err(_)) => anyhow::bail!("password hashing panicked"),
            Err(_) => Ok(Err(Busy)),
        }
    }
}

/// A hashing thread: takes jobs until the queue's sender is gone.
fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let Ok(jobs) = jobs.lock() else { return };
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // A panicking job loses its answer (the requester sees an error);
        // the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
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

    /// With a limit in front of the gate: a burst of six 100 ms jobs on
    /// one thread with one slot waits for the slot and is served whole,
    /// one at a time, nothing queueing inside the gate; the slot is given
    /// back on the hashing thread as each job ends (the limit's in-flight
    /// count is back to 0 before the next job starts). A limit that does
    /// not wait sheds the second of two jobs at once with `LimitFull`, the
    /// error `AppError` answers as the limit's shedding.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_limit_in_front_of_the_gate_holds_a_slot_per_hash() {
        let limit = limit(1, Arc::new(|_: &selfheal::observe::Event<'_>| {}));
        let work = PasswordWork::new(1, 8).with_limit(limit.clone());
        let seen_in_flight = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (work, limit, seen) = (work.clone(), limit.clone(), seen_in_flight.clone());
            tasks.push(tokio::spawn(async move {
                work.run(move || {
                    seen.lock().unwrap().push(limit.in_flight());
                    std::thread::sleep(Duration::from_millis(100));
                })
                .await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap().unwrap();
        }
        assert_eq!(*seen_in_flight.lock().unwrap(), vec![1; 6]);
        assert_eq!((limit.in_flight(), limit.shed()), (0, 0));

        let at_once = selfheal::web::AdaptiveLimit::new("t")
            .with_limits(1, 1, 1)
            .unwrap();
        let work = PasswordWork::new(1, 8).with_limit(at_once.clone());
        let slow = tokio::spawn({
            let work = work.clone();
            async move {
                work.run(|| std::thread::sleep(Duration::from_millis(300)))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = work.run(|| ()).await.unwrap_err();
        assert!(
            shed.downcast_ref::<selfheal::web::LimitFull>().is_some(),
            "{shed:#}"
        );
        slow.await.unwrap().unwrap().unwrap();
        assert_eq!((at_once.in_flight(), at_once.shed()), (0, 1));
    }
}
