//! Health monitor benchmark: `cargo bench -p selfheal-bench --bench health`.
//!
//! Prints one table, measured in this run, comparing the monitor with the
//! obvious port of the guide's design (`Mutex<HashMap<String, Vec<Instant>>>`,
//! pruned on read):
//!
//! - record throughput on an existing fingerprint, one thread and two threads;
//! - summary latency with a full table (1,000 fingerprints with an hour of data);
//! - live heap after 1,000,000 distinct fingerprints.
//!
//! Each timing is the median of 5 runs.
#![allow(unsafe_code)] // the counting allocator below

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use selfheal::health::Monitor;

#[path = "../../selfheal/tests/support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

/// The guide's design, ported as a Python developer would write it in Rust.
#[derive(Default)]
struct Baseline {
    errors: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Baseline {
    fn record(&self, kind: &str, operation: &str) {
        let key = format!("{kind}@{operation}");
        self.errors
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push(Instant::now());
    }

    fn summary(&self, window: Duration) -> (u64, HashMap<String, u64>) {
        let now = Instant::now();
        let mut errors = self.errors.lock().unwrap();
        let mut by_type = HashMap::new();
        let mut total = 0;
        for (key, times) in errors.iter_mut() {
            times.retain(|t| now.duration_since(*t) <= window);
            if times.is_empty() {
                continue;
            }
            let kind = key.split('@').next().unwrap_or("").to_owned();
            *by_type.entry(kind).or_insert(0) += times.len() as u64;
            total += times.len() as u64;
        }
        (total, by_type)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Events per second per thread, recording `per_thread` events on `threads` threads.
fn throughput(threads: usize, per_thread: u64, record: &(dyn Fn() + Sync)) -> f64 {
    let runs = (0..5)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            record();
                        }
                    });
                }
            });
            (threads as u64 * per_thread) as f64 / start.elapsed().as_secs_f64() / threads as f64
        })
        .collect();
    median(runs)
}

fn latency(iterations: u32, f: &dyn Fn()) -> Duration {
    let runs = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() / f64::from(iterations)
        })
        .collect();
    Duration::from_secs_f64(median(runs))
}

