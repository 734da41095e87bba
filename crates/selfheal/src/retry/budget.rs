//! Retry budgets: why a maximum number of attempts is not enough.
//!
//! "Retry 3 times" looks harmless per call, but when a dependency goes down every
//! caller does it at once: a 100% outage turns 1,000 requests into 3,000, and
//! the retries land exactly when the dependency is trying to come back. That is
//! a retry storm, and it is how a blip becomes an outage.
//!
//! A [`Budget`] is shared by every call to one dependency and makes retrying a
//! privilege the dependency has to earn. It is the token bucket of gRPC's retry
//! throttling (proposal A6): the bucket holds up to `max_tokens`; every
//! transient failure takes one token out, every success puts `ratio` back, and a
//! retry is allowed only while the bucket is more than half full.
//!
//! - While the dependency is healthy the bucket is full and retries flow: a
//!   burst of up to `max_tokens / 2` failures is retried even after a quiet
//!   period (the floor), and after that retries are paid for by successes
//!   (about `ratio` retries per success).
//! - During an outage nothing refills it: after about `max_tokens / 2` failures,
//!   retries stop entirely and every call fails at once. 1,000 calls against a
//!   dead dependency make about 1,010 attempts, not 3,000.
//!
//! Why this and not a per-second budget (Finagle's and tower's `TpsBudget`,
//! which allow retries up to a fixed percentage of recent requests): a
//! percentage budget keeps adding its percentage to the load of a dead
//! dependency forever, and needs a clock read on every call. This one converges
//! to zero retries while the dependency fails, needs no clock at all, and costs
//! one atomic load on the success path while the bucket is full.
//!
//! # Defaults, and why
//!
//! `max_tokens = 20`, `ratio = 0.5`. The floor of 10 retries covers a burst of
//! lock contention or a provider's short hiccup even on a quiet service. A ratio
//! of 0.5 keeps retrying while fewer than about a third of attempts fail (each
//! failure costs 1, each success earns 0.5): LLM and payment APIs routinely see
//! failure bursts of 10 to 30% that retries do fix. Beyond a third, a dependency
//! is better described as down, and retries stop. gRPC's own example uses
//! `10 / 0.1`, which stops retrying above about 9% failures: choose it with
//! [`Budget::new`] for dependencies that must never see extra load.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::ConfigError;

/// Milli-tokens: the bucket is kept in integer thousandths of a token.
const SCALE: f64 = 1000.0;
/// One token, in milli-tokens.
const TOKEN: i32 = SCALE as i32;

/// A retry budget shared by all calls to one dependency. See the
/// [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use selfheal::retry::{Budget, Policy};
///
/// // One budget per dependency, shared by every policy that calls it.
/// let openai = Arc::new(Budget::default());
/// let chat = Policy::default().with_budget(openai.clone());
/// let embeddings = Policy::default().with_budget(openai);
/// # let _ = (chat, embeddings);
/// ```
pub struct Budget {
    /// Current balance, in milli-tokens. Signed: a withdrawal from an
    /// empty bucket goes below zero for an instant and puts back what it
    /// overdrew (see [`Budget::withdraw`]).
    tokens: AtomicI32,
    max: i32,
    /// Retries are allowed while `tokens > threshold` (`max / 2`).
    threshold: i32,
    /// Milli-tokens earned per success.
    earn: i32,
}

impl Budget {
    /// A bucket of `max_tokens` (1 to 1,000, as in gRPC A6), refilled by `ratio`
    /// tokens per success (0 < ratio ≤ 1,000... in practice 0.1 to 1). Starts
    /// full.
    pub fn new(max_tokens: u32, ratio: f64) -> Result<Self, ConfigError> {
        if !(1..=1000).contains(&max_tokens) {
            return Err(ConfigError::new(format!(
                "retry budget max_tokens must be between 1 and 1000, got {max_tokens}"
            )));
        }
        if !(ratio.is_finite() && ratio > 0.0 && ratio <= max_tokens as f64) {
            return Err(ConfigError::new(format!(
                "retry budget ratio must be greater than 0 and at most max_tokens, got {ratio}"
            )));
        }
        let max = max_tokens as i32 * TOKEN;
        Ok(Self {
            tokens: AtomicI32::new(max),
            max,
            threshold: max / 2,
            earn: ((ratio * SCALE).round() as i32).max(1),
        })
    }

