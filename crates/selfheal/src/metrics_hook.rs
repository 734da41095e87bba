//! Records on the monitor and, with the `prometheus` feature, counts in
//! metrics: the one path the web pieces report errors and heals through.

use std::fmt;

use crate::health::{ClientId, HealKind, Monitor};

/// Records an error on `monitor` (and counts it in metrics).
pub(crate) fn record_error(
    monitor: &Monitor,
    kind: &str,
    operation: &str,
    message: &dyn fmt::Display,
) {
    record_error_from(monitor, kind, operation, message, None);
}

/// Records an error caused while serving `client` (and counts it in
/// metrics).
pub(crate) fn record_error_from(
    monitor: &Monitor,
    kind: &str,
    operation: &str,
    message: &dyn fmt::Display,
    client: Option<ClientId>,
) {
    monitor.record_error_from(kind, operation, message, client);
    #[cfg(feature = "prometheus")]
    crate::metrics::count_error(kind, operation);
}

/// Records a heal on `monitor` (and counts it in metrics).
pub(crate) fn record_heal(monitor: &Monitor, kind: HealKind, operation: &str) {
    monitor.record_heal(kind, operation);
    #[cfg(feature = "prometheus")]
    crate::metrics::count_heal(kind);
}
