//! What a dispatcher does with a log record that fails its check at run time (a flipped byte, a file
//! cut short, another record's frame where the index points): the record's events become a failed
//! delivery for the endpoint — an error log naming the file, offset and event ids, the failed-deliveries
//! metric, and a `hookd.delivery.failed` operational event — and the dispatcher reads on past it.
//!
//! Invariants: a damaged record is handled once per endpoint and read pass, never retried (its bytes
//! will not change: re-reading it would stall or loop the endpoint, as it once did), and never stops
//! the events after it. Which endpoints the damaged events were routed to is in the damaged bytes, so
//! every endpoint of the tenant that reads past it reports it; `routes_known: false` says so. A retry
//! that finds an event of its delivery damaged reports it the same way and drops it from the delivery
//! (the rest of a batch is still sent), so a waiting delivery is never left pending on it.

use super::notify;
use super::supervisor::Shared;
use crate::ids::{EndpointId, EventId};
use crate::store::damage::DamagedRecord;

/// At most this many event ids are listed in one operational event (the count is always given).
const IDS_LISTED: usize = 1_000;

/// Reports one unreadable record of the log as a failed delivery of its events for `endpoint`; returns
/// the last event id it held, up to which the read goes on.
pub fn skip(shared: &Shared, tenant: u64, endpoint: u64, d: &DamagedRecord) -> u64 {
    let ids: Vec<EventId> = d.ids().take(IDS_LISTED).map(EventId).collect();
    tracing::error!(
        endpoint = %EndpointId(endpoint),
        first_event = %EventId(d.first_id),
        events = d.count,
        damage = %d,
        "a log record is damaged: its events are reported as failed deliveries and skipped"
    );
    crate::metrics::delivery_failed();
    let snapshot = shared.registry.snapshot();
    let (name, url) = snapshot
        .tenant_endpoint(tenant, endpoint)
        .map(|e| (e.record.name.clone(), e.record.url.clone()))
        .unwrap_or_default();
    let payload = serde_json::json!({
        "endpoint_id": EndpointId(endpoint),
        "endpoint_name": name,
        "url": url,
        "event_ids": ids,
        "event_count": d.count,
        "attempts": 0,
        "last_status_code": null,
        "last_error": format!("the stored event is damaged: {d}"),
        "damaged": true,
        "routes_known": false,
        "failed_at": crate::time::format_ms(crate::time::now_ms()),
    });
    match shared.notifier.get() {
        Some(n) => n.emit(tenant, notify::DELIVERY_FAILED, endpoint, &payload),
        None => tracing::warn!("no notifier: operational event about a damaged record dropped"),
    }
    *d.ids().end()
}
