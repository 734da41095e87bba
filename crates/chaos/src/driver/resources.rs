//! What a run cost the process that ran the app: peak resident memory and
//! CPU time, read from `/proc` (Linux).
//!
//! Why in the report: a leak or an unbounded queue does not show in success
//! rates until it is too late; as a number per run, heal on vs off, it
//! shows at once. The app runs in this process, so the figures include the
//! harness's own virtual users (the same in both modes): compare the two
//! runs, not the absolute value with a production server's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Samples the resident set size while a run lasts.
pub(super) struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    cpu_at_start: Option<Duration>,
    task: JoinHandle<()>,
}

/// What a run cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// Highest resident set size seen (sampled every 100 ms), in bytes.
    pub peak_rss_bytes: u64,
    /// CPU time (user + system) spent during the run.
    pub cpu: Duration,
}

impl Sampler {
    /// Starts sampling.
    pub(super) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes().unwrap_or(0)));
        let task = tokio::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes() {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            stop,
            peak,
            cpu_at_start: cpu_time(),
            task,
        }
    }

    /// Stops sampling and returns what the run cost.
    pub(super) async fn stop(self) -> Resources {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        if let Some(rss) = rss_bytes() {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        Resources {
            peak_rss_bytes: self.peak.load(Ordering::Relaxed),
            cpu: match (self.cpu_at_start, cpu_time()) {
                (Some(start), Some(end)) => end.saturating_sub(start),
                _ => Duration::ZERO,
            },
        }
    }
}

/// `VmRSS` of this process, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux (fixed by the ABI for /proc).
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_that_allocates_shows_in_the_peak_and_cpu_is_counted() {
        let sampler = Sampler::start();
        let before = rss_bytes().unwrap();
        // 64 MiB touched, held across a sample, then freed.
        let mut block = vec![1_u8; 64 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = (i % 251) as u8;
        }
        let mut spin = 0_u64;
        let until = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < until {
            spin = spin.wrapping_add(block[spin as usize % block.len()] as u64);
        }
        drop(block);
        let cost = sampler.stop().await;
        assert!(
            cost.peak_rss_bytes >= before + (48 << 20),
            "peak {} vs before {before} (spin {spin})",
            cost.peak_rss_bytes
        );
        assert!(cost.cpu >= Duration::from_millis(100), "{:?}", cost.cpu);
    }
}
