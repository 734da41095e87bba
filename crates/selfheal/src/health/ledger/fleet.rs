//! The fleet: every instance's heartbeat and status, fingerprints merged
//! across instances, and the alert rules evaluated on the fleet's counts,
//! each notice claimed once for the whole fleet through the database.
//!
//! Why a claim row and not a leader: electing a leader needs leases,
//! fencing and a plan for the leader's death, which is a distributed system
//! of our own. Every instance evaluates instead (the counts are the same
//! for all, they come from the database), and the one notice is decided by
//! the database's own atomicity: an upsert on `(rule, fingerprint)` that
//! only succeeds when the row is not firing and its cooldown has passed.
//! Exactly one instance sees one row affected, and it sends the alert; the
//! resolution is claimed the same way (an `UPDATE … WHERE firing = 1`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::time::floor;
use super::{HOUR_MS, Ledger};
use crate::health::evaluate::describe_window;
use crate::health::{Alert, AlertRule, AlertState, Status};
use crate::sync::lock;

/// One instance of the fleet, as its last heartbeat said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    /// Its id.
    pub id: String,
    /// Its version.
    pub version: String,
    /// Its host.
    pub host: String,
    /// When it started (Unix ms).
    pub started_ms: i64,
    /// Its last heartbeat (Unix ms).
    pub last_seen_ms: i64,
    /// Seconds since its last heartbeat.
    pub last_seen_secs_ago: i64,
    /// Its own status at its last heartbeat.
    pub status: Status,
    /// Why, at its last heartbeat.
    pub reasons: String,
    /// Buckets it dropped (its database was away too long).
    pub dropped: u64,
    /// Silent for more than two heartbeats without having stopped cleanly:
    /// killed, hung, or cut off from the database.
    pub silent: bool,
    /// Stopped cleanly.
    pub stopped: bool,
    /// This is the instance answering.
    pub this: bool,
}

/// A fingerprint across the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetFingerprint {
    /// `kind@operation`.
    pub fingerprint: String,
    /// The error kind.
    pub kind: String,
    /// The operation.
    pub operation: String,
    /// Occurrences in the window, all instances.
    pub count: u64,
    /// Occurrences per instance.
    pub per_instance: BTreeMap<String, u64>,
    /// One sample message (redacted, truncated; may hold user data: escape it).
    pub sample: String,
}

/// The fleet's health (see [`Ledger::fleet`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fleet {
    /// The worst status among live instances; degraded while one has been
    /// silent for less than an hour; critical while a critical alert fires
    /// for the fleet.
    pub status: Status,
    /// Why.
    pub reasons: Vec<String>,
    /// The window the counts cover, in seconds.
    pub window_secs: u64,
    /// Instances seen within the last day, by id.
    pub instances: Vec<InstanceView>,
    /// Fingerprints in the window, merged, most frequent first. Buckets
    /// reach the database when they close: the newest bucket is not in yet.
    pub fingerprints: Vec<FleetFingerprint>,
    /// Alerts firing for the fleet: (rule, fingerprint or `""`).
    pub firing: Vec<(String, String)>,
}

type InstanceRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    String,
    i64,
    i64,
);

impl Ledger {
    /// The fleet now, over the last hour (at most the monitor's horizon).
    pub async fn fleet(&self) -> Result<Fleet, sqlx::Error> {
        self.fleet_at(self.now_ms()).await
    }

