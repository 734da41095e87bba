//! Configuring the middleware.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::ResilientMiddleware;
use super::classify::{Classifier, StatusSet};
use super::registry::{GateFactory, Registry, Template};
use crate::ConfigError;
use crate::breaker::Breaker;
use crate::health::CheckWatch;
use crate::observe::Observer;
use crate::retry::{Backoff, Budget, Policy, Random};

/// Configures a [`ResilientMiddleware`]; see
/// [`ResilientMiddleware::builder`].
///
/// Defaults, and why:
///
/// | setting | default | why |
/// |---|---|---|
/// | [max attempts](Self::with_max_attempts) | 3 | the first try and two retries: enough for a blip, not enough to pile onto an outage |
/// | [attempt timeout](Self::with_attempt_timeout) | 30 s | longer than any healthy JSON API call, short enough that a hung connection is abandoned while the deadline still leaves room for a retry; raise it for slow endpoints (long LLM completions) |
/// | [deadline](Self::with_deadline) | 60 s | the whole call, attempts and waits; a caller waits at most this long |
/// | [backoff](Self::with_backoff) | the engine's: exponential 100 ms × 2 up to 10 s, full jitter | |
/// | [max delay](Self::with_max_delay) (cap on server hints) | 30 s | a server asking for more is shortened to this, and a hint past the deadline fails at once |
/// | [transient statuses](Self::with_transient_status) | 408, 429, 502, 503, 504 | not 500: see the [module docs](super) |
/// | [adaptive throttle](Self::with_throttle) | one per dependency, `K = 2`, on retries | retries go on while the dependency accepts at least half of what it answers (a reset or a refused connect is the link's failure, not counted), and are shed in proportion once the window shows it accepts less, three standard deviations clear of chance: a flaky dependency keeps being healed, an overloaded one is not sent a retry storm (see [`throttle`](crate::throttle)) |
/// | [budget](Self::with_budget) | 50 tokens, ratio 2.0, per dependency | with the throttle shedding retries in proportion, the budget only has to stop them at once in a full outage (after about 25 failures); a ratio of 2 keeps retrying while up to two attempts in three fail (0.5 stopped at one in three: measured, on 60 % random failures it healed nothing); 50 rather than 20 tokens because calls in flight together fail together: with 20, a flaky dependency's bucket dipped to its threshold often enough to stop one call in ten that more attempts would have healed (chaos, harsh plan) |
/// | [circuit breaker](Self::with_breaker) | one per dependency, opening after 8 attempts in a row that got no answer (connect errors: refused, DNS, connect timeout; attempt timeouts; a connection reset before any answer); one probe a second while open (a call already under way waits for its probes, up to 5 s, if its deadline leaves room for an attempt after the wait; never without a deadline); reporting to this middleware's observer | a dependency that is hard down or hung fails fast instead of waiting out timeouts; failures of a dependency that answers (a 503, a 429) are the throttle's, never the breaker's: a failure-ratio breaker refused calls that would have succeeded under heavy random failure |
/// | [max dependencies](Self::with_max_dependencies) | 64 | more distinct hosts than that share one `other` budget and breaker |
/// | [generated idempotency keys](Self::with_generated_idempotency_keys) | off | only helps with servers that honour the header |
/// | observer | the global one ([`observe::set_global`](crate::observe::set_global)) | the health monitor installs itself there |
#[derive(Clone)]
pub struct Builder {
    max_attempts: u32,
    attempt_timeout: Option<Duration>,
    deadline: Option<Duration>,
    backoff: Backoff,
    max_delay: Duration,
    transient: StatusSet,
    budget: Option<(u32, f64)>,
    throttle: Option<f64>,
    gates: GateFactory,
    max_dependencies: usize,
    generate_keys: bool,
    observer: Option<Arc<dyn Observer>>,
    random: Option<Arc<dyn Random>>,
    checks: Vec<(Arc<str>, CheckWatch)>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            attempt_timeout: Some(Duration::from_secs(30)),
            deadline: Some(Duration::from_secs(60)),
            backoff: Backoff::default(),
            max_delay: Duration::from_secs(30),
            transient: StatusSet::default_transient(),
            budget: Some((50, 2.0)),
            throttle: Some(crate::throttle::Builder::DEFAULT_MULTIPLIER),
            gates: GateFactory::Default(None),
            max_dependencies: 64,
            generate_keys: false,
            observer: None,
            random: None,
            checks: Vec::new(),
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("max_attempts", &self.max_attempts)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("backoff", &self.backoff)
            .field("max_delay", &self.max_delay)
            .field("transient_statuses", &self.transient)
            .field("budget", &self.budget)
            .field("throttle", &self.throttle)
            .field("breaker", &self.gates)
            .field("max_dependencies", &self.max_dependencies)
            .field("generate_idempotency_keys", &self.generate_keys)
            .field("observer", &self.observer.as_ref().map(|_| "custom"))
            .field("checks", &self.checks)
            .finish()
    }
}

