//! What the fault ledger adds to a run's report: first-try success per
//! step with the causes of the misses, and per fault kind how many were
//! injected and what the users who met them saw.
//!
//! Apart from `summary` because these come from the tries and the ledger,
//! not from the final outcomes: the final outcome is what a user got after
//! pressing again, the first try is what healing alone achieved.

use std::collections::{BTreeMap, HashMap};

use super::{RunReport, ratio};
use crate::ledger::{Judged, Tally, TryRecord, Verdict};

/// The cause a first-try miss is filed under when no fault struck it.
pub const NO_FAULT: &str = "no_fault";

impl RunReport {
    /// Adds the first-try figures of `tries` and the ledger's verdicts.
    pub fn with_ledger(mut self, tries: &[TryRecord], judged: &Judged) -> Self {
        let firsts: Vec<&TryRecord> = tries.iter().filter(|t| t.attempt == 1).collect();
        self.first_try_success_rate = success_rate(firsts.iter().copied());
        let mut by_step: BTreeMap<&str, Vec<&TryRecord>> = BTreeMap::new();
        for t in &firsts {
            by_step.entry(t.step).or_default().push(t);
        }
        for (step, tries) in by_step {
            let summary = self.steps.entry(step.to_owned()).or_default();
            summary.first_try_success_rate = success_rate(tries.iter().copied());
            summary.first_try_causes = causes(tries.iter().copied(), &judged.causes);
        }
        self.faults = judged.faults.clone();
        self.faults_hidden_rate = Tally::sum(self.faults.values()).hidden_rate();
        self
    }
}

fn success_rate<'a>(tries: impl Iterator<Item = &'a TryRecord>) -> f64 {
    let (mut n, mut ok) = (0, 0);
    for t in tries {
        n += 1;
        ok += u64::from(t.verdict == Verdict::Hidden);
    }
    ratio(ok, n)
}

fn causes<'a>(
    tries: impl Iterator<Item = &'a TryRecord>,
    causes: &HashMap<String, Vec<&'static str>>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in tries.filter(|t| t.verdict != Verdict::Hidden) {
        match causes.get(&t.tag).filter(|c| !c.is_empty()) {
            Some(kinds) => {
                for kind in kinds {
                    *out.entry((*kind).to_owned()).or_default() += 1;
                }
            }
            None => *out.entry(NO_FAULT.to_owned()).or_default() += 1,
        }
    }
    out
}
