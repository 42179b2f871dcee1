//! Metric names, their descriptions, and the few helpers that emit them — in one place so that names,
//! labels and cardinality are reviewed together. Labels are bounded: no tenant or endpoint ids here.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_INGESTED: &str = "hookd_events_ingested_total";
pub const BYTES_INGESTED: &str = "hookd_ingested_bytes_total";
pub const GROUP_COMMIT_EVENTS: &str = "hookd_group_commit_events";
pub const GROUP_COMMIT_SECONDS: &str = "hookd_group_commit_seconds";
pub const ATTEMPTS: &str = "hookd_delivery_attempts_total";
pub const ATTEMPT_SECONDS: &str = "hookd_delivery_attempt_seconds";
pub const RETRIES_SCHEDULED: &str = "hookd_delivery_retries_scheduled_total";
pub const DELIVERIES_FAILED: &str = "hookd_deliveries_failed_total";
pub const ENDPOINTS_DISABLED: &str = "hookd_endpoints_disabled_total";
pub const RATE_LIMIT_WAITS: &str = "hookd_rate_limit_waits_total";
pub const RATE_LIMIT_WAIT_SECONDS: &str = "hookd_rate_limit_wait_seconds";
pub const LOG_BYTES: &str = "hookd_log_bytes";
pub const CONNECTIONS_REFUSED: &str = "hookd_http_connections_refused_total";
pub const PURGED: &str = "hookd_retention_purged_total";
pub const QUEUE_DEPTH: &str = "hookd_queue_depth";
pub const QUEUE_OLDEST: &str = "hookd_queue_oldest_pending_seconds";

/// Installs the Prometheus recorder and describes every family. Returns the handle `/metrics` renders.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])?
        // A count, not a time: how many events one group commit carried (up to a batch of 1000s).
        .set_buckets_for_metric(
            Matcher::Full(GROUP_COMMIT_EVENTS.to_owned()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0],
        )?
        .install_recorder()?;
    describe_counter!(EVENTS_INGESTED, "Events accepted by ingest (durable), duplicates excluded.");
    describe_counter!(BYTES_INGESTED, "Payload bytes accepted by ingest.");
    describe_histogram!(GROUP_COMMIT_EVENTS, "Events made durable per group commit.");
    describe_histogram!(GROUP_COMMIT_SECONDS, "Time to write and sync one group commit.");
    describe_counter!(
        ATTEMPTS,
        "Delivery attempts by outcome (succeeded|failed) and status class (2xx..5xx|error)."
    );
    describe_histogram!(ATTEMPT_SECONDS, "Duration of delivery attempts.");
    describe_counter!(RETRIES_SCHEDULED, "Retries scheduled after a failed attempt.");
    describe_counter!(DELIVERIES_FAILED, "Deliveries that exhausted their retry policy.");
    describe_counter!(ENDPOINTS_DISABLED, "Endpoints disabled by hookd (410 Gone).");
    describe_counter!(RATE_LIMIT_WAITS, "Times a dispatcher waited for its endpoint's rate limiter.");
    describe_histogram!(RATE_LIMIT_WAIT_SECONDS, "How long dispatchers waited for their rate limiter.");
    describe_gauge!(LOG_BYTES, "Bytes the data directory uses on disk.");
    describe_gauge!(
        QUEUE_DEPTH,
        "Deliveries waiting across endpoints: first attempts read but not made, and retries held in memory (a lower bound for endpoints far behind)."
    );
    describe_gauge!(QUEUE_OLDEST, "Age of the oldest delivery waiting (0 when none).");
    describe_counter!(
        PURGED,
        "Records removed by retention, by kind (events|attempts|deliveries|idempotency_keys|audit_entries|orphaned_keys)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed at once: server.max_connections were open."
    );
    Ok(handle)
}

pub fn group_committed(events: usize, elapsed: Duration) {
    histogram!(GROUP_COMMIT_EVENTS).record(events as f64);
    histogram!(GROUP_COMMIT_SECONDS).record(elapsed.as_secs_f64());
}

pub fn ingested(events: usize, bytes: usize) {
    counter!(EVENTS_INGESTED).increment(events as u64);
    counter!(BYTES_INGESTED).increment(bytes as u64);
}

/// One attempt's outcome. `status` is `None` for a transport error.
pub fn attempt(succeeded: bool, status: Option<u16>, elapsed: Duration) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    let class = match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "error",
    };
    counter!(ATTEMPTS, "outcome" => outcome, "status_class" => class).increment(1);
    histogram!(ATTEMPT_SECONDS, "outcome" => outcome).record(elapsed.as_secs_f64());
}

pub fn retry_scheduled() {
    counter!(RETRIES_SCHEDULED).increment(1);
}

pub fn delivery_failed() {
    counter!(DELIVERIES_FAILED).increment(1);
}

pub fn endpoint_disabled() {
    counter!(ENDPOINTS_DISABLED).increment(1);
}

pub fn rate_limited(wait: Duration) {
    counter!(RATE_LIMIT_WAITS).increment(1);
    histogram!(RATE_LIMIT_WAIT_SECONDS).record(wait.as_secs_f64());
}

pub fn connection_refused() {
    counter!(CONNECTIONS_REFUSED).increment(1);
}

/// What one retention pass removed.
pub fn purged(p: &crate::store::Purged) {
    for (kind, n) in [
        ("events", p.events),
        ("attempts", p.attempts),
        ("deliveries", p.deliveries),
        ("idempotency_keys", p.idempotency_keys),
        ("audit_entries", p.audit_entries),
        ("orphaned_keys", p.orphaned_keys),
    ] {
        if n > 0 {
            counter!(PURGED, "kind" => kind).increment(n);
        }
    }
}

/// The delivery queue across endpoints.
pub fn queue(depth: u64, oldest: Duration) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    metrics::gauge!(QUEUE_OLDEST).set(oldest.as_secs_f64());
}
