//! Domain records: what hookd stores and what the delivery pipeline works on.
//!
//! These are the storage shapes (encoded with rmp-serde inside a versioned envelope, see [`crate::store`]);
//! the API's JSON views are built from them in [`crate::api`]. Fields added later must carry
//! `#[serde(default)]` so that an older record still reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A tenant: one customer of the platform, owning endpoints, events and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Internal number used in storage keys. A deleted and re-created tenant gets a new serial, so data of
    /// the old one can never show through the new one.
    pub serial: u64,
    /// The platform's own id for the tenant (`acme`), unique.
    pub id: String,
    pub name: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// Overrides `delivery.disable_after` for this tenant's endpoints (ms).
    #[serde(default)]
    pub disable_after_ms: Option<u64>,
}

/// The HTTP method used to call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
    Get,
}

impl HttpMethod {
    pub fn as_http(self) -> http::Method {
        match self {
            HttpMethod::Post => http::Method::POST,
            HttpMethod::Put => http::Method::PUT,
            HttpMethod::Get => http::Method::GET,
        }
    }
}

/// How a delivery body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`, `payload=<json>`.
    Form,
}

/// Exponential backoff: delay n = min(max_ms, initial_ms × 2^(n-1)) ± 20 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for RetryPolicy {
    /// 18 attempts from 5 s doubling up to 6 h: the last attempt comes ~35 h after the first, so a receiver
    /// that is down for a day still gets everything.
    fn default() -> Self {
        Self { max_attempts: 18, initial_ms: 5_000, max_ms: 6 * 3_600_000 }
    }
}

/// Requests per second allowed to one endpoint (token bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Several events in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPolicy {
    pub max_events: u32,
    pub max_wait_ms: u64,
}

/// A signing secret that was replaced but still signs until `expires_at` (rotation grace period).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredSecret {
    pub secret: String,
    pub expires_at: u64,
}

/// An endpoint: where a tenant's matching events are delivered, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: u64,
    pub tenant_serial: u64,
    pub name: String,
    pub description: String,
    pub url: String,
    pub method: HttpMethod,
    pub format: PayloadFormat,
    /// Empty: every type.
    pub event_types: Vec<String>,
    /// Empty: every channel (and events without channels).
    pub channels: Vec<String>,
    pub filter: Option<String>,
    pub payload_template: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// `whsec_…`.
    pub secret: String,
    pub retired_secrets: Vec<RetiredSecret>,
    pub rate_limit: Option<RateLimit>,
    pub max_in_flight: u32,
    pub batch: Option<BatchPolicy>,
    pub retry: RetryPolicy,
    pub ordered: bool,
    pub verify_tls: bool,
    pub timeout_ms: u64,
    pub enabled: bool,
    /// Why hookd disabled it (`410 Gone`, …); `None` when a person did, or when it is enabled.
    pub disabled_reason: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Opt-in per-endpoint metric series (`hookd_endpoint_*{endpoint}`), capped across the daemon.
    #[serde(default)]
    pub metrics: bool,
}

impl EndpointRecord {
    /// An enabled endpoint with the documented defaults, `secret` as given, subscribed to these types and
    /// channels. The API validates and fills in what a client sends; benchmarks and tests build their
    /// endpoints here.
    pub fn with_defaults(
        id: u64,
        tenant_serial: u64,
        url: String,
        secret: String,
        event_types: Vec<String>,
        channels: Vec<String>,
    ) -> EndpointRecord {
        EndpointRecord {
            id,
            tenant_serial,
            name: String::new(),
            description: String::new(),
            url,
            method: HttpMethod::default(),
            format: PayloadFormat::default(),
            event_types,
            channels,
            filter: None,
            payload_template: None,
            headers: BTreeMap::new(),
            secret,
            retired_secrets: Vec::new(),
            rate_limit: None,
            max_in_flight: 8,
            batch: None,
            retry: RetryPolicy::default(),
            ordered: false,
            verify_tls: true,
            timeout_ms: 15_000,
            enabled: true,
            disabled_reason: None,
            created_at: 0,
            updated_at: 0,
            metrics: false,
        }
    }
}

/// An entry of the event catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTypeRecord {
    pub name: String,
    pub description: String,
    /// JSON text of a JSON Schema the payload must satisfy.
    pub schema: Option<String>,
    /// JSON text of an example payload.
    pub example: Option<String>,
    pub deprecated: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

/// One event as stored in the log. The payload is stored once, however many endpoints it matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_type: String,
    pub channels: Vec<String>,
    /// The payload's JSON text, exactly as received (validated).
    pub payload: String,
    pub received_at: u64,
    pub idempotency_key: Option<String>,
    /// The endpoints this event matched at ingest time; each gets it at least once.
    pub routes: Vec<u64>,
}

