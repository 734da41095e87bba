//! The transaction runner: begin, run the closure, commit; re-run the whole
//! thing on a transient failure, under the one retry engine.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Pool, Transaction};

mod attempt;
mod error;

pub use error::{TxError, TxStep};

use attempt::{Attempt, State, new_operation_id};

use super::Backend;
use super::classify::{self, AsSqlx};
use super::guard::Guard;
use crate::observe::{self, Event, Failure, Observer};
use crate::retry::{Backoff, Budget, Classify, Policy, Verdict};

/// Runs database transactions that heal: a transient failure at any step
/// (begin, your closure, commit) rolls the transaction back and re-runs all of
/// it under a retry [`Policy`]. See the [module docs](super) for why.
///
/// Create one runner per database and share it (it is cheap to clone): the
/// retry budget lives in its policy and should be shared by every
/// transaction on the same database.
///
/// Defaults ([`Runner::new`]):
///
/// | setting | default |
/// |---|---|
/// | policy | [`Runner::default_policy`]: 30 attempts, exponential backoff from 5 ms ×2 up to 500 ms with full jitter, 10 s deadline, a budget of 100 tokens refilled by 2 per success |
/// | begin statement | SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `BEGIN` (set an isolation level with [`Runner::with_begin`]) |
/// | idempotency guard | off ([`Runner::with_guard`]) |
/// | re-run after an ambiguous commit without the guard | no ([`Runner::assume_idempotent`]) |
/// | observer | the policy's: none, so events go to the global observer (the monitor, once started) |
pub struct Runner<DB: Backend> {
    pool: Pool<DB>,
    policy: Policy<TxClassify>,
    begin: Option<Cow<'static, str>>,
    guard: Option<Arc<GuardState>>,
}

impl<DB: Backend> Clone for Runner<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            policy: self.policy.clone(),
            begin: self.begin.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for Runner<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("database", &<DB as sqlx::Database>::NAME)
            .field("policy", &self.policy)
            .field("begin", &self.begin)
            .field("guard", &self.guard.as_ref().map(|g| &g.config))
            .finish()
    }
}

#[derive(Debug)]
struct GuardState {
    config: Guard,
    commits: AtomicU64,
}

/// Classifies one attempt's failure for the engine.
#[derive(Clone, Copy, Debug)]
struct TxClassify {
    /// Re-run after an ambiguous commit (the guard is on, or the user said
    /// the transaction is idempotent).
    rerun_unknown: bool,
}

impl<T, E: AsSqlx> Classify<T, Attempt<E>> for TxClassify {
    fn classify_error(&self, failure: &Attempt<E>) -> Verdict {
        if failure.unknown && !self.rerun_unknown {
            return Verdict::Permanent;
        }
        failure
            .error
            .as_sqlx()
            .map_or(Verdict::Permanent, classify::verdict)
    }

    fn failure_kind(&self, outcome: Result<&T, &Attempt<E>>) -> Cow<'static, str> {
        match outcome {
            Ok(_) => Cow::Borrowed("rejected"),
            Err(failure) => failure
                .error
                .as_sqlx()
                .map_or(Cow::Borrowed("app"), classify::failure_kind),
        }
    }
}

