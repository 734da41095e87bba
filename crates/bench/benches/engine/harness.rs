//! The harness: contenders, timing, allocation counts, the table and its verdicts.

use super::*;

// ---------------------------------------------------------------------------
// Measurement and the summary table
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
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
pub(crate) const ROUNDS: usize = 9;

pub(crate) struct Row {
    pub(crate) case: &'static str,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) median_ns: f64,
    pub(crate) allocs_per_call: f64,
}

/// Median ns/call over warm batches of `f`, each batch at least ~100 µs
/// long, for about `window`.
pub(crate) fn median_ns<R>(f: &mut impl FnMut() -> R, window: Duration) -> f64 {
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
pub(crate) fn allocs_per_call<R>(f: &mut impl FnMut() -> R, calls: u64) -> f64 {
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
pub(crate) trait Contender {
    fn case(&self) -> &'static str;
    fn name(&self) -> &str;
    fn role(&self) -> Role;
    fn check(&mut self);
    fn criterion(&mut self, group: &mut BenchmarkGroup<'_, WallTime>);
    fn median_ns(&mut self, window: Duration) -> f64;
    fn allocs_per_call(&mut self, calls: u64) -> f64;
}

pub(crate) struct Entry<R, F, C> {
    pub(crate) case: &'static str,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) f: F,
    pub(crate) check: C,
    pub(crate) _output: std::marker::PhantomData<fn() -> R>,
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

pub(crate) struct Bench {
    pub(crate) filter: Option<String>,
    pub(crate) contenders: Vec<Box<dyn Contender>>,
}

impl Bench {
    /// Registers a contender (unless the command-line filter excludes it).
    pub(crate) fn add<R: 'static>(
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

    pub(crate) fn cases(&self) -> Vec<&'static str> {
        let mut cases: Vec<&'static str> = self.contenders.iter().map(|c| c.case()).collect();
        cases.dedup();
        cases
    }

    pub(crate) fn run_criterion(&mut self, criterion: &mut Criterion) {
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
    pub(crate) fn run_table(&mut self) -> Vec<Row> {
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

pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

pub(crate) fn print_table(rows: &[Row]) {
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
pub(crate) fn verdict(case: &str, rows: &[&Row]) -> Vec<String> {
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
