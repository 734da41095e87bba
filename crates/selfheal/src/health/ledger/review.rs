//! The guide's monthly review ("review health logs monthly; look for
//! recurring error patterns"), written from the ledger as Markdown, with
//! retry advice per operation where the data supports it.
//!
//! Advice is a sentence for a person, never a change: a policy tuned by
//! its own statistics would drift with every outage it lived through, and
//! the reason an attempt never recovered in 30 days (the dependency's
//! failures were all hard outages) may not hold in the next 30.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::history::{History, Mark};
use super::time::{date, date_time, floor};
use super::{DAY_MS, Ledger};

/// Below this many retried calls of an operation, no advice is given.
const MIN_CALLS: u64 = 20;

/// The retries of one operation over a period.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OperationRetries {
    /// The operation.
    pub operation: String,
    /// Recoveries per attempt (index 0 is attempt 1).
    pub recovered_at: Vec<u64>,
    /// Give-ups per cause.
    pub gave_up: BTreeMap<String, u64>,
    /// The highest attempt seen (retried, recovered or given up at).
    pub max_attempt: u32,
    /// Milliseconds waited before each next attempt, on average, per
    /// attempt that failed (index 0: after attempt 1).
    pub mean_delay_ms: Vec<u64>,
    /// Total waiting in recoveries, milliseconds.
    pub recovered_wait_ms: u64,
}

impl OperationRetries {
    /// Recoveries in all.
    pub fn recovered(&self) -> u64 {
        self.recovered_at.iter().sum()
    }

    /// Give-ups in all.
    pub fn gave_up_total(&self) -> u64 {
        self.gave_up.values().sum()
    }
}

/// One advice line of a [`Review`]: a sentence for a person; nothing
/// changes a retry policy by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// The operation.
    pub operation: String,
    /// The sentence.
    pub text: String,
}

/// The monthly review (see [`Ledger::review`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Review {
    /// Days covered.
    pub days: u32,
    /// The fleet's history over them.
    pub history: History,
    /// Retries per operation, most retried first.
    pub retries: Vec<OperationRetries>,
    /// Advice where the data supports it.
    pub advice: Vec<Advice>,
    /// The review as Markdown.
    pub markdown: String,
}

impl Ledger {
    /// The review of the last `days` days.
    pub async fn review(&self, days: u32) -> Result<Review, sqlx::Error> {
        self.review_at(days, self.now_ms()).await
    }

    /// The review of the `days` days until `now_ms`.
    pub async fn review_at(&self, days: u32, now_ms: i64) -> Result<Review, sqlx::Error> {
        let days = days.max(1);
        let history = self
            .history_at(Duration::from_secs(u64::from(days) * 86_400), now_ms)
            .await?;
        let from = floor(now_ms, DAY_MS) - (i64::from(days) - 1) * DAY_MS;
        let rows: Vec<(String, String, String, i64, i64, i64)> = on_pool!(&self.inner.pool, p => sqlx::query_as(
            "SELECT operation, outcome, cause, attempt, CAST(SUM(count) AS BIGINT), \
             CAST(SUM(waited_ms) AS BIGINT) FROM selfheal_health_attempts \
             WHERE scale = $1 AND bucket_ms >= $2 \
             GROUP BY operation, outcome, cause, attempt",
        )
        .bind(DAY_MS)
        .bind(from)
        .fetch_all(p)
        .await?);
        let retries = retries(rows);
        let advice = retries.iter().filter_map(|op| advise(op, days)).collect();
        let mut review = Review {
            days,
            history,
            retries,
            advice,
            markdown: String::new(),
        };
        review.markdown = markdown(&review);
        Ok(review)
    }
}

