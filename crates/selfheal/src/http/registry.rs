//! One budget and one breaker per dependency, created on first use.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use reqwest::Url;

use super::classify::Classifier;
use crate::ConfigError;
use crate::breaker::{Breaker, Permit};
use crate::health::CheckWatch;
use crate::observe::{self, Event, Observer};
use crate::retry::{Budget, Policy};
use crate::throttle::AdaptiveThrottle;

/// Names the dependency a request belongs to, as a reqwest-middleware
/// extension; without it, the dependency is the request's host (with its
/// port when not the scheme's default).
///
/// Requests of one dependency share a retry budget, an adaptive throttle
/// and a circuit breaker,
/// and report under the operation `http:<name>`. Name a dependency when one
/// service sits behind several hosts, or when one host serves unrelated
/// services (an API gateway).
///
/// ```
/// use selfheal::http::Dependency;
///
/// # async fn demo(client: reqwest_middleware::ClientWithMiddleware) -> reqwest_middleware::Result<()> {
/// client
///     .get("https://eu.api.example.com/v1/invoices")
///     .with_extension(Dependency::new("billing"))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dependency(Cow<'static, str>);

impl Dependency {
    /// A dependency named `name` (low-cardinality: it is a key in the
    /// registry and in health fingerprints).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Makes a new dependency's circuit breaker from its name.
pub(crate) type MakeBreaker = dyn Fn(&str) -> Result<Breaker, ConfigError> + Send + Sync;

/// How each new dependency gets its circuit breaker.
#[derive(Clone)]
pub(crate) enum GateFactory {
    /// No breaker.
    Off,
    /// [`Breaker`]'s defaults, reporting to this observer (`None`: the
    /// global one).
    Default(Option<Arc<dyn Observer>>),
    /// The caller's factory (validated once by the builder).
    Custom(Arc<MakeBreaker>),
}

impl fmt::Debug for GateFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Default(_) => "default",
            Self::Custom(_) => "custom",
        })
    }
}

impl GateFactory {
    fn make(&self, name: &str) -> Gate {
        let default = |observer: Option<&Arc<dyn Observer>>| {
            // Hard down only: eight attempts in a row that got no answer
            // (random resets and stalls rarely make eight in a row: at 24 %
            // of calls, 0.24^8 = 1e-5), then one probe a second, so a
            // dependency that is back is used again within a second.
            let mut builder = Breaker::builder(name.to_owned())
                .with_consecutive_failures(8)
                .with_break_duration(std::time::Duration::from_secs(1));
            if let Some(observer) = observer {
                builder = builder.with_observer(Arc::clone(observer));
            }
            builder
                .build()
                .expect("the default breaker settings are valid")
        };
        Gate(match self {
            Self::Off => None,
            Self::Default(observer) => Some(default(observer.as_ref())),
            Self::Custom(make) => Some(make(name).unwrap_or_else(|error| {
                // The builder tried the factory once; one that fails for
                // some names only still gets a breaker.
                tracing::warn!(
                    target: "selfheal",
                    dependency = name,
                    error = %error,
                    "breaker factory failed; using the default breaker"
                );
                default(None)
            })),
        })
    }
}

/// A dependency's circuit breaker, if it has one.
#[derive(Debug)]
pub(crate) struct Gate(Option<Breaker>);

/// Permission to make one attempt.
#[derive(Debug)]
pub(crate) struct Pass(Option<Permit>);

impl Gate {
    /// `Err(retry_in)` when the breaker refuses the call.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<Pass, Duration> {
        match &self.0 {
            None => Ok(Pass(None)),
            Some(breaker) => breaker
                .try_acquire()
                .map(|permit| Pass(Some(permit)))
                .map_err(|open| open.retry_in()),
        }
    }

    pub(crate) fn breaker(&self) -> Option<&Breaker> {
        self.0.as_ref()
    }
}

impl Pass {
    /// Reports the attempt's outcome to the breaker.
    #[inline]
    pub(crate) fn record(self, failed: bool) {
        if let Some(permit) = self.0 {
            if failed {
                permit.failure();
            } else {
                permit.success();
            }
        }
    }
}

