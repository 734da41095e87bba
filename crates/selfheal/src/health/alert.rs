//! Alert rules, alerts and their sinks.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Warning,
    /// Something systemic is wrong: the guide's `CRITICAL`.
    Critical,
}

impl Severity {
    /// `"WARNING"` or `"CRITICAL"`, the marker written in logs.
    pub const fn marker(self) -> &'static str {
        match self {
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
        }
    }
}

/// A condition the monitor evaluates, about once per
/// [evaluation interval](super::MonitorBuilder::with_evaluation_interval), off the
/// request path.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AlertRule {
    /// One fingerprint occurred more than `threshold` times within `window`.
    /// The guide's rule is `threshold: 10, window: 1 h, Critical`
    /// ([`AlertRule::repeated_error`]).
    RepeatedError {
        /// The rule's name, in alerts.
        name: Cow<'static, str>,
        /// Fires when the count is strictly greater than this.
        threshold: u64,
        /// The window counted over.
        window: Duration,
        /// The alert's severity.
        severity: Severity,
    },
    /// Failed requests over recorded requests reached `max_ratio` within
    /// `window`, with at least `min_requests` requests.
    ErrorRate {
        /// The rule's name, in alerts.
        name: Cow<'static, str>,
        /// Fires when `failed / total >= max_ratio`.
        max_ratio: f64,
        /// Below this many requests in the window the rule stays silent.
        min_requests: u64,
        /// The window counted over.
        window: Duration,
        /// The alert's severity.
        severity: Severity,
    },
}

impl AlertRule {
    /// The default rule, named `repeated_error`: the same error (one
    /// fingerprint) more than 10 times within an hour is `CRITICAL`. Ten an
    /// hour is noise a busy service lives with; the eleventh means something
    /// keeps failing the same way and a person should look.
    pub const fn repeated_error() -> Self {
        Self::RepeatedError {
            name: Cow::Borrowed("repeated_error"),
            threshold: 10,
            window: Duration::from_secs(3600),
            severity: Severity::Critical,
        }
    }

    /// An error-rate rule: at least `max_ratio` of at least `min_requests`
    /// requests failed within `window`.
    pub fn error_rate(
        name: impl Into<Cow<'static, str>>,
        max_ratio: f64,
        min_requests: u64,
        window: Duration,
        severity: Severity,
    ) -> Self {
        Self::ErrorRate {
            name: name.into(),
            max_ratio,
            min_requests,
            window,
            severity,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        match self {
            Self::RepeatedError { name, .. } | Self::ErrorRate { name, .. } => name,
        }
    }

    /// The rule's severity.
    pub fn severity(&self) -> Severity {
        match self {
            Self::RepeatedError { severity, .. } | Self::ErrorRate { severity, .. } => *severity,
        }
    }

    /// The window the rule counts over.
    pub fn window(&self) -> Duration {
        match self {
            Self::RepeatedError { window, .. } | Self::ErrorRate { window, .. } => *window,
        }
    }
}

/// Whether an alert starts or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds.
    Firing,
    /// The condition held and no longer does.
    Resolved,
}

/// One alert notice: a rule started or stopped holding, for one fingerprint
/// (or for the whole service, for rate rules).
///
/// It carries counts and names, never an error's message: messages may hold
/// user data, and alerts leave the process (webhooks, email).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// The severity.
    pub severity: Severity,
    /// Firing or resolved.
    pub state: AlertState,
    /// The fingerprint (`kind@operation`), for per-fingerprint rules.
    pub fingerprint: Option<String>,
    /// The observed value (a count, or a ratio for rate rules).
    pub value: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// The window, in seconds.
    pub window_secs: u64,
    /// When the notice was made (wall clock).
    #[serde(with = "unix_secs")]
    pub at: SystemTime,
    /// A one-line human summary.
    pub summary: String,
}

mod unix_secs {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        s.serialize_u64(secs)
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            AlertState::Firing => "",
            AlertState::Resolved => "RESOLVED ",
        };
        write!(
            f,
            "{state}{} {}: {}",
            self.severity.marker(),
            self.rule,
            self.summary
        )
    }
}

/// The future returned by [`AlertSink::deliver`].
pub type SinkFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 'a>>;

/// Where alerts go: a log, a webhook, an email address, a pager.
///
/// Delivery runs on the monitor's background task, never on the request path.
/// A failed delivery is retried with backoff by the monitor and recorded as an
/// error on it (fingerprint `AlertSink@<sink name>`); it never crashes
/// anything.
pub trait AlertSink: Send + Sync + 'static {
    /// A short name, for logs and fingerprints (`"log"`, `"webhook"`).
    fn name(&self) -> &str;

    /// Delivers one alert.
    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a>;
}

/// Writes alerts as `tracing` events: `ERROR` with the `CRITICAL` marker for
/// critical alerts (the guide's "logs a CRITICAL alert"), `WARN` for warnings
/// and resolutions. Always installed.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSink;

