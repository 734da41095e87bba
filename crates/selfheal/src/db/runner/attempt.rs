//! One attempt of a transaction, and the state its attempts pass from one
//! to the next (through [`Policy::retry_with`](crate::retry::Policy::retry_with)):
//! begin, run the body, write the guard row, commit; and, after a commit
//! whose outcome is unknown, look up the guard before doing anything again.

use std::fmt;

use sqlx::Transaction;

use super::{Runner, TxStep};
use crate::db::classify;
use crate::db::{Backend, unix_ms};
use crate::observe::{self, Event, HealKind};

/// One failed attempt, as the engine sees it.
pub(super) struct Attempt<E> {
    pub(super) error: E,
    pub(super) step: TxStep,
    /// This attempt's commit failed ambiguously.
    pub(super) unknown: bool,
}

impl<E> Attempt<E> {
    pub(super) fn new(error: E, step: TxStep) -> Self {
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

/// The state of one `run`, shared by its attempts (which run one after the
/// other).
pub(super) struct State<F, T> {
    pub(super) body: F,
    pub(super) attempt: u32,
    /// The operation id written by the guard (`None`: no guard).
    pub(super) id: Option<String>,
    /// An ambiguous commit has not been resolved yet.
    pub(super) unknown: bool,
    /// The values of attempts whose commit was ambiguous, by attempt: one of
    /// them may turn out to have committed.
    pub(super) pending: Vec<(u32, T)>,
}

impl<F, T> State<F, T> {
    /// The value of `attempt`, which the guard says committed.
    pub(super) fn committed(&mut self, attempt: u32, operation: &str) -> Result<T, sqlx::Error> {
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
    /// Begins a transaction, in a task of its own.
    ///
    /// Why a task: sqlx 0.8.6 can leave a connection inside a transaction
    /// that nobody owns when the begin's future is cancelled (a client hangs
    /// up, a request times out) after the database began the transaction
    /// and before the `Transaction` is returned: its SQLite custom `BEGIN`
    /// asks the connection's worker thread for the handle afterwards, an
    /// await point. That connection then goes back to the pool holding
    /// SQLite's write lock, and every writer on another connection fails
    /// after its busy timeout for as long as it lives (chaos saw an app
    /// wedge with half of its writes failing; `tests/db/sqlite.rs`
    /// reproduces it). A spawned task runs to its end whatever happens to
    /// this future, and a `Transaction` nobody receives is dropped, which
    /// rolls it back. The cost is one task per transaction.
    async fn begin(&self) -> Result<Transaction<'static, DB>, sqlx::Error> {
        let (pool, statement) = (self.pool.clone(), self.begin.clone());
        let begun = tokio::spawn(async move {
            match statement {
                Some(statement) => pool.begin_with(statement).await,
                None => pool.begin().await,
            }
        });
        match begun.await {
            Ok(begun) => begun,
            // The begin panicked (a bug in the driver) or the runtime is
            // shutting down: no transaction to give.
            Err(error) => Err(sqlx::Error::Io(std::io::Error::other(format!(
                "the transaction's begin did not finish: {error}"
            )))),
        }
    }

    /// One attempt: resolve an earlier ambiguous commit, begin, run the
    /// body, write the guard row, commit.
    pub(super) async fn attempt<F, T, E>(
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
                self.observer(),
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

        let mut tx = self.begin().await.map_err(|e| fail(e, TxStep::Begin))?;

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
}

/// Rolls back, ignoring errors: when the connection is gone the server has
/// rolled back already, and sqlx closes the broken connection.
async fn rollback<DB: sqlx::Database>(tx: Transaction<'static, DB>) {
    if let Err(error) = tx.rollback().await {
        tracing::debug!(target: "selfheal", %error, "rollback failed");
    }
}

/// A fresh operation id: 128 random bits, hex.
pub(super) fn new_operation_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
