//! Issue 15's hot paths, side by side with what they sit beside today:
//! `cargo bench -p selfheal-bench --bench adaptive`.
//!
//! - **throttle**: the adaptive throttle's success path (ask, call, record an
//!   accept) against calling the operation directly and against today's
//!   circuit breaker's closed path (failure-ratio mode: acquire, record a
//!   success) and the retry budget's deposit; and against the previous
//!   success path, a clock read per record (`with_exact_clock(true)`, the
//!   same code with the coarse clock off). Target: ≤ 30 ns, 0 allocations.
//! - **limit**: one request through `HealLayer` with an adaptive concurrency
//!   limit, against the same layer without one. Target: ≤ 100 ns added.
//!
//! Criterion runs each contender; then one table is printed, measured in
//! this run: the lowest of 7 rounds of the median of warm batches
//! (contenders interleaved: the machine is shared), ratios to the baseline,
//! allocations per call (a counting allocator). `SELFHEAL_BENCH_TABLE_ONLY=1`
//! skips criterion.
#![allow(unsafe_code)] // the counting allocator below

use std::future::{Future, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use criterion::Criterion;
use selfheal::breaker::Breaker;
use selfheal::health::Monitor;
use selfheal::retry::Budget;
use selfheal::throttle::AdaptiveThrottle;
use selfheal::web::{AdaptiveLimit, HealLayer};
use tower::{Layer, Service, service_fn};

#[path = "../../selfheal/tests/support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

#[inline(always)]
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..8 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("block_on: still pending");
}

/// Nanoseconds per call: the lowest of `rounds` medians of 21 batches.
fn time(f: &mut dyn FnMut(), calls: u64) -> f64 {
    let mut medians = Vec::new();
    for _ in 0..7 {
        let mut batches: Vec<f64> = (0..21)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    f();
                }
                start.elapsed().as_nanos() as f64 / calls as f64
            })
            .collect();
        batches.sort_by(|a, b| a.partial_cmp(b).unwrap());
        medians.push(batches[batches.len() / 2]);
    }
    medians.into_iter().fold(f64::INFINITY, f64::min)
}

fn allocs(f: &mut dyn FnMut(), calls: u64) -> f64 {
    for _ in 0..1000 {
        f();
    }
    counting_alloc::reset_allocations();
    counting_alloc::start();
    for _ in 0..calls {
        f();
    }
    counting_alloc::stop();
    counting_alloc::allocations() as f64 / calls as f64
}

struct Row {
    case: &'static str,
    name: &'static str,
    f: Box<dyn FnMut()>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();

