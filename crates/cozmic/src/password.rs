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
//! So hashing goes through [`PasswordWork`]: at most one hash per core at a
//! time, at most [`PasswordWork::max_waiting`] requests waiting for a turn
//! (each waits at most [`MAX_WAIT`]), and past that an immediate, honest
//! [`Busy`] that the page turns into a 503 with `Retry-After`. Memory for
//! hashing is therefore bounded by the number of cores, whatever the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

/// The longest a request waits for its turn to hash.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Too many password checks are running or waiting: try again shortly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once; try again in a few seconds")]
pub struct Busy;

/// The gate in front of password hashing. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PasswordWork {
    permits: Arc<Semaphore>,
    running_max: usize,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl PasswordWork {
    /// One hash at a time per core (`std::thread::available_parallelism`),
    /// and 32 waiters per core.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, cores * 32)
    }

    /// At most `running` hashes at once (at least 1), and `max_waiting`
    /// requests waiting.
    pub fn new(running: usize, max_waiting: usize) -> Self {
        let running = running.max(1);
        Self {
            permits: Arc::new(Semaphore::new(running)),
            running_max: running,
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
        }
    }

    /// Hashes that may run at once.
    pub fn max_running(&self) -> usize {
        self.running_max
    }

    /// Requests that may wait for a turn.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Runs `work` on the blocking pool when a permit is free; [`Busy`] if
    /// too many are waiting already or the turn does not come within
    /// [`MAX_WAIT`].
    pub async fn run<T, F>(&self, work: F) -> anyhow::Result<Result<T, Busy>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Count ourselves in, or leave at once if the queue is full.
                let queued = self
                    .waiting
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < self.max_waiting).then_some(n + 1)
                    });
                if queued.is_err() {
                    return Ok(Err(Busy));
                }
                let acquired =
                    tokio::time::timeout(MAX_WAIT, self.permits.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match acquired {
                    Ok(Ok(permit)) => permit,
                    // Timed out (or the semaphore closed, which it never is).
                    _ => return Ok(Err(Busy)),
                }
            }
        };
        let value = tokio::task::spawn_blocking(move || {
            let value = work();
            drop(permit);
            value
        })
        .await?;
        Ok(Ok(value))
    }
}

/// An argon2id hash of `password` (PHC string), with a fresh salt.
pub fn hash(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash("correct horse").unwrap();
        assert!(verify("correct horse", &hash));
        assert!(!verify("wrong horse", &hash));
        assert!(!verify("correct horse", "not a hash"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_permits_run_and_the_queue_is_bounded() {
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
                    std::thread::sleep(Duration::from_millis(50));
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
}
