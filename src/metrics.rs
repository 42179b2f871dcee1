//! Metric names, their descriptions, and the few helpers that emit them — in one place so that names,
//! labels and cardinality are reviewed together. Labels are bounded: no endpoint ids, and tenant ids
//! only on [`TENANT_EVENTS_INGESTED`], for the first [`TENANT_LABELS_MAX`] tenants seen (the rest share
//! `other`); HTTP routes are labelled by their template (`/v1/tenants/{tenant}/events`), never the path.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
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
pub const ENDPOINT_ATTEMPTS: &str = "hookd_endpoint_attempts_total";
pub const ENDPOINT_ATTEMPT_SECONDS: &str = "hookd_endpoint_attempt_seconds";
pub const QUEUE_OLDEST: &str = "hookd_queue_oldest_pending_seconds";
pub const HTTP_REQUESTS: &str = "hookd_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "hookd_http_request_seconds";
pub const TENANT_EVENTS_INGESTED: &str = "hookd_tenant_events_ingested_total";
pub const REQUEST_EVENTS: &str = "hookd_delivery_request_events";
pub const ACTIVITY_STREAMS: &str = "hookd_activity_streams";
pub const ACTIVITY_STREAMS_DROPPED: &str = "hookd_activity_streams_dropped_total";
pub const DISK_FULL: &str = "hookd_disk_full";
pub const STORAGE_ENGINE_FAILED: &str = "hookd_storage_engine_failed";

/// Tenants with a label of their own on [`TENANT_EVENTS_INGESTED`]: the first ones to ingest since the
/// daemon started. Later ones are counted under `other`, so a platform with 100,000 tenants adds 101
/// series, not 100,000. Which tenants get a label can differ after a restart.
pub const TENANT_LABELS_MAX: usize = 100;
/// The route label of a request that matched no route (404s of unknown paths): a fixed value, so
/// scanning random paths adds no series.
pub const UNMATCHED_ROUTE: &str = "unmatched";

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
        // A count too: events per delivery request (1 without batching; up to an endpoint's max_events).
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_EVENTS.to_owned()),
            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
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
        ENDPOINT_ATTEMPTS,
        "Delivery attempts of the endpoints that opted in (metrics: true; at most 100), by endpoint id and outcome."
    );
    describe_histogram!(
        ENDPOINT_ATTEMPT_SECONDS,
        "Duration of attempts of the endpoints that opted in, by endpoint id."
    );
    describe_counter!(
        PURGED,
        "Records removed by retention, by kind (events|attempts|deliveries|idempotency_keys|audit_entries|orphaned_keys|segments: log segment files)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed at once: server.max_connections were open."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "API requests answered, by route template (unmatched paths: route=unmatched), method and status class."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        "Time to answer API requests (to the response head; a stream's life is not counted), by route template, method and status class."
    );
    describe_counter!(
        TENANT_EVENTS_INGESTED,
        "Events accepted by ingest by tenant: the first 100 tenants seen since start by id, the rest as tenant=other."
    );
    describe_histogram!(
        REQUEST_EVENTS,
        "Events carried by each delivery request (1 unless the endpoint batches)."
    );
    describe_gauge!(ACTIVITY_STREAMS, "Open activity streams (GET /v1/tenants/{tenant}/activity).");
    describe_gauge!(DISK_FULL, "1 while ingest and admin writes are refused for a full disk (see /readyz).");
    describe_gauge!(
        STORAGE_ENGINE_FAILED,
        "1 once the database failed a write: it refuses writes until hookd restarts."
    );
    describe_counter!(
        ACTIVITY_STREAMS_DROPPED,
        "Activity streams ended because their reader fell behind (lagged past the buffer)."
    );
    Ok(handle)
}

pub fn group_committed(events: usize, elapsed: Duration) {
    histogram!(GROUP_COMMIT_EVENTS).record(events as f64);
    histogram!(GROUP_COMMIT_SECONDS).record(elapsed.as_secs_f64());
}

pub fn ingested(events: usize, bytes: usize) {
    static EVENTS: OnceLock<Counter> = OnceLock::new();
    static BYTES: OnceLock<Counter> = OnceLock::new();
    EVENTS.get_or_init(|| counter!(EVENTS_INGESTED)).increment(events as u64);
    BYTES.get_or_init(|| counter!(BYTES_INGESTED)).increment(bytes as u64);
}

/// One attempt's outcome. `status` is `None` for a transport error.
pub fn attempt(succeeded: bool, status: Option<u16>, elapsed: Duration) {
    // Every attempt passes here: the handles of its few series are looked up (and registered) once, on
    // first use, instead of building a labelled key per attempt.
    const CLASSES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "other", "error"];
    static COUNTERS: [[OnceLock<Counter>; CLASSES.len()]; 2] =
        [const { [const { OnceLock::new() }; CLASSES.len()] }; 2];
    static SECONDS: [OnceLock<Histogram>; 2] = [const { OnceLock::new() }; 2];
    let (o, outcome) = if succeeded { (0, "succeeded") } else { (1, "failed") };
    let c = match status {
        Some(200..=299) => 0,
        Some(300..=399) => 1,
        Some(400..=499) => 2,
        Some(500..=599) => 3,
        Some(_) => 4,
        None => 5,
    };
    COUNTERS[o][c]
        .get_or_init(|| counter!(ATTEMPTS, "outcome" => outcome, "status_class" => CLASSES[c]))
        .increment(1);
    SECONDS[o]
        .get_or_init(|| histogram!(ATTEMPT_SECONDS, "outcome" => outcome))
        .record(elapsed.as_secs_f64());
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
        ("segments", p.segments),
    ] {
        if n > 0 {
            counter!(PURGED, "kind" => kind).increment(n);
        }
    }
}