impl AlertSink for LogSink {
    fn name(&self) -> &str {
        "log"
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a> {
        // One field list for both severities; `tracing` wants the level and
        // the message as literals.
        macro_rules! firing {
            ($level:ident, $marker:literal, $message:literal) => {
                tracing::$level!(
                    target: "selfheal::alert",
                    marker = $marker,
                    rule = %alert.rule,
                    fingerprint = alert.fingerprint.as_deref().unwrap_or("-"),
                    value = alert.value,
                    threshold = alert.threshold,
                    $message,
                    alert.summary
                )
            };
        }
        match (alert.state, alert.severity) {
            (AlertState::Firing, Severity::Critical) => {
                firing!(error, "CRITICAL", "CRITICAL alert: {}")
            }
            (AlertState::Firing, Severity::Warning) => firing!(warn, "WARNING", "alert: {}"),
            (AlertState::Resolved, severity) => tracing::warn!(
                target: "selfheal::alert",
                marker = "RESOLVED",
                severity = severity.marker(),
                rule = %alert.rule,
                fingerprint = alert.fingerprint.as_deref().unwrap_or("-"),
                "alert resolved: {}",
                alert.summary
            ),
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Per (rule, fingerprint) firing state, for "once per cooldown" and
/// "resolved follows".
#[derive(Debug, Default)]
pub(crate) struct AlertBook {
    /// Per rule index, per fingerprint (`""` for service-wide rules).
    entries: HashMap<usize, HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The condition held at the last evaluation.
    holding: bool,
    /// A firing notice was sent for the current episode (so a resolution
    /// notice is owed when it ends).
    notified: bool,
    /// When the last firing notice was sent (monitor time, in seconds).
    last_fired: Option<u64>,
}

/// What the book says to do after one observation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Nothing,
    Fire,
    Resolve,
}

impl AlertBook {
    /// Records whether `(rule, fingerprint)` holds now (`now` in monitor
    /// seconds) and says whether to notify.
    pub(crate) fn observe(
        &mut self,
        rule: usize,
        fingerprint: Option<&str>,
        holds: bool,
        now: u64,
        cooldown: Duration,
    ) -> Transition {
        let fingerprint = fingerprint.unwrap_or("");
        let book = self.entries.entry(rule).or_default();
        let entry = match book.get_mut(fingerprint) {
            Some(entry) => entry,
            None if !holds => return Transition::Nothing,
            None => book.entry(fingerprint.to_owned()).or_insert(Entry {
                holding: false,
                notified: false,
                last_fired: None,
            }),
        };
        match (entry.holding, holds) {
            (false, true) => {
                let cooled = entry
                    .last_fired
                    .is_none_or(|t| now.saturating_sub(t) >= cooldown.as_secs());
                entry.holding = true;
                entry.notified = cooled;
                if cooled {
                    entry.last_fired = Some(now);
                    Transition::Fire
                } else {
                    Transition::Nothing
                }
            }
            (true, false) => {
                entry.holding = false;
                let owed = std::mem::take(&mut entry.notified);
                if owed {
                    Transition::Resolve
                } else {
                    Transition::Nothing
                }
            }
            _ => Transition::Nothing,
        }
    }

    /// Forgets quiet entries whose cooldown has passed, so the book stays
    /// bounded by the number of fingerprints that alerted recently.
    pub(crate) fn prune(&mut self, now: u64, cooldown: Duration) {
        for book in self.entries.values_mut() {
            book.retain(|_, e| {
                e.holding
                    || e.last_fired
                        .is_some_and(|t| now.saturating_sub(t) < cooldown.as_secs())
            });
        }
    }

    /// The (rule, fingerprint) pairs currently holding.
    pub(crate) fn active(&self) -> impl Iterator<Item = (usize, Option<&str>)> {
        self.entries.iter().flat_map(|(rule, book)| {
            book.iter()
                .filter(|(_, e)| e.holding)
                .map(|(fp, _)| (*rule, (!fp.is_empty()).then_some(fp.as_str())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_fires_once_per_cooldown_and_resolves_once() {
        let mut book = AlertBook::default();
        let cd = Duration::from_secs(600);
        assert_eq!(
            book.observe(0, Some("a"), false, 0, cd),
            Transition::Nothing
        );
        assert_eq!(book.observe(0, Some("a"), true, 1, cd), Transition::Fire);
        assert_eq!(book.observe(0, Some("a"), true, 2, cd), Transition::Nothing);
        assert_eq!(
            book.observe(0, Some("a"), false, 3, cd),
            Transition::Resolve
        );
        assert_eq!(
            book.observe(0, Some("a"), false, 4, cd),
            Transition::Nothing
        );
        // Flapping within the cooldown: no new notice, and no resolution owed.
        assert_eq!(book.observe(0, Some("a"), true, 5, cd), Transition::Nothing);
        assert_eq!(
            book.observe(0, Some("a"), false, 6, cd),
            Transition::Nothing
        );
        // After the cooldown it may fire again.
        assert_eq!(book.observe(0, Some("a"), true, 700, cd), Transition::Fire);
        // Other fingerprints and rules are independent.
        assert_eq!(book.observe(0, Some("b"), true, 700, cd), Transition::Fire);
        assert_eq!(book.observe(1, Some("a"), true, 700, cd), Transition::Fire);
        assert_eq!(book.active().count(), 3);
    }

    #[test]
    fn pruning_keeps_what_matters() {
        let mut book = AlertBook::default();
        let cd = Duration::from_secs(10);
        book.observe(0, Some("a"), true, 0, cd);
        book.observe(0, Some("a"), false, 1, cd);
        book.observe(0, Some("b"), true, 0, cd);
        book.prune(100, cd);
        assert_eq!(book.entries[&0].len(), 1, "only the holding entry stays");
    }
}
