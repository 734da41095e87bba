//! History: what the fleet saw over 24 hours, 7 days or 30 days, with a
//! trend per fingerprint and the marks an operator reads first.
//!
//! Marks are about days, the unit people review in:
//!
//! | mark | when |
//! |---|---|
//! | *new* | first seen (anywhere in the fleet) within the period |
//! | *regressed* | seen in the period after at least [`MarkRules::quiet_days`] quiet days (it had been fixed, or looked fixed) |
//! | *recurring* | seen on at least [`MarkRules::recurring_days`] distinct days of the period (7 days at least, for the 24 h view) |
//! | *resolved* | seen in the period, not in the last [`MarkRules::resolved_after`] |
//!
//! Counts come from the hour rows for the 24 h view and the day rows beyond
//! (30 rows per fingerprint for a month, whatever the fleet's size: the
//! dashboard's query stays cheap).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::time::floor;
use super::{DAY_MS, HOUR_MS, Ledger};

/// The rules behind the marks of a [`History`]. Defaults: 7
/// quiet days, 3 distinct days, resolved after 1 day quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkRules {
    /// Quiet days after which a fingerprint seen again is *regressed*.
    pub quiet_days: u32,
    /// Distinct days on which a fingerprint is *recurring*.
    pub recurring_days: u32,
    /// Quiet time after which a fingerprint of the period is *resolved*
    /// (a quarter of the period at most).
    pub resolved_after: Duration,
}

impl Default for MarkRules {
    fn default() -> Self {
        Self {
            quiet_days: 7,
            recurring_days: 3,
            resolved_after: Duration::from_secs(86_400),
        }
    }
}

/// A mark on a fingerprint of a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// First seen within the period.
    New,
    /// Back after quiet days.
    Regressed,
    /// Seen on many distinct days.
    Recurring,
    /// Not seen lately.
    Resolved,
}

impl Mark {
    /// `new`, `regressed`, `recurring` or `resolved`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Regressed => "regressed",
            Self::Recurring => "recurring",
            Self::Resolved => "resolved",
        }
    }
}

/// Which way a fingerprint goes over the period (its second half against
/// its first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trend {
    /// At least half as many again.
    Rising,
    /// Down by a third or more.
    Falling,
    /// Neither.
    Steady,
}

/// One fingerprint over a period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FingerprintHistory {
    /// `kind@operation`.
    pub fingerprint: String,
    /// The error kind.
    pub kind: String,
    /// The operation.
    pub operation: String,
    /// One sample (redacted, truncated; escape it).
    pub sample: String,
    /// Occurrences in the period, all instances.
    pub count: u64,
    /// Occurrences per point (hours for 24 h, days beyond), oldest first.
    pub series: Vec<u64>,
    /// Which way it goes.
    pub trend: Trend,
    /// Its marks.
    pub marks: Vec<Mark>,
    /// Distinct days it was seen on, in the period.
    pub days_seen: u32,
    /// First seen anywhere (Unix ms).
    pub first_seen_ms: i64,
    /// Last seen in the period (start of its last point, Unix ms).
    pub last_seen_ms: i64,
}

/// What the fleet saw over a period (see [`Ledger::history`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct History {
    /// The period, in seconds.
    pub period_secs: u64,
    /// Its start and end (Unix ms).
    pub from_ms: i64,
    /// Its end.
    pub to_ms: i64,
    /// The width of one point of the series, in seconds.
    pub point_secs: u64,
    /// Fingerprints seen in the period, most frequent first.
    pub fingerprints: Vec<FingerprintHistory>,
    /// Heals in the period by kind.
    pub heals: BTreeMap<String, u64>,
    /// Requests in the period.
    pub requests: u64,
    /// Failed requests in the period.
    pub failed: u64,
}

impl History {
    /// The fingerprints carrying `mark`.
    pub fn marked(&self, mark: Mark) -> impl Iterator<Item = &FingerprintHistory> {
        self.fingerprints
            .iter()
            .filter(move |f| f.marks.contains(&mark))
    }
}

