//! The fault ledger: every fault injected in a run, with an id and what it
//! struck, and the verdict of the user tries it struck.
//!
//! Why: the guide's headline is "95 % of errors auto-recover". Counting
//! outcomes alone cannot say that: a user action can fail with no fault at
//! all, or succeed after three. So every injector writes here what it did
//! and where, and after the run each fault is judged by what the user who
//! met it saw at that try:
//!
//! * **hidden**: the try succeeded (the page asked for, its effect applied);
//! * **degraded**: a truthful answer that lost nothing (the tutor's
//!   "temporarily unavailable, try in N s", or a 503 that says when);
//! * **failed**: anything else (an error page, a reset connection, the
//!   login page after a lost session, a wrong page).
//!
//! How a fault is linked to a try depends on what it strikes ([`Target`]):
//! each try of a virtual user sends its requests with one `X-Request-Id`
//! (the try's tag); the app passes that id on to its upstream calls, so the
//! fault proxy and the upstream servers record the tag of the request they
//! fault. Faults that last a period (a held database lock, an SMTP outage, a
//! partition) are judged by the tries that overlapped the period, or by the
//! emails committed during it. Each injector says which.
//!
//! The headline figure is [`Tally::hidden_rate`]: the share of injected
//! faults that no user saw.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The header that carries a try's tag (and that the app passes on).
pub const REQUEST_ID: &str = "x-request-id";

/// What one fault struck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The requests tagged with this id (one user try), judged by that try.
    Request(String),
    /// A period of the run (offsets from its start): judged by the user
    /// tries of `steps` (every step when empty) that overlapped it, leaving
    /// out the tries a request-linked fault already explains. No try
    /// overlapped: hidden.
    Window {
        /// Start of the period.
        from: Duration,
        /// End of the period.
        to: Duration,
        /// The steps that can meet this fault (empty: all).
        steps: &'static [&'static str],
    },
    /// A period judged by email delivery: failed when an email committed
    /// during it was lost or arrived twice, hidden otherwise.
    Mail {
        /// Start of the period.
        from: Duration,
        /// End of the period.
        to: Duration,
    },
    /// A request that carried no tag (not on any user's path, or an app
    /// that did not pass the id on): counted as injected, but not judged.
    Unlinked,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Its id, unique within the run, in injection order.
    pub id: u64,
    /// The kind, named by where it strikes (`upstream_reset`, `db_lock`…).
    pub kind: &'static str,
    /// When it was injected (offset from the run's start).
    pub at: Duration,
    /// What it struck.
    pub target: Target,
}

/// What a user saw at one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Success, effect applied.
    Hidden,
    /// A truthful answer that lost nothing.
    Degraded,
    /// Anything else.
    Failed,
}

/// One try of one user action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryRecord {
    /// The tag its requests carried.
    pub tag: String,
    /// The journey step.
    pub step: &'static str,
    /// 1 for the first try, 2 for the user pressing again.
    pub attempt: u8,
    /// When it started (offset from the run's start).
    pub started: Duration,
    /// When it ended.
    pub ended: Duration,
    /// What the user saw.
    pub verdict: Verdict,
}

/// The ledger of one run. Shared (in an `Arc`) by every injector.
#[derive(Debug)]
pub struct FaultLedger {
    started: Instant,
    /// `started` on the wall clock, in milliseconds since the Unix epoch.
    started_unix_ms: i64,
    next: AtomicU64,
    faults: Mutex<Vec<Fault>>,
}