/// Everything the middleware keeps per dependency.
#[derive(Debug)]
pub(crate) struct Dep {
    pub(crate) name: Arc<str>,
    /// `http:<name>`: the operation in events and health fingerprints.
    pub(crate) operation: Box<str>,
    /// The middleware's policy with this dependency's budget.
    pub(crate) policy: Policy<Classifier>,
    pub(crate) gate: Gate,
    /// The health check that fails its calls fast while it fails.
    pub(crate) check: Option<Steer>,
}

/// A dependency steered by a health check: whether it is failing fast now
/// (to report each change once).
#[derive(Debug)]
pub(crate) struct Steer {
    pub(crate) watch: CheckWatch,
    failing_fast: AtomicBool,
}

impl Steer {
    /// Whether calls to `dependency` fail fast now; reports each change.
    #[inline]
    pub(crate) fn fails_fast(
        &self,
        dependency: &str,
        observer: Option<&Arc<dyn Observer>>,
    ) -> bool {
        let failing = self.watch.is_failing();
        if failing != self.failing_fast.load(Ordering::Relaxed) {
            self.changed(dependency, failing, observer);
        }
        failing
    }

    #[cold]
    #[inline(never)]
    fn changed(&self, dependency: &str, failing: bool, observer: Option<&Arc<dyn Observer>>) {
        if self.failing_fast.swap(failing, Ordering::Relaxed) == failing {
            return;
        }
        if failing {
            tracing::warn!(
                target: "selfheal",
                dependency,
                check = self.watch.name(),
                "health check failing: calls fail fast until it passes"
            );
        } else {
            tracing::info!(
                target: "selfheal",
                dependency,
                check = self.watch.name(),
                "health check passing again: calls resume"
            );
        }
        observe::emit(
            observer.map(|o| &**o),
            &Event::Steered {
                dependency,
                check: self.watch.name(),
                failing_fast: failing,
            },
        );
    }
}

/// The settings every new dependency is made from.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    pub(crate) policy: Policy<Classifier>,
    /// `(max_tokens, ratio)`, validated by the builder; `None`: no budget.
    pub(crate) budget: Option<(u32, f64)>,
    /// The throttle's multiplier `K`, validated by the builder; `None`: no
    /// throttle.
    pub(crate) throttle: Option<f64>,
    pub(crate) gates: GateFactory,
    pub(crate) max_dependencies: usize,
    /// Health checks by dependency name ([`Builder::with_check`](super::Builder::with_check)).
    pub(crate) checks: Vec<(Arc<str>, CheckWatch)>,
}

type Map = HashMap<Box<str>, Vec<(Option<u16>, Arc<Dep>)>, foldhash::fast::RandomState>;

/// Dependencies by name (and port), bounded: past `max_dependencies`, new
/// names share one dependency called [`OTHER`] (a client calling
/// user-supplied URLs must not grow a breaker per attacker-chosen host).
pub(crate) struct Registry {
    template: Template,
    map: RwLock<Map>,
    other: OnceLock<Arc<Dep>>,
}

/// The dependency every name beyond the registry's bound shares.
pub(crate) const OTHER: &str = "other";

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = read(&self.map)
            .values()
            .flatten()
            .map(|(_, dep)| dep.name.to_string())
            .collect();
        f.debug_struct("Registry")
            .field("template", &self.template)
            .field("dependencies", &names)
            .finish()
    }
}

#[inline]
fn read(map: &RwLock<Map>) -> std::sync::RwLockReadGuard<'_, Map> {
    crate::sync::read(map)
}

impl Registry {
    pub(crate) fn new(template: Template) -> Self {
        Self {
            template,
            map: RwLock::new(Map::default()),
            other: OnceLock::new(),
        }
    }

    /// The dependency of a request to `url`, or named `named`.
    #[inline]
    pub(crate) fn get(&self, url: &Url, named: Option<&Dependency>) -> Arc<Dep> {
        let (key, port) = match named {
            Some(dep) => (dep.name(), None),
            None => (url.host_str().unwrap_or("unknown"), url.port()),
        };
        if let Some(dep) = read(&self.map)
            .get(key)
            .and_then(|ports| ports.iter().find(|(p, _)| *p == port))
        {
            return Arc::clone(&dep.1);
        }
        self.insert(key, port)
    }

