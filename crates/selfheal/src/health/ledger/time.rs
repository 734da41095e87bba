//! The ledger's clock and the little calendar it needs.
//!
//! One clock, tokio's: the wall clock is read once, when the ledger is
//! built, and the ledger's time is that reading plus tokio's elapsed time,
//! so that tests under paused time move it like everything else. Every
//! function that depends on the time takes it as an argument below the
//! public `_at` forms.

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct Clock {
    unix_origin_ms: i64,
    origin: Instant,
}

impl Clock {
    pub(super) fn new(unix_origin_ms: Option<i64>) -> Self {
        Self {
            unix_origin_ms: unix_origin_ms.unwrap_or_else(crate::db::unix_ms),
            origin: Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.unix_origin_ms + self.origin.elapsed().as_millis().min(i64::MAX as u128 / 2) as i64
    }
}

/// This machine's name: `$HOSTNAME`, the kernel's, or `unknown`.
pub(super) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .map_or_else(
            || "unknown".to_owned(),
            |h| crate::health::truncate(&h, 100),
        )
}

/// `floor(ms / step) * step`, for negative times too.
pub(super) fn floor(ms: i64, step: i64) -> i64 {
    ms.div_euclid(step) * step
}

/// `YYYY-MM-DD` of a Unix time (ms), UTC.
pub(super) fn date(ms: i64) -> String {
    let (year, month, day) = crate::civil::from_days(ms.div_euclid(86_400_000));
    format!("{year:04}-{month:02}-{day:02}")
}

/// `YYYY-MM-DD HH:MM` UTC.
pub(super) fn date_time(ms: i64) -> String {
    let minutes = ms.div_euclid(60_000).rem_euclid(1440);
    format!("{} {:02}:{:02}", date(ms), minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date_time(1_767_225_600_000 + 3_660_000), "2026-01-01 01:01");
        assert_eq!(floor(-1, 10), -10);
    }
}
