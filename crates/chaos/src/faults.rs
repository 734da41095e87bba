//! One decision-maker for every upstream fault, shared by the TCP proxy and
//! the HTTP upstream servers.
//!
//! Why shared: the plan says "30 % of upstream calls are faulted, split by
//! these weights". Two of the fault kinds (`reset`, `stall`, `latency`) can
//! only be done below HTTP, by the [`proxy`](crate::proxy); the other two
//! (`rate_limit` = 429, `unavailable` = 503) need an HTTP answer, so only the
//! [`upstream`](crate::upstream) servers can give them. If each side rolled its
//! own dice the overall rate would drift from the plan. So:
//!
//! * When a proxy is attached ([`UpstreamFaults::attach_proxy`]), the proxy
//!   makes the *single* draw per request over all five kinds
//!   ([`UpstreamFaults::decide`]). A TCP kind it applies itself; an HTTP kind
//!   it hands over as a pending token, and the next request that reaches an
//!   upstream server takes it ([`UpstreamFaults::take_http_fault`]). With
//!   concurrent requests the token may land on a different request than the
//!   one that drew it, but the counts and per-request probability match the
//!   plan (requests are exchangeable).
//! * Without a proxy in front, each server draws by itself with the HTTP
//!   share of the probability only (`p * (w_429 + w_503) / w_total`).
//!
//! The RNG is seeded so a run can be replayed.
//!
//! Every fault that is applied is also written to the run's
//! [`FaultLedger`] with the tag (`X-Request-Id`) of the request it struck,
//! which the app passes on from the user's request: an HTTP fault drawn by
//! the proxy is handed over *for that tag*, so the server answers it to the
//! request it was drawn for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::ledger::FaultLedger;
use crate::plan::UpstreamPlan;

/// The kinds of upstream fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// HTTP 429 with `Retry-After: 1`.
    RateLimit,
    /// HTTP 503.
    Unavailable,
    /// The connection stops forwarding (the client times out).
    Stall,
    /// The TCP connection is reset.
    Reset,
    /// Forwarding is delayed, then the answer is normal.
    Latency,
    /// The request reaches the upstream, which acts on it; its answer is
    /// lost (the connection is reset when the answer comes back).
    LostResponse,
    /// The request reaches the upstream, which acts on it; its answer is
    /// held past the client's timeout.
    LateResponse,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::RateLimit,
        FaultKind::Unavailable,
        FaultKind::Stall,
        FaultKind::Reset,
        FaultKind::Latency,
        FaultKind::LostResponse,
        FaultKind::LateResponse,
    ];

    /// The snake_case name used in the plan and in counters.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RateLimit => "rate_limit",
            FaultKind::Unavailable => "unavailable",
            FaultKind::Stall => "stall",
            FaultKind::Reset => "reset",
            FaultKind::Latency => "latency",
            FaultKind::LostResponse => "lost_response",
            FaultKind::LateResponse => "late_response",
        }
    }

    /// The name in the fault ledger and `report.json` (`upstream_…`).
    pub fn ledger_name(self) -> &'static str {
        match self {
            FaultKind::RateLimit => "upstream_rate_limit",
            FaultKind::Unavailable => "upstream_unavailable",
            FaultKind::Stall => "upstream_stall",
            FaultKind::Reset => "upstream_reset",
            FaultKind::Latency => "upstream_latency",
            FaultKind::LostResponse => "upstream_lost_response",
            FaultKind::LateResponse => "upstream_late_response",
        }
    }

    /// Whether the fault is an HTTP answer (given by the upstream servers)
    /// rather than a TCP-level one (given by the proxy).
    pub fn is_http(self) -> bool {
        matches!(self, FaultKind::RateLimit | FaultKind::Unavailable)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// HTTP 429 answers.
    pub rate_limit: u64,
    /// HTTP 503 answers.
    pub unavailable: u64,
    /// Stalled connections.
    pub stall: u64,
    /// Reset connections.
    pub reset: u64,
    /// Delayed requests.
    pub latency: u64,
    /// Answers lost after the upstream acted.
    pub lost_response: u64,
    /// Answers held past the client's timeout after the upstream acted.
    pub late_response: u64,
}

impl FaultCounts {
    /// The count for one kind.
    pub fn get(&self, kind: FaultKind) -> u64 {
        match kind {
            FaultKind::RateLimit => self.rate_limit,
            FaultKind::Unavailable => self.unavailable,
            FaultKind::Stall => self.stall,
            FaultKind::Reset => self.reset,
            FaultKind::Latency => self.latency,
            FaultKind::LostResponse => self.lost_response,
            FaultKind::LateResponse => self.late_response,
        }
    }

    /// All kinds added up.
    pub fn total(&self) -> u64 {
        FaultKind::ALL.iter().map(|k| self.get(*k)).sum()
    }

    fn from_array(a: [u64; 7]) -> Self {
        Self {
            rate_limit: a[0],
            unavailable: a[1],
            stall: a[2],
            reset: a[3],
            latency: a[4],
            lost_response: a[5],
            late_response: a[6],
        }
    }
}