    #[cold]
    fn insert(&self, key: &str, port: Option<u16>) -> Arc<Dep> {
        let mut map = crate::sync::write(&self.map);
        let count: usize = map.values().map(Vec::len).sum();
        if let Some(dep) = map
            .get(key)
            .and_then(|ports| ports.iter().find(|(p, _)| *p == port))
        {
            return Arc::clone(&dep.1);
        }
        if count >= self.template.max_dependencies {
            drop(map);
            return Arc::clone(self.other.get_or_init(|| Arc::new(self.make(OTHER.into()))));
        }
        let name: Arc<str> = match port {
            Some(port) => format!("{key}:{port}").into(),
            None => key.into(),
        };
        let dep = Arc::new(self.make(name));
        map.entry(key.into())
            .or_default()
            .push((port, Arc::clone(&dep)));
        dep
    }

    fn make(&self, name: Arc<str>) -> Dep {
        let operation: Box<str> = format!("http:{name}").into();
        let mut policy = self
            .template
            .policy
            .clone()
            .with_name(operation.to_string());
        policy = match self.template.budget {
            Some((max_tokens, ratio)) => policy.with_budget(Arc::new(
                Budget::new(max_tokens, ratio).expect("validated by the builder"),
            )),
            None => policy.without_budget(),
        };
        if let Some(multiplier) = self.template.throttle {
            let mut throttle =
                AdaptiveThrottle::builder(name.to_string()).with_multiplier(multiplier);
            if let Some(observer) = self.template.policy.observer() {
                throttle = throttle.with_observer(Arc::clone(observer));
            }
            policy = policy.with_throttle(throttle.build().expect("validated by the builder"));
        }
        let check = self
            .template
            .checks
            .iter()
            .find(|(dependency, _)| **dependency == *name)
            .map(|(_, watch)| Steer {
                watch: watch.clone(),
                failing_fast: AtomicBool::new(false),
            });
        Dep {
            gate: self.template.gates.make(&name),
            check,
            name,
            operation,
            policy,
        }
    }

    /// The dependency named `name` (as in its operation, without `http:`),
    /// if it was created.
    pub(crate) fn find(&self, name: &str) -> Option<Arc<Dep>> {
        if name == OTHER {
            return self.other.get().cloned();
        }
        read(&self.map)
            .values()
            .flatten()
            .find(|(_, dep)| &*dep.name == name)
            .map(|(_, dep)| Arc::clone(dep))
    }

    /// The number of dependencies created (not counting [`OTHER`]).
    pub(crate) fn len(&self) -> usize {
        read(&self.map).values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::classify::StatusSet;

    fn registry(max: usize) -> Registry {
        Registry::new(Template {
            policy: Policy::default().with_classifier(Classifier {
                transient: StatusSet::default_transient(),
            }),
            budget: Some((20, 0.5)),
            throttle: Some(2.0),
            gates: GateFactory::Off,
            max_dependencies: max,
            checks: Vec::new(),
        })
    }

    #[test]
    fn one_dependency_per_host_and_port_bounded() {
        let r = registry(3);
        let url = |s: &str| Url::parse(s).unwrap();
        let a = r.get(&url("https://api.openai.com/v1/chat"), None);
        let a2 = r.get(&url("https://api.openai.com/v1/embeddings"), None);
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!(&*a.operation, "http:api.openai.com");
        // The default port of the scheme is not part of the name.
        let a3 = r.get(&url("https://api.openai.com:443/"), None);
        assert!(Arc::ptr_eq(&a, &a3));

        let b = r.get(&url("http://127.0.0.1:8080/"), None);
        assert_eq!(&*b.name, "127.0.0.1:8080");
        assert!(!Arc::ptr_eq(&a, &b));

        let named = r.get(
            &url("https://eu.example.com/"),
            Some(&Dependency::new("billing")),
        );
        assert_eq!(&*named.operation, "http:billing");
        assert_eq!(r.len(), 3);

        // Full: new names share "other"; known ones are still found.
        let x = r.get(&url("https://attacker-1.example/"), None);
        let y = r.get(&url("https://attacker-2.example/"), None);
        assert!(Arc::ptr_eq(&x, &y));
        assert_eq!(&*x.operation, "http:other");
        assert_eq!(r.len(), 3);
        assert!(Arc::ptr_eq(
            &a,
            &r.get(&url("https://api.openai.com/"), None)
        ));

        // Budgets are per dependency.
        let (ba, bb) = (a.policy.budget().unwrap(), b.policy.budget().unwrap());
        assert!(!Arc::ptr_eq(ba, bb));
    }
}
