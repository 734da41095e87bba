//! The view model of the HTML page: a [`Report`] turned into the rows, bars
//! and words the `selfheal/health.html` template shows.
//!
//! All formatting for people (durations as "3 min ago", percentages, the
//! sparkline's geometry) happens here, so the template stays a plain
//! layout and the handlers stay plain HTTP.

use std::time::SystemTime;

use askama::Template;

use super::Dashboard;
use super::dates::{rfc3339, unix_secs};
use crate::health::Report;

/// A row of a two-column table.
struct Row {
    name: String,
    value: String,
}

struct FingerprintRow {
    fingerprint: String,
    count: u64,
    last_seen: String,
    sample: String,
}

struct HealRow {
    kind: &'static str,
    operation: String,
    ago: String,
}

struct CheckRow {
    name: String,
    status: &'static str,
    critical: bool,
    message: String,
    took: String,
}

struct AlertRow {
    rule: String,
    severity: &'static str,
    state: &'static str,
    fingerprint: String,
    summary: String,
    at: String,
}

/// One bar of the sparkline (SVG units).
struct Bar {
    x: u32,
    y: u32,
    height: u32,
    count: u64,
    minutes_ago: u64,
}

/// The health page: everything its template shows, ready to print.
#[derive(Template)]
#[template(path = "selfheal/health.html")]
pub(super) struct HealthPage {
    service: String,
    refresh_secs: u64,
    status: &'static str,
    reasons: Vec<String>,
    window_key: &'static str,
    time_window: String,
    total_errors: u64,
    requests: u64,
    failed_requests: u64,
    error_rate: String,
    errors_by_type: Vec<Row>,
    fingerprints: Vec<FingerprintRow>,
    bars: Vec<Bar>,
    bar_width: u32,
    chart_width: u32,
    max_per_bucket: u64,
    bucket_label: String,
    heals: Vec<Row>,
    recent_heals: Vec<HealRow>,
    breakers: Vec<Row>,
    limiters: Vec<Row>,
    notes: Vec<String>,
    /// The health ledger's state, in words, when one is attached.
    ledger: Option<String>,
    throttle_rejections: u64,
    retries: u64,
    budget_refusals: u64,
    breaker_rejections: u64,
    throttled: u64,
    checks: Vec<CheckRow>,
    active_alerts: Vec<String>,
    alerts: Vec<AlertRow>,
    generated: String,
    /// The sign-out form's token, when a `CsrfLayer` runs.
    csrf: Option<String>,
    /// The fleet and its history, with a ledger.
    pub(super) fleet: Option<super::fleet::FleetView>,
}

const CHART_HEIGHT: u32 = 60;

impl HealthPage {
    /// The page of `report`, asked for with the window `window_key`.
    pub(super) fn new(
        dashboard: &Dashboard,
        report: &Report,
        window_key: &'static str,
        csrf: Option<&crate::web::csrf::CsrfToken>,
    ) -> Self {
        let buckets = &report.errors_per_bucket;
        let max = buckets.iter().copied().max().unwrap_or(0);
        let bar_width = 6;
        let bars = buckets
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let height = if max == 0 {
                    0
                } else {
                    ((count * u64::from(CHART_HEIGHT)).div_ceil(max)) as u32
                };
                Bar {
                    x: i as u32 * bar_width,
                    y: CHART_HEIGHT - height,
                    height,
                    count,
                    minutes_ago: ((buckets.len() - 1 - i) as u64 * report.bucket_secs) / 60,
                }
            })
            .collect::<Vec<_>>();
        Self {
            service: dashboard.service.clone(),
            refresh_secs: dashboard.refresh.as_secs().max(1),
            status: report.status.as_str(),
            reasons: report.reasons.clone(),
            window_key,
            time_window: report.time_window.clone(),
            total_errors: report.total_errors,
            requests: report.requests.total,
            failed_requests: report.requests.failed,
            error_rate: format!("{:.1}%", report.requests.error_rate * 100.0),
            errors_by_type: report
                .errors_by_type
                .iter()
                .map(|(kind, n)| Row {
                    name: kind.clone(),
                    value: n.to_string(),
                })
                .collect(),
            fingerprints: report
                .fingerprints
                .iter()
                .map(|fp| FingerprintRow {
                    fingerprint: fp.fingerprint.clone(),
                    count: fp.count,
                    last_seen: ago(fp.last_seen_secs_ago),
                    sample: fp.sample.clone(),
                })
                .collect(),
            chart_width: (bars.len() as u32 * bar_width).max(bar_width),
            bars,
            bar_width: bar_width - 1,
            max_per_bucket: max,
            bucket_label: if report.bucket_secs == 60 {
                "minute".to_owned()
            } else {
                format!("{} s", report.bucket_secs)
            },
            heals: report
                .heals
                .iter()
                .map(|(kind, n)| Row {
                    name: kind.as_str().to_owned(),
                    value: n.to_string(),
                })
                .collect(),
            recent_heals: report
                .recent_heals
                .iter()
                .map(|h| HealRow {
                    kind: h.kind.as_str(),
                    operation: h.operation.clone(),
                    ago: ago(h.ago_secs),
                })
                .collect(),
            breakers: report
                .breakers
                .iter()
                .map(|b| Row {
                    name: b.name.clone(),
                    value: format!(
                        "{} for {}",
                        b.state,
                        ago(b.since_secs).trim_end_matches(" ago")
                    ),
                })
                .collect(),
            limiters: report
                .limiters
                .iter()
                .map(|l| Row {
                    name: l.name.clone(),
                    value: format!(
                        "limit {}, {} in flight, {} shed since start",
                        l.limit, l.in_flight, l.shed
                    ),
                })
                .collect(),
            notes: report.notes.clone(),
            ledger: report.ledger.as_ref().map(|l| {
                format!(
                    "{} buckets written, {} waiting, {} dropped{}",
                    l.flushed_buckets,
                    l.pending_buckets,
                    l.dropped_buckets,
                    if l.fleet_alerts {
                        ""
                    } else {
                        "; alerts from this instance's own view"
                    }
                )
            }),
            throttle_rejections: report.throttle_rejections,
            retries: report.retries,
            budget_refusals: report.budget_refusals,
            breaker_rejections: report.breaker_rejections,
            throttled: report.throttled,
            checks: report
                .checks
                .iter()
                .map(|c| CheckRow {
                    name: c.name.clone(),
                    status: match c.passing {
                        Some(true) => "pass",
                        Some(false) => "fail",
                        None => "pending",
                    },
                    critical: c.critical,
                    message: c.message.clone().unwrap_or_default(),
                    took: c.took_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
                })
                .collect(),
            active_alerts: report
                .active_alerts
                .iter()
                .map(|(rule, fp)| match fp {
                    Some(fp) => format!("{rule} ({fp})"),
                    None => rule.clone(),
                })
                .collect(),
            alerts: report
                .recent_alerts
                .iter()
                .map(|a| AlertRow {
                    rule: a.rule.clone(),
                    severity: a.severity.marker(),
                    state: match a.state {
                        crate::health::AlertState::Firing => "firing",
                        crate::health::AlertState::Resolved => "resolved",
                    },
                    fingerprint: a.fingerprint.clone().unwrap_or_default(),
                    summary: a.summary.clone(),
                    at: rfc3339(unix_secs(a.at)),
                })
                .collect(),
            generated: rfc3339(unix_secs(SystemTime::now())),
            csrf: csrf.map(crate::web::csrf::CsrfToken::value),
            fleet: None,
        }
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        _ => format!("{} h {} min ago", secs / 3600, (secs % 3600) / 60),
    }
}
