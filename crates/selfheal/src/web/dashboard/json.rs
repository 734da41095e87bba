//! The `application/health+json` document of `/admin/health.json`
//! ([`health_json`]): the report in the shape monitoring tools read.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::dates::{rfc3339, unix_secs};
use crate::health::{Report, Status};
use crate::observe::BreakerState;

fn health_status(status: Status) -> &'static str {
    match status {
        Status::Healthy => "pass",
        Status::Degraded => "warn",
        Status::Critical => "fail",
    }
}

/// The [`Report`] as an `application/health+json` document
/// (draft-inadarei-api-health-check): `status` (`pass`, `warn`, `fail`),
/// `notes` (the reasons), `output` (when not passing), and `checks`, keyed
/// `component:measurement`, each an array of objects with `status`,
/// `observedValue`, `observedUnit`, `time` and, where useful,
/// `componentId`, `componentType` and `output`.
///
/// | key | observed |
/// |---|---|
/// | `errors:count` | errors in the window |
/// | `requests:errorRate` | failed requests in the window, % |
/// | `requests:count` | requests in the window |
/// | `heals:count` | heals in the window |
/// | `fingerprints:count` | one entry per fingerprint (`componentId`), with its redacted sample as `output` |
/// | `<check>:responseTime` | each registered check: pass/fail, took ms |
/// | `<breaker>:state` | each circuit breaker: `closed`, `half_open`, `open` |
/// | `retries:count`, `retryBudget:refusals`, `breakers:rejections` | since start |
/// | `healthLedger:droppedBuckets` | with a [health ledger](crate::health::ledger): buckets dropped, and written, waiting, where alerts come from (`warn` while flushes fail) |
pub fn health_json(report: &Report, service: &str) -> Value {
    let now = rfc3339(unix_secs(SystemTime::now()));
    let overall = health_status(report.status);
    let mut checks = serde_json::Map::new();
    let mut put = |key: String, entries: Vec<Value>| {
        checks.insert(key, Value::Array(entries));
    };
    put(
        "errors:count".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": report.total_errors,
            "observedUnit": "errors",
            "status": if report.total_errors == 0 { "pass" } else { "warn" },
            "time": now,
            "output": report.time_window,
        })],
    );
    put(
        "requests:errorRate".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": (report.requests.error_rate * 1000.0).round() / 10.0,
            "observedUnit": "%",
            "status": overall,
            "time": now,
        })],
    );
    put(
        "requests:count".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": report.requests.total,
            "observedUnit": "requests",
            "status": "pass",
            "time": now,
        })],
    );
    put(
        "heals:count".into(),
        vec![json!({
            "componentType": "system",
            "observedValue": report.heals.values().sum::<u64>(),
            "observedUnit": "heals",
            "status": "pass",
            "time": now,
        })],
    );
    put(
        "fingerprints:count".into(),
        report
            .fingerprints
            .iter()
            .map(|fp| {
                json!({
                    "componentId": fp.fingerprint,
                    "componentType": "system",
                    "observedValue": fp.count,
                    "observedUnit": "errors",
                    "status": "warn",
                    "time": now,
                    "output": fp.sample,
                })
            })
            .collect(),
    );
    for check in &report.checks {
        let status = match (check.passing, check.critical) {
            (Some(true), _) => "pass",
            (Some(false), true) => "fail",
            (Some(false), false) | (None, _) => "warn",
        };
        let mut entry = json!({
            "componentId": check.name,
            "componentType": "component",
            "observedValue": check.took_ms,
            "observedUnit": "ms",
            "status": status,
            "time": check.checked_at.map_or_else(|| now.clone(), rfc3339),
        });
        if let Some(message) = &check.message {
            entry["output"] = Value::String(message.clone());
        }
        put(format!("{}:responseTime", check.name), vec![entry]);
    }
    for breaker in &report.breakers {
        put(
            format!("{}:state", breaker.name),
            vec![json!({
                "componentId": breaker.name,
                "componentType": "component",
                "observedValue": breaker.state,
                "status": if breaker.state == BreakerState::Closed { "pass" } else { "warn" },
                "time": now,
            })],
        );
    }
    for (key, value, unit) in [
        ("retries:count", report.retries, "retries"),
        ("retryBudget:refusals", report.budget_refusals, "refusals"),
        (
            "breakers:rejections",
            report.breaker_rejections,
            "rejections",
        ),
        ("throttle:refusals", report.throttled, "refusals"),
    ] {
        put(
            key.to_owned(),
            vec![json!({
                "componentType": "system",
                "observedValue": value,
                "observedUnit": unit,
                "status": "pass",
                "time": now,
            })],
        );
    }
    if let Some(ledger) = &report.ledger {
        let output = format!(
            "instance {}: {} buckets written, {} waiting, {} dropped; alerts from {}",
            ledger.instance,
            ledger.flushed_buckets,
            ledger.pending_buckets,
            ledger.dropped_buckets,
            if ledger.fleet_alerts {
                "the fleet's counts"
            } else {
                "this instance's own view"
            }
        );
        put(
            "healthLedger:droppedBuckets".into(),
            vec![json!({
                "componentType": "datastore",
                "observedValue": ledger.dropped_buckets,
                "observedUnit": "buckets",
                "status": if ledger.last_error.is_none() { "pass" } else { "warn" },
                "time": now,
                "output": output,
            })],
        );
    }
    let mut doc = json!({
        "status": overall,
        "serviceId": service,
        "description": format!("health of {service}, {}", report.time_window.to_lowercase()),
        "notes": report.reasons,
        "checks": Value::Object(checks),
        "links": {"about": "/admin/health"},
    });
    if report.status != Status::Healthy {
        doc["output"] = Value::String(report.reasons.join("; "));
    }
    doc
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::Monitor;
    use crate::observe::Event;

    #[tokio::test]
    async fn breakers_are_reported_by_their_state_names() {
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let observer = monitor.observer();
        for (breaker, to) in [
            ("a", BreakerState::Closed),
            ("b", BreakerState::Open),
            ("c", BreakerState::HalfOpen),
        ] {
            let from = BreakerState::Closed;
            observer.on_event(&Event::BreakerTransition { breaker, from, to });
        }
        let doc = health_json(&monitor.report(Duration::from_secs(900)), "svc");
        for (breaker, state, status) in [
            ("a", "closed", "pass"),
            ("b", "open", "warn"),
            ("c", "half_open", "warn"),
        ] {
            let entry = &doc["checks"][format!("{breaker}:state")][0];
            assert_eq!(entry["observedValue"], state, "{breaker}");
            assert_eq!(entry["status"], status, "{breaker}");
        }
    }
}
