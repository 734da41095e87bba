//! Bounded memory: a million distinct fingerprints must not grow the monitor.
//!
//! This test has its own counting global allocator (hence its own file), and
//! measures live heap bytes before and after the input.
#![allow(unsafe_code)] // the counting allocator below

use std::time::Duration;

use selfheal::health::{Monitor, OTHER};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

fn live() -> isize {
    counting_alloc::live_bytes()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_million_distinct_fingerprints_keep_memory_flat() {
    counting_alloc::start();
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let before = live();
    // The first 1,000 fill the table (the cap) ...
    for i in 0..1_000u32 {
        monitor.record_error("Error", &format!("/students/{i}/progress"), &"boom");
    }
    let at_cap = live();
    // ... the next 999,000 (all distinct) count under "other".
    let mut route = String::new();
    for i in 1_000..1_000_000u32 {
        use std::fmt::Write;
        route.clear();
        write!(route, "/students/{i}/progress").unwrap();
        monitor.record_error("Error", &route, &"boom");
        if i % 100_000 == 0 {
            tokio::time::advance(Duration::from_secs(60)).await;
        }
    }
    let after = live();
    let table = at_cap - before;
    let growth = after - at_cap;
    println!(
        "table of 1,000 fingerprints: {:.2} MiB; growth over the next 999,000 distinct ones: {} bytes",
        table as f64 / (1 << 20) as f64,
        growth
    );
    assert!(table < 4 << 20, "1,000 fingerprints took {table} bytes");
    assert!(
        growth.abs() < 64 << 10,
        "memory grew by {growth} bytes past the cap"
    );

    assert_eq!(monitor.fingerprint_count(), 1_000);
    let report = monitor.report(Duration::from_secs(3600));
    assert_eq!(report.total_errors, 1_000_000);
    let other = report
        .fingerprints
        .iter()
        .find(|f| f.fingerprint == OTHER)
        .unwrap();
    assert_eq!(other.count, 999_000);
}
