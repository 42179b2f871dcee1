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
//! (the rest of a batch is still sent), so a waiting delivery is never left pending on it; when all
//! of a waiting delivery's events are damaged, it fails for good at once, with an entry in the attempt
//! history that says why ([`fail_delivery`]).

use super::notify;
use super::supervisor::Shared;
use crate::ids::{EndpointId, EventId};
use crate::model::{AttemptRecord, DeliveryRecord, DeliveryState, Trigger};
use crate::registry::EndpointEntry;
use crate::store::damage::DamagedRecord;
use crate::store::{AttemptOutcomeWrite, DeliveryChange, StoreError};

/// The `error_class` of the history entry of a delivery failed because its stored events are damaged.
pub const DAMAGED_CLASS: &str = "damaged";

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

/// A waiting delivery (`webhook_id`, due at `due`) whose every event is damaged (`events`, already
/// reported by [`skip`]): it fails for good now. One store write records it the way any failed delivery
/// is recorded — the delivery `failed`, its retry-queue entry gone, and an entry in the attempt history
/// (no request was made: `error_class` `damaged`, no status code) — so that people reading the history
/// see why, and a recover sends it again if the bytes are ever restored.
pub fn fail_delivery(
    shared: &Shared,
    tenant: u64,
    entry: &EndpointEntry,
    (webhook_id, due): (u64, u64),
    mut record: DeliveryRecord,
    events: Vec<u64>,
) -> Result<(), StoreError> {
    let now = crate::time::now_ms();
    let attempt_id = shared.ids.next();
    let attempt = AttemptRecord {
        endpoint_id: entry.record.id,
        webhook_id,
        batch: record.batch_id.is_some(),
        events,
        url: entry.record.url.clone(),
        method: entry.record.method,
        sent_at: now,
        succeeded: false,
        status_code: None,
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        response_body: String::new(),
        response_truncated: false,
        error_class: Some(DAMAGED_CLASS.to_owned()),
        error: Some(
            "not sent: the stored event is damaged (hookd's log names the file and offset)".to_owned(),
        ),
        duration_ms: 0,
        attempt_number: record.attempts + 1,
        trigger: if record.manual { Trigger::Manual } else { Trigger::Retry },
        request_body: None,
    };
    record.state = DeliveryState::Failed;
    record.attempts += 1;
    record.last_attempt_id = Some(attempt_id);
    record.next_attempt_at = None;
    record.updated_at = now;
    let delivery = DeliveryChange::Put { webhook_id, record, old_due: Some(due), new_due: None };
    shared.store.write_attempt_outcome(&AttemptOutcomeWrite {
        tenant,
        endpoint: entry.record.id,
        attempt_id,
        attempt: &attempt,
        delivery: &delivery,
        cursor: None,
    })
}
