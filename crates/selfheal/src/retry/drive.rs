//! The drivers users call: [`Policy::retry`] and [`Policy::retry_named`]
//! (async), [`Policy::retry_with`] (async, carrying state from one attempt
//! to the next), [`Policy::retry_blocking`] (a thread). Each is a loop of a
//! few lines around the [engine](super::engine).

use std::fmt;
use std::future::Future;

use super::{Classify, Policy, RetryError, Run, Step};

impl<C> Policy<C> {
    /// Runs `op` until it succeeds or the policy gives up, naming it after the
    /// policy ([`Policy::with_name`]).
    ///
    /// `op` is called once per attempt and returns a fresh future each time.
    /// Waits use tokio's timer, so this needs a tokio runtime with time enabled
    /// (and runs instantly under `tokio::time::pause`). A zero delay retries
    /// without touching the timer.
    pub fn retry<F, Fut, T, E>(&self, op: F) -> impl Future<Output = Result<T, RetryError<E>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        self.run_async(None, op)
    }

    /// [`Policy::retry`] with an operation name for events and logs.
    pub fn retry_named<'a, F, Fut, T, E>(
        &'a self,
        operation: &'a str,
        op: F,
    ) -> impl Future<Output = Result<T, RetryError<E>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        self.run_async(Some(operation), op)
    }

    async fn run_async<F, Fut, T, E>(
        &self,
        operation: Option<&str>,
        mut op: F,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        let mut run = Run::new(self.deadline.map(|_| tokio::time::Instant::now()));
        loop {
            let outcome = op().await;
            match self.after_attempt(&mut run, outcome, self.op_name(operation)) {
                Step::Retry(delay) if delay.is_zero() => {}
                // Boxed: a `Sleep` held inline makes this future's drop glue
                // too big to inline, and the out-of-line drop keeps the whole
                // state machine in memory even when the first attempt
                // succeeds. One allocation per real wait (which lasts at least
                // a timer tick, 1 ms) is noise; the success path then costs
                // nothing extra.
                Step::Retry(delay) => Box::pin(tokio::time::sleep(delay)).await,
                done => return done.into_result(run.attempts),
            }
        }
    }

    /// [`Policy::retry_named`] for an operation that carries state from one
    /// attempt to the next: `op` takes the context by value and hands it
    /// back with the attempt's outcome, and the call returns the context
    /// with the result (the pattern of backon's `retry_with_context`). No
    /// lock, no `Rc<RefCell<…>>`: an attempt owns the state while it runs.
    ///
    /// `op` is a closure returning a future (not an async closure): the
    /// future then borrows only what the closure captured, and stays `Send`
    /// where an async closure would trip rust-lang/rust#138207.
    ///
    /// The db runner uses it to keep an operation id and the values of
    /// attempts whose commit outcome is still unknown.
    ///
    /// ```
    /// use selfheal::retry::Policy;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let policy = Policy::default();
    /// // The context counts the attempts; the second one succeeds.
    /// let (tries, result) = policy
    ///     .retry_with("count", 0_u32, |tries| async move {
    ///         let tries = tries + 1;
    ///         (tries, if tries < 2 { Err("flaky") } else { Ok(tries) })
    ///     })
    ///     .await;
    /// assert_eq!((tries, result.unwrap()), (2, 2));
    /// # }
    /// ```
    pub async fn retry_with<X, F, Fut, T, E>(
        &self,
        operation: &str,
        mut context: X,
        mut op: F,
    ) -> (X, Result<T, RetryError<E>>)
    where
        F: FnMut(X) -> Fut,
        Fut: Future<Output = (X, Result<T, E>)>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        let mut run = Run::new(self.deadline.map(|_| tokio::time::Instant::now()));
        loop {
            let (back, outcome) = op(context).await;
            context = back;
            match self.after_attempt(&mut run, outcome, operation) {
                Step::Retry(delay) if delay.is_zero() => {}
                Step::Retry(delay) => Box::pin(tokio::time::sleep(delay)).await,
                done => {
                    return (context, done.into_result(run.attempts));
                }
            }
        }
    }

    /// Runs `op` on the current thread until it succeeds or the policy gives
    /// up, sleeping with `std::thread::sleep`. Same policy, same events as
    /// [`Policy::retry`]; for code without an async runtime.
    pub fn retry_blocking<F, T, E>(&self, op: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Result<T, E>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        self.run_blocking(None, op)
    }

    /// [`Policy::retry_blocking`] with an operation name for events and logs.
    pub fn retry_blocking_named<F, T, E>(&self, operation: &str, op: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Result<T, E>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        self.run_blocking(Some(operation), op)
    }

    fn run_blocking<F, T, E>(&self, operation: Option<&str>, mut op: F) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Result<T, E>,
        C: Classify<T, E>,
        E: fmt::Display,
    {
        let operation = self.op_name(operation);
        let mut run = Run::new(self.deadline.map(|_| std::time::Instant::now()));
        loop {
            match self.after_attempt(&mut run, op(), operation) {
                Step::Retry(delay) if delay.is_zero() => {}
                Step::Retry(delay) => std::thread::sleep(delay),
                done => return done.into_result(run.attempts),
            }
        }
    }

    #[inline]
    fn op_name<'a>(&'a self, operation: Option<&'a str>) -> &'a str {
        operation.unwrap_or(&self.name)
    }
}
