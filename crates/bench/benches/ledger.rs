//! Health ledger benchmark: `cargo bench -p selfheal-bench --bench ledger`.
//!
//! Prints one table, measured in this run (medians of 5 runs; the record
//! path: of 9 runs, interleaved):
//!
//! - the record path of a monitor alone and of one with a started ledger
//!   (the ledger must not move it: it only reads closed buckets);
//! - the cost of flushing one closed bucket with 1,000 fingerprints, end to
//!   end (copy out of the rings, one transaction): SQLite (a file, WAL) and
//!   PostgreSQL (`SELFHEAL_TEST_POSTGRES_URL`, a fresh schema; skipped
//!   without it);
//! - the dashboard's reads with 30 days × 1,000 fingerprints stored: the
//!   30-day review (history, marks, retries), the 24 h history and the fleet
//!   view (last hour of minute rows).

use std::fmt::Write as _;
use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use selfheal::health::Monitor;
use selfheal::health::ledger::{BucketRecord, DAY_MS, HOUR_MS, Ledger, LedgerPool};

const FINGERPRINTS: usize = 1000;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Millions of record_error calls per second on one thread, one run.
fn record_rate(monitor: &Monitor) -> f64 {
    let n = 5_000_000u64;
    let start = Instant::now();
    for _ in 0..n {
        monitor.record_error(
            black_box("OperationalError"),
            black_box("save_progress"),
            &"database is locked",
        );
    }
    n as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn monitor(width: Duration) -> Monitor {
    Monitor::builder()
        .with_global(false)
        .with_bucket_width(width)
        .with_buckets(600)
        .with_max_fingerprints(2 * FINGERPRINTS)
        .with_rules(Vec::new())
        .start()
        .unwrap()
}

async fn sqlite_pool() -> (LedgerPool, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("selfheal-ledger-bench-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    (
        selfheal::db::sqlite::open_pool(&url).await.unwrap().into(),
        dir,
    )
}

async fn postgres_pool() -> Option<LedgerPool> {
    let url = std::env::var("SELFHEAL_TEST_POSTGRES_URL").ok()?;
    let base = sqlx::postgres::PgConnectOptions::from_str(&url).ok()?;
    let admin = sqlx::PgPool::connect_with(base.clone()).await.ok()?;
    let schema = format!("ledger_bench_{:08x}", fastrand::u32(..));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .ok()?;
    admin.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(base.options([("search_path", schema.as_str())]))
        .await
        .ok()?;
    Some(pool.into())
}

/// Milliseconds to flush one closed bucket of 1,000 fingerprints (copy and
/// write), median of 5.
async fn flush_cost(pool: LedgerPool) -> f64 {
    let width = Duration::from_millis(50);
    let monitor = monitor(width);
    let ledger = Ledger::builder(pool, &monitor)
        .with_fleet_alerts(false)
        .build()
        .unwrap();
    ledger.install().await.unwrap();
    let ops: Vec<String> = (0..FINGERPRINTS).map(|i| format!("op{i}")).collect();
    assert!(ledger.flush().await);
    let mut runs = Vec::new();
    for _ in 0..6 {
        for op in &ops {
            monitor.record_error("Timeout", op, &"timed out");
        }
        tokio::time::sleep(width + Duration::from_millis(5)).await;
        let start = Instant::now();
        assert!(ledger.flush().await);
        runs.push(start.elapsed().as_secs_f64() * 1e3);
    }
    runs.remove(0); // the first run creates every fingerprint row
    median(runs)
}

/// Fills 30 days × 1,000 fingerprints (a day row each), the last 24 hours
/// (hour rows) and the last hour (minute rows); then times the reads.
async fn dashboard_reads(pool: LedgerPool) -> (f64, f64, f64, f64) {
    let monitor = Monitor::builder().with_global(false).build().unwrap();
    let ledger = Ledger::builder(pool, &monitor)
        .with_instance("bench")
        .build()
        .unwrap();
    ledger.install().await.unwrap();
    let now = ledger.now_ms();
    let bucket = |start: i64| {
        let mut b = BucketRecord::new(start).with_requests(1000, 10);
        for i in 0..FINGERPRINTS {
            b = b.with_error(
                "Timeout",
                &format!("op{i}"),
                1 + (i % 7) as u64,
                "timed out",
            );
        }
        b.with_attempts("send_email", "recovered", "", 2, 30, 30_000)
            .with_attempts("send_email", "gave_up", "max_attempts", 4, 1, 0)
    };
    let fill = Instant::now();
    let mut starts: Vec<i64> = (2..=30).rev().map(|d| now - d * DAY_MS).collect();
    starts.extend((2..=24).rev().map(|h| now - h * HOUR_MS));
    starts.extend((1..=60).rev().map(|m| now - m * 60_000));
    for start in starts {
        let start = start - start.rem_euclid(60_000);
        assert!(ledger.write_at(&bucket(start), now).await.unwrap());
    }
    let fill_secs = fill.elapsed().as_secs_f64();
    macro_rules! time5 {
        ($read:expr) => {{
            let mut runs = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                $read;
                runs.push(start.elapsed().as_secs_f64() * 1e3);
            }
            median(runs)
        }};
    }
    let review = time5!({
        let r = ledger.review_at(30, now).await.unwrap();
        assert_eq!(r.history.fingerprints.len(), FINGERPRINTS);
    });
    let day = time5!(black_box(
        ledger
            .history_at(Duration::from_secs(86_400), now)
            .await
            .unwrap()
    ));
    let fleet = time5!({
        let f = ledger.fleet_at(now).await.unwrap();
        assert_eq!(f.fingerprints.len(), FINGERPRINTS);
    });
    (review, day, fleet, fill_secs)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = String::new();
    let _ = writeln!(out, "| health ledger | figure |\n|---|---:|");
    let (alone, with_ledger) = rt.block_on(async {
        let plain = monitor(Duration::from_secs(60));
        let (pool, _dir) = sqlite_pool().await;
        let m = monitor(Duration::from_secs(60));
        let ledger = Ledger::builder(pool, &m).build().unwrap();
        ledger.install().await.unwrap();
        let worker = ledger.start();
        // Interleaved, so that the machine's drift hits both alike.
        let (mut alone, mut with) = (Vec::new(), Vec::new());
        for _ in 0..9 {
            alone.push(record_rate(&plain));
            with.push(record_rate(&m));
        }
        let _ = worker.shutdown().await;
        (median(alone), median(with))
    });
    let _ = writeln!(
        out,
        "| record_error, monitor alone (1 thread) | {alone:.1} M/s |"
    );
    let _ = writeln!(
        out,
        "| record_error, monitor with a started ledger (1 thread) | {with_ledger:.1} M/s |"
    );
    let mut backends: Vec<(&str, LedgerPool)> = Vec::new();
    let _dir = rt.block_on(async {
        let (pool, dir) = sqlite_pool().await;
        backends.push(("SQLite", pool));
        if let Some(pool) = postgres_pool().await {
            backends.push(("PostgreSQL", pool));
        } else {
            eprintln!("SELFHEAL_TEST_POSTGRES_URL not set: PostgreSQL rows skipped");
        }
        dir
    });
    for (name, pool) in backends {
        let flush = rt.block_on(flush_cost(pool.clone()));
        let _ = writeln!(
            out,
            "| flush of one bucket, {FINGERPRINTS} fingerprints, {name} | {flush:.1} ms |"
        );
        let (review, day, fleet, fill) = rt.block_on(dashboard_reads(pool));
        let _ = writeln!(
            out,
            "| 30-day review (history + marks + retries), 30 d × {FINGERPRINTS} fingerprints, {name} | {review:.1} ms |"
        );
        let _ = writeln!(out, "| 24 h history, {name} | {day:.1} ms |");
        let _ = writeln!(
            out,
            "| fleet view (last hour, minute rows), {name} | {fleet:.1} ms |"
        );
        let _ = writeln!(
            out,
            "| (filling 112 buckets × {FINGERPRINTS} fingerprints, {name}) | {fill:.1} s |"
        );
    }
    println!("{out}");
}