impl Ledger {
    /// The fleet's history over `period` until now.
    pub async fn history(&self, period: Duration) -> Result<History, sqlx::Error> {
        self.history_at(period, self.now_ms()).await
    }

    /// The fleet's history over `period` until `now_ms`.
    pub async fn history_at(&self, period: Duration, now_ms: i64) -> Result<History, sqlx::Error> {
        let period_ms = i64::try_from(period.as_millis())
            .unwrap_or(i64::MAX / 4)
            .max(HOUR_MS);
        let point = if period_ms <= 2 * DAY_MS {
            HOUR_MS
        } else {
            DAY_MS
        };
        let from = floor(now_ms - period_ms, point) + point;
        let points = ((floor(now_ms, point) - from) / point + 1).max(1) as usize;
        let rules = self.inner.marks;
        let lookback_days = i64::from(rules.quiet_days.max(rules.recurring_days)) + 1;
        let day_from = floor(from, DAY_MS) - lookback_days * DAY_MS;
        let pool = &self.inner.pool;
        let series_rows: Vec<(String, i64, i64)> = on_pool!(pool, p => sqlx::query_as(
            "SELECT fingerprint, bucket_ms, CAST(SUM(count) AS BIGINT) FROM selfheal_health_errors \
             WHERE scale = $1 AND bucket_ms >= $2 AND bucket_ms <= $3 \
             GROUP BY fingerprint, bucket_ms",
        )
        .bind(point)
        .bind(from)
        .bind(now_ms)
        .fetch_all(p)
        .await?);
        let day_rows: Vec<(String, i64)> = on_pool!(pool, p => sqlx::query_as(
            "SELECT DISTINCT fingerprint, bucket_ms FROM selfheal_health_errors \
             WHERE scale = $1 AND bucket_ms >= $2 AND bucket_ms <= $3 AND count > 0",
        )
        .bind(DAY_MS)
        .bind(day_from)
        .bind(now_ms)
        .fetch_all(p)
        .await?);
        let meta: Vec<(String, String, String, String, i64)> = on_pool!(pool, p => sqlx::query_as(
            "SELECT fingerprint, kind, operation, sample, first_seen_ms \
             FROM selfheal_health_fingerprints WHERE last_seen_ms >= $1",
        )
        .bind(floor(from, DAY_MS))
        .fetch_all(p)
        .await?);
        let heal_rows: Vec<(String, i64)> = on_pool!(pool, p => sqlx::query_as(
            "SELECT kind, CAST(SUM(count) AS BIGINT) FROM selfheal_health_heals \
             WHERE scale = $1 AND bucket_ms >= $2 AND bucket_ms <= $3 GROUP BY kind",
        )
        .bind(point)
        .bind(from)
        .bind(now_ms)
        .fetch_all(p)
        .await?);
        let (requests, failed): (i64, i64) = on_pool!(pool, p => sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT), \
             CAST(COALESCE(SUM(failed), 0) AS BIGINT) FROM selfheal_health_requests \
             WHERE scale = $1 AND bucket_ms >= $2 AND bucket_ms <= $3",
        )
        .bind(point)
        .bind(from)
        .bind(now_ms)
        .fetch_one(p)
        .await?);

        let meta: BTreeMap<String, (String, String, String, i64)> = meta
            .into_iter()
            .map(|(f, k, o, s, first)| (f, (k, o, s, first)))
            .collect();
        let mut days: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (fingerprint, day) in day_rows {
            days.entry(fingerprint).or_default().push(day);
        }
        let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (fingerprint, bucket, count) in series_rows {
            let index = ((bucket - from) / point) as usize;
            if index < points {
                series.entry(fingerprint).or_insert_with(|| vec![0; points])[index] +=
                    count.max(0) as u64;
            }
        }
        let resolved_after = i64::try_from(rules.resolved_after.as_millis())
            .unwrap_or(DAY_MS)
            .min(period_ms / 4)
            .max(point);
        let mut fingerprints = Vec::with_capacity(series.len());
        for (fingerprint, points_of) in series {
            let count: u64 = points_of.iter().sum();
            if count == 0 {
                continue;
            }
            let last_index = points_of.iter().rposition(|&n| n > 0).unwrap_or(0);
            let last_seen_ms = from + last_index as i64 * point;
            let (kind, operation, sample, first_seen_ms) =
                meta.get(&fingerprint).cloned().unwrap_or_else(|| {
                    let (k, o) = fingerprint
                        .split_once('@')
                        .unwrap_or((fingerprint.as_str(), ""));
                    (k.to_owned(), o.to_owned(), String::new(), from)
                });
            let mut seen_days = days.remove(&fingerprint).unwrap_or_default();
            seen_days.sort_unstable();
            seen_days.dedup();
            let in_period = |d: &&i64| **d + DAY_MS > from;
            let days_seen = seen_days.iter().filter(in_period).count() as u32;
            let recurring_from = floor(now_ms, DAY_MS) - (period_ms.max(7 * DAY_MS) - DAY_MS);
            let recurring_days = seen_days.iter().filter(|d| **d >= recurring_from).count() as u32;
            let mut marks = Vec::new();
            let new = first_seen_ms >= from;
            if new {
                marks.push(Mark::New);
            }
            if !new && regressed(&seen_days, from, first_seen_ms, rules.quiet_days) {
                marks.push(Mark::Regressed);
            }
            if recurring_days >= rules.recurring_days {
                marks.push(Mark::Recurring);
            }
            if last_seen_ms + point <= now_ms - resolved_after {
                marks.push(Mark::Resolved);
            }
            fingerprints.push(FingerprintHistory {
                trend: trend(&points_of),
                fingerprint,
                kind,
                operation,
                sample,
                count,
                series: points_of,
                marks,
                days_seen,
                first_seen_ms,
                last_seen_ms,
            });
        }
        fingerprints.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        Ok(History {
            period_secs: (period_ms / 1000) as u64,
            from_ms: from,
            to_ms: now_ms,
            point_secs: (point / 1000) as u64,
            fingerprints,
            heals: heal_rows
                .into_iter()
                .map(|(k, n)| (k, n.max(0) as u64))
                .collect(),
            requests: requests.max(0) as u64,
            failed: failed.max(0) as u64,
        })
    }
}