impl Default for FaultLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultLedger {
    /// An empty ledger; offsets count from now.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// An empty ledger whose offsets count from `started`.
    pub fn starting_at(started: Instant) -> Self {
        let since = Instant::now().saturating_duration_since(started);
        let wall = SystemTime::now()
            .checked_sub(since)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            started,
            started_unix_ms: wall,
            next: AtomicU64::new(1),
            faults: Mutex::new(Vec::new()),
        }
    }

    /// When offsets count from.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The offset of a wall-clock time (milliseconds since the Unix epoch,
    /// as the app's tables store them) from the run's start (zero before it).
    pub fn offset_of_unix_ms(&self, unix_ms: i64) -> Duration {
        Duration::from_millis(unix_ms.saturating_sub(self.started_unix_ms).max(0) as u64)
    }

    /// The offset of `at` from the run's start (zero before it).
    pub fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    /// Records a fault of `kind` striking `target` now; returns its id.
    pub fn record(&self, kind: &'static str, target: Target) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let at = self.offset(Instant::now());
        self.faults.lock().expect("ledger").push(Fault {
            id,
            kind,
            at,
            target,
        });
        id
    }

    /// Records a fault on the request tagged `tag` ([`Target::Unlinked`]
    /// when it carried none).
    pub fn request(&self, kind: &'static str, tag: Option<&str>) -> u64 {
        let target = match tag {
            Some(tag) if !tag.is_empty() => Target::Request(tag.to_owned()),
            _ => Target::Unlinked,
        };
        self.record(kind, target)
    }

    /// Records a fault that lasted from `from` to `to`, judged by the tries
    /// of `steps` (all when empty) that overlapped it.
    pub fn window(
        &self,
        kind: &'static str,
        from: Instant,
        to: Instant,
        steps: &'static [&'static str],
    ) -> u64 {
        self.record(
            kind,
            Target::Window {
                from: self.offset(from),
                to: self.offset(to),
                steps,
            },
        )
    }

    /// Records a period judged by the emails committed during it.
    pub fn mail_window(&self, kind: &'static str, from: Instant, to: Instant) -> u64 {
        self.record(
            kind,
            Target::Mail {
                from: self.offset(from),
                to: self.offset(to),
            },
        )
    }

    /// Every fault so far, in injection order.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().expect("ledger").clone()
    }

    /// How many faults of `kind` were recorded.
    pub fn count(&self, kind: &str) -> u64 {
        self.faults
            .lock()
            .expect("ledger")
            .iter()
            .filter(|f| f.kind == kind)
            .count() as u64
    }
}

/// Per fault kind: how many were injected and what the users who met them
/// saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Faults injected.
    pub injected: u64,
    /// Struck a try that succeeded, or no try at all.
    pub hidden: u64,
    /// Struck a try answered truthfully, nothing lost.
    pub degraded: u64,
    /// Struck a try that failed.
    pub failed: u64,
    /// Struck a request that carried no tag: not judged (included in
    /// `injected` only).
    pub unlinked: u64,
}

impl Tally {
    fn add(&mut self, verdict: Option<Verdict>) {
        self.injected += 1;
        match verdict {
            Some(Verdict::Hidden) => self.hidden += 1,
            Some(Verdict::Degraded) => self.degraded += 1,
            Some(Verdict::Failed) => self.failed += 1,
            None => self.unlinked += 1,
        }
    }

    /// The share of the judged faults that no user saw (1 when none was
    /// judged).
    pub fn hidden_rate(&self) -> f64 {
        let judged = self.hidden + self.degraded + self.failed;
        if judged == 0 {
            1.0
        } else {
            self.hidden as f64 / judged as f64
        }
    }

    /// The sum of several tallies.
    pub fn sum<'a>(tallies: impl IntoIterator<Item = &'a Tally>) -> Tally {
        tallies.into_iter().fold(Tally::default(), |mut acc, t| {
            acc.injected += t.injected;
            acc.hidden += t.hidden;
            acc.degraded += t.degraded;
            acc.failed += t.failed;
            acc.unlinked += t.unlinked;
            acc
        })
    }
}

/// What the ledger adds up to after a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Judged {
    /// Per fault kind.
    pub faults: BTreeMap<String, Tally>,
    /// Per try tag: the kinds of the faults that struck it, for the causes
    /// of first-try failures.
    pub causes: HashMap<String, Vec<&'static str>>,
}