impl Builder {
    /// At most `attempts` attempts per call, the first included (`1`: never
    /// retry). Zero is rejected by [`Builder::build`].
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Bounds each attempt, from sending the request until its response body
    /// has been read: it is reqwest's own request timeout (so a timed-out
    /// attempt is a `reqwest::Error` with `is_timeout()`), and it keeps
    /// running while the caller reads the body of the response the
    /// middleware returned. A shorter timeout set on the request itself is
    /// kept. Each attempt is also cut off at the call's deadline.
    pub const fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// No per-attempt timeout of the middleware's own (the client's and the
    /// request's timeouts, and the deadline, still apply).
    pub const fn without_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// Bounds the whole call (attempts and the waits between them): no wait
    /// crosses it (a server hint past it fails at once with
    /// [`Unavailable`](super::Unavailable)), and each attempt's timeout is
    /// cut to what is left of it.
    pub const fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// No deadline on the whole call.
    pub const fn without_deadline(mut self) -> Self {
        self.deadline = None;
        self
    }

    /// The backoff between attempts when the server gives no hint.
    pub const fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest the middleware waits on a server's hint; a longer hint is
    /// shortened to this (within the deadline).
    pub const fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Also retries responses with `status` (for example `500` for an API
    /// whose documentation says its 500s are transient, as OpenAI's does).
    pub const fn with_transient_status(mut self, status: StatusCode) -> Self {
        self.transient = self.transient.with(status.as_u16());
        self
    }

    /// Stops retrying responses with `status` (for example `429` for a
    /// caller that prefers to queue its own work when rate-limited).
    pub const fn without_transient_status(mut self, status: StatusCode) -> Self {
        self.transient = self.transient.without(status.as_u16());
        self
    }

    /// A retry budget per dependency of `max_tokens`, refilled by `ratio`
    /// per success (see [`Budget::new`]; checked by [`Builder::build`]).
    pub const fn with_budget(mut self, max_tokens: u32, ratio: f64) -> Self {
        self.budget = Some((max_tokens, ratio));
        self
    }

    /// No retry budget: every call may retry up to its maximum attempts, even
    /// during an outage. Rarely what you want; see [`Budget`].
    pub const fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// An [adaptive throttle](crate::throttle) per dependency with
    /// multiplier `K` (at least 1; checked by [`Builder::build`]): retries
    /// go on while the dependency accepts at least one attempt in `K`, and
    /// beyond that are refused in proportion to the excess
    /// ([`GiveUpReason::Throttled`](crate::observe::GiveUpReason::Throttled)).
    /// First attempts are never refused. Retries also stop while this
    /// server sheds its own load. Default `K = 2`.
    pub const fn with_throttle(mut self, multiplier: f64) -> Self {
        self.throttle = Some(multiplier);
        self
    }

    /// No adaptive throttle: retries are limited by the budget alone.
    pub const fn without_throttle(mut self) -> Self {
        self.throttle = None;
        self
    }

    /// Makes each dependency's circuit breaker with `make`, called with the
    /// dependency's name on its first request (and once by
    /// [`Builder::build`], to reject a factory that fails).
    ///
    /// An attempt counts as a failure for the breaker only when it got no
    /// answer (a connect error: refused, DNS, connect timeout; or the
    /// attempt timed out); any answer, even a `503`, and a reset say the
    /// dependency is there, and are the throttle's to weigh. A breaker
    /// made here reports to the observer it was built with, not to
    /// [`Builder::with_observer`]'s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use selfheal::breaker::Breaker;
    /// use selfheal::http::ResilientMiddleware;
    ///
    /// let middleware = ResilientMiddleware::builder()
    ///     .with_breaker(|dependency: &str| {
    ///         Breaker::builder(dependency.to_owned())
    ///             .with_failure_ratio(0.3)
    ///             .with_break_duration(Duration::from_secs(10))
    ///             .build()
    ///     })
    ///     .build()?;
    /// # let _ = middleware;
    /// # Ok::<(), selfheal::ConfigError>(())
    /// ```
    pub fn with_breaker<F>(mut self, make: F) -> Self
    where
        F: Fn(&str) -> Result<Breaker, ConfigError> + Send + Sync + 'static,
    {
        self.gates = GateFactory::Custom(Arc::new(make));
        self
    }

    /// No circuit breaker.
    pub fn without_breaker(mut self) -> Self {
        self.gates = GateFactory::Off;
        self
    }

    /// At most `max` dependencies get their own budget and breaker; requests
    /// to further hosts share one, named `other`. Zero is rejected.
    pub const fn with_max_dependencies(mut self, max: usize) -> Self {
        self.max_dependencies = max;
        self
    }

    /// Gives every POST, PATCH (any non-idempotent method) without an
    /// `Idempotency-Key` a generated one, as if it carried
    /// [`Idempotency::GenerateKey`](super::Idempotency::GenerateKey); use it
    /// for clients of APIs that honour the header.
    pub const fn with_generated_idempotency_keys(mut self, generate: bool) -> Self {
        self.generate_keys = generate;
        self
    }

    /// Fails calls to `dependency` at once, without sending them, while the
    /// health check behind `watch` fails
    /// ([`Monitor::watch_check`](crate::health::Monitor::watch_check)):
    /// the error is [`Unavailable`](super::Unavailable) with
    /// [`ReportedDown`](super::UnavailableReason::ReportedDown) and a
    /// `Retry-After` of the check's interval, so the caller's fallback
    /// answers in microseconds instead of after a timeout. Calls resume the
    /// moment the check passes again (it keeps probing on its own
    /// schedule: nothing stops for good). `dependency` is a host (with its
    /// port when not the scheme's default) or a [`Dependency`](super::Dependency)
    /// name. Each change (failing fast, then calling again) is an
    /// [`Event::Steered`](crate::observe::Event::Steered) with the check's
    /// name, shown in the monitor's notes while the check fails.
    ///
    /// **Give it a check that says "down", never one that samples
    /// traffic.** A provider's status or health endpoint, a maintenance
    /// flag, a login to its API: a verdict about the dependency as a whole.
    /// A check that fails on the random errors of a *flaky* dependency
    /// would refuse calls that would have succeeded, which is the failure
    /// of the failure-ratio breaker this middleware no longer uses for that
    /// reason (see the adaptive throttle).
    ///
    /// ```
    /// use selfheal::health::{CheckOptions, Monitor};
    /// use selfheal::http::ResilientMiddleware;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), selfheal::ConfigError> {
    /// let monitor = Monitor::builder().with_global(false).build()?;
    /// monitor.register_check("payments", CheckOptions::default(), || async {
    ///     // e.g. GET the provider's health endpoint
    ///     Ok::<(), String>(())
    /// });
    /// let watch = monitor.watch_check("payments").expect("registered above");
    /// let middleware = ResilientMiddleware::builder()
    ///     .with_check("api.stripe.com", watch)
    ///     .build()?;
    /// # let _ = middleware;
    /// # Ok(()) }
    /// ```
    ///
    /// `dependency` is matched as the middleware names dependencies: a URL
    /// (`https://api.stripe.com`) is reduced to its host, and its port when
    /// not the scheme's default; names are compared in lower case. A
    /// second check for the same dependency replaces the first.
    pub fn with_check(mut self, dependency: &str, watch: CheckWatch) -> Self {
        let name: Arc<str> = dependency_name(dependency).into();
        self.checks.retain(|(n, _)| *n != name);
        self.checks.push((name, watch));
        self
    }

    /// Reports events to `observer` instead of the global observer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Draws backoff jitter from `random` (for deterministic tests).
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = Some(random);
        self
    }