impl<DB: Backend> Runner<DB> {
    /// A runner on `pool` with the defaults listed on [`Runner`].
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            policy: Self::default_policy().with_classifier(TxClassify {
                rerun_unknown: false,
            }),
            begin: DB::default_begin().map(Cow::Borrowed),
            guard: None,
        }
    }

    /// The default policy: 30 attempts; exponential backoff from 5 ms, factor
    /// 2, capped at 500 ms, full jitter (lock conflicts clear in
    /// milliseconds, and jitter spreads the contenders apart); a 10 s
    /// deadline; a budget of 100 tokens refilled by 2 per success.
    ///
    /// Why 30 attempts: neither SQLite's lock nor PostgreSQL's serializable
    /// conflicts are fair queues, and with eight writers on one row the
    /// unluckiest transaction was seen losing 16 times in a row (and, on a
    /// loaded CI machine, a SQLite writer 10 times). Losing a race is not a
    /// reason to give up while the deadline has time left; the deadline and
    /// the budget are what bound a database that is really down.
    ///
    /// Why a more generous budget than the engine's default (20 tokens, 0.5
    /// per success): a budget exists to stop retries against a dependency
    /// that is *down*, and a database that answers with lock conflicts and
    /// serialization failures is up and busy: contention is the normal cost
    /// of concurrent writers, and re-running is how they make progress. A
    /// down database commits nothing, so nothing refills the bucket and the
    /// runner still fails fast after about 50 re-runs in all; a busy one keeps
    /// committing, and re-runs continue while at least one attempt in three
    /// commits.
    pub fn default_policy() -> Policy {
        Policy::default()
            .with_name("transaction")
            .with_max_attempts(30)
            .expect("valid")
            .with_backoff(
                Backoff::exponential(Duration::from_millis(5), 2.0, Duration::from_millis(500))
                    .expect("valid"),
            )
            .with_deadline(Duration::from_secs(10))
            .expect("valid")
            .with_budget(Arc::new(Budget::new(100, 2.0).expect("valid")))
    }

    /// Re-runs under `policy` (its attempts, deadline, backoff, budget and
    /// observer). Its classifier is replaced by the runner's own
    /// ([`classify`](super::classify)).
    pub fn with_policy<C>(mut self, policy: Policy<C>) -> Self {
        self.policy = policy.with_classifier(*self.policy.classifier());
        self
    }

    /// Begins each transaction with `statement` instead of the default:
    /// `"BEGIN ISOLATION LEVEL SERIALIZABLE"` on PostgreSQL
    /// ([`postgres::BEGIN_SERIALIZABLE`](super::postgres::BEGIN_SERIALIZABLE)),
    /// `"BEGIN DEFERRED"` for a read-only SQLite runner.
    pub fn with_begin(mut self, statement: impl Into<Cow<'static, str>>) -> Self {
        self.begin = Some(statement.into());
        self
    }

    /// Writes an idempotency id in every transaction, so that a commit with
    /// an unknown outcome is resolved instead of applied twice. The table
    /// must exist: [`guard::install`](super::guard::install) (or the schema
    /// healer) creates it.
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = Some(Arc::new(GuardState {
            config: guard,
            commits: AtomicU64::new(0),
        }));
        self.policy = self.policy.with_classifier(TxClassify {
            rerun_unknown: true,
        });
        self
    }

    /// Declares that running the transactions of this runner twice is
    /// harmless (they write fixed values, or check what they already did),
    /// so that without a guard the runner re-runs after an ambiguous commit
    /// instead of returning an error. Not for increments.
    pub fn assume_idempotent(mut self) -> Self {
        self.policy = self.policy.with_classifier(TxClassify {
            rerun_unknown: true,
        });
        self
    }

    /// Reports to `observer` (a [`Monitor`](crate::health::Monitor)'s
    /// [`observer`](crate::health::Monitor::observer), say) instead of the
    /// global observer: the engine's events (retries, recoveries, give-ups),
    /// every re-run as a [`HealKind::TransactionRerun`](crate::observe::HealKind::TransactionRerun) heal, and an
    /// ambiguous commit the runner could not resolve as a `commit_unknown`
    /// error. Shorthand for setting the observer of the runner's policy; to
    /// report to several, pass a [`Fanout`](crate::observe::Fanout).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.policy = self.policy.with_observer(observer);
        self
    }

    /// Where the runner's own reports go: the policy's observer (`None`:
    /// the global one), like the engine's events.
    fn observer(&self) -> Option<&dyn Observer> {
        self.policy.observer().map(|o| &**o)
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Deletes idempotency ids older than the guard's retention now (the
    /// runner also does it in the background every
    /// [`Guard::with_prune_every`] commits). Returns the rows deleted; `0`
    /// without a guard.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        match &self.guard {
            Some(guard) => super::guard::prune(&self.pool, guard.config.retention()).await,
            None => Ok(0),
        }
    }

    /// Runs `body` in a transaction named `operation` (for events, logs and
    /// fingerprints), re-running the whole transaction on transient failures.
    ///
    /// `body` receives the open transaction (use `&mut **tx` as the
    /// executor) and may run several times: it must not have effects outside
    /// the transaction. Its error type `E` must convert from
    /// [`sqlx::Error`] (the runner's own failures: begin, commit) and expose
    /// the sqlx error inside ([`AsSqlx`]), which is how failures are
    /// classified. An error of yours with no sqlx error inside is permanent:
    /// the transaction is rolled back and the error returned at once.
    ///
    /// `body` is a Rust 2024 async closure. Where the future must be `Send`
    /// (`tokio::spawn`, an axum handler), write `async move |tx| …` and give
    /// it owned values (`Copy` values, clones, `Arc`s): an async closure that
    /// *borrows* a local there trips a compiler limitation
    /// ("implementation of `Send` is not general enough",
    /// rust-lang/rust#138207). Outside such contexts, borrowing is fine.
    ///
    /// Returns the value of the attempt that committed. With the [`Guard`],
    /// when a commit failed ambiguously and the guard shows it did commit,
    /// that is the value the closure returned in that attempt (kept until the
    /// outcome is known), and nothing is applied twice.
    ///
    /// ```no_run
    /// use selfheal::db::{Runner, postgres::BEGIN_SERIALIZABLE};
    ///
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let runner = Runner::new(pool).with_begin(BEGIN_SERIALIZABLE);
    /// let amount = 10_i64;
    /// // In a spawned task (or an axum handler): `async move`, owned captures.
    /// tokio::spawn(async move {
    ///     runner
    ///         .run("transfer", async move |tx| {
    ///             sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = 1")
    ///                 .bind(amount)
    ///                 .execute(&mut **tx)
    ///                 .await?;
    ///             sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = 2")
    ///                 .bind(amount)
    ///                 .execute(&mut **tx)
    ///                 .await?;
    ///             Ok::<_, sqlx::Error>(())
    ///         })
    ///         .await
    /// })
    /// .await??;
    /// # Ok(()) }
    /// ```
    pub async fn run<F, T, E>(&self, operation: &str, body: F) -> Result<T, TxError<E>>
    where
        F: AsyncFnMut(&mut Transaction<'_, DB>) -> Result<T, E>,
        E: From<sqlx::Error> + AsSqlx + fmt::Display,
    {
        let state = State {
            body,
            attempt: 0,
            id: self.guard.as_ref().map(|_| new_operation_id()),
            unknown: false,
            pending: Vec::new(),
        };
        let (mut state, outcome) = self
            .policy
            .retry_with(operation, state, |mut state| async move {
                let outcome = self.attempt(&mut state, operation).await;
                (state, outcome)
            })
            .await;
        let failure = match outcome {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        let reason = failure.reason();
        let attempts = failure.attempts();
        let Attempt { error, step, .. } = failure.into_inner();
        if state.unknown {
            // Last chance to resolve: one lookup (not a retry) when the
            // guard is on. A missing row is not proof (a commit may still be
            // in flight), a present one is.
            if let Some(id) = &state.id
                && let Ok(Some(committed)) = DB::find_guard(&self.pool, id).await
                && let Ok(value) = state.committed(committed, operation)
            {
                return Ok(value);
            }
            tracing::warn!(
                target: "selfheal",
                operation,
                attempts,
                "transaction gave up after a commit with an unknown outcome: it may have been applied"
            );
            observe::emit(
                self.observer(),
                &Event::Error {
                    operation,
                    failure: Failure {
                        kind: "commit_unknown",
                        message: &error,
                    },
                    client: None,
                },
            );
        }
        Err(TxError {
            error,
            step,
            reason,
            attempts,
            outcome_unknown: state.unknown,
        })
    }

    /// Every `prune_every` commits, deletes expired ids in the background.
    fn maybe_prune(&self, guard: &GuardState) {
        let every = u64::from(guard.config.prune_every());
        if guard.commits.fetch_add(1, Ordering::Relaxed) % every != every - 1 {
            return;
        }
        let pool = self.pool.clone();
        let retention = guard.config.retention();
        tokio::spawn(async move {
            match super::guard::prune(&pool, retention).await {
                Ok(deleted) => tracing::debug!(
                    target: "selfheal",
                    deleted,
                    "pruned expired idempotency ids"
                ),
                Err(error) => tracing::warn!(
                    target: "selfheal",
                    %error,
                    "could not prune expired idempotency ids"
                ),
            }
        });
    }
}

/// The guide's `safe_db_commit`: commits `tx`; on error the transaction is
/// rolled back (sqlx rolls back a transaction that is dropped without a
/// successful commit, before its connection is used again) and the error
/// returned. It never retries.
///
/// Prefer the [`Runner`]: retrying a commit alone is wrong (PostgreSQL's
/// manual, §13.5: after a serialization failure the *whole* transaction,
/// including the reads that decided what to write, must be re-run; a SQLite
/// `BUSY_SNAPSHOT` means what was read is stale), and a commit that failed
/// because the connection broke may have been applied, which only an
/// idempotency id can tell ([`Guard`]). This function gives the caller an
/// honest `Result` and nothing more.
///
/// ```no_run
/// # async fn demo(pool: sqlx::SqlitePool) -> Result<(), sqlx::Error> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE students SET xp = xp + 10 WHERE id = 7")
///     .execute(&mut *tx)
///     .await?;
/// if let Err(error) = selfheal::db::safe_commit(tx).await {
///     // "Failed to save progress. Please try again."
///     # let _ = error;
/// }
/// # Ok(()) }
/// ```
pub async fn safe_commit<DB: sqlx::Database>(tx: Transaction<'_, DB>) -> Result<(), sqlx::Error> {
    tx.commit().await
}