    /// The fleet at `now_ms` (see [`Fleet`]).
    pub async fn fleet_at(&self, now_ms: i64) -> Result<Fleet, sqlx::Error> {
        let window = self.inner.monitor.horizon().min(Duration::from_secs(3600));
        let window_ms = window.as_millis() as i64;
        let from = floor(now_ms - window_ms, self.inner.width_ms);
        let rows: Vec<InstanceRow> = on_pool!(&self.inner.pool, p => sqlx::query_as(
            "SELECT instance_id, version, host, started_ms, last_seen_ms, heartbeat_ms, status, \
             reasons, dropped, stopped_ms FROM selfheal_health_instances \
             WHERE last_seen_ms >= $1 ORDER BY instance_id",
        )
        .bind(now_ms - super::DAY_MS)
        .fetch_all(p)
        .await?);
        let mut status = Status::Healthy;
        let mut reasons = Vec::new();
        let mut instances = Vec::with_capacity(rows.len());
        for (id, version, host, started, seen, beat, st, why, dropped, stopped) in rows {
            let silent = stopped == 0 && now_ms - seen > 2 * beat.max(1);
            let st = match st.as_str() {
                "critical" => Status::Critical,
                "degraded" => Status::Degraded,
                _ => Status::Healthy,
            };
            // A silent instance degrades the fleet for an hour: long enough
            // to be seen, not forever (a killed process comes back under a
            // new id, and the old one stays listed for a day).
            if silent && now_ms - seen <= HOUR_MS {
                status = status.max(Status::Degraded);
                reasons.push(format!(
                    "instance {id} silent for {} s",
                    (now_ms - seen) / 1000
                ));
            } else if stopped == 0 && st > Status::Healthy {
                status = status.max(st);
                reasons.push(format!("instance {id} is {st}: {why}"));
            }
            instances.push(InstanceView {
                this: id == self.inner.instance,
                id,
                version,
                host,
                started_ms: started,
                last_seen_ms: seen,
                last_seen_secs_ago: (now_ms - seen).max(0) / 1000,
                status: st,
                reasons: why,
                dropped: dropped.max(0) as u64,
                silent,
                stopped: stopped != 0,
            });
        }
        let counts: Vec<(String, String, i64, String, String, String)> = on_pool!(&self.inner.pool, p => sqlx::query_as(
                "SELECT e.fingerprint, e.instance_id, CAST(SUM(e.count) AS BIGINT), \
                 COALESCE(MAX(f.kind), ''), COALESCE(MAX(f.operation), ''), \
                 COALESCE(MAX(f.sample), '') \
                 FROM selfheal_health_errors e \
                 LEFT JOIN selfheal_health_fingerprints f ON f.fingerprint = e.fingerprint \
                 WHERE e.scale = $1 AND e.bucket_ms >= $2 \
                 GROUP BY e.fingerprint, e.instance_id",
            )
            .bind(self.inner.width_ms)
            .bind(from)
            .fetch_all(p)
            .await?);
        let mut merged: BTreeMap<String, FleetFingerprint> = BTreeMap::new();
        for (fingerprint, instance, count, kind, operation, sample) in counts {
            let count = count.max(0) as u64;
            let entry = merged
                .entry(fingerprint.clone())
                .or_insert_with(|| FleetFingerprint {
                    fingerprint,
                    kind,
                    operation,
                    count: 0,
                    per_instance: BTreeMap::new(),
                    sample,
                });
            entry.count += count;
            *entry.per_instance.entry(instance).or_default() += count;
        }
        let mut fingerprints: Vec<_> = merged.into_values().collect();
        fingerprints.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        let firing: Vec<(String, String)> = on_pool!(&self.inner.pool, p => sqlx::query_as(
            "SELECT rule, fingerprint FROM selfheal_health_alerts WHERE firing = 1 \
             ORDER BY rule, fingerprint",
        )
        .fetch_all(p)
        .await?);
        for (rule, fingerprint) in &firing {
            let critical = self
                .inner
                .monitor
                .inner
                .rules
                .iter()
                .any(|r| r.name() == rule && r.severity() == crate::health::Severity::Critical);
            if critical {
                status = Status::Critical;
                let what = if fingerprint.is_empty() {
                    String::new()
                } else {
                    format!(" for {fingerprint}")
                };
                reasons.push(format!("alert '{rule}' is firing{what} across the fleet"));
            }
        }
        Ok(Fleet {
            status,
            reasons,
            window_secs: window.as_secs(),
            instances,
            fingerprints,
            firing,
        })
    }

