//! Writing: one bucket per transaction (exactly once per instance and
//! bucket), the heartbeat, and retention.
//!
//! Each row is added to its minute, hour and day in the same statement
//! (`ON CONFLICT … DO UPDATE SET count = count + excluded.count`): the
//! rollup is done as the data is written, so it is never behind and a late
//! bucket lands where it belongs.

use sqlx::QueryBuilder;

use super::time::floor;
use super::{BucketRecord, DAY_MS, HOUR_MS, LedgerPool, Retention};

/// Rows per multi-row `INSERT` (SQLite allows 32,766 parameters).
const CHUNK: usize = 500;

/// This instance, as its heartbeat writes it.
#[derive(Debug)]
pub(super) struct Beat<'a> {
    pub(super) instance: &'a str,
    pub(super) version: &'a str,
    pub(super) host: &'a str,
    pub(super) started_ms: i64,
    pub(super) heartbeat_ms: i64,
    pub(super) status: &'a str,
    pub(super) reasons: &'a str,
    pub(super) dropped: u64,
    /// Set when the instance stops cleanly.
    pub(super) stopped: bool,
}

/// Registers or refreshes the instance row (its heartbeat).
pub(super) async fn heartbeat(
    pool: &LedgerPool,
    beat: &Beat<'_>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO selfheal_health_instances \
         (instance_id, version, host, started_ms, last_seen_ms, heartbeat_ms, status, reasons, \
          dropped, stopped_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (instance_id) DO UPDATE SET version = excluded.version, \
         host = excluded.host, last_seen_ms = excluded.last_seen_ms, \
         heartbeat_ms = excluded.heartbeat_ms, status = excluded.status, \
         reasons = excluded.reasons, dropped = excluded.dropped, \
         stopped_ms = excluded.stopped_ms";
    let stopped = if beat.stopped { now_ms } else { 0 };
    on_pool!(pool, p => {
        sqlx::query(sql)
            .bind(beat.instance)
            .bind(beat.version)
            .bind(beat.host)
            .bind(beat.started_ms)
            .bind(now_ms)
            .bind(beat.heartbeat_ms)
            .bind(beat.status)
            .bind(beat.reasons)
            .bind(i64::try_from(beat.dropped).unwrap_or(i64::MAX))
            .bind(stopped)
            .execute(p)
            .await
            .map(drop)
    })
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The three rows a bucket adds to: (scale, bucket start).
fn scales(start_ms: i64, width_ms: i64) -> [(i64, i64); 3] {
    [
        (width_ms, start_ms),
        (HOUR_MS, floor(start_ms, HOUR_MS)),
        (DAY_MS, floor(start_ms, DAY_MS)),
    ]
}

/// Writes `bucket` for `instance` unless it was written already (the
/// instance's `flushed_until` mark, moved in the same transaction);
/// returns whether it wrote. The instance row must exist ([`heartbeat`]).
pub(super) async fn write_bucket(
    pool: &LedgerPool,
    instance: &str,
    version: &str,
    width_ms: i64,
    bucket: &BucketRecord,
) -> Result<bool, sqlx::Error> {
    let at = scales(bucket.start_ms, width_ms);
    on_pool!(pool, p => {
        let mut tx = p.begin().await?;
        let moved = sqlx::query(
            "UPDATE selfheal_health_instances SET flushed_until = $1 \
             WHERE instance_id = $2 AND flushed_until < $1",
        )
        .bind(bucket.start_ms)
        .bind(instance)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if bucket.requests > 0 || bucket.failed > 0 {
            let mut q = QueryBuilder::new(
                "INSERT INTO selfheal_health_requests \
                 (instance_id, scale, bucket_ms, requests, failed) ",
            );
            q.push_values(at, |mut row, (scale, start)| {
                row.push_bind(instance)
                    .push_bind(scale)
                    .push_bind(start)
                    .push_bind(n(bucket.requests))
                    .push_bind(n(bucket.failed));
            });
            q.push(
                " ON CONFLICT (instance_id, scale, bucket_ms) DO UPDATE SET \
                 requests = selfheal_health_requests.requests + excluded.requests, \
                 failed = selfheal_health_requests.failed + excluded.failed",
            );
            q.build().execute(&mut *tx).await?;
        }
        let errors: Vec<_> = bucket
            .errors
            .iter()
            .flat_map(|e| at.iter().map(move |s| (e, *s)))
            .collect();
        for chunk in errors.chunks(CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO selfheal_health_errors \
                 (instance_id, scale, bucket_ms, fingerprint, count, counted) ",
            );
            q.push_values(chunk, |mut row, (e, (scale, start))| {
                row.push_bind(instance)
                    .push_bind(*scale)
                    .push_bind(*start)
                    .push_bind(e.fingerprint.as_str())
                    .push_bind(n(e.count))
                    .push_bind(n(e.counted));
            });
            q.push(
                " ON CONFLICT (instance_id, scale, bucket_ms, fingerprint) DO UPDATE SET \
                 count = selfheal_health_errors.count + excluded.count, \
                 counted = selfheal_health_errors.counted + excluded.counted",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in bucket.errors.chunks(CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO selfheal_health_fingerprints \
                 (fingerprint, kind, operation, sample, first_seen_ms, last_seen_ms, \
                  first_version) ",
            );
            q.push_values(chunk, |mut row, e| {
                row.push_bind(e.fingerprint.as_str())
                    .push_bind(e.kind.as_str())
                    .push_bind(e.operation.as_str())
                    .push_bind(crate::redact::redact(&e.sample))
                    .push_bind(bucket.start_ms)
                    .push_bind(bucket.start_ms)
                    .push_bind(version);
            });
            q.push(
                " ON CONFLICT (fingerprint) DO UPDATE SET \
                 last_seen_ms = CASE WHEN excluded.last_seen_ms > \
                 selfheal_health_fingerprints.last_seen_ms THEN excluded.last_seen_ms \
                 ELSE selfheal_health_fingerprints.last_seen_ms END, \
                 first_seen_ms = CASE WHEN excluded.first_seen_ms < \
                 selfheal_health_fingerprints.first_seen_ms THEN excluded.first_seen_ms \
                 ELSE selfheal_health_fingerprints.first_seen_ms END",
            );
            q.build().execute(&mut *tx).await?;
        }
        if !bucket.heals.is_empty() {
            let heals: Vec<_> = bucket
                .heals
                .iter()
                .flat_map(|h| at.iter().map(move |s| (h, *s)))
                .collect();
            let mut q = QueryBuilder::new(
                "INSERT INTO selfheal_health_heals (instance_id, scale, bucket_ms, kind, count) ",
            );
            q.push_values(heals, |mut row, ((kind, count), (scale, start))| {
                row.push_bind(instance)
                    .push_bind(scale)
                    .push_bind(start)
                    .push_bind(kind.as_str())
                    .push_bind(n(*count));
            });
            q.push(
                " ON CONFLICT (instance_id, scale, bucket_ms, kind) DO UPDATE SET \
                 count = selfheal_health_heals.count + excluded.count",
            );
            q.build().execute(&mut *tx).await?;
        }
        let attempts: Vec<_> = bucket
            .attempts
            .iter()
            .flat_map(|a| at.iter().map(move |s| (a, *s)))
            .collect();
        for chunk in attempts.chunks(CHUNK) {
            let mut q = QueryBuilder::new(
                "INSERT INTO selfheal_health_attempts \
                 (instance_id, scale, bucket_ms, operation, outcome, cause, attempt, count, \
                  waited_ms) ",
            );
            q.push_values(chunk, |mut row, (a, (scale, start))| {
                row.push_bind(instance)
                    .push_bind(*scale)
                    .push_bind(*start)
                    .push_bind(a.operation.as_str())
                    .push_bind(a.outcome.as_str())
                    .push_bind(a.cause.as_str())
                    .push_bind(i64::from(a.attempt))
                    .push_bind(n(a.count))
                    .push_bind(n(a.waited_ms));
            });
            q.push(
                " ON CONFLICT (instance_id, scale, bucket_ms, operation, outcome, cause, attempt) \
                 DO UPDATE SET count = selfheal_health_attempts.count + excluded.count, \
                 waited_ms = selfheal_health_attempts.waited_ms + excluded.waited_ms",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    })
}

/// Deletes rows past each resolution's retention; returns how many.
pub(super) async fn prune(
    pool: &LedgerPool,
    width_ms: i64,
    retention: &Retention,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
    let cuts = [
        (width_ms, now_ms - ms(retention.minutes)),
        (HOUR_MS, now_ms - ms(retention.hours)),
        (DAY_MS, now_ms - ms(retention.days)),
    ];
    let mut deleted = 0;
    for table in [
        "selfheal_health_errors",
        "selfheal_health_requests",
        "selfheal_health_heals",
        "selfheal_health_attempts",
    ] {
        let sql = format!("DELETE FROM {table} WHERE scale = $1 AND bucket_ms < $2");
        for (scale, before) in cuts {
            deleted += on_pool!(pool, p => sqlx::query(&sql)
                .bind(scale)
                .bind(before)
                .execute(p)
                .await?
                .rows_affected());
        }
    }
    // Instances and fingerprints outlive the counts by the longest retention.
    let before = now_ms - ms(retention.days);
    for sql in [
        "DELETE FROM selfheal_health_instances WHERE last_seen_ms < $1",
        "DELETE FROM selfheal_health_fingerprints WHERE last_seen_ms < $1",
    ] {
        deleted += on_pool!(pool, p => sqlx::query(sql)
            .bind(before)
            .execute(p)
            .await?
            .rows_affected());
    }
    Ok(deleted)
}
