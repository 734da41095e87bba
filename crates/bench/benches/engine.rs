//! The retry engine and the circuit breaker against their peers, side by side.
//!
//! Three cases, each a criterion group and a row group of the summary table:
//!
//! - **a_success**: a retry-wrapped async operation that succeeds at once.
//!   Baseline: calling the operation directly.
//! - **b_fail_once**: an operation that fails once, then succeeds, with a zero
//!   delay between the attempts. Baseline: a hand-written "call again" loop.
//! - **c_breaker**: a circuit breaker's closed path (acquire, then record a
//!   success). Baseline: the fastest peer.
//!
//! Futures that complete in one poll are driven by [`block_on`], which polls
//! with a no-op waker: no runtime, so nanosecond overheads stay visible.
//! Contenders that really sleep (backon and tower-resilience call
//! `tokio::time::sleep` even for a zero delay) run on a current-thread tokio
//! runtime instead.
//!
//! After the criterion run, every contender is measured again for the summary
//! table: the median of warm batches, in several rounds interleaved across all
//! contenders, keeping each one's lowest round (the machine is shared; a busy
//! neighbour inflates whole rounds). Heap allocations per call are counted
//! with a counting global allocator. One table with both is printed at the
//! end, with the targets checked against it. Set
//! `SELFHEAL_BENCH_TABLE_ONLY=1` to skip criterion and print only the table;
//! a positional argument filters both by `case/contender` substring.

// The counting `#[global_allocator]` needs `unsafe impl GlobalAlloc` (it only
// forwards to `System` and bumps a counter). The workspace denies unsafe code;
// this bench is the one place that needs it.
#![allow(unsafe_code)]

use std::fmt;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};

use selfheal::breaker::Breaker;
use selfheal::observe::Event;
use selfheal::retry::{Backoff, Budget, Policy};

// ---------------------------------------------------------------------------
// Allocation counting
// ---------------------------------------------------------------------------

#[path = "../../selfheal/tests/support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

// ---------------------------------------------------------------------------
// Driving futures
// ---------------------------------------------------------------------------

/// Polls `future` with a no-op waker until it is ready. For futures that never
/// wait: one that is still pending after a few polls needs a real runtime, and
/// this panics rather than spin.
#[inline(always)]
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..8 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("block_on: future still pending after 8 polls; it needs a runtime (a timer?)");
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// The operations
// ---------------------------------------------------------------------------

/// The operation's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flake;

impl fmt::Display for Flake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("flaky dependency")
    }
}

impl std::error::Error for Flake {}

const INPUT: u64 = 42;

/// Succeeds at once.
#[inline]
async fn op_ok(x: u64) -> Result<u64, Flake> {
    Ok(x)
}

/// Attempts made on the flaky operation. Every logical call of case (b)
/// makes exactly two attempts (fail, succeed), so the parity of this counter
/// says which one comes next; a contender that does not retry breaks the
/// parity, and `failed_once` catches it. A static (not an `Arc`) so that tower
/// services cloned per call clone nothing.
static FLAKY_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// Fails on even attempts, succeeds on odd ones: fails once, then succeeds.
/// A load and a store (single-threaded), not a locked read-modify-write.
#[inline]
async fn op_flaky(x: u64) -> Result<u64, Flake> {
    let n = FLAKY_ATTEMPTS.load(Ordering::Relaxed);
    FLAKY_ATTEMPTS.store(n + 1, Ordering::Relaxed);
    if n.is_multiple_of(2) {
        Err(Flake)
    } else {
        Ok(x)
    }
}

// ---------------------------------------------------------------------------
// tower's own retry: a Policy with at most 2 retries and no wait
// ---------------------------------------------------------------------------