fn mib(bytes: isize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn main() {
    counting_alloc::start();
    // Criterion-style CLI arguments (`--bench`) are ignored.
    // A started monitor, as a service runs it: its background task keeps the
    // coarse clock the record path reads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let monitor = {
        let _entered = runtime.enter();
        Monitor::builder().with_global(false).start().unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    // Built without tasks: every record reads the clock.
    let unstarted = Monitor::builder().with_global(false).build().unwrap();
    unstarted.record_error("OperationalError", "save_progress", &"database is locked");
    let baseline = Baseline::default();
    monitor.record_error("OperationalError", "save_progress", &"database is locked");
    baseline.record("OperationalError", "save_progress");

    let n = 2_000_000;
    let ours_1 = throughput(1, n, &|| {
        monitor.record_error(
            black_box("OperationalError"),
            black_box("save_progress"),
            &"locked",
        )
    });
    let ours_2 = throughput(2, n / 2, &|| {
        monitor.record_error(
            black_box("OperationalError"),
            black_box("save_progress"),
            &"locked",
        )
    });
    let exact_1 = throughput(1, n, &|| {
        unstarted.record_error(
            black_box("OperationalError"),
            black_box("save_progress"),
            &"locked",
        )
    });
    let base_n = 200_000;
    let base_1 = throughput(1, base_n, &|| {
        baseline.record(black_box("OperationalError"), black_box("save_progress"))
    });
    let base_2 = throughput(2, base_n / 2, &|| {
        baseline.record(black_box("OperationalError"), black_box("save_progress"))
    });
    // The same monitor setup with a listener (the metrics, a store): every
    // record also hands an `Event::Error` to it. A counting listener, the
    // cheapest real one.
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listened = {
        let _entered = runtime.enter();
        Monitor::builder().with_global(false).start().unwrap()
    };
    listened.set_listener(std::sync::Arc::new({
        let heard = heard.clone();
        move |_: &selfheal::observe::Event<'_>| {
            heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }));
    std::thread::sleep(Duration::from_millis(300));
    listened.record_error("OperationalError", "save_progress", &"database is locked");
    let listened_1 = throughput(1, n, &|| {
        listened.record_error(
            black_box("OperationalError"),
            black_box("save_progress"),
            &"locked",
        )
    });
    // The way components report: an `Event::Error` through the one channel
    // (`observe::emit`: a `tracing` level check, then the monitor as an
    // observer), with the same listener.
    let emitted_1 = throughput(1, n, &|| {
        selfheal::observe::emit(
            Some(&listened),
            &selfheal::observe::Event::Error {
                operation: black_box("save_progress"),
                failure: selfheal::observe::Failure {
                    kind: black_box("OperationalError"),
                    message: &"locked",
                },
                client: None,
            },
        )
    });
    let req_1 = throughput(1, n, &|| monitor.record_request(black_box(false)));
    // The floor under every record: one read of tokio's clock.
    let clock_1 = throughput(1, n, &|| {
        black_box(tokio::time::Instant::now());
    });

    // A full table: 1,000 fingerprints with 60 events each.
    let full = Monitor::builder().with_global(false).build().unwrap();
    let full_base = Baseline::default();
    for i in 0..1_000 {
        let op = format!("route_{i}");
        for _ in 0..60 {
            full.record_error("Error", &op, &"boom");
            full_base.record("Error", &op);
        }
    }
    let window = Duration::from_secs(900);
    let ours_summary = latency(200, &|| {
        black_box(full.summary(window));
    });
    let ours_report = latency(100, &|| {
        black_box(full.report(Duration::from_secs(3600)));
    });
    let base_summary = latency(20, &|| {
        black_box(full_base.summary(window));
    });

    // Memory under 1,000,000 distinct fingerprints.
    let mut key = String::new();
    let before = counting_alloc::live_bytes();
    let m = Monitor::builder().with_global(false).build().unwrap();
    for i in 0..1_000_000u32 {
        key.clear();
        write!(key, "/students/{i}").unwrap();
        m.record_error("Error", &key, &"boom");
    }
    let ours_mem = counting_alloc::live_bytes() - before;
    drop(m);
    let before = counting_alloc::live_bytes();
    let b = Baseline::default();
    for i in 0..1_000_000u32 {
        key.clear();
        write!(key, "/students/{i}").unwrap();
        b.record("Error", &key);
    }
    let base_mem = counting_alloc::live_bytes() - before;
    drop(b);

    let m_ev = |x: f64| format!("{:.1} M events/s", x / 1e6);
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    println!();
    println!("| measure | selfheal | guide port (Mutex<HashMap<String, Vec<Instant>>>) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| record, existing fingerprint, 1 thread | {} | {} | {:.1}x |",
        m_ev(ours_1),
        m_ev(base_1),
        ours_1 / base_1
    );
    println!(
        "| record, existing fingerprint, 1 thread, monitor not started (clock read per event) | {} | {} | {:.1}x |",
        m_ev(exact_1),
        m_ev(base_1),
        exact_1 / base_1
    );
    println!(
        "| record, same fingerprint, 2 threads (per thread) | {} | {} | {:.1}x |",
        m_ev(ours_2),
        m_ev(base_2),
        ours_2 / base_2
    );
    println!(
        "| record, existing fingerprint, 1 thread, with a listener (the one channel) | {} | {} | {:.2}x of no listener |",
        m_ev(listened_1),
        m_ev(base_1),
        listened_1 / ours_1
    );
    println!(
        "| the same through `observe::emit(Event::Error)` (how components report) | {} | {} | {:.2}x of no listener |",
        m_ev(emitted_1),
        m_ev(base_1),
        emitted_1 / ours_1
    );
    println!("| record_request, 1 thread | {} | n/a | |", m_ev(req_1));
    println!(
        "| (floor) tokio::time::Instant::now(), 1 thread | {} | | |",
        m_ev(clock_1)
    );
    println!(
        "| summary, 15 min, full table (1,000 fingerprints) | {} | {} | {:.1}x faster |",
        us(ours_summary),
        us(base_summary),
        base_summary.as_secs_f64() / ours_summary.as_secs_f64()
    );
    println!(
        "| full report, 1 h, full table | {} | n/a | |",
        us(ours_report)
    );
    println!(
        "| live heap after 1,000,000 distinct fingerprints | {} | {} | {:.0}x less |",
        mib(ours_mem),
        mib(base_mem),
        base_mem as f64 / ours_mem.max(1) as f64
    );
}