/// Whether a day seen within the period (from `from`) follows at least
/// `quiet` days without the fingerprint, after it had been seen before.
fn regressed(seen_days: &[i64], from: i64, first_seen_ms: i64, quiet: u32) -> bool {
    let quiet_ms = i64::from(quiet.max(1)) * DAY_MS;
    let mut previous: Option<i64> = None;
    for &day in seen_days {
        if day + DAY_MS > from {
            let gap_start = previous.unwrap_or_else(|| floor(first_seen_ms, DAY_MS));
            // Days strictly between the previous sighting and this one.
            if day - gap_start > quiet_ms && gap_start < day {
                return true;
            }
        }
        previous = Some(day);
    }
    false
}

/// The second half of `series` against the first.
fn trend(series: &[u64]) -> Trend {
    let half = series.len() / 2;
    let first: u64 = series[..half].iter().sum();
    let second: u64 = series[series.len() - half..].iter().sum();
    if second >= 3 && second * 2 >= first * 3 && second > first {
        Trend::Rising
    } else if first >= 3 && second * 3 <= first * 2 {
        Trend::Falling
    } else {
        Trend::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_of_quiet_days_inside_the_period_is_a_regression() {
        let d = |n: i64| n * DAY_MS;
        // Seen on days 1 and 2, quiet, back on day 35 (period from day 10).
        assert!(regressed(&[d(1), d(2), d(35)], d(10), d(1), 7));
        // Seen every few days: no regression.
        assert!(!regressed(&[d(1), d(5), d(9), d(13)], d(10), d(1), 7));
        // Seen only before the period.
        assert!(!regressed(&[d(1), d(2)], d(10), d(1), 7));
    }

    #[test]
    fn trends_compare_halves() {
        assert_eq!(trend(&[0, 0, 1, 5]), Trend::Rising);
        assert_eq!(trend(&[5, 4, 0, 1]), Trend::Falling);
        assert_eq!(trend(&[2, 2, 2, 2]), Trend::Steady);
        assert_eq!(trend(&[0]), Trend::Steady);
    }
}