/// tower's `Retry` clones the policy per call, so the counter is per call.
#[derive(Clone, Copy)]
struct TowerAttempts {
    retries_left: u32,
}

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for TowerAttempts {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.retries_left > 0 => {
                self.retries_left -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

// ---------------------------------------------------------------------------
// Measurement and the summary table
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The case's baseline (direct call, hand-written loop).
    Baseline,
    /// A peer library.
    Peer,
    /// selfheal.
    Selfheal,
    /// Shown for reference; not a contender.
    Info,
}

/// Rounds of the table's timing pass.
const ROUNDS: usize = 9;

struct Row {
    case: &'static str,
    name: String,
    role: Role,
    median_ns: f64,
    allocs_per_call: f64,
}

/// Median ns/call over warm batches of `f`, each batch at least ~100 µs
/// long, for about `window`.
fn median_ns<R>(f: &mut impl FnMut() -> R, window: Duration) -> f64 {
    // Calibrate the batch size (this also warms up).
    let mut batch: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f());
        }
        if start.elapsed() >= Duration::from_micros(100) || batch >= 1 << 24 {
            break;
        }
        batch *= 2;
    }
    let warm_until = Instant::now() + window / 5;
    while Instant::now() < warm_until {
        for _ in 0..batch {
            black_box(f());
        }
    }
    // At least 11 batches, at most 1001 or about `window`.
    let mut samples = Vec::with_capacity(1001);
    let stop = Instant::now() + window;
    while samples.len() < 1001 && (samples.len() < 11 || Instant::now() < stop) {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f());
        }
        samples.push(start.elapsed().as_nanos() as f64 / batch as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Heap allocations per call, over `calls` calls.
fn allocs_per_call<R>(f: &mut impl FnMut() -> R, calls: u64) -> f64 {
    black_box(f()); // lazily initialised statics are not the call's cost
    counting_alloc::reset_allocations();
    counting_alloc::start();
    for _ in 0..calls {
        black_box(f());
    }
    counting_alloc::stop();
    counting_alloc::allocations() as f64 / calls as f64
}

/// One contender: a closure doing one call, owning everything it needs, and
/// a check of its output. Behind a trait object so that all contenders can be
/// measured in interleaved rounds; the measuring loops are generic, so the
/// dynamic call happens once per measurement, never per call.
trait Contender {
    fn case(&self) -> &'static str;
    fn name(&self) -> &str;
    fn role(&self) -> Role;
    fn check(&mut self);
    fn criterion(&mut self, group: &mut BenchmarkGroup<'_, WallTime>);
    fn median_ns(&mut self, window: Duration) -> f64;
    fn allocs_per_call(&mut self, calls: u64) -> f64;
}

struct Entry<R, F, C> {
    case: &'static str,
    name: String,
    role: Role,
    f: F,
    check: C,
    _output: std::marker::PhantomData<fn() -> R>,
}

impl<R, F: FnMut() -> R, C: Fn(&R) -> bool> Contender for Entry<R, F, C> {
    fn case(&self) -> &'static str {
        self.case
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn role(&self) -> Role {
        self.role
    }

    fn check(&mut self) {
        for _ in 0..4 {
            let output = (self.f)();
            assert!(
                (self.check)(&output),
                "{}/{}: unexpected result",
                self.case,
                self.name
            );
        }
    }

    fn criterion(&mut self, group: &mut BenchmarkGroup<'_, WallTime>) {
        let f = &mut self.f;
        group.bench_function(&self.name, |b| b.iter(&mut *f));
    }

    fn median_ns(&mut self, window: Duration) -> f64 {
        median_ns(&mut self.f, window)
    }

    fn allocs_per_call(&mut self, calls: u64) -> f64 {
        allocs_per_call(&mut self.f, calls)
    }
}

struct Bench {
    filter: Option<String>,
    contenders: Vec<Box<dyn Contender>>,
}

impl Bench {
    /// Registers a contender (unless the command-line filter excludes it).
    fn add<R: 'static>(
        &mut self,
        case: &'static str,
        name: &str,
        role: Role,
        check: impl Fn(&R) -> bool + 'static,
        f: impl FnMut() -> R + 'static,
    ) {
        let id = format!("{case}/{name}");
        if self
            .filter
            .as_deref()
            .is_some_and(|filter| !id.contains(filter))
        {
            return;
        }
        let mut entry = Entry {
            case,
            name: name.to_owned(),
            role,
            f,
            check,
            _output: std::marker::PhantomData,
        };
        entry.check();
        self.contenders.push(Box::new(entry));
    }

    fn cases(&self) -> Vec<&'static str> {
        let mut cases: Vec<&'static str> = self.contenders.iter().map(|c| c.case()).collect();
        cases.dedup();
        cases
    }

    fn run_criterion(&mut self, criterion: &mut Criterion) {
        for case in self.cases() {
            let mut group = criterion.benchmark_group(case);
            for c in self.contenders.iter_mut().filter(|c| c.case() == case) {
                c.criterion(&mut group);
            }
            group.finish();
        }
    }

    /// The table's numbers: `ROUNDS` interleaved rounds over every contender
    /// (the best round median of each: the least disturbed by whatever else
    /// runs on the machine, which is shared), then the allocation pass.
    fn run_table(&mut self) -> Vec<Row> {
        let window = Duration::from_millis(60);
        let mut best = vec![f64::INFINITY; self.contenders.len()];
        for _ in 0..ROUNDS {
            for (c, best) in self.contenders.iter_mut().zip(&mut best) {
                *best = best.min(c.median_ns(window));
            }
        }
        self.contenders
            .iter_mut()
            .zip(best)
            .map(|(c, median_ns)| {
                // ~10,000 calls, fewer for the millisecond contenders.
                let calls = ((200e6 / median_ns.max(1.0)) as u64).clamp(100, 10_000);
                let allocs_per_call = c.allocs_per_call(calls);
                c.check();
                Row {
                    case: c.case(),
                    name: c.name().to_owned(),
                    role: c.role(),
                    median_ns,
                    allocs_per_call,
                }
            })
            .collect()
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn print_table(rows: &[Row]) {
    let mut cases: Vec<&str> = rows.iter().map(|r| r.case).collect();
    cases.dedup();
    let w = rows
        .iter()
        .map(|r| r.name.chars().count() + " [baseline]".len())
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "median/call: median of warm batches, the lowest of {ROUNDS} interleaved rounds; \
         allocs/call: heap allocations over up to 10,000 calls. Baselines: (a) direct \
         call, (b) hand-written loop, (c) fastest peer. Rows without a ratio are references."
    );
    println!(
        "{:<12} {:<w$} {:>12} {:>12} {:>12}",
        "case", "contender", "median/call", "allocs/call", "vs baseline"
    );
    println!("{}", "-".repeat(w + 52));
    let mut verdicts = Vec::new();
    for case in cases {
        let in_case = || rows.iter().filter(move |r| r.case == case);
        let baseline = in_case()
            .find(|r| r.role == Role::Baseline)
            .or_else(|| {
                in_case()
                    .filter(|r| r.role == Role::Peer)
                    .min_by(|a, b| a.median_ns.total_cmp(&b.median_ns))
            })
            .map(|r| (r.name.clone(), r.median_ns));
        for r in in_case() {
            let ratio = match (&baseline, r.role) {
                (_, Role::Info) => String::from("-"),
                (Some((_, base)), _) => format!("{:.2}x", r.median_ns / base),
                (None, _) => String::from("-"),
            };
            let mut name = r.name.clone();
            if baseline.as_ref().is_some_and(|(b, _)| *b == r.name) {
                name.push_str(" [baseline]");
            }
            println!(
                "{:<12} {:<w$} {:>12} {:>12.2} {:>12}",
                r.case,
                name,
                fmt_ns(r.median_ns),
                r.allocs_per_call,
                ratio
            );
        }
        println!("{}", "-".repeat(w + 52));
        verdicts.extend(verdict(case, &in_case().collect::<Vec<_>>()));
    }
    if !verdicts.is_empty() {
        println!("targets (from the issue), checked against this run:");
        for v in verdicts {
            println!("  {v}");
        }
    }
}

/// The targets for selfheal, checked against the measured rows.
fn verdict(case: &str, rows: &[&Row]) -> Vec<String> {
    let fastest_peer = rows
        .iter()
        .filter(|r| r.role == Role::Peer)
        .min_by(|a, b| a.median_ns.total_cmp(&b.median_ns));
    let baseline = rows.iter().find(|r| r.role == Role::Baseline);
    let mark = |ok: bool| if ok { "MET   " } else { "MISSED" };
    let mut out = Vec::new();
    for s in rows.iter().filter(|r| r.role == Role::Selfheal) {
        let mut checks = Vec::new();
        match case {
            "a_success" => {
                if let Some(b) = baseline {
                    let over = s.median_ns - b.median_ns;
                    checks.push(format!(
                        "{} within 3 ns of the direct call (+{over:.1} ns)",
                        mark(over <= 3.0)
                    ));
                }
                checks.push(format!(
                    "{} 0 allocations ({:.2})",
                    mark(s.allocs_per_call == 0.0),
                    s.allocs_per_call
                ));
            }
            "b_fail_once" => checks.push(format!(
                "{} <= 20 ns ({})",
                mark(s.median_ns <= 20.0),
                fmt_ns(s.median_ns)
            )),
            "c_breaker" => checks.push(format!(
                "{} <= 30 ns ({})",
                mark(s.median_ns <= 30.0),
                fmt_ns(s.median_ns)
            )),
            _ => {}
        }
        if let Some(p) = fastest_peer {
            checks.push(format!(
                "{} faster than every peer (fastest: {} {})",
                mark(s.median_ns < p.median_ns),
                p.name,
                fmt_ns(p.median_ns)
            ));
        }
        if case == "c_breaker" {
            // Like for like: consecutive-failure breakers against each other,
            // window/ratio breakers against each other.
            let consecutive = |name: &str| name.contains("consecutive");
            let same_mode = rows
                .iter()
                .filter(|r| r.role == Role::Peer && consecutive(&r.name) == consecutive(&s.name))
                .min_by(|a, b| a.median_ns.total_cmp(&b.median_ns));
            if let Some(p) = same_mode {
                checks.push(format!(
                    "{} faster than every peer of the same trip mode (fastest: {} {})",
                    mark(s.median_ns < p.median_ns),
                    p.name,
                    fmt_ns(p.median_ns)
                ));
            }
        }
        for c in checks {
            out.push(format!("{case:<12} {:<46} {c}", s.name));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Contenders
// ---------------------------------------------------------------------------

fn noop_observer() -> Arc<dyn selfheal::observe::Observer> {
    Arc::new(|event: &Event<'_>| {
        black_box(event);
    })
}

/// A `tick` clock without a runtime (seatbelt needs one; zero delays never
/// touch its timers). The driver must outlive the clock's users.
fn seatbelt_clock() -> (tick::Clock, tick::runtime::ClockDriver) {
    tick::runtime::InactiveClock::default().activate(Waker::noop().clone())
}

fn seatbelt_recovery<T>(out: &Result<T, Flake>) -> seatbelt::RecoveryInfo {
    match out {
        Ok(_) => seatbelt::RecoveryInfo::never(),
        Err(_) => seatbelt::RecoveryInfo::retry(),
    }
}

/// A seatbelt retry (3 attempts in all, constant zero delay, no jitter) around
/// `op`, through seatbelt's native (`layered`) service API.
fn seatbelt_retry<Op, Fut>(
    clock: &tick::Clock,
    op: Op,
) -> impl layered::Service<u64, Out = Result<u64, Flake>> + use<Op, Fut>
where
    Op: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, Flake>> + Send + 'static,
{
    let context = seatbelt::ResilienceContext::<u64, Result<u64, Flake>>::new(clock);
    let layer = seatbelt::retry::Retry::layer("bench", &context)
        .clone_input()
        .recovery_with(|out: &Result<u64, Flake>, _| seatbelt_recovery(out))
        .max_retry_attempts(2)
        .backoff(seatbelt::retry::Backoff::Constant)
        .base_delay(Duration::ZERO)
        .use_jitter(false);
    layered::Layer::layer(&layer, layered::Execute::new(op))
}

/// tower-resilience's retry: 3 attempts in all, fixed zero backoff.
fn tower_resilience_retry<S>(service: S) -> tower_resilience::retry::Retry<S, u64, u64, Flake> {
    let layer = tower_resilience::retry::RetryLayer::<u64, u64, Flake>::builder()
        .max_attempts(3)
        .fixed_backoff(Duration::ZERO)
        .build();
    tower::Layer::layer(&layer, service)
}

/// Drives a tower service for one request: `poll_ready`, then `call`.
#[inline(always)]
async fn tower_call<S, Req>(service: &mut S, request: Req) -> Result<S::Response, S::Error>
where
    S: tower::Service<Req>,
{
    use tower::ServiceExt;
    service.ready().await?.call(request).await
}

/// Checks the output of case (a) and (c) contenders.
fn is_42(output: &Option<u64>) -> bool {
    *output == Some(INPUT)
}

/// Checks the output of case (b) contenders: a success, and the attempt
/// counter back at an even value (exactly two attempts were made).
fn failed_once(output: &Option<u64>) -> bool {
    output.is_some() && FLAKY_ATTEMPTS.load(Ordering::Relaxed).is_multiple_of(2)
}

fn case_a_success(bench: &mut Bench) {
    const CASE: &str = "a_success";

    bench.add(CASE, "direct call", Role::Baseline, is_42, || {
        block_on(op_ok(black_box(INPUT))).ok()
    });

    // Policy::default(): budget on; an observer attached.
    let policy = Policy::default().with_observer(noop_observer());
    let p = policy.clone();
    bench.add(
        CASE,
        "selfheal Policy::retry",
        Role::Selfheal,
        is_42,
        move || block_on(p.retry(|| op_ok(black_box(INPUT)))).ok(),
    );
    bench.add(
        CASE,
        "selfheal Policy::retry_named",
        Role::Selfheal,
        is_42,
        move || block_on(policy.retry_named("bench_op", || op_ok(black_box(INPUT)))).ok(),
    );

    let layer = selfheal::retry::RetryLayer::new(Policy::default().with_observer(noop_observer()));
    let mut layered_svc = tower::Layer::layer(&layer, tower::service_fn(op_ok));
    bench.add(
        CASE,
        "selfheal RetryLayer (tower middleware)",
        Role::Info,
        is_42,
        move || block_on(tower_call(&mut layered_svc, black_box(INPUT))).ok(),
    );

    let mut tower_svc =
        tower::retry::Retry::new(TowerAttempts { retries_left: 2 }, tower::service_fn(op_ok));
    bench.add(CASE, "tower retry", Role::Peer, is_42, move || {
        block_on(tower_call(&mut tower_svc, black_box(INPUT))).ok()
    });

    let (clock, driver) = seatbelt_clock();
    let seatbelt_svc = seatbelt_retry(&clock, op_ok);
    bench.add(CASE, "seatbelt retry", Role::Peer, is_42, move || {
        let _keep = &driver;
        block_on(layered::Service::execute(&seatbelt_svc, black_box(INPUT))).ok()
    });

    bench.add(CASE, "backon", Role::Peer, is_42, || {
        use backon::Retryable;
        let backoff = backon::ConstantBuilder::new()
            .with_delay(Duration::ZERO)
            .with_max_times(2);
        block_on((|| op_ok(black_box(INPUT))).retry(backoff)).ok()
    });

    let mut tr_svc = tower_resilience_retry(tower::service_fn(op_ok));
    bench.add(
        CASE,
        "tower-resilience retry",
        Role::Peer,
        is_42,
        move || block_on(tower_call(&mut tr_svc, black_box(INPUT))).ok(),
    );
}

fn case_b_fail_once(bench: &mut Bench) {
    const CASE: &str = "b_fail_once";

    bench.add(
        CASE,
        "hand-written loop",
        Role::Baseline,
        failed_once,
        || {
            block_on(async {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match op_flaky(black_box(INPUT)).await {
                        Err(_) if attempts < 3 => continue,
                        outcome => return outcome,
                    }
                }
            })
            .ok()
        },
    );

    // A budget that one failure per success does not drain (ratio 1: a success
    // earns back the token its failed attempt spent). The default budget
    // (ratio 0.5) rightly stops retrying an operation whose every call fails
    // once: after ~20 calls it gives up, which is not this case.
    let budget = Arc::new(Budget::new(20, 1.0).expect("valid budget"));
    let policy = Policy::default()
        .with_backoff(Backoff::immediate())
        .with_budget(budget)
        .with_observer(noop_observer());
    let p = policy.clone();
    bench.add(
        CASE,
        "selfheal Policy::retry",
        Role::Selfheal,
        failed_once,
        move || block_on(p.retry(|| op_flaky(black_box(INPUT)))).ok(),
    );
    let p = policy.clone();
    bench.add(
        CASE,
        "selfheal Policy::retry_named",
        Role::Selfheal,
        failed_once,
        move || block_on(p.retry_named("bench_op", || op_flaky(black_box(INPUT)))).ok(),
    );
    let unbudgeted = policy.clone().without_budget();
    bench.add(
        CASE,
        "selfheal Policy::retry, no budget",
        Role::Info,
        failed_once,
        move || block_on(unbudgeted.retry(|| op_flaky(black_box(INPUT)))).ok(),
    );

    // The same policy reporting to the global observer (what a policy without
    // `with_observer` does once the health monitor is installed).
    selfheal::observe::set_global(noop_observer());
    let global = Policy::default()
        .with_backoff(Backoff::immediate())
        .with_budget(Arc::new(Budget::new(20, 1.0).expect("valid budget")));
    bench.add(
        CASE,
        "selfheal Policy::retry, global observer",
        Role::Info,
        failed_once,
        move || block_on(global.retry(|| op_flaky(black_box(INPUT)))).ok(),
    );
    // The budget's own cost in this case: a transient failure withdraws a
    // token, the success deposits one (two atomic read-modify-writes).
    let budget = Arc::new(Budget::new(20, 1.0).expect("valid budget"));
    bench.add(
        CASE,
        "Budget::withdraw + Budget::deposit alone",
        Role::Info,
        |allowed| *allowed,
        move || {
            let allowed = budget.withdraw();
            budget.deposit();
            allowed
        },
    );
    let layer = selfheal::retry::RetryLayer::new(policy);
    let mut layered_svc = tower::Layer::layer(&layer, tower::service_fn(op_flaky));
    bench.add(
        CASE,
        "selfheal RetryLayer (tower middleware)",
        Role::Info,
        failed_once,
        move || block_on(tower_call(&mut layered_svc, black_box(INPUT))).ok(),
    );

    let mut tower_svc = tower::retry::Retry::new(
        TowerAttempts { retries_left: 2 },
        tower::service_fn(op_flaky),
    );
    bench.add(CASE, "tower retry", Role::Peer, failed_once, move || {
        block_on(tower_call(&mut tower_svc, black_box(INPUT))).ok()
    });

    let (clock, driver) = seatbelt_clock();
    let seatbelt_svc = seatbelt_retry(&clock, op_flaky);
    bench.add(CASE, "seatbelt retry", Role::Peer, failed_once, move || {
        let _keep = &driver;
        block_on(layered::Service::execute(&seatbelt_svc, black_box(INPUT))).ok()
    });

    // backon and tower-resilience sleep through tokio even for a zero delay,
    // which waits for the timer's next 1 ms tick: they need a runtime.
    let rt = Rc::new(current_thread_runtime());
    let backoff = backon::ConstantBuilder::new()
        .with_delay(Duration::ZERO)
        .with_max_times(2);
    let runtime = rt.clone();
    bench.add(
        CASE,
        "backon (tokio runtime)",
        Role::Peer,
        failed_once,
        move || {
            use backon::Retryable;
            runtime
                .block_on((|| op_flaky(black_box(INPUT))).retry(backoff))
                .ok()
        },
    );
    bench.add(
        CASE,
        "backon, no-op sleeper (not its default)",
        Role::Info,
        failed_once,
        move || {
            use backon::Retryable;
            block_on(
                (|| op_flaky(black_box(INPUT)))
                    .retry(backoff)
                    .sleep(|_| ready(())),
            )
            .ok()
        },
    );

    let mut tr_svc = tower_resilience_retry(tower::service_fn(op_flaky));
    bench.add(
        CASE,
        "tower-resilience retry (tokio runtime)",
        Role::Peer,
        failed_once,
        move || rt.block_on(tower_call(&mut tr_svc, black_box(INPUT))).ok(),
    );
}

fn case_c_breaker(bench: &mut Bench) {
    const CASE: &str = "c_breaker";

    bench.add(CASE, "direct call (reference)", Role::Info, is_42, || {
        block_on(op_ok(black_box(INPUT))).ok()
    });

    // selfheal, in both trip modes, observer attached. Failure-ratio mode
    // (the default) reads the clock once per recorded outcome: the clock rows
    // below give that read's cost on its own.
    let ratio = Breaker::builder("bench")
        .with_observer(noop_observer())
        .build()
        .expect("valid breaker");
    let consecutive = Breaker::builder("bench")
        .with_consecutive_failures(5)
        .with_observer(noop_observer())
        .build()
        .expect("valid breaker");
    for (mode, breaker) in [("failure ratio", ratio), ("consecutive", consecutive)] {
        let b = breaker.clone();
        bench.add(
            CASE,
            &format!("selfheal try_acquire + success ({mode})"),
            Role::Selfheal,
            |p| *p,
            move || match b.try_acquire() {
                Ok(permit) => {
                    permit.success();
                    true
                }
                Err(_) => false,
            },
        );
        bench.add(
            CASE,
            &format!("selfheal call(op) ({mode})"),
            Role::Selfheal,
            is_42,
            move || block_on(breaker.call(|| op_ok(black_box(INPUT)))).ok(),
        );
    }
    bench.add(
        CASE,
        "tokio::time::Instant::now()",
        Role::Info,
        |_| true,
        tokio::time::Instant::now,
    );
    // The clock read as the ratio mode does it: nanoseconds since creation.
    let created = tokio::time::Instant::now();
    bench.add(
        CASE,
        "tokio Instant::now() - created, as nanos",
        Role::Info,
        |_| true,
        move || {
            tokio::time::Instant::now()
                .saturating_duration_since(created)
                .as_nanos() as u64
        },
    );
    bench.add(
        CASE,
        "std::time::Instant::now()",
        Role::Info,
        |_| true,
        Instant::now,
    );

    // failsafe: permission, then the success, on its state machine.
    let failsafe_default = failsafe::Config::new().build();
    bench.add(
        CASE,
        "failsafe (default policy)",
        Role::Peer,
        |p| *p,
        move || {
            let permitted = failsafe_default.is_call_permitted();
            if permitted {
                failsafe_default.on_success();
            }
            permitted
        },
    );
    let failsafe_consecutive = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(30)),
        ))
        .build();
    bench.add(
        CASE,
        "failsafe (consecutive failures)",
        Role::Peer,
        |p| *p,
        move || {
            let permitted = failsafe_consecutive.is_call_permitted();
            if permitted {
                failsafe_consecutive.on_success();
            }
            permitted
        },
    );

    // seatbelt: its breaker only exists as a middleware around an operation.
    let (clock, driver) = seatbelt_clock();
    let context = seatbelt::ResilienceContext::<u64, Result<u64, Flake>>::new(&clock);
    let layer = seatbelt::breaker::Breaker::layer("bench", &context)
        .recovery_with(|out: &Result<u64, Flake>, _| seatbelt_recovery(out))
        .rejected_input_error(|_, _| Flake);
    let seatbelt_svc = layered::Layer::layer(&layer, layered::Execute::new(op_ok));
    bench.add(CASE, "seatbelt breaker", Role::Peer, is_42, move || {
        let _keep = &driver;
        block_on(layered::Service::execute(&seatbelt_svc, black_box(INPUT))).ok()
    });

    // tower-resilience: a tower middleware (poll_ready checks the circuit).
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .expect("valid breaker");
    let mut tr_svc = tower::Layer::layer(&layer, tower::service_fn(op_ok));
    bench.add(
        CASE,
        "tower-resilience breaker (sliding window)",
        Role::Peer,
        is_42,
        move || block_on(tower_call(&mut tr_svc, black_box(INPUT))).ok(),
    );
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .expect("valid breaker");
    let mut tr_consecutive = tower::Layer::layer(&layer, tower::service_fn(op_ok));
    bench.add(
        CASE,
        "tower-resilience breaker (consecutive)",
        Role::Peer,
        is_42,
        move || block_on(tower_call(&mut tr_consecutive, black_box(INPUT))).ok(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (and
    // criterion then runs each benchmark once, as a test).
    let benchmarking = flag("--bench") && !flag("--test") && !flag("--list");
    let table = benchmarking && !flag("--profile-time");
    let table_only = std::env::var_os("SELFHEAL_BENCH_TABLE_ONLY").is_some();

    let mut bench = Bench {
        filter: args.iter().find(|a| !a.starts_with('-')).cloned(),
        contenders: Vec::new(),
    };
    case_a_success(&mut bench);
    case_b_fail_once(&mut bench);
    case_c_breaker(&mut bench);

    if !table_only {
        let mut criterion = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(50)
            .configure_from_args();
        bench.run_criterion(&mut criterion);
        criterion.final_summary();
    }
    if table {
        let rows = bench.run_table();
        print_table(&rows);
    }
}