fn retries(rows: Vec<(String, String, String, i64, i64, i64)>) -> Vec<OperationRetries> {
    let mut ops: BTreeMap<String, (OperationRetries, Vec<(u64, u64)>)> = BTreeMap::new();
    for (operation, outcome, cause, attempt, count, waited) in rows {
        let (op, delays) = ops.entry(operation.clone()).or_insert_with(|| {
            (
                OperationRetries {
                    operation,
                    ..OperationRetries::default()
                },
                Vec::new(),
            )
        });
        let attempt = attempt.clamp(1, 64) as usize;
        let (count, waited) = (count.max(0) as u64, waited.max(0) as u64);
        op.max_attempt = op.max_attempt.max(attempt as u32);
        match outcome.as_str() {
            "recovered" => {
                if op.recovered_at.len() < attempt {
                    op.recovered_at.resize(attempt, 0);
                }
                op.recovered_at[attempt - 1] += count;
                op.recovered_wait_ms += waited;
            }
            "retry" => {
                op.max_attempt = op.max_attempt.max(attempt as u32 + 1);
                if delays.len() < attempt {
                    delays.resize(attempt, (0, 0));
                }
                delays[attempt - 1].0 += count;
                delays[attempt - 1].1 += waited;
            }
            _ => *op.gave_up.entry(cause).or_default() += count,
        }
    }
    let mut out: Vec<OperationRetries> = ops
        .into_values()
        .map(|(mut op, delays)| {
            op.mean_delay_ms = delays
                .iter()
                .map(|(n, ms)| if *n == 0 { 0 } else { ms / n })
                .collect();
            op
        })
        .collect();
    out.sort_by(|a, b| {
        (b.recovered() + b.gave_up_total())
            .cmp(&(a.recovered() + a.gave_up_total()))
            .then_with(|| a.operation.cmp(&b.operation))
    });
    out
}

/// The advice for one operation, if its data supports one.
fn advise(op: &OperationRetries, days: u32) -> Option<Advice> {
    let recovered = op.recovered();
    let gave_up = op.gave_up_total();
    let calls = recovered + gave_up;
    if calls < MIN_CALLS {
        return None;
    }
    let last_recovering = op.recovered_at.iter().rposition(|&n| n > 0).map(|i| i + 1);
    let at_max = op.gave_up.get("max_attempts").copied().unwrap_or(0);
    let text = match last_recovering {
        Some(m) if at_max > 0 && (m as u32) < op.max_attempt => {
            // Attempts m+1..=max never recovered: their waits were spent
            // on every give-up for nothing.
            let saved_ms: u64 = op
                .mean_delay_ms
                .iter()
                .skip(m - 1)
                .take(op.max_attempt as usize - m)
                .sum();
            format!(
                "{}: {:.1} % recover by attempt {m}, attempts {}–{} never did in {days} days: \
                 max_attempts {m} would save {:.1} s per give-up",
                op.operation,
                recovered as f64 * 100.0 / calls as f64,
                m + 1,
                op.max_attempt,
                saved_ms as f64 / 1000.0
            )
        }
        Some(m) if at_max * 10 >= calls && m as u32 == op.max_attempt => format!(
            "{}: {} of {calls} retried calls gave up at the last attempt ({m}) and the last \
             attempt still recovers {}: one more attempt may recover some; check the deadline first",
            op.operation,
            at_max,
            op.recovered_at[m - 1]
        ),
        _ => {
            let overload: u64 = ["budget", "throttled", "overloaded"]
                .iter()
                .filter_map(|c| op.gave_up.get(*c))
                .sum();
            if overload * 2 < calls {
                return None;
            }
            format!(
                "{}: {overload} of {calls} retried calls were refused by a budget or throttle: the \
                 dependency was overloaded; more attempts would not help, a fallback would",
                op.operation
            )
        }
    };
    Some(Advice {
        operation: op.operation.clone(),
        text,
    })
}