/// A log record: the events of one tenant committed together, with consecutive ids starting at the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub events: Vec<EventRecord>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Succeeded,
    Failed,
}

/// A delivery that did not succeed at its first attempt (the common case — success at once — costs no
/// record: the endpoint's cursor passing the event says it). Keyed by endpoint and webhook id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The events it carries (one, or a batch's).
    pub events: Vec<u64>,
    /// `Some` for a batch: the `bat_…` id is the webhook id.
    pub batch_id: Option<u64>,
    pub state: DeliveryState,
    pub attempts: u32,
    /// While pending: when the next attempt is due (unix ms).
    pub next_attempt_at: Option<u64>,
    pub last_attempt_id: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
    /// Put back in the queue by a person (`recover`): its next attempt is a `manual` one.
    #[serde(default)]
    pub manual: bool,
}

/// Attempt counts and latencies of one time slot of an endpoint's statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSlot {
    /// Which slot this is: unix ms / the slot's length. A slot of another epoch is stale.
    pub epoch: u64,
    pub succeeded: u32,
    pub failed: u32,
    /// Attempts per latency bucket (see `deliver::stats::LATENCY_BUCKETS_MS`).
    pub latency: Vec<u32>,
}

/// What the stats API and auto-disabling know of an endpoint's recent attempts (test sends excluded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatsRecord {
    pub last_triggered_at: Option<u64>,
    pub last_success_at: Option<u64>,
    pub last_failure_at: Option<u64>,
    /// When the current run of failures began (no success since); `None` after a success.
    pub failing_since: Option<u64>,
    /// A failure notification went out since the last success: the next success sends
    /// `hookd.endpoint.recovered`.
    pub failure_notified: bool,
    /// The last hour, in 5-minute slots (a ring indexed by epoch).
    pub recent: Vec<StatsSlot>,
    /// The last day, in hourly slots.
    pub hours: Vec<StatsSlot>,
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Scheduled,
    Retry,
    Manual,
    Test,
}

/// One HTTP request to an endpoint and what came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub endpoint_id: u64,
    /// The `webhook-id`'s number: the event id, or the batch id.
    pub webhook_id: u64,
    pub batch: bool,
    pub events: Vec<u64>,
    pub url: String,
    pub method: HttpMethod,
    pub sent_at: u64,
    pub succeeded: bool,
    pub status_code: Option<u16>,
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    /// Capped at `delivery.max_response_body_bytes`, lossy UTF-8.
    pub response_body: String,
    pub response_truncated: bool,
    /// Error class (`timeout`, `connect`, `tls`, `dns`, `blocked`, `http_status`, …) when not a success.
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub attempt_number: u32,
    pub trigger: Trigger,
    /// The body as sent, kept only when it cannot be rebuilt from the events (a rendered payload
    /// template, which depends on the endpoint's template at the time); otherwise the history rebuilds it.
    #[serde(default)]
    pub request_body: Option<String>,
}

/// What an API key may do. Which route needs which is decided in one table, `api::auth::ROUTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Delete,
    Admin,
}

/// The tenant an API key is bound to. The serial, not only the id, is what binds: a tenant deleted and
/// created again under the same id is another tenant, and its predecessor's keys do not open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTenant {
    pub id: String,
    pub serial: u64,
}

/// An API key. The key text (`hk_<prefix>_<secret>`) is shown once; only its SHA-256 is stored, and the
/// key is found by its non-secret prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: u64,
    pub name: String,
    /// The non-secret part of the key text, unique among keys; changes when the key is regenerated.
    pub prefix: String,
    /// SHA-256 of the whole key text.
    pub secret_sha256: [u8; 32],
    /// `None`: a global (operator) key.
    pub tenant: Option<KeyTenant>,
    /// Sorted, without duplicates, never empty.
    pub scopes: Vec<Scope>,
    /// Canonical CIDRs (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1/32`); empty: any address.
    pub allowed_ips: Vec<String>,
    pub expires_at: Option<u64>,
    /// Persisted periodically from memory (see `api::api_keys::UsePersister`), so it may lag a little.
    pub last_used_at: Option<u64>,
    /// Set when revoked; a revoked key stays listed and never works again.
    pub revoked_at: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// One authenticated write to the API, as the audit trail keeps it: who, what, when, from where, and
/// how it ended. Never a request or response body, so never a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix ms.
    pub at: u64,
    /// `admin token` or the API key's id (`key_…`).
    pub actor: String,
    pub client_ip: Option<String>,
    pub method: String,
    /// The route as declared (`/v1/tenants/{tenant}/endpoints/{id}`).
    pub route: String,
    /// The path as requested.
    pub path: String,
    /// The tenant the write concerned: the path's, else the caller's binding.
    pub tenant: Option<String>,
    /// The object written: the path's id (or name), or the id a create answered with.
    pub target: Option<String>,
    pub status: u16,
}