    // ---------------------------------------------------------- throttle
    let op = || ready(Ok::<u64, &'static str>(black_box(7)));
    let throttle = AdaptiveThrottle::new("dep");
    let breaker = Breaker::new("dep");
    let budget = Budget::default();
    let (t1, t2, b1) = (throttle.clone(), throttle.clone(), breaker.clone());
    // Only `record` for the previous path: a second `throttle.call` row (the
    // same instance of the generic `call`, called from two places) makes the
    // compiler stop inlining it, which adds ~11 ns to both rows.
    let e1 = AdaptiveThrottle::builder("dep")
        .with_exact_clock(true)
        .build()
        .unwrap();

    // ---------------------------------------------------------- limit
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let inner = service_fn(|_req: Request<Body>| {
        ready(Ok::<_, std::convert::Infallible>(Response::new(
            Body::empty(),
        )))
    });
    let mut plain = HealLayer::new(monitor.clone()).layer(inner);
    let limit = AdaptiveLimit::new("bench")
        .with_limits(1000, 1000, 1000)
        .unwrap();
    let mut limited = HealLayer::new(monitor.clone())
        .with_adaptive_limit(limit)
        .layer(inner);
    let request = || {
        Request::builder()
            .uri("/dashboard")
            .body(Body::empty())
            .unwrap()
    };
    let mut rows = [
        Row {
            case: "throttle",
            name: "direct call (baseline)",
            f: Box::new(move || {
                black_box(block_on(op()).unwrap());
            }),
        },
        Row {
            case: "throttle",
            name: "one clock read (tokio Instant::now)",
            f: Box::new(move || {
                black_box(tokio::time::Instant::now());
            }),
        },
        Row {
            case: "throttle",
            name: "today: budget deposit + call",
            f: Box::new(move || {
                let v = block_on(op());
                budget.deposit();
                black_box(v.unwrap());
            }),
        },
        Row {
            case: "throttle",
            name: "today: breaker.call",
            f: Box::new(move || {
                black_box(block_on(b1.call(op)).unwrap());
            }),
        },
        Row {
            case: "throttle",
            name: "previous: admit + call + record (clock per call)",
            f: Box::new(move || {
                if e1.admit() {
                    let v = block_on(op());
                    e1.record(v.is_ok());
                    black_box(v.unwrap());
                }
            }),
        },
        Row {
            case: "throttle",
            name: "new: admit + call + record",
            f: Box::new(move || {
                if t1.admit() {
                    let v = block_on(op());
                    t1.record(v.is_ok());
                    black_box(v.unwrap());
                }
            }),
        },
        Row {
            case: "throttle",
            name: "new: throttle.call",
            f: Box::new(move || {
                black_box(block_on(t2.call(op)).unwrap());
            }),
        },
        Row {
            case: "limit",
            name: "today: HealLayer (baseline)",
            f: Box::new(move || {
                black_box(block_on(plain.call(request())).unwrap());
            }),
        },
        Row {
            case: "limit",
            name: "new: HealLayer + AdaptiveLimit",
            f: Box::new(move || {
                black_box(block_on(limited.call(request())).unwrap());
            }),
        },
    ];

    if std::env::var_os("SELFHEAL_BENCH_TABLE_ONLY").is_none() {
        let mut c = Criterion::default().configure_from_args();
        for row in rows.iter_mut() {
            let f = &mut row.f;
            c.bench_function(&format!("{}/{}", row.case, row.name), |b| b.iter(&mut *f));
        }
        c.final_summary();
    }

    let mut results = Vec::new();
    for row in rows.iter_mut() {
        let ns = time(&mut row.f, 20_000);
        let a = allocs(&mut row.f, 10_000);
        results.push((row.case, row.name, ns, a));
    }
    println!("\n| case | contender | ns/call | × baseline | added ns | allocs/call |");
    println!("| :--- | :--- | ---: | ---: | ---: | ---: |");
    for (case, name, ns, a) in &results {
        let base = results.iter().find(|r| r.0 == *case).unwrap().2;
        println!(
            "| {case} | {name} | {ns:.1} | {:.2} | {:+.1} | {a:.2} |",
            ns / base,
            ns - base
        );
    }
    let get = |n: &str| results.iter().find(|r| r.1 == n).unwrap();
    let throttle = get("new: admit + call + record");
    let previous = get("previous: admit + call + record (clock per call)");
    let direct = get("direct call (baseline)");
    println!(
        "\nthrottle success path: {:.1} ns added now, {:.1} ns with a clock read per call ({:.2}× the previous added cost)",
        throttle.2 - direct.2,
        previous.2 - direct.2,
        (throttle.2 - direct.2) / (previous.2 - direct.2),
    );
    let limited = get("new: HealLayer + AdaptiveLimit");
    let plain = get("today: HealLayer (baseline)");
    println!(
        "\ntargets: throttle success path {:.1} ns over the direct call (≤ 30 ns: {}), {:.2} allocs (0: {}); limiter adds {:.1} ns per request (≤ 100 ns: {})",
        throttle.2 - direct.2,
        if throttle.2 - direct.2 <= 30.0 {
            "met"
        } else {
            "MISSED"
        },
        throttle.3,
        if throttle.3 == 0.0 { "met" } else { "MISSED" },
        limited.2 - plain.2,
        if limited.2 - plain.2 <= 100.0 {
            "met"
        } else {
            "MISSED"
        },
    );
}