    /// Records a success: earns `ratio` tokens, up to the maximum. While the
    /// bucket is full this is a single atomic load.
    ///
    /// One atomic add, not a compare-and-swap loop: what it adds beyond the
    /// maximum (seen from its own add) it takes back at once, so concurrent
    /// deposits never leave more than the maximum once each has finished.
    #[inline]
    pub fn deposit(&self) {
        if self.tokens.load(Ordering::Relaxed) >= self.max {
            return;
        }
        let after = self.tokens.fetch_add(self.earn, Ordering::Relaxed) + self.earn;
        let over = after - self.max;
        if over > 0 {
            self.tokens
                .fetch_sub(over.min(self.earn), Ordering::Relaxed);
        }
    }

    /// Records a transient failure (one token out) and answers whether a retry
    /// is allowed now.
    ///
    /// One atomic subtraction: a withdrawal that takes the balance below zero
    /// (seen from its own subtraction) puts back what it overdrew, so the
    /// balance never stays below zero.
    #[inline]
    pub fn withdraw(&self) -> bool {
        let after = self.tokens.fetch_sub(TOKEN, Ordering::Relaxed) - TOKEN;
        if after < 0 {
            self.tokens
                .fetch_add((-after).min(TOKEN), Ordering::Relaxed);
            return false;
        }
        after > self.threshold
    }

    /// Whether a retry would be allowed now (without recording anything).
    pub fn can_retry(&self) -> bool {
        self.tokens.load(Ordering::Relaxed) > self.threshold
    }

    /// The current balance, in tokens.
    pub fn tokens(&self) -> f64 {
        f64::from(self.tokens.load(Ordering::Relaxed).max(0)) / SCALE
    }

    /// The capacity, in tokens.
    pub fn max_tokens(&self) -> f64 {
        f64::from(self.max) / SCALE
    }
}

impl Default for Budget {
    /// `max_tokens = 20`, `ratio = 0.5`: see the [module docs](self) for why.
    fn default() -> Self {
        Self::new(20, 0.5).expect("default budget is valid")
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("tokens", &self.tokens())
            .field("max_tokens", &self.max_tokens())
            .field("ratio", &(f64::from(self.earn) / SCALE))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_drains_the_budget_and_retries_stop() {
        let b = Budget::new(10, 0.1).unwrap();
        let allowed = (0..100).filter(|_| b.withdraw()).count();
        // 10 tokens, threshold 5: the first 4 failures leave more than 5.
        assert_eq!(allowed, 4);
        assert!(!b.can_retry());
        assert_eq!(b.tokens(), 0.0);
    }

    #[test]
    fn successes_refill_up_to_the_cap() {
        let b = Budget::new(10, 0.5).unwrap();
        for _ in 0..10 {
            b.withdraw();
        }
        assert!(!b.can_retry());
        for _ in 0..11 {
            b.deposit();
        }
        assert!((b.tokens() - 5.5).abs() < 1e-9);
        assert!(b.can_retry());
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.tokens(), 10.0);
    }

    #[test]
    fn bad_configuration_is_rejected() {
        assert!(Budget::new(0, 0.1).is_err());
        assert!(Budget::new(1001, 0.1).is_err());
        assert!(Budget::new(10, 0.0).is_err());
        assert!(Budget::new(10, f64::NAN).is_err());
    }

    #[test]
    fn concurrent_use_is_consistent() {
        let b = std::sync::Arc::new(Budget::new(1000, 1.0).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        b.withdraw();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.tokens(), 600.0);
    }

    #[test]
    fn concurrent_withdrawals_and_deposits_stay_within_the_bucket() {
        let b = std::sync::Arc::new(Budget::new(5, 0.7).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        if (i + t) % 3 == 0 {
                            b.deposit();
                        } else {
                            b.withdraw();
                        }
                        let now = b.tokens();
                        assert!((0.0..=5.0).contains(&now), "{now}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Once everyone has finished, the balance is exact to the milli-token
        // bounds: never negative, never above the maximum.
        let raw = b.tokens.load(Ordering::Relaxed);
        assert!((0..=b.max).contains(&raw), "{raw}");
        for _ in 0..100 {
            b.withdraw();
        }
        assert_eq!(b.tokens.load(Ordering::Relaxed), 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.tokens.load(Ordering::Relaxed), b.max);
    }
}
