//! The transaction runner: begin, run the closure, commit; re-run the whole
//! thing on a transient failure, under the one retry engine.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Pool, Transaction};

use super::classify::{self, AsSqlx};
use super::guard::Guard;
use super::{Backend, unix_ms};
use crate::observe::{self, Event, Failure, GiveUpReason, HealKind, Observer};
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

/// One failed attempt, as the engine sees it.
struct Attempt<E> {
    error: E,
    step: TxStep,
    /// This attempt's commit failed ambiguously.
    unknown: bool,
}

impl<E> Attempt<E> {
    fn new(error: E, step: TxStep) -> Self {
        Self {
            error,
            step,
            unknown: false,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Attempt<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.error)
    }
}

/// The step of a transaction that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxStep {
    /// Looking up the idempotency id after an ambiguous commit.
    Check,
    /// Acquiring a connection and beginning the transaction.
    Begin,
    /// Your closure.
    Body,
    /// Writing the idempotency id.
    Guard,
    /// `COMMIT`.
    Commit,
}

impl TxStep {
    /// A short lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Begin => "begin",
            Self::Body => "body",
            Self::Guard => "guard",
            Self::Commit => "commit",
        }
    }
}

impl fmt::Display for TxStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transaction the runner gave up on: the last error, the step that
/// failed, why the engine stopped, and whether a commit may have happened.
///
/// Use [`TxError::into_inner`] to get your error back.
pub struct TxError<E> {
    error: E,
    step: TxStep,
    reason: GiveUpReason,
    attempts: u32,
    outcome_unknown: bool,
}

impl<E> TxError<E> {
    /// The last error.
    pub fn inner(&self) -> &E {
        &self.error
    }

    /// The last error, by value.
    pub fn into_inner(self) -> E {
        self.error
    }

    /// The step of the last attempt that failed.
    pub fn step(&self) -> TxStep {
        self.step
    }

    /// Why the runner stopped.
    pub fn reason(&self) -> GiveUpReason {
        self.reason
    }

    /// Attempts made (each a whole transaction).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// `true` when the error is permanent (tried once).
    pub fn is_permanent(&self) -> bool {
        self.reason == GiveUpReason::Permanent
    }

    /// `true` when a `COMMIT` failed in a way that leaves its outcome unknown
    /// and nothing proved since that it did not commit: the transaction may
    /// have been applied. Without the [`Guard`] this is how an ambiguous
    /// commit ends; with it, only when the database stayed unreachable.
    pub fn commit_outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }
}

impl<E: AsSqlx> TxError<E> {
    /// The failure kind of the last error (`sqlite:BUSY`, `pg:23505`, `app`
    /// for an error of your own).
    pub fn kind(&self) -> Cow<'static, str> {
        self.error
            .as_sqlx()
            .map_or(Cow::Borrowed("app"), classify::failure_kind)
    }
}

impl<E: fmt::Debug> fmt::Debug for TxError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxError")
            .field("error", &self.error)
            .field("step", &self.step)
            .field("reason", &self.reason)
            .field("attempts", &self.attempts)
            .field("commit_outcome_unknown", &self.outcome_unknown)
            .finish()
    }
}