/// Judges every fault by the tries it struck. `mail_failures` are the
/// commit offsets of the emails that were lost or arrived twice.
pub fn judge(faults: &[Fault], tries: &[TryRecord], mail_failures: &[Duration]) -> Judged {
    let by_tag: HashMap<&str, &TryRecord> = tries.iter().map(|t| (t.tag.as_str(), t)).collect();
    let mut causes: HashMap<String, Vec<&'static str>> = HashMap::new();
    for fault in faults {
        if let Target::Request(tag) = &fault.target
            && by_tag.contains_key(tag.as_str())
        {
            causes.entry(tag.clone()).or_default().push(fault.kind);
        }
    }
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for fault in faults {
        let verdict = match &fault.target {
            Target::Request(tag) => by_tag.get(tag.as_str()).map(|t| t.verdict),
            Target::Unlinked => None,
            Target::Window { from, to, steps } => {
                let overlapping = tries.iter().filter(|t| {
                    t.started < *to
                        && t.ended > *from
                        && (steps.is_empty() || steps.contains(&t.step))
                        && !causes.contains_key(&t.tag)
                });
                Some(
                    overlapping
                        .map(|t| t.verdict)
                        .max()
                        .unwrap_or(Verdict::Hidden),
                )
            }
            Target::Mail { from, to } => {
                Some(if mail_failures.iter().any(|at| at >= from && at <= to) {
                    Verdict::Failed
                } else {
                    Verdict::Hidden
                })
            }
        };
        tallies
            .entry(fault.kind.to_owned())
            .or_default()
            .add(verdict);
    }
    // Window faults are causes too, for the tries they overlapped.
    for fault in faults {
        if let Target::Window { from, to, steps } = &fault.target {
            for t in tries.iter().filter(|t| {
                t.started < *to && t.ended > *from && (steps.is_empty() || steps.contains(&t.step))
            }) {
                let kinds = causes.entry(t.tag.clone()).or_default();
                if !kinds.contains(&fault.kind) {
                    kinds.push(fault.kind);
                }
            }
        }
    }
    Judged {
        faults: tallies,
        causes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_(tag: &str, step: &'static str, from: u64, to: u64, verdict: Verdict) -> TryRecord {
        TryRecord {
            tag: tag.into(),
            step,
            attempt: 1,
            started: Duration::from_secs(from),
            ended: Duration::from_secs(to),
            verdict,
        }
    }

    fn fault(id: u64, kind: &'static str, target: Target) -> Fault {
        Fault {
            id,
            kind,
            at: Duration::ZERO,
            target,
        }
    }

    #[test]
    fn a_request_fault_takes_the_verdict_of_the_try_it_struck() {
        let tries = [
            try_("a", "tutor", 0, 1, Verdict::Hidden),
            try_("b", "tutor", 0, 1, Verdict::Degraded),
            try_("c", "tutor", 0, 1, Verdict::Failed),
        ];
        let faults = [
            fault(1, "upstream_reset", Target::Request("a".into())),
            fault(2, "upstream_reset", Target::Request("b".into())),
            fault(3, "upstream_reset", Target::Request("c".into())),
            fault(4, "upstream_reset", Target::Request("unknown".into())),
            fault(5, "upstream_reset", Target::Unlinked),
        ];
        let judged = judge(&faults, &tries, &[]);
        let t = judged.faults["upstream_reset"];
        assert_eq!(
            (t.injected, t.hidden, t.degraded, t.failed, t.unlinked),
            (5, 1, 1, 1, 2)
        );
        assert!((t.hidden_rate() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(judged.causes["c"], vec!["upstream_reset"]);
    }

    #[test]
    fn a_window_takes_the_worst_overlapping_try_not_explained_elsewhere() {
        let tries = [
            try_("a", "dashboard", 0, 2, Verdict::Hidden),
            try_("b", "complete_lesson", 1, 3, Verdict::Failed),
            try_("c", "complete_lesson", 5, 6, Verdict::Failed),
            try_("d", "dashboard", 1, 2, Verdict::Degraded),
        ];
        let window = |from, to, steps| Target::Window {
            from: Duration::from_secs(from),
            to: Duration::from_secs(to),
            steps,
        };
        let faults = [
            // Overlaps a (hidden) and b (failed): failed.
            fault(1, "db_lock", window(1, 2, &[])),
            // Overlaps only c, explained by a request fault: hidden.
            fault(2, "db_lock", window(5, 6, &[])),
            fault(3, "panic_before_handler", Target::Request("c".into())),
            // Overlaps a and d, but only dashboard... restricted to lessons: none.
            fault(4, "db_stall", window(0, 1, &["complete_lesson"])),
        ];
        let judged = judge(&faults, &tries, &[]);
        let lock = judged.faults["db_lock"];
        assert_eq!((lock.injected, lock.hidden, lock.failed), (2, 1, 1));
        let stall = judged.faults["db_stall"];
        assert_eq!((stall.injected, stall.hidden), (1, 1));
        assert!(judged.causes["b"].contains(&"db_lock"));
    }

    #[test]
    fn a_mail_window_fails_when_an_email_committed_in_it_was_lost() {
        let mail = |from, to| Target::Mail {
            from: Duration::from_secs(from),
            to: Duration::from_secs(to),
        };
        let faults = [
            fault(1, "smtp_outage", mail(0, 4)),
            fault(2, "smtp_outage", mail(10, 12)),
        ];
        let judged = judge(&faults, &[], &[Duration::from_secs(3)]);
        let t = judged.faults["smtp_outage"];
        assert_eq!((t.injected, t.hidden, t.failed), (2, 1, 1));
    }

    #[test]
    fn the_ledger_numbers_faults_in_order_and_links_untagged_requests_to_nothing() {
        let ledger = FaultLedger::new();
        let a = ledger.request("upstream_reset", Some("t1"));
        let b = ledger.request("upstream_reset", None);
        let c = ledger.request("upstream_reset", Some(""));
        assert_eq!((a, b, c), (1, 2, 3));
        let faults = ledger.faults();
        assert_eq!(faults[0].target, Target::Request("t1".into()));
        assert_eq!(faults[1].target, Target::Unlinked);
        assert_eq!(faults[2].target, Target::Unlinked);
        assert_eq!(ledger.count("upstream_reset"), 3);
    }
}
