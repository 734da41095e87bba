//! Fallbacks: answer with something useful instead of failing.
//!
//! The guide's `@safe_execute(default_return=[])`: when fetching a student's
//! courses fails, showing an empty list (and saying so) is better than a 500.
//! A fallback is the last line of healing, after retries: it does not fix the
//! failure, it contains it. Because a fallback hides a failure from the user, it
//! must not hide it from the operator: every fallback used is reported through
//! the [observer hook](crate::observe) as [`Event::FallbackUsed`], with the
//! failure's kind and message, so it shows on the health page and in the logs.
//!
//! ```
//! use selfheal::fallback::Fallback;
//!
//! # async fn query_courses(_id: u64) -> Result<Vec<String>, std::io::Error> {
//! #     Err(std::io::Error::other("database is locked"))
//! # }
//! # async fn demo() {
//! let courses: Vec<String> = Fallback::new("get_user_courses")
//!     .or_default(query_courses(42))
//!     .await;
//! assert!(courses.is_empty());
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo());
//! ```

#[cfg(feature = "tower")]
mod layer;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "tower")]
pub use layer::{FallbackFuture, FallbackLayer, FallbackService};

use crate::observe::{self, Event, Failure, Observer, short_type_name};

/// Runs an operation and replaces its failure with a fallback value,
/// reporting the failure. Cheap to clone.
#[derive(Clone)]
pub struct Fallback {
    name: Cow<'static, str>,
    observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("name", &self.name)
            .field("observer", &self.observer.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Fallback {
    /// A fallback for the operation called `name` (used in events and logs).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            observer: None,
        }
    }

    /// Reports to `observer` instead of the global observer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Awaits `op`; on error, reports it and returns `T::default()`.
    pub async fn or_default<T, E>(&self, op: impl Future<Output = Result<T, E>>) -> T
    where
        T: Default,
        E: fmt::Display,
    {
        self.or_else(op, |_| T::default()).await
    }

    /// Awaits `op`; on error, reports it and returns `value`.
    pub async fn or_value<T, E>(&self, op: impl Future<Output = Result<T, E>>, value: T) -> T
    where
        E: fmt::Display,
    {
        self.or_else(op, |_| value).await
    }

    /// Awaits `op`; on error, reports it and returns `fallback(error)`.
    pub async fn or_else<T, E, F>(&self, op: impl Future<Output = Result<T, E>>, fallback: F) -> T
    where
        E: fmt::Display,
        F: FnOnce(E) -> T,
    {
        self.recover(op.await, fallback)
    }

    /// Runs `op` on this thread; on error, reports it and returns
    /// `T::default()`. For code without an async runtime.
    pub fn or_default_blocking<T, E>(&self, op: impl FnOnce() -> Result<T, E>) -> T
    where
        T: Default,
        E: fmt::Display,
    {
        self.recover(op(), |_| T::default())
    }

    /// Replaces an error with `fallback(error)`, reporting it. The building
    /// block of the other methods, for outcomes you already have.
    pub fn recover<T, E, F>(&self, outcome: Result<T, E>, fallback: F) -> T
    where
        E: fmt::Display,
        F: FnOnce(E) -> T,
    {
        match outcome {
            Ok(value) => value,
            Err(error) => {
                self.report(short_type_name::<E>(), &error);
                fallback(error)
            }
        }
    }

    pub(crate) fn report(&self, kind: &str, message: &dyn fmt::Display) {
        observe::emit(
            self.observer.as_deref(),
            &Event::FallbackUsed {
                operation: &self.name,
                failure: Failure { kind, message },
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder() -> (Arc<Mutex<Vec<String>>>, Arc<dyn Observer>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let observer = Arc::new(move |e: &Event<'_>| {
            if let Event::FallbackUsed { operation, failure } = e {
                sink.lock()
                    .unwrap()
                    .push(format!("{operation}: {} {}", failure.kind, failure.message));
            }
        });
        (seen, observer)
    }

    #[tokio::test]
    async fn a_failure_becomes_the_fallback_and_is_reported() {
        let (seen, observer) = recorder();
        let fb = Fallback::new("get_user_courses").with_observer(observer);
        let courses: Vec<u32> = fb
            .or_default(async { Err::<Vec<u32>, _>(std::io::Error::other("locked")) })
            .await;
        assert!(courses.is_empty());
        let answer = fb.or_value(async { Err::<u32, _>("boom") }, 7).await;
        assert_eq!(answer, 7);
        let len = fb
            .or_else(async { Err::<usize, _>("four".to_string()) }, |e| e.len())
            .await;
        assert_eq!(len, 4);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "get_user_courses: Error locked",
                "get_user_courses: str boom",
                "get_user_courses: String four",
            ]
        );
    }

    #[tokio::test]
    async fn a_success_passes_through_unreported() {
        let (seen, observer) = recorder();
        let fb = Fallback::new("op").with_observer(observer);
        assert_eq!(fb.or_default(async { Ok::<_, String>(3) }).await, 3);
        assert_eq!(fb.or_default_blocking(|| Ok::<_, String>(4)), 4);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn the_blocking_form_works_without_a_runtime() {
        let (seen, observer) = recorder();
        let fb = Fallback::new("op").with_observer(observer);
        let v: Vec<u8> = fb.or_default_blocking(|| Err("nope"));
        assert!(v.is_empty());
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
