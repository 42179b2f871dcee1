//! The JSON shapes the API returns, built from the stored records. Secrets never appear here, with the
//! single exception of the endpoint-creation response (built in `endpoints`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::ids::{AttemptId, BatchId, EndpointId, EventId};
use crate::model::{
    AttemptRecord, BatchPolicy, DeliveryState, EndpointRecord, EventRecord, EventTypeRecord, HttpMethod,
    PayloadFormat, RateLimit, RetryPolicy, TenantRecord, Trigger,
};
use crate::time::format_ms;

/// `{"data": [...], "next_cursor": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListView<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// JSON text stored as a string, shown as JSON (never re-parsed).
fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap_or_else(|_| {
        // Stored texts were validated JSON; should one not be, show null rather than fail the listing.
        RawValue::from_string("null".to_owned()).unwrap_or_default()
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    /// This tenant's `delivery.disable_after`, when it overrides the daemon's (`"2d"`).
    pub disable_after: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&TenantRecord> for TenantView {
    fn from(t: &TenantRecord) -> Self {
        TenantView {
            id: t.id.clone(),
            name: t.name.clone(),
            disable_after: t
                .disable_after_ms
                .map(|ms| crate::config::HumanDuration(std::time::Duration::from_millis(ms)).to_string()),
            created_at: format_ms(t.created_at),
            updated_at: format_ms(t.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeView {
    pub name: String,
    pub description: String,
    /// The JSON Schema payloads of this type must satisfy.
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<Box<RawValue>>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub example: Option<Box<RawValue>>,
    pub deprecated: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&EventTypeRecord> for EventTypeView {
    fn from(t: &EventTypeRecord) -> Self {
        EventTypeView {
            name: t.name.clone(),
            description: t.description.clone(),
            schema: t.schema.as_deref().map(raw),
            example: t.example.as_deref().map(raw),
            deprecated: t.deprecated,
            created_at: format_ms(t.created_at),
            updated_at: format_ms(t.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: EndpointId,
    pub name: String,
    pub description: String,
    pub url: String,
    pub method: HttpMethod,
    pub format: PayloadFormat,
    pub event_types: Vec<String>,
    pub channels: Vec<String>,
    pub filter: Option<String>,
    pub payload_template: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
    pub max_in_flight: u32,
    pub batch: Option<BatchPolicy>,
    pub retry: RetryPolicy,
    pub ordered: bool,
    pub verify_tls: bool,
    pub timeout_ms: u64,
    pub enabled: bool,
    /// Has its own metric series on `/metrics`.
    pub metrics: bool,
    /// `enabled` or `disabled`.
    pub state: &'static str,
    pub disabled_reason: Option<String>,
    /// The last attempt (test sends aside); filled in by the handlers that know it.
    pub last_triggered_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&EndpointRecord> for EndpointView {
    fn from(e: &EndpointRecord) -> Self {
        EndpointView {
            id: EndpointId(e.id),
            name: e.name.clone(),
            description: e.description.clone(),
            url: e.url.clone(),
            method: e.method,
            format: e.format,
            event_types: e.event_types.clone(),
            channels: e.channels.clone(),
            filter: e.filter.clone(),
            payload_template: e.payload_template.clone(),
            headers: e.headers.clone(),
            rate_limit: e.rate_limit,
            max_in_flight: e.max_in_flight,
            batch: e.batch,
            retry: e.retry,
            ordered: e.ordered,
            verify_tls: e.verify_tls,
            timeout_ms: e.timeout_ms,
            enabled: e.enabled,
            metrics: e.metrics,
            state: if e.enabled { "enabled" } else { "disabled" },
            disabled_reason: e.disabled_reason.clone(),
            last_triggered_at: None,
            created_at: format_ms(e.created_at),
            updated_at: format_ms(e.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    pub channels: Vec<String>,
    /// The payload exactly as received.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    pub received_at: String,
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Vec<DeliveryView>>,
}

impl EventView {
    pub fn new(id: u64, e: &EventRecord) -> EventView {
        EventView {
            id: EventId(id),
            event_type: e.event_type.clone(),
            channels: e.channels.clone(),
            payload: raw(&e.payload),
            received_at: format_ms(e.received_at),
            idempotency_key: e.idempotency_key.clone(),
            deliveries: None,
        }
    }
}

/// Where one event stands at one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub endpoint_id: EndpointId,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_attempt_id: Option<AttemptId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<BatchId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub id: AttemptId,
    pub endpoint_id: EndpointId,
    pub webhook_id: String,
    pub event_ids: Vec<EventId>,
    pub url: String,
    pub method: HttpMethod,
    pub sent_at: String,
    #[schema(value_type = super::openapi::AttemptStatus)]
    pub status: &'static str,
    pub status_code: Option<u16>,
    pub response_headers: BTreeMap<String, String>,
    pub response_body: String,
    pub response_truncated: bool,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub attempt_number: u32,
    pub trigger: Trigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<BTreeMap<String, String>>,
    /// Detail only: the body as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
}

fn header_map(list: &[(String, String)]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in list {
        out.entry(k.clone())
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    out
}

impl AttemptView {
    /// `detail` adds the request headers as sent.
    pub fn new(id: u64, a: &AttemptRecord, detail: bool) -> AttemptView {
        let webhook_id =
            if a.batch { BatchId(a.webhook_id).to_string() } else { EventId(a.webhook_id).to_string() };
        AttemptView {
            id: AttemptId(id),
            endpoint_id: EndpointId(a.endpoint_id),
            webhook_id,
            event_ids: a.events.iter().map(|e| EventId(*e)).collect(),
            url: a.url.clone(),
            method: a.method,
            sent_at: format_ms(a.sent_at),
            status: if a.succeeded { "succeeded" } else { "failed" },
            status_code: a.status_code,
            response_headers: header_map(&a.response_headers),
            response_body: a.response_body.clone(),
            response_truncated: a.response_truncated,
            error_class: a.error_class.clone(),
            error: a.error.clone(),
            duration_ms: a.duration_ms,
            attempt_number: a.attempt_number,
            trigger: a.trigger,
            request_headers: detail.then(|| header_map(&a.request_headers)),
            request_body: None,
        }
    }
}