    /// Evaluates the monitor's alert rules on the fleet's counts at
    /// `now_ms`, claims each notice through the database, and queues the
    /// ones this instance won for the monitor's sinks; returns them. The
    /// task calls it after each flush.
    pub async fn evaluate_fleet_at(&self, now_ms: i64) -> Result<Vec<Alert>, sqlx::Error> {
        let monitor = &self.inner.monitor;
        let cooldown_ms = monitor.inner.cooldown.as_millis().min(i64::MAX as u128) as i64;
        let local = self.unflushed();
        let mut notices = Vec::new();
        let mut holding_now = Vec::new();
        for rule in &monitor.inner.rules {
            let window_ms = rule.window().as_millis().min(i64::MAX as u128) as i64;
            // Buckets that started within the window.
            let from = now_ms - window_ms;
            // What fires, read before the counts: an instance claims a
            // notice after its data is committed, so counts read after the
            // claim include what made it fire. Read the other way round, a
            // stale count could resolve an alert claimed a moment before.
            let firing: Vec<(String,)> = on_pool!(&self.inner.pool, p => sqlx::query_as(
                "SELECT fingerprint FROM selfheal_health_alerts WHERE rule = $1 AND firing = 1",
            )
            .bind(rule.name())
            .fetch_all(p)
            .await?);
            let mut holding: Vec<(String, f64, f64, String)> = Vec::new();
            match rule {
                AlertRule::RepeatedError { threshold, .. } => {
                    let rows: Vec<(String, i64)> = on_pool!(&self.inner.pool, p => sqlx::query_as(
                        "SELECT fingerprint, CAST(SUM(counted) AS BIGINT) \
                         FROM selfheal_health_errors WHERE scale = $1 AND bucket_ms >= $2 \
                         GROUP BY fingerprint",
                    )
                    .bind(self.inner.width_ms)
                    .bind(from)
                    .fetch_all(p)
                    .await?);
                    // The fleet's closed buckets, plus what this instance
                    // has not written yet (its open bucket, its buffer).
                    let mut counts: HashMap<String, u64> = rows
                        .into_iter()
                        .map(|(f, n)| (f, n.max(0) as u64))
                        .collect();
                    for (fingerprint, n) in &local.errors {
                        *counts.entry(fingerprint.clone()).or_default() += n;
                    }
                    let mut over: Vec<(String, u64)> =
                        counts.into_iter().filter(|(_, n)| n > threshold).collect();
                    over.sort();
                    for (fingerprint, count) in over {
                        let summary = format!(
                            "{fingerprint} occurred {count} times across the fleet in the last {} \
                             (threshold {threshold})",
                            describe_window(rule.window())
                        );
                        holding.push((fingerprint, count as f64, *threshold as f64, summary));
                    }
                }
                AlertRule::ErrorRate {
                    max_ratio,
                    min_requests,
                    ..
                } => {
                    let (total, failed): (i64, i64) = on_pool!(&self.inner.pool, p => sqlx::query_as(
                        "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT), \
                         CAST(COALESCE(SUM(failed), 0) AS BIGINT) \
                         FROM selfheal_health_requests WHERE scale = $1 AND bucket_ms >= $2",
                    )
                    .bind(self.inner.width_ms)
                    .bind(from)
                    .fetch_one(p)
                    .await?);
                    let total = total + local.requests as i64;
                    let failed = failed + local.failed as i64;
                    let ratio = if total > 0 {
                        failed as f64 / total as f64
                    } else {
                        0.0
                    };
                    if total as u64 >= *min_requests && ratio >= *max_ratio {
                        let summary = format!(
                            "{failed} of {total} requests failed across the fleet in the last {} \
                             ({:.1}%, threshold {:.1}%)",
                            describe_window(rule.window()),
                            ratio * 100.0,
                            max_ratio * 100.0
                        );
                        holding.push((String::new(), ratio, *max_ratio, summary));
                    }
                }
            }
            let held: HashSet<&str> = holding.iter().map(|h| h.0.as_str()).collect();
            for (fingerprint, value, threshold, summary) in &holding {
                holding_now.push((
                    rule.name().to_owned(),
                    (!fingerprint.is_empty()).then(|| fingerprint.clone()),
                    rule.severity(),
                ));
                if self
                    .claim_fire(rule.name(), fingerprint, now_ms, cooldown_ms)
                    .await?
                {
                    notices.push(notice(
                        rule,
                        AlertState::Firing,
                        fingerprint,
                        *value,
                        *threshold,
                        summary.clone(),
                        now_ms,
                    ));
                }
            }
            for (fingerprint,) in firing {
                if held.contains(fingerprint.as_str()) {
                    continue;
                }
                if self
                    .claim_resolve(rule.name(), &fingerprint, now_ms)
                    .await?
                {
                    let summary = if fingerprint.is_empty() {
                        format!("{} no longer holds across the fleet", rule.name())
                    } else {
                        format!(
                            "{fingerprint} is back under the threshold across the fleet (last {})",
                            describe_window(rule.window())
                        )
                    };
                    notices.push(notice(
                        rule,
                        AlertState::Resolved,
                        &fingerprint,
                        0.0,
                        0.0,
                        summary,
                        now_ms,
                    ));
                }
            }
        }
        for n in &mut notices {
            n.summary
                .push_str(&format!(" (noticed by instance {})", self.inner.instance));
        }
        *lock(&monitor.inner.fleet_firing) = holding_now;
        for n in &notices {
            monitor.publish(n.clone());
        }
        Ok(notices)
    }

