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

mod cases;
mod harness;
mod peers;

use cases::*;
use harness::*;
use peers::*;

// ---------------------------------------------------------------------------
// Allocation counting
// ---------------------------------------------------------------------------

#[path = "../../../selfheal/tests/support/counting_alloc.rs"]
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