    /// The middleware.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for zero attempts, a zero timeout or deadline, an
    /// invalid budget or throttle multiplier, or zero max dependencies.
    pub fn build(self) -> Result<ResilientMiddleware, ConfigError> {
        let mut policy = Policy::default()
            .with_max_attempts(self.max_attempts)?
            .with_backoff(self.backoff)
            .with_max_delay(self.max_delay);
        if let Some(deadline) = self.deadline {
            policy = policy.with_deadline(deadline)?;
        }
        if self.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "attempt timeout must be greater than zero",
            ));
        }
        if let Some((max_tokens, ratio)) = self.budget {
            Budget::new(max_tokens, ratio)?;
        }
        if let Some(multiplier) = self.throttle {
            crate::throttle::AdaptiveThrottle::builder("selfheal-http-throttle-check")
                .with_multiplier(multiplier)
                .build()?;
        }
        if self.max_dependencies == 0 {
            return Err(ConfigError::new("max dependencies must be at least 1"));
        }
        let mut gates = self.gates;
        match &mut gates {
            GateFactory::Custom(make) => {
                make("selfheal-http-breaker-check")?;
            }
            GateFactory::Default(observer) => observer.clone_from(&self.observer),
            GateFactory::Off => {}
        }
        if let Some(observer) = self.observer {
            policy = policy.with_observer(observer);
        }
        if let Some(random) = self.random {
            policy = policy.with_random(random);
        }
        let policy = policy.with_classifier(Classifier {
            transient: self.transient,
        });
        Ok(ResilientMiddleware {
            inner: Arc::new(super::Inner {
                registry: Registry::new(Template {
                    policy,
                    budget: self.budget,
                    throttle: self.throttle,
                    gates,
                    max_dependencies: self.max_dependencies,
                    checks: self.checks,
                }),
                attempt_timeout: self.attempt_timeout,
                generate_keys: self.generate_keys,
            }),
        })
    }
}

/// How the registry names `dependency`: a URL's host (with its port when
/// not the scheme's default), in lower case.
fn dependency_name(dependency: &str) -> String {
    match reqwest::Url::parse(dependency) {
        Ok(url) if url.has_host() => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => dependency.to_ascii_lowercase(),
        },
        _ => dependency.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_names_are_the_registrys() {
        for (given, name) in [
            ("https://API.stripe.com", "api.stripe.com"),
            ("https://api.stripe.com:443/v1", "api.stripe.com"),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("Billing", "billing"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
        ] {
            assert_eq!(super::dependency_name(given), name, "{given}");
        }
    }
}
