//! The fleet and its history on the dashboard, when a
//! [health ledger](crate::health::ledger) is attached
//! ([`Dashboard::with_ledger`](super::Dashboard::with_ledger)): every
//! instance, fingerprints merged across them, and 24 h / 7 d / 30 d of
//! history with trends, marks and retry advice.
//!
//! The ledger is read when the page is, from the database every instance
//! writes, so whichever instance the load balancer picked shows the same
//! fleet. If the database does not answer, the page says so and shows this
//! instance's own view, which needs nothing but memory.

/// The history periods the page offers: query key, label, days.
#[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
pub(super) const PERIODS: [(&str, &str, u32); 3] = [
    ("24h", "24 hours", 1),
    ("7d", "7 days", 7),
    ("30d", "30 days", 30),
];

/// An instance row.
pub(super) struct InstanceRow {
    pub(super) id: String,
    pub(super) version: String,
    pub(super) host: String,
    pub(super) status: &'static str,
    pub(super) last_seen: String,
    /// `silent`, `stopped` or empty.
    pub(super) flag: &'static str,
    pub(super) this: bool,
    pub(super) reasons: String,
}

/// A merged fingerprint row.
pub(super) struct MergedRow {
    pub(super) fingerprint: String,
    pub(super) count: u64,
    /// `a: 4 · b: 4 · c: 4`.
    pub(super) per_instance: String,
    pub(super) sample: String,
}

/// A history row.
pub(super) struct HistoryRow {
    pub(super) fingerprint: String,
    pub(super) count: u64,
    pub(super) days_seen: u32,
    /// The series as block characters (`▁▃▇`).
    pub(super) spark: String,
    pub(super) trend: &'static str,
    pub(super) marks: Vec<&'static str>,
}

/// The fleet section of the page.
pub(super) struct FleetView {
    pub(super) status: &'static str,
    pub(super) reasons: Vec<String>,
    /// Set when the ledger could not be read: the page shows this
    /// instance only.
    pub(super) error: Option<String>,
    pub(super) window_minutes: u64,
    pub(super) instances: Vec<InstanceRow>,
    pub(super) fingerprints: Vec<MergedRow>,
    pub(super) history_key: &'static str,
    pub(super) history_label: &'static str,
    pub(super) history: Vec<HistoryRow>,
    pub(super) heals: Vec<(String, u64)>,
    pub(super) advice: Vec<String>,
}

#[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
fn spark(series: &[u64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = series.iter().copied().max().unwrap_or(0);
    series
        .iter()
        .map(|&n| {
            if n == 0 {
                ' '
            } else {
                BLOCKS[(n * 7 / max.max(1)).min(7) as usize]
            }
        })
        .collect()
}

#[cfg(feature = "sqlx")]
mod load {
    use serde_json::{Value, json};

    use super::*;
    use crate::health::ledger::{Fleet, Ledger, Review, Trend};

    /// The fleet and the review of `period` (a key of [`PERIODS`]), read
    /// from the ledger.
    pub(in super::super) async fn read(
        ledger: &Ledger,
        period: &str,
    ) -> (FleetView, Result<(Fleet, Review), String>) {
        let (key, label, days) = PERIODS
            .iter()
            .copied()
            .find(|(k, _, _)| *k == period)
            .unwrap_or(PERIODS[0]);
        let read = async {
            let fleet = ledger.fleet().await?;
            let review = ledger.review(days).await?;
            Ok::<_, sqlx::Error>((fleet, review))
        }
        .await
        .map_err(|e| crate::redact::redact(&e.to_string()));
        let mut view = FleetView {
            status: "healthy",
            reasons: Vec::new(),
            error: None,
            window_minutes: 0,
            instances: Vec::new(),
            fingerprints: Vec::new(),
            history_key: key,
            history_label: label,
            history: Vec::new(),
            heals: Vec::new(),
            advice: Vec::new(),
        };
        match &read {
            Err(error) => {
                view.error = Some(format!(
                    "The health ledger could not be read ({error}): this page shows this \
                     instance only, and alerts come from its own view."
                ));
            }
            Ok((fleet, review)) => {
                view.status = fleet.status.as_str();
                view.reasons = fleet.reasons.clone();
                view.window_minutes = fleet.window_secs / 60;
                view.instances = fleet
                    .instances
                    .iter()
                    .map(|i| InstanceRow {
                        id: i.id.clone(),
                        version: i.version.clone(),
                        host: i.host.clone(),
                        status: i.status.as_str(),
                        last_seen: format!("{} s ago", i.last_seen_secs_ago),
                        flag: if i.silent {
                            "silent"
                        } else if i.stopped {
                            "stopped"
                        } else {
                            ""
                        },
                        this: i.this,
                        reasons: i.reasons.clone(),
                    })
                    .collect();
                view.fingerprints = fleet
                    .fingerprints
                    .iter()
                    .map(|f| MergedRow {
                        fingerprint: f.fingerprint.clone(),
                        count: f.count,
                        per_instance: f
                            .per_instance
                            .iter()
                            .map(|(i, n)| format!("{i}: {n}"))
                            .collect::<Vec<_>>()
                            .join(" · "),
                        sample: f.sample.clone(),
                    })
                    .collect();
                view.history = review
                    .history
                    .fingerprints
                    .iter()
                    .take(50)
                    .map(|f| HistoryRow {
                        fingerprint: f.fingerprint.clone(),
                        count: f.count,
                        days_seen: f.days_seen,
                        spark: spark(&f.series),
                        trend: match f.trend {
                            Trend::Rising => "rising",
                            Trend::Falling => "falling",
                            Trend::Steady => "steady",
                        },
                        marks: f.marks.iter().map(|m| m.as_str()).collect(),
                    })
                    .collect();
                view.heals = review
                    .history
                    .heals
                    .iter()
                    .map(|(k, n)| (k.clone(), *n))
                    .collect();
                view.advice = review.advice.iter().map(|a| a.text.clone()).collect();
            }
        }
        (view, read)
    }

    /// The `fleet` and `history` members of `health.json`.
    pub(in super::super) fn to_json(read: &Result<(Fleet, Review), String>) -> (Value, Value) {
        match read {
            Err(error) => (
                json!({
                    "error": error,
                    "output": "health ledger unreachable: this document shows this instance only",
                }),
                Value::Null,
            ),
            Ok((fleet, review)) => (
                serde_json::to_value(fleet).unwrap_or(Value::Null),
                json!({
                    "days": review.days,
                    "from": review.history.from_ms / 1000,
                    "to": review.history.to_ms / 1000,
                    "pointSecs": review.history.point_secs,
                    "fingerprints": review.history.fingerprints,
                    "heals": review.history.heals,
                    "requests": review.history.requests,
                    "failed": review.history.failed,
                    "retries": review.retries,
                    "advice": review.advice,
                }),
            ),
        }
    }
}

#[cfg(feature = "sqlx")]
pub(super) use load::{read, to_json};

#[cfg(test)]
mod tests {
    #[test]
    fn sparklines_scale_to_the_highest_point() {
        assert_eq!(super::spark(&[0, 1, 7, 14]), " ▁▄█");
    }
}