/// A decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward normally.
    Pass,
    /// Inject this fault (for a latency fault, with this delay).
    Fault(FaultKind, Duration),
}

/// Decides, per upstream request, which fault applies. Thread-safe; share it
/// in an `Arc` between the proxy and the upstream servers.
#[derive(Debug)]
pub struct UpstreamFaults {
    plan: UpstreamPlan,
    rng: Mutex<fastrand::Rng>,
    enabled: AtomicBool,
    proxied: AtomicBool,
    /// HTTP faults drawn by the proxy, waiting for the request they were
    /// drawn for, by tag (`None`: a request that carried none).
    pending: Mutex<HashMap<Option<String>, VecDeque<FaultKind>>>,
    injected: [AtomicU64; 7],
    decisions: AtomicU64,
    ledger: Arc<FaultLedger>,
}

impl UpstreamFaults {
    /// A decision-maker following `plan`, with a seeded RNG and a ledger
    /// of its own.
    pub fn new(plan: &UpstreamPlan, seed: u64) -> Self {
        Self::with_ledger(plan, seed, Arc::new(FaultLedger::new()))
    }

    /// A decision-maker following `plan` that writes every fault it applies
    /// to `ledger` (the run's).
    pub fn with_ledger(plan: &UpstreamPlan, seed: u64, ledger: Arc<FaultLedger>) -> Self {
        Self {
            plan: plan.clone(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            enabled: AtomicBool::new(true),
            proxied: AtomicBool::new(false),
            pending: Mutex::default(),
            injected: Default::default(),
            decisions: AtomicU64::new(0),
            ledger,
        }
    }

    /// The ledger the applied faults are written to.
    pub fn ledger(&self) -> &Arc<FaultLedger> {
        &self.ledger
    }

    /// A decision-maker that never faults (for the baseline or a storm run
    /// where only the down switch matters).
    pub fn disabled() -> Self {
        let faults = Self::new(&UpstreamPlan::default(), 0);
        faults.set_enabled(false);
        faults
    }

    /// The plan section this follows.
    pub fn plan(&self) -> &UpstreamPlan {
        &self.plan
    }

    /// Turns fault injection on or off (off: every decision is `Pass`).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether faults are being injected.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Declares that a proxy makes the per-request draw from now on (called
    /// by [`FaultProxy::start`](crate::proxy::FaultProxy::start)); the
    /// servers then only consume the HTTP faults it hands over.
    pub fn attach_proxy(&self) {
        self.proxied.store(true, Ordering::Relaxed);
    }

    /// Whether a proxy makes the draws.
    pub fn is_proxied(&self) -> bool {
        self.proxied.load(Ordering::Relaxed)
    }

    /// The proxy's draw over every kind for one request, tagged `tag`. TCP
    /// kinds are returned for the proxy to apply (and counted as injected);
    /// an HTTP kind is queued for the server to answer to the request with
    /// that tag, and `Pass` is returned.
    pub fn decide(&self, tag: Option<&str>) -> Decision {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        if !self.is_enabled() {
            return Decision::Pass;
        }
        let (kind, delay) = {
            let mut rng = self.rng.lock().expect("rng lock");
            if rng.f64() >= self.plan.fault_probability {
                return Decision::Pass;
            }
            let kind = self.pick(&mut rng, &FaultKind::ALL);
            (kind, self.plan.latency.sample(&mut rng))
        };
        if kind.is_http() {
            self.pending
                .lock()
                .expect("pending")
                .entry(tag.map(str::to_owned))
                .or_default()
                .push_back(kind);
            return Decision::Pass;
        }
        self.record(kind, tag);
        let hold = match kind {
            FaultKind::Latency => delay,
            FaultKind::Stall | FaultKind::LateResponse => self.plan.stall,
            _ => Duration::ZERO,
        };
        Decision::Fault(kind, hold)
    }

    /// The servers' question for the request tagged `tag`: answer 429 or
    /// 503 instead? With a proxy attached this takes the fault drawn for
    /// that request; without, it draws with the HTTP share of the fault
    /// probability. Counts (and writes to the ledger) what it returns.
    pub fn take_http_fault(&self, tag: Option<&str>) -> Option<FaultKind> {
        if !self.is_enabled() {
            return None;
        }
        let kind = if self.is_proxied() {
            let mut pending = self.pending.lock().expect("pending");
            let key = tag.map(str::to_owned);
            let kind = pending.get_mut(&key).and_then(VecDeque::pop_front);
            if pending.get(&key).is_some_and(VecDeque::is_empty) {
                pending.remove(&key);
            }
            kind
        } else {
            let w = &self.plan.weights;
            let total = w.total();
            if total <= 0.0 {
                return None;
            }
            let p_http = self.plan.fault_probability * (w.rate_limit + w.unavailable) / total;
            let mut rng = self.rng.lock().expect("rng lock");
            if rng.f64() < p_http {
                Some(self.pick(&mut rng, &[FaultKind::RateLimit, FaultKind::Unavailable]))
            } else {
                None
            }
        };
        if let Some(kind) = kind {
            self.record(kind, tag);
        }
        kind
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> FaultCounts {
        FaultCounts::from_array(std::array::from_fn(|i| {
            self.injected[i].load(Ordering::Relaxed)
        }))
    }

    /// How many per-request draws the proxy made.
    pub fn decisions(&self) -> u64 {
        self.decisions.load(Ordering::Relaxed)
    }

    fn record(&self, kind: FaultKind, tag: Option<&str>) {
        self.injected[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.ledger.request(kind.ledger_name(), tag);
    }

    fn pick(&self, rng: &mut fastrand::Rng, kinds: &[FaultKind]) -> FaultKind {
        let weight = |k: FaultKind| {
            let w = &self.plan.weights;
            match k {
                FaultKind::RateLimit => w.rate_limit,
                FaultKind::Unavailable => w.unavailable,
                FaultKind::Stall => w.stall,
                FaultKind::Reset => w.reset,
                FaultKind::Latency => w.latency,
                FaultKind::LostResponse => w.lost_response,
                FaultKind::LateResponse => w.late_response,
            }
        };
        let total: f64 = kinds.iter().map(|k| weight(*k)).sum();
        let mut x = rng.f64() * total;
        for &k in kinds {
            x -= weight(k);
            if x < 0.0 {
                return k;
            }
        }
        *kinds.last().expect("at least one kind")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_draw_matches_plan_rate_and_hands_http_faults_over() {
        let faults = UpstreamFaults::new(&UpstreamPlan::default(), 42);
        faults.attach_proxy();
        let n = 20_000;
        let mut tcp = 0;
        for _ in 0..n {
            if matches!(faults.decide(None), Decision::Fault(..)) {
                tcp += 1;
            }
            // every request reaches a server unless reset/stalled; approximate
            // by asking once per request
            faults.take_http_fault(None);
        }
        let counts = faults.injected();
        let rate = counts.total() as f64 / n as f64;
        assert!((0.28..=0.32).contains(&rate), "fault rate {rate}");
        assert_eq!(
            tcp,
            counts.stall
                + counts.reset
                + counts.latency
                + counts.lost_response
                + counts.late_response
        );
        // weights 0.30 / 0.25 / 0.10 / 0.15 / 0.20 / 0.05 / 0.05 (sum 1.1) of the 30 %
        let share = |k| counts.get(k) as f64 / counts.total() as f64;
        assert!((0.24..=0.30).contains(&share(FaultKind::RateLimit)));
        assert!((0.20..=0.26).contains(&share(FaultKind::Unavailable)));
        assert!((0.11..=0.16).contains(&share(FaultKind::Reset)));
        assert!((0.03..=0.06).contains(&share(FaultKind::LostResponse)));
        // Every applied fault is in the ledger.
        let ledger = faults.ledger().faults();
        assert_eq!(ledger.len() as u64, counts.total());
    }

    #[test]
    fn server_alone_draws_only_the_http_share() {
        let faults = UpstreamFaults::new(&UpstreamPlan::default(), 1);
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| faults.take_http_fault(None).is_some())
            .count();
        let rate = hits as f64 / n as f64;
        // 0.30 * 0.55 / 1.1 = 0.15
        assert!((0.135..=0.165).contains(&rate), "http fault rate {rate}");
    }

    #[test]
    fn disabled_never_faults() {
        let faults = UpstreamFaults::disabled();
        for _ in 0..1000 {
            assert_eq!(faults.decide(None), Decision::Pass);
            assert_eq!(faults.take_http_fault(None), None);
        }
        assert_eq!(faults.injected().total(), 0);
    }

    #[test]
    fn same_seed_same_decisions() {
        let a = UpstreamFaults::new(&UpstreamPlan::default(), 9);
        let b = UpstreamFaults::new(&UpstreamPlan::default(), 9);
        let da: Vec<_> = (0..200).map(|_| a.decide(None)).collect();
        let db: Vec<_> = (0..200).map(|_| b.decide(None)).collect();
        assert_eq!(da, db);
    }

    #[test]
    fn an_http_fault_is_answered_to_the_request_it_was_drawn_for() {
        let mut plan = UpstreamPlan::default();
        plan.fault_probability = 1.0;
        plan.weights = crate::plan::FaultWeights {
            rate_limit: 1.0,
            unavailable: 0.0,
            stall: 0.0,
            reset: 0.0,
            latency: 0.0,
            lost_response: 0.0,
            late_response: 0.0,
        };
        let faults = UpstreamFaults::new(&plan, 3);
        faults.attach_proxy();
        assert_eq!(faults.decide(Some("a")), Decision::Pass);
        // Another request reaches the server first: not its fault.
        assert_eq!(faults.take_http_fault(Some("b")), None);
        assert_eq!(
            faults.take_http_fault(Some("a")),
            Some(FaultKind::RateLimit)
        );
        assert_eq!(faults.take_http_fault(Some("a")), None);
        let ledger = faults.ledger().faults();
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].kind, "upstream_rate_limit");
        assert_eq!(ledger[0].target, crate::ledger::Target::Request("a".into()));
    }
}