/// The delivery queue across endpoints.
pub fn queue(depth: u64, oldest: Duration) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
    gauge!(QUEUE_OLDEST).set(oldest.as_secs_f64());
}

/// One answered API request. `route` is the matched template or [`UNMATCHED_ROUTE`].
pub fn http_request(route: &str, method: &http::Method, status: u16, elapsed: Duration) {
    // Every request passes here: the handles of a route's series are looked up (and registered) once,
    // on first use, instead of building three label strings and two keys per request. Routes are
    // bounded (the templates hookd declares and `unmatched`), so is the map.
    const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    type Series = [[OnceLock<(Counter, Histogram)>; CLASSES.len()]; METHODS.len()];
    static ROUTES: LazyLock<RwLock<HashMap<String, Box<Series>>>> = LazyLock::new(RwLock::default);
    let m = match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::PATCH => 4,
        http::Method::DELETE => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    };
    let c = match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    let record = |series: &Series| {
        let (count, seconds) = series[m][c].get_or_init(|| {
            let labels = [
                ("route", route.to_owned()),
                ("method", METHODS[m].to_owned()),
                ("status_class", CLASSES[c].to_owned()),
            ];
            (counter!(HTTP_REQUESTS, &labels), histogram!(HTTP_REQUEST_SECONDS, &labels))
        });
        count.increment(1);
        seconds.record(elapsed.as_secs_f64());
    };
    // The map is only ever inserted into, so a poisoned lock still holds a valid map.
    if let Some(series) = ROUTES.read().unwrap_or_else(PoisonError::into_inner).get(route) {
        return record(series);
    }
    let mut routes = ROUTES.write().unwrap_or_else(PoisonError::into_inner);
    record(routes.entry(route.to_owned()).or_default());
}

/// The tenants that got a label of their own (see [`TENANT_LABELS_MAX`]), with their counter.
static TENANT_COUNTERS: LazyLock<RwLock<HashMap<String, Counter>>> = LazyLock::new(RwLock::default);

/// The counter `tenant`'s events are counted on: labelled with its id while fewer than
/// [`TENANT_LABELS_MAX`] tenants have one, with `other` after.
fn tenant_counter(tenant: &str) -> Counter {
    static OTHER: OnceLock<Counter> = OnceLock::new();
    let other = || OTHER.get_or_init(|| counter!(TENANT_EVENTS_INGESTED, "tenant" => "other")).clone();
    // The map is only ever inserted into, so a poisoned lock still holds a valid map.
    let labelled = TENANT_COUNTERS.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(counter) = labelled.get(tenant) {
        return counter.clone();
    }
    let full = labelled.len() >= TENANT_LABELS_MAX;
    drop(labelled);
    if full {
        return other();
    }
    let mut labelled = TENANT_COUNTERS.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(counter) = labelled.get(tenant) {
        return counter.clone();
    }
    if labelled.len() >= TENANT_LABELS_MAX {
        return other();
    }
    let counter = counter!(TENANT_EVENTS_INGESTED, "tenant" => tenant.to_owned());
    labelled.insert(tenant.to_owned(), counter.clone());
    counter
}

/// `events` accepted for `tenant` (its id, as in the path).
pub fn tenant_ingested(tenant: &str, events: usize) {
    if events > 0 {
        tenant_counter(tenant).increment(events as u64);
    }
}

/// Events one delivery request carried.
pub fn request_events(events: usize) {
    histogram!(REQUEST_EVENTS).record(events as f64);
}

pub fn activity_streams(open: usize) {
    gauge!(ACTIVITY_STREAMS).set(open as f64);
}

pub fn activity_stream_dropped() {
    counter!(ACTIVITY_STREAMS_DROPPED).increment(1);
}

/// One attempt of an endpoint that opted in to its own series.
pub fn endpoint_attempt(endpoint: String, succeeded: bool, elapsed: Duration) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    counter!(ENDPOINT_ATTEMPTS, "endpoint" => endpoint.clone(), "outcome" => outcome).increment(1);
    histogram!(ENDPOINT_ATTEMPT_SECONDS, "endpoint" => endpoint).record(elapsed.as_secs_f64());
}

/// The full-disk gate opened or closed.
pub fn disk_full(full: bool) {
    gauge!(DISK_FULL).set(if full { 1.0 } else { 0.0 });
}

/// sled failed a write (sticky until a restart).
pub fn storage_engine_failed() {
    gauge!(STORAGE_ENGINE_FAILED).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_bounded_and_stable() {
        let labelled = |t: &str| TENANT_COUNTERS.read().map(|m| m.contains_key(t)).unwrap_or(false);
        tenant_ingested("unit-first", 1);
        assert!(labelled("unit-first"));
        for i in 0..TENANT_LABELS_MAX * 2 {
            tenant_ingested(&format!("unit-{i}"), 1);
        }
        assert_eq!(TENANT_COUNTERS.read().map(|m| m.len()).unwrap_or(0), TENANT_LABELS_MAX);
        tenant_ingested("unit-first", 1);
        assert!(labelled("unit-first"), "a labelled tenant keeps its label");
        tenant_ingested("unit-late-comer", 1);
        assert!(!labelled("unit-late-comer"), "a tenant past the bound is counted as other");
    }
}