    /// Claims the firing notice of `(rule, fingerprint)`: `true` for the
    /// one instance that should send it. The cooldown runs from the last
    /// notice either way: an instance whose clock or read lags sees the
    /// condition hold a moment after another resolved it, and must not
    /// fire it again.
    async fn claim_fire(
        &self,
        rule: &str,
        fingerprint: &str,
        now_ms: i64,
        cooldown_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let affected = on_pool!(&self.inner.pool, p => sqlx::query(
            "INSERT INTO selfheal_health_alerts \
             (rule, fingerprint, firing, fired_ms, resolved_ms, instance_id) \
             VALUES ($1, $2, 1, $3, 0, $4) \
             ON CONFLICT (rule, fingerprint) DO UPDATE SET firing = 1, \
             fired_ms = excluded.fired_ms, instance_id = excluded.instance_id \
             WHERE selfheal_health_alerts.firing = 0 \
             AND selfheal_health_alerts.fired_ms <= $5 \
             AND selfheal_health_alerts.resolved_ms <= $5",
        )
        .bind(rule)
        .bind(fingerprint)
        .bind(now_ms)
        .bind(&self.inner.instance)
        .bind(now_ms - cooldown_ms)
        .execute(p)
        .await?
        .rows_affected());
        Ok(affected == 1)
    }

    /// Claims the resolved notice: `true` for the one instance that should
    /// send it. Not within two flushes of the firing: the instance that
    /// fired may have counted its own unwritten buckets, which the others
    /// see only once it has flushed them.
    async fn claim_resolve(
        &self,
        rule: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let affected = on_pool!(&self.inner.pool, p => sqlx::query(
            "UPDATE selfheal_health_alerts SET firing = 0, resolved_ms = $1, instance_id = $2 \
             WHERE rule = $3 AND fingerprint = $4 AND firing = 1 AND fired_ms <= $5",
        )
        .bind(now_ms)
        .bind(&self.inner.instance)
        .bind(rule)
        .bind(fingerprint)
        .bind(now_ms - 2 * self.inner.flush_every.as_millis().min(i64::MAX as u128 / 4) as i64)
        .execute(p)
        .await?
        .rows_affected());
        Ok(affected == 1)
    }
}

fn notice(
    rule: &AlertRule,
    state: AlertState,
    fingerprint: &str,
    value: f64,
    threshold: f64,
    summary: String,
    now_ms: i64,
) -> Alert {
    Alert {
        rule: rule.name().to_owned(),
        severity: rule.severity(),
        state,
        fingerprint: (!fingerprint.is_empty()).then(|| fingerprint.to_owned()),
        value,
        threshold,
        window_secs: rule.window().as_secs(),
        at: UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64),
        summary,
    }
}