impl<E: fmt::Display> fmt::Display for TxError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "transaction gave up after {} attempt{s} ({}) at {}",
            self.attempts, self.reason, self.step
        )?;
        if self.outcome_unknown {
            f.write_str(", commit outcome unknown")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl<E> std::error::Error for TxError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The state of one `run`, shared by its attempts (which run one after the
/// other).
struct State<F, T> {
    body: F,
    attempt: u32,
    /// The operation id written by the guard (`None`: no guard).
    id: Option<String>,
    /// An ambiguous commit has not been resolved yet.
    unknown: bool,
    /// The values of attempts whose commit was ambiguous, by attempt: one of
    /// them may turn out to have committed.
    pending: Vec<(u32, T)>,
}

impl<F, T> State<F, T> {
    /// The value of `attempt`, which the guard says committed.
    fn committed(&mut self, attempt: u32, operation: &str) -> Result<T, sqlx::Error> {
        match self.pending.iter().position(|(a, _)| *a == attempt) {
            Some(i) => {
                tracing::info!(
                    target: "selfheal",
                    operation,
                    attempt,
                    "a commit with an unknown outcome had committed (idempotency guard): not applied again"
                );
                Ok(self.pending.swap_remove(i).1)
            }
            None => Err(sqlx::Error::Protocol(format!(
                "selfheal idempotency guard: operation {} is recorded as committed by attempt \
                 {attempt}, whose commit this run did not see fail (an id collision?)",
                self.id.as_deref().unwrap_or("?")
            ))),
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
    /// every re-run as a [`HealKind::TransactionRerun`] heal, and an
    /// ambiguous commit the runner could not resolve as a `commit_unknown`
    /// error. Shorthand for setting the observer of the runner's policy; to
    /// report to several, pass a [`Fanout`](crate::observe::Fanout).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.policy = self.policy.with_observer(observer);
        self
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
                self.policy.observer().map(|o| &**o),
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

    /// One attempt: resolve an earlier ambiguous commit, begin, run the
    /// body, write the guard row, commit.
    async fn attempt<F, T, E>(
        &self,
        state: &mut State<F, T>,
        operation: &str,
    ) -> Result<T, Attempt<E>>
    where
        F: AsyncFnMut(&mut Transaction<'_, DB>) -> Result<T, E>,
        E: From<sqlx::Error>,
    {
        state.attempt += 1;
        let attempt = state.attempt;
        if attempt > 1 {
            observe::emit(
                self.policy.observer().map(|o| &**o),
                &Event::Heal {
                    kind: HealKind::TransactionRerun,
                    operation,
                },
            );
        }
        let fail = |error: sqlx::Error, step| Attempt::new(E::from(error), step);

        // An earlier commit may have happened: look before doing it again.
        if state.unknown
            && let Some(id) = &state.id
        {
            match DB::find_guard(&self.pool, id).await {
                Ok(Some(committed)) => {
                    return state
                        .committed(committed, operation)
                        .map_err(|e| fail(e, TxStep::Check));
                }
                Ok(None) => {}
                Err(e) => return Err(fail(e, TxStep::Check)),
            }
        }

        let begun = match &self.begin {
            Some(statement) => self.pool.begin_with(statement.clone()).await,
            None => self.pool.begin().await,
        };
        let mut tx = begun.map_err(|e| fail(e, TxStep::Begin))?;

        let value = match (state.body)(&mut tx).await {
            Ok(value) => value,
            Err(error) => {
                rollback(tx).await;
                return Err(Attempt::new(error, TxStep::Body));
            }
        };

        if let Some(id) = &state.id {
            match DB::insert_guard(&mut tx, id, attempt, unix_ms()).await {
                // Our row: no earlier attempt committed (an earlier commit
                // still in flight would have made this insert wait for it).
                Ok(1) => state.unknown = false,
                Ok(_) => {
                    // The id is taken: an earlier attempt did commit.
                    rollback(tx).await;
                    let id = id.clone();
                    return match DB::find_guard(&self.pool, &id).await {
                        Ok(Some(committed)) => state
                            .committed(committed, operation)
                            .map_err(|e| fail(e, TxStep::Guard)),
                        Ok(None) => Err(fail(
                            sqlx::Error::Protocol(format!(
                                "selfheal idempotency guard: operation {id} conflicted but is \
                                 not recorded"
                            )),
                            TxStep::Guard,
                        )),
                        Err(e) => Err(fail(e, TxStep::Check)),
                    };
                }
                Err(e) => {
                    rollback(tx).await;
                    return Err(fail(e, TxStep::Guard));
                }
            }
        }

        match tx.commit().await {
            Ok(()) => {
                if let Some(guard) = &self.guard {
                    self.maybe_prune(guard);
                }
                Ok(value)
            }
            Err(error) => {
                let unknown = classify::commit_outcome_unknown(&error);
                if unknown {
                    state.unknown = true;
                    if state.id.is_some() {
                        state.pending.push((attempt, value));
                    }
                }
                let mut failure = fail(error, TxStep::Commit);
                failure.unknown = unknown;
                Err(failure)
            }
        }
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

/// Rolls back, ignoring errors: when the connection is gone the server has
/// rolled back already, and sqlx closes the broken connection.
async fn rollback<DB: sqlx::Database>(tx: Transaction<'static, DB>) {
    if let Err(error) = tx.rollback().await {
        tracing::debug!(target: "selfheal", %error, "rollback failed");
    }
}

/// A fresh operation id: 128 random bits, hex.
fn new_operation_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
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