fn markdown(review: &Review) -> String {
    let h = &review.history;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Health review: {} to {} ({} days)\n",
        date(h.from_ms),
        date(h.to_ms),
        review.days
    );
    let _ = writeln!(
        md,
        "Generated {} UTC from the health ledger.\n",
        date_time(h.to_ms)
    );
    let rate = if h.requests > 0 {
        h.failed as f64 * 100.0 / h.requests as f64
    } else {
        0.0
    };
    let errors: u64 = h.fingerprints.iter().map(|f| f.count).sum();
    let _ = writeln!(
        md,
        "{} requests, {} failed ({rate:.2} %); {errors} errors under {} fingerprints.\n",
        h.requests,
        h.failed,
        h.fingerprints.len()
    );
    let table = |md: &mut String, title: &str, rows: Vec<&super::FingerprintHistory>| {
        let _ = writeln!(md, "## {title}\n");
        if rows.is_empty() {
            let _ = writeln!(md, "None.\n");
            return;
        }
        let _ = writeln!(md, "| fingerprint | count | days seen | trend | marks |");
        let _ = writeln!(md, "|---|---:|---:|---|---|");
        for f in rows.into_iter().take(10) {
            let marks: Vec<&str> = f.marks.iter().map(|m| m.as_str()).collect();
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {:?} | {} |",
                f.fingerprint.replace('|', "\\|"),
                f.count,
                f.days_seen,
                f.trend,
                marks.join(", ")
            );
        }
        md.push('\n');
    };
    let mut recurring: Vec<_> = h.marked(Mark::Recurring).collect();
    recurring.sort_by(|a, b| b.days_seen.cmp(&a.days_seen).then(b.count.cmp(&a.count)));
    table(&mut md, "Top recurring errors", recurring);
    table(&mut md, "New errors", h.marked(Mark::New).collect());
    table(
        &mut md,
        "Regressed errors",
        h.marked(Mark::Regressed).collect(),
    );
    let _ = writeln!(md, "## Heals by kind\n");
    if h.heals.is_empty() {
        let _ = writeln!(md, "None.\n");
    } else {
        let _ = writeln!(md, "| kind | count |\n|---|---:|");
        for (kind, n) in &h.heals {
            let _ = writeln!(md, "| {kind} | {n} |");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Retries: the attempt that recovered\n");
    if review.retries.is_empty() {
        let _ = writeln!(md, "No retries recorded.\n");
    } else {
        let _ = writeln!(
            md,
            "| operation | recovered at attempt (1, 2, …) | give-ups (cause) | mean wait per recovery |"
        );
        let _ = writeln!(md, "|---|---|---|---:|");
        for op in &review.retries {
            let at: Vec<String> = op.recovered_at.iter().map(u64::to_string).collect();
            let causes: Vec<String> = op
                .gave_up
                .iter()
                .map(|(c, n)| format!("{n} ({c})"))
                .collect();
            let wait = if op.recovered() > 0 {
                op.recovered_wait_ms as f64 / op.recovered() as f64 / 1000.0
            } else {
                0.0
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {wait:.2} s |",
                op.operation,
                if at.is_empty() {
                    "-".to_owned()
                } else {
                    at.join(", ")
                },
                if causes.is_empty() {
                    "-".to_owned()
                } else {
                    causes.join(", ")
                },
            );
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Advice\n");
    if review.advice.is_empty() {
        let _ = writeln!(md, "Nothing the data supports yet.");
    }
    for a in &review.advice {
        let _ = writeln!(md, "- {}", a.text);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_that_never_recover_are_advised_against() {
        let rows = vec![
            (
                "send_email".into(),
                "recovered".into(),
                String::new(),
                2,
                249,
                249_000,
            ),
            (
                "send_email".into(),
                "retry".into(),
                String::new(),
                1,
                250,
                250_000,
            ),
            (
                "send_email".into(),
                "retry".into(),
                String::new(),
                2,
                1,
                400,
            ),
            (
                "send_email".into(),
                "retry".into(),
                String::new(),
                3,
                1,
                400,
            ),
            (
                "send_email".into(),
                "gave_up".into(),
                "max_attempts".into(),
                4,
                1,
                0,
            ),
        ];
        let ops = retries(rows);
        assert_eq!(ops[0].max_attempt, 4);
        let advice = advise(&ops[0], 30).expect("enough data");
        assert!(
            advice.text.contains("99.6 % recover by attempt 2")
                && advice.text.contains("attempts 3–4 never did")
                && advice.text.contains("max_attempts 2 would save 0.8 s"),
            "{}",
            advice.text
        );
        let few = retries(vec![(
            "x".into(),
            "recovered".into(),
            String::new(),
            2,
            3,
            0,
        )]);
        assert!(advise(&few[0], 30).is_none(), "3 calls support nothing");
    }
}
