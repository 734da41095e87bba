//! Turning counts into alerts: the rules evaluated over the fingerprints'
//! rings, once per evaluation interval, off the request path.
//!
//! Each rule is checked against the counts that may move the status (see
//! [`ClientId`](super::ClientId)); a rule that starts or stops firing
//! becomes a notice for the sinks, with a cooldown per rule and
//! fingerprint so that a storm is one alert, not thousands.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::alert::Transition;
use super::fingerprint::Fingerprint;
use super::{Alert, AlertRule, AlertState, Monitor};
use crate::sync::lock;

impl Monitor {
    /// Evaluates the alert rules now and queues the resulting notices for the
    /// sinks; returns them too. The background task calls this every
    /// evaluation interval.
    pub fn evaluate(&self) -> Vec<Alert> {
        let now = self.now();
        let now_secs = now.ms / 1000;
        let mut notices = Vec::new();
        let mut book = lock(&self.inner.book);
        for (index, rule) in self.inner.rules.iter().enumerate() {
            let span = self.span(rule.window());
            match rule {
                AlertRule::RepeatedError { threshold, .. } => {
                    let mut changes = Vec::new();
                    self.for_each_fingerprint(|fp| {
                        let count = self.counted(fp, now.epoch, span);
                        let transition = book.observe(
                            index,
                            Some(fp.key()),
                            count > *threshold,
                            now_secs,
                            self.inner.cooldown,
                        );
                        if transition != Transition::Nothing {
                            changes.push((fp.key().to_owned(), count, transition));
                        }
                    });
                    for (key, count, transition) in changes {
                        {
                            let summary = format!(
                                "{key} occurred {count} times in the last {} (threshold {threshold})",
                                describe_window(rule.window())
                            );
                            notices.push(self.notice(
                                rule,
                                transition,
                                Some(key),
                                count as f64,
                                *threshold as f64,
                                summary,
                            ));
                        }
                    }
                }
                AlertRule::ErrorRate {
                    max_ratio,
                    min_requests,
                    ..
                } => {
                    let total = self.inner.requests.sum(now.epoch, span);
                    let failed = self.counted_failures(now.epoch, span);
                    let ratio = if total == 0 {
                        0.0
                    } else {
                        failed as f64 / total as f64
                    };
                    let holds = total >= *min_requests && ratio >= *max_ratio;
                    let transition =
                        book.observe(index, None, holds, now_secs, self.inner.cooldown);
                    if transition != Transition::Nothing {
                        let summary = format!(
                            "{failed} of {total} requests failed in the last {} ({:.1}%, threshold {:.1}%)",
                            describe_window(rule.window()),
                            ratio * 100.0,
                            max_ratio * 100.0
                        );
                        notices
                            .push(self.notice(rule, transition, None, ratio, *max_ratio, summary));
                    }
                }
            }
        }
        book.prune(now_secs, self.inner.cooldown);
        drop(book);
        if self.inner.fleet_alerts.load(Ordering::Acquire) {
            // A health ledger notifies for the whole fleet; this instance's
            // book still moves its own status.
            return Vec::new();
        }
        for notice in &notices {
            self.publish(notice.clone());
        }
        notices
    }

    /// Queues `notice` for the sinks and keeps it among the recent alerts.
    pub(super) fn publish(&self, notice: Alert) {
        {
            let mut recent = lock(&self.inner.recent_alerts);
            if recent.len() >= self.inner.recent.max(1) {
                recent.pop_front();
            }
            recent.push_back(notice.clone());
        }
        if self.inner.tx.try_send(notice).is_err() {
            self.inner.alerts_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn notice(
        &self,
        rule: &AlertRule,
        transition: Transition,
        fingerprint: Option<String>,
        value: f64,
        threshold: f64,
        summary: String,
    ) -> Alert {
        Alert {
            rule: rule.name().to_owned(),
            severity: rule.severity(),
            state: match transition {
                Transition::Resolve => AlertState::Resolved,
                _ => AlertState::Firing,
            },
            fingerprint,
            value,
            threshold,
            window_secs: rule.window().as_secs(),
            at: SystemTime::now(),
            summary,
        }
    }

    /// Calls `f` on every fingerprint, `other` last, without cloning.
    pub(super) fn for_each_fingerprint(&self, mut f: impl FnMut(&Fingerprint)) {
        for fp in self.inner.table.iter() {
            f(fp);
        }
        f(&self.inner.other);
    }

    /// Alert notices dropped because the channel to the sinks was full.
    pub fn alerts_dropped(&self) -> u64 {
        self.inner.alerts_dropped.load(Ordering::Relaxed)
    }
}

pub(super) fn describe_window(window: Duration) -> String {
    let secs = window.as_secs();
    match secs {
        3600 => "hour".to_owned(),
        60 => "minute".to_owned(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}
