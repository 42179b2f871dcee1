//! `/v1/tenants/{tenant}/endpoints`: where a tenant's events go, and how.
//!
//! Create takes the whole object; PATCH is a JSON Merge Patch (RFC 7396) over the current object, and
//! the merged result is validated exactly like a create, so no update can store what a create would
//! refuse. Every change reaches the endpoint's dispatcher at once through the registry.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::{JsonBody, P, Page, Q, Tenant, parse_json};
use super::openapi::{
    BadRequest, Conflict, EndpointCreated, EndpointSecret, NotFound, PayloadTooLarge, RequestTimeout,
    RotatedSecret, TenantPath, Unprocessable,
};
use super::problem::{FieldError, Problem};
use super::views::{EndpointView, ListView};
use crate::config::DeliveryConfig;
use crate::deliver::client::DestinationPolicy;
use crate::deliver::dispatcher::{prepare_attempt, send};
use crate::deliver::sign::Secret;
use crate::filter::Filter;
use crate::ids::EndpointId;
use crate::ingest::{valid_channel, valid_type_name};
use crate::model::{
    BatchPolicy, EndpointRecord, EventRecord, HttpMethod, PayloadFormat, RateLimit, RetiredSecret,
    RetryPolicy, TenantRecord, Trigger,
};
use crate::store::{AttemptOutcomeWrite, DeliveryChange};
use crate::template::{PayloadTemplate, UrlTemplate};

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_EVENT_TYPES: usize = 256;
pub const MAX_CHANNELS: usize = 256;
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
pub const MAX_ENDPOINTS_PER_TENANT: usize = 10_000;

/// Headers hookd sets itself; an endpoint cannot override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

fn yes() -> bool {
    true
}

/// An endpoint as a client writes it (create body, or the merged object of a PATCH).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    #[serde(default)]
    pub format: PayloadFormat,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_template: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    #[serde(default)]
    pub batch: Option<BatchPolicy>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub ordered: bool,
    #[serde(default = "yes")]
    pub verify_tls: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Per-endpoint metric series on `/metrics` (`hookd_endpoint_attempts_total{endpoint}`, …); at most
    /// 100 endpoints of the daemon may have them.
    #[serde(default)]
    pub metrics: bool,
}

impl EndpointIn {
    /// The editable fields of a stored endpoint, as a PATCH starts from (the secret is not included:
    /// a PATCH that names one replaces it).
    fn from_record(r: &EndpointRecord) -> EndpointIn {
        EndpointIn {
            name: r.name.clone(),
            description: r.description.clone(),
            url: r.url.clone(),
            method: r.method,
            format: r.format,
            event_types: r.event_types.clone(),
            channels: r.channels.clone(),
            filter: r.filter.clone(),
            payload_template: r.payload_template.clone(),
            headers: r.headers.clone(),
            secret: None,
            rate_limit: r.rate_limit,
            max_in_flight: Some(r.max_in_flight),
            batch: r.batch,
            retry: Some(r.retry),
            ordered: r.ordered,
            verify_tls: r.verify_tls,
            timeout_ms: Some(r.timeout_ms),
            enabled: r.enabled,
            metrics: r.metrics,
        }
    }
}

/// Checks an endpoint's fields; on success returns the values to store (defaults applied, lists
/// de-duplicated, the secret parsed or generated).
pub struct Validated {
    pub input: EndpointIn,
    pub secret: Option<Secret>,
}

pub fn validate(mut input: EndpointIn, delivery: &DeliveryConfig) -> Result<Validated, Problem> {
    let mut errors = Vec::new();
    if input.name.chars().count() > MAX_NAME_LEN {
        errors.push(FieldError::new("name", format!("at most {MAX_NAME_LEN} characters")));
    }
    if input.description.chars().count() > MAX_DESCRIPTION_LEN {
        errors.push(FieldError::new("description", format!("at most {MAX_DESCRIPTION_LEN} characters")));
    }
    check_shape(&input, delivery, &mut errors);
    if input.event_types.len() > MAX_EVENT_TYPES {
        errors.push(FieldError::new("event_types", format!("at most {MAX_EVENT_TYPES} types")));
    }
    for (i, t) in input.event_types.iter().enumerate() {
        if !valid_type_name(t) {
            errors.push(FieldError::new(format!("event_types[{i}]"), "not a valid event type name"));
        }
    }
    input.event_types.sort_unstable();
    input.event_types.dedup();
    if input.channels.len() > MAX_CHANNELS {
        errors.push(FieldError::new("channels", format!("at most {MAX_CHANNELS} channels")));
    }
    for (i, c) in input.channels.iter().enumerate() {
        if !valid_channel(c) {
            errors.push(FieldError::new(
                format!("channels[{i}]"),
                "must be 1-128 characters of letters, digits and _ - . : @",
            ));
        }
    }
    input.channels.sort_unstable();
    input.channels.dedup();
    check_headers(&input.headers, &mut errors);
    let secret = match &input.secret {
        None => None,
        Some(s) => match Secret::parse(s) {
            Ok(secret) => Some(secret),
            Err(e) => {
                errors.push(FieldError::new("secret", e.to_string()));
                None
            }
        },
    };
    if let Some(rl) = input.rate_limit {
        if !(1..=100_000).contains(&rl.per_second) {
            errors.push(FieldError::new("rate_limit.per_second", "must be from 1 to 100000"));
        }
        if !(1..=100_000).contains(&rl.burst) {
            errors.push(FieldError::new("rate_limit.burst", "must be from 1 to 100000"));
        }
    }
    let max_in_flight = *input.max_in_flight.get_or_insert(delivery.max_in_flight);
    if !(1..=1024).contains(&max_in_flight) {
        errors.push(FieldError::new("max_in_flight", "must be from 1 to 1024"));
    }
    if let Some(b) = input.batch {
        if !(1..=1000).contains(&b.max_events) {
            errors.push(FieldError::new("batch.max_events", "must be from 1 to 1000"));
        }
        if b.max_wait_ms > 60_000 {
            errors.push(FieldError::new("batch.max_wait_ms", "must be at most 60000 (1 minute)"));
        }
    }
    let retry = *input.retry.get_or_insert_with(RetryPolicy::default);
    if !(1..=100).contains(&retry.max_attempts) {
        errors.push(FieldError::new("retry.max_attempts", "must be from 1 to 100"));
    }
    if !(100..=86_400_000).contains(&retry.initial_ms) {
        errors.push(FieldError::new("retry.initial_ms", "must be from 100 to 86400000 (1 day)"));
    }
    if retry.max_ms < retry.initial_ms || retry.max_ms > 7 * 86_400_000 {
        errors.push(FieldError::new(
            "retry.max_ms",
            "must be at least initial_ms and at most 604800000 (7 days)",
        ));
    }
    let timeout = *input.timeout_ms.get_or_insert(delivery.timeout_ms);
    if !(100..=120_000).contains(&timeout) {
        errors.push(FieldError::new("timeout_ms", "must be from 100 to 120000"));
    }
    if errors.is_empty() { Ok(Validated { input, secret }) } else { Err(Problem::invalid(errors)) }
}

/// The URL (a template), method, filter, payload template and batching, which constrain each other:
/// - `GET` sends no body, so it needs a placeholder in the URL to carry anything, and takes no payload
///   template;
/// - a batch is one request for many events, while placeholders are filled from one event, so batching
///   does not combine with URL placeholders or a payload template.
fn check_shape(input: &EndpointIn, delivery: &DeliveryConfig, errors: &mut Vec<FieldError>) {
    let mut url_placeholders = false;
    if input.url.len() > MAX_URL_LEN {
        errors.push(FieldError::new("url", format!("at most {MAX_URL_LEN} characters")));
    } else {
        match UrlTemplate::parse(&input.url) {
            Ok(t) => {
                url_placeholders = t.has_placeholders();
                // Scheme and host are checked on the template (placeholders cannot stand there), and
                // again on every rendered URL when it is sent.
                check_url(&t.sample(), delivery, errors);
            }
            Err(e) => errors.push(FieldError::at("url", e.position, e.to_string())),
        }
    }
    if let Some(f) = &input.filter
        && let Err(e) = Filter::parse(f)
    {
        errors.push(FieldError::at("filter", e.column, e.to_string()));
    }
    if let Some(t) = &input.payload_template
        && let Err(e) = PayloadTemplate::parse(t)
    {
        errors.push(FieldError::at("payload_template", e.position, e.to_string()));
    }
    if input.method == HttpMethod::Get {
        if !url_placeholders {
            errors.push(FieldError::new(
                "url",
                "a GET endpoint needs a ${path} placeholder in its URL (GET requests carry no body)",
            ));
        }
        if input.payload_template.is_some() {
            errors.push(FieldError::new("payload_template", "a GET request has no body to template"));
        }
    }
    if input.batch.is_some() && (url_placeholders || input.payload_template.is_some()) {
        errors.push(FieldError::new(
            "batch",
            "batching sends many events in one request; it cannot be combined with URL placeholders or a payload template, which are filled from one event",
        ));
    }
}

fn check_url(url: &str, delivery: &DeliveryConfig, errors: &mut Vec<FieldError>) {
    let mut fail = |m: &str| errors.push(FieldError::new("url", m));
    let Ok(uri) = url.parse::<http::Uri>() else { return fail("not a valid absolute URL") };
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if delivery.allow_http => {}
        Some("http") => {
            return fail("must be https:// (plain http is refused unless delivery.allow_http is set)");
        }
        _ => return fail("must be an https:// URL"),
    }
    let Some(authority) = uri.authority() else { return fail("must have a host") };
    if authority.as_str().contains('@') {
        return fail("must not hold credentials: put them in the endpoint's headers instead");
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return fail("must have a host");
    }
    if !delivery.allow_private_destinations {
        let policy = DestinationPolicy {
            allow_private: false,
            allowlist: delivery.private_allowlist().unwrap_or_default(),
        };
        let private = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => !policy.permits(ip),
            Err(_) => {
                host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost")
            }
        };
        if private {
            fail(
                "points to a private, loopback or link-local address, which is refused (delivery.allow_private_destinations, delivery.private_destination_allowlist)",
            );
        }
    }
}

fn check_headers(headers: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if headers.len() > MAX_HEADERS {
        errors.push(FieldError::new("headers", format!("at most {MAX_HEADERS} headers")));
    }
    for (name, value) in headers {
        let field = format!("headers.{name}");
        if http::HeaderName::try_from(name.as_str()).is_err() {
            errors.push(FieldError::new(field, "not a valid header name"));
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(field, "is set by hookd and cannot be overridden"));
        } else if value.len() > MAX_HEADER_VALUE_LEN || http::HeaderValue::try_from(value.as_str()).is_err() {
            errors
                .push(FieldError::new(field, "not a valid header value (visible ASCII, at most 4096 bytes)"));
        }
    }
}

fn record_from(
    v: Validated,
    id: u64,
    tenant: u64,
    secret: String,
    created_at: u64,
    now: u64,
) -> EndpointRecord {
    let i = v.input;
    EndpointRecord {
        id,
        tenant_serial: tenant,
        name: i.name,
        description: i.description,
        url: i.url,
        method: i.method,
        format: i.format,
        event_types: i.event_types,
        channels: i.channels,
        filter: i.filter,
        payload_template: i.payload_template,
        headers: i.headers,
        secret,
        retired_secrets: Vec::new(),
        rate_limit: i.rate_limit,
        max_in_flight: i.max_in_flight.unwrap_or(8),
        batch: i.batch,
        retry: i.retry.unwrap_or_default(),
        ordered: i.ordered,
        verify_tls: i.verify_tls,
        timeout_ms: i.timeout_ms.unwrap_or(15_000),
        enabled: i.enabled,
        disabled_reason: None,
        created_at,
        updated_at: now,
        metrics: i.metrics,
    }
}

/// Endpoints of the whole daemon that may have their own metric series: each adds a few series per
/// outcome and histogram bucket, so the scrape stays bounded.
pub const MAX_ENDPOINTS_WITH_METRICS: usize = 100;

/// Refuses a `metrics: true` that would pass [`MAX_ENDPOINTS_WITH_METRICS`] (the endpoint's own earlier
/// opt-in does not count twice).
fn check_metrics_cap(reg: &crate::registry::Registry, rec: &EndpointRecord) -> Result<(), Problem> {
    if !rec.metrics {
        return Ok(());
    }
    let others = reg.endpoints().filter(|e| e.record.metrics && e.record.id != rec.id).count();
    if others >= MAX_ENDPOINTS_WITH_METRICS {
        return Err(Problem::invalid_field(
            "metrics",
            format!("at most {MAX_ENDPOINTS_WITH_METRICS} endpoints may have their own metric series"),
        ));
    }
    Ok(())
}

fn endpoint_id(id: &str) -> Result<u64, Problem> {
    EndpointId::parse(id).map(|e| e.0).ok_or_else(|| Problem::not_found("endpoint"))
}

/// `POST`: 201 with the endpoint and, this once, its secret.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints", params(TenantPath),
    request_body = EndpointIn, responses(
        (status = 201, description = "Created; the only answer that shows the secret.", body = EndpointCreated),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 409, response = Conflict), (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
))]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    JsonBody(body): JsonBody<EndpointIn>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let v = validate(body, &state.config.delivery)?;
    let secret = v.secret.clone().unwrap_or_else(Secret::generate).to_whsec();
    let now = crate::time::now_ms();
    let id = state.ids.next();
    let rec = record_from(v, id, tenant.serial, secret.clone(), now, now);
    state.registry.mutate(|reg, store| -> Result<(), Problem> {
        if reg.tenant_by_serial(tenant.serial).is_none() {
            return Err(Problem::not_found("tenant"));
        }
        if reg.tenant_endpoints(tenant.serial).count() >= MAX_ENDPOINTS_PER_TENANT {
            return Err(Problem::conflict(format!(
                "a tenant has at most {MAX_ENDPOINTS_PER_TENANT} endpoints"
            )));
        }
        check_metrics_cap(reg, &rec)?;
        store.put_endpoint(&rec)?;
        reg.put_endpoint(rec.clone());
        Ok(())
    })?;
    let mut view = serde_json::to_value(EndpointView::from(&rec)).map_err(|e| Problem::internal(&e))?;
    view["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `?…` of the endpoint list; unknown parameters are refused (see [`Page`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `name`, `url` or `created_at` (the default), prefixed with `-` for descending.
    pub sort: Option<String>,
    /// Case-insensitive substring of the name, URL or description.
    pub q: Option<String>,
    /// 1 to 250; 50 when absent.
    pub limit: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// `GET`: sortable by name, url, created_at, last_triggered_at (prefix `-` for descending); `q` searches name, url and
/// description (case-insensitive substring). The cursor is an offset into that order.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints",
    params(TenantPath, ListQuery), responses(
        (status = 200, description = "The tenant's endpoints, without secrets.", body = ListView<EndpointView>),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Q(mut q): Q<ListQuery>,
) -> Result<Json<ListView<EndpointView>>, Problem> {
    let page = Page { limit: q.limit.take(), cursor: q.cursor.take() };
    let limit = page.limit()?;
    let offset = match page.cursor.as_deref() {
        None => 0,
        Some(c) => {
            c.parse::<usize>().map_err(|_| Problem::invalid_field("cursor", "not a cursor of this list"))?
        }
    };
    let snapshot = state.registry.snapshot();
    let needle = q.q.as_deref().map(str::to_lowercase);
    let mut items: Vec<&EndpointRecord> = snapshot
        .tenant_endpoints(tenant.serial)
        .map(|e| &e.record)
        .filter(|r| {
            needle.as_deref().is_none_or(|n| {
                r.name.to_lowercase().contains(n)
                    || r.url.to_lowercase().contains(n)
                    || r.description.to_lowercase().contains(n)
            })
        })
        .collect();
    let sort = q.sort.as_deref().unwrap_or("created_at");
    let (desc, field) = sort.strip_prefix('-').map_or((false, sort), |f| (true, f));
    match field {
        "name" => items.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id))),
        "url" => items.sort_by(|a, b| a.url.cmp(&b.url).then(a.id.cmp(&b.id))),
        "created_at" => items.sort_by_key(|r| r.id),
        // Never triggered sorts first (oldest).
        "last_triggered_at" => items.sort_by_cached_key(|r| (last_triggered(&state, r.id), r.id)),
        _ => {
            return Err(Problem::invalid_field(
                "sort",
                "must be name, url, created_at or last_triggered_at, optionally prefixed with -",
            ));
        }
    }
    if desc {
        items.reverse();
    }
    let data: Vec<EndpointView> = items.iter().skip(offset).take(limit).map(|r| view(&state, r)).collect();
    let next_cursor = (offset + data.len() < items.len()).then(|| (offset + data.len()).to_string());
    Ok(Json(ListView { data, next_cursor }))
}

fn find(state: &AppState, tenant: &TenantRecord, id: &str) -> Result<EndpointRecord, Problem> {
    let id = endpoint_id(id)?;
    state
        .registry
        .snapshot()
        .tenant_endpoint(tenant.serial, id)
        .map(|e| e.record.clone())
        .ok_or_else(|| Problem::not_found("endpoint"))
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{id}", tag = "endpoints", params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")),
    responses(
        (status = 200, description = "The endpoint, without its secret.", body = EndpointView),
        (status = 404, response = NotFound),
))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<Json<EndpointView>, Problem> {
    find(&state, &tenant, &id).map(|r| Json(view(&state, &r)))
}

/// When the endpoint's dispatcher last made an attempt (test sends aside).
fn last_triggered(state: &AppState, id: u64) -> Option<u64> {
    state.progress.feed(id).and_then(|f| crate::deliver::feed::lock(&f.stats).last_triggered_at)
}

fn view(state: &AppState, r: &EndpointRecord) -> EndpointView {
    let mut v = EndpointView::from(r);
    v.last_triggered_at = last_triggered(state, r.id).map(crate::time::format_ms);
    v
}

/// `GET …/secret`: the signing secret, for the receiver's configuration.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{id}/secret", tag = "endpoints",
    params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")), responses(
        (status = 200, description = "The signing secret.", body = EndpointSecret),
        (status = 404, response = NotFound),
))]
pub async fn secret(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<Json<Value>, Problem> {
    let rec = find(&state, &tenant, &id)?;
    Ok(Json(json!({ "key": rec.secret })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestIn {
    /// The event type to send.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload to send; the catalog's example of the type when absent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Box<serde_json::value::RawValue>>,
}

/// `POST …/test`: sends one event of `type` to the endpoint now — signed, shaped and templated like any
/// delivery — and answers `200` with the attempt, whatever the receiver said (the test ran; the
/// attempt tells how). The event is made up for the test: a fresh `evt_…` id, in no log, routed to no
/// other endpoint, never retried; the attempt is in the history with `trigger: test`. It runs on a
/// disabled endpoint too: testing before enabling is the point.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/test", tag = "endpoints",
    params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")), request_body = TestIn, responses(
        (status = 200, description = "The attempt, whatever the receiver answered.", body = super::views::AttemptView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn test_send(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
    JsonBody(body): JsonBody<TestIn>,
) -> Result<Json<super::views::AttemptView>, Problem> {
    if !valid_type_name(&body.event_type) {
        return Err(Problem::invalid_field("type", "not a valid event type name"));
    }
    let id = endpoint_id(&id)?;
    let snapshot = state.registry.snapshot();
    let entry = snapshot.tenant_endpoint(tenant.serial, id).ok_or_else(|| Problem::not_found("endpoint"))?;
    let payload = match body.payload {
        Some(p) if p.get().trim_start().starts_with('{') => p.get().trim().to_owned(),
        Some(_) => return Err(Problem::invalid_field("payload", "must be a JSON object")),
        None => snapshot.event_type(&body.event_type).and_then(|t| t.example.clone()).ok_or_else(|| {
            Problem::invalid_field(
                "payload",
                format!("the catalog has no example for {}: give a payload", body.event_type),
            )
        })?,
    };
    let now = crate::time::now_ms();
    let event_id = state.ids.next();
    let event = EventRecord {
        event_type: body.event_type,
        channels: Vec::new(),
        payload,
        received_at: now,
        idempotency_key: None,
        routes: Vec::new(),
    };
    let (attempt, req) = prepare_attempt(
        entry,
        event_id,
        None,
        &[(event_id, &event)],
        &state.user_agent,
        1,
        Trigger::Test,
        now,
    );
    let (attempt, _verdict) = send(state.client.clone(), req, attempt).await;
    let attempt_id = state.ids.next();
    let write = AttemptOutcomeWrite {
        tenant: tenant.serial,
        endpoint: id,
        attempt_id,
        attempt: &attempt,
        delivery: &DeliveryChange::Unchanged,
        cursor: None,
    };
    state.store.write_attempt_outcome(&write)?;
    state.activity.attempt(tenant.serial, attempt_id, &attempt);
    let mut view = super::views::AttemptView::new(attempt_id, &attempt, true);
    view.request_body = attempt.request_body.clone();
    Ok(Json(view))
}

/// Default time the previous secret keeps signing after a rotation.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 24 * 3600;
/// Longest grace period: receivers have a week to switch.
pub const MAX_ROTATION_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Previous secrets still signing at once; more rotations within the grace period retire the oldest.
pub const MAX_RETIRED_SECRETS: usize = 4;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateIn {
    /// The new secret; generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long the current secret keeps signing alongside the new one.
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

/// `POST …/secret/rotate`: a new signing secret, returned this once. During the grace period every
/// delivery carries a signature by each secret (`webhook-signature: v1,<new> v1,<old>`), so a receiver
/// verifies whichever it has while it switches; afterwards only the new one signs.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/secret/rotate", tag = "endpoints",
    params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")),
    request_body(content = Option<RotateIn>, description = "Optional: an empty body takes the defaults."),
    responses(
        (status = 200, description = "The new secret, shown this once.", body = RotatedSecret),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Problem> {
    // An empty body takes the defaults.
    let input: RotateIn = if body.is_empty() { RotateIn::default() } else { parse_json(&body)? };
    let grace = input.grace_seconds.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
    if grace > MAX_ROTATION_GRACE_SECS {
        return Err(Problem::invalid_field(
            "grace_seconds",
            format!("at most {MAX_ROTATION_GRACE_SECS} (7 days)"),
        ));
    }
    let new = match &input.secret {
        Some(s) => Secret::parse(s).map_err(|e| Problem::invalid_field("secret", e.to_string()))?,
        None => Secret::generate(),
    }
    .to_whsec();
    let id = endpoint_id(&id)?;
    let now = crate::time::now_ms();
    state.registry.mutate(|reg, store| -> Result<(), Problem> {
        let current = reg.tenant_endpoint(tenant.serial, id).ok_or_else(|| Problem::not_found("endpoint"))?;
        let mut rec = current.record.clone();
        if rec.secret == new {
            return Err(Problem::invalid_field("secret", "is the current secret"));
        }
        let mut retired: Vec<RetiredSecret> =
            rec.retired_secrets.into_iter().filter(|r| r.expires_at > now && r.secret != new).collect();
        if grace > 0 {
            retired.push(RetiredSecret { secret: rec.secret, expires_at: now.saturating_add(grace * 1000) });
        }
        // Newest last; past the cap the oldest stop signing early.
        let excess = retired.len().saturating_sub(MAX_RETIRED_SECRETS);
        retired.drain(..excess);
        rec.retired_secrets = retired;
        rec.secret = new.clone();
        rec.updated_at = now;
        store.put_endpoint(&rec)?;
        reg.put_endpoint(rec);
        Ok(())
    })?;
    let until = (grace > 0).then(|| crate::time::format_ms(now.saturating_add(grace * 1000)));
    Ok(Json(json!({ "key": new, "previous_signs_until": until })))
}

/// `PATCH`: JSON Merge Patch; `null` clears an optional field (`rate_limit`) or restores a default.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/endpoints/{id}", tag = "endpoints", params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")),
    request_body(content = Object, description = "A JSON Merge Patch (RFC 7396) of `EndpointIn`: any of its \
        fields; `null` clears an optional one. The merged endpoint is validated like a create."),
    responses(
        (status = 200, description = "The updated endpoint.", body = EndpointView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn update(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
    JsonBody(patch): JsonBody<Value>,
) -> Result<Json<EndpointView>, Problem> {
    if !patch.is_object() {
        return Err(Problem::bad_request("a PATCH body is a JSON object of the fields to change"));
    }
    let id = endpoint_id(&id)?;
    let rec = state.registry.mutate(|reg, store| -> Result<EndpointRecord, Problem> {
        let current = reg.tenant_endpoint(tenant.serial, id).ok_or_else(|| Problem::not_found("endpoint"))?;
        let current = &current.record;
        let mut merged =
            serde_json::to_value(EndpointIn::from_record(current)).map_err(|e| Problem::internal(&e))?;
        merge_patch(&mut merged, &patch);
        let bytes = serde_json::to_vec(&merged).map_err(|e| Problem::internal(&e))?;
        let v = validate(parse_json(&bytes)?, &state.config.delivery)?;
        let secret = v.secret.as_ref().map_or_else(|| current.secret.clone(), Secret::to_whsec);
        let mut rec = record_from(v, id, tenant.serial, secret, current.created_at, crate::time::now_ms());
        rec.retired_secrets = current.retired_secrets.clone();
        // Re-enabled by a person: the reason hookd disabled it no longer applies.
        rec.disabled_reason = if rec.enabled { None } else { current.disabled_reason.clone() };
        check_metrics_cap(reg, &rec)?;
        store.put_endpoint(&rec)?;
        reg.put_endpoint(rec.clone());
        Ok(rec)
    })?;
    Ok(Json(EndpointView::from(&rec)))
}

/// RFC 7396.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/endpoints/{id}", tag = "endpoints",
    params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")), responses(
        (status = 204, description = "Deleted."), (status = 404, response = NotFound),
))]
pub async fn delete(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<StatusCode, Problem> {
    let id = endpoint_id(&id)?;
    state.registry.mutate(|reg, store| -> Result<(), Problem> {
        if reg.tenant_endpoint(tenant.serial, id).is_none() {
            return Err(Problem::not_found("endpoint"));
        }
        store.delete_endpoint(id)?;
        reg.remove_endpoint(id);
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> EndpointIn {
        parse_json(json!({ "url": url }).to_string().as_bytes())
            .unwrap_or_else(|p: Problem| panic!("{}", p.detail))
    }

    fn strict() -> DeliveryConfig {
        crate::config::Config::default().delivery
    }

    fn fields(r: Result<Validated, Problem>) -> Vec<String> {
        r.err().map(|p| p.errors.into_iter().map(|e| e.field).collect()).unwrap_or_default()
    }

    #[test]
    fn https_urls_to_public_hosts_are_accepted_with_defaults_applied() {
        let v = validate(input("https://erp.example.com/hooks"), &strict())
            .unwrap_or_else(|p| panic!("{}", p.detail));
        assert_eq!(v.input.retry, Some(RetryPolicy::default()));
        assert_eq!(v.input.timeout_ms, Some(strict().timeout_ms));
    }

    #[test]
    fn plain_http_private_hosts_and_credentials_are_refused_by_default() {
        for url in [
            "http://erp.example.com/",
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://[::1]/",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost/",
            "https://user:pw@example.com/",
            "ftp://example.com/",
            "not a url",
            "https://example.com/{id}",
            "https://${data.host}/hook",
        ] {
            assert_eq!(fields(validate(input(url), &strict())), ["url"], "{url}");
        }
    }

    #[test]
    fn loopback_http_is_accepted_when_config_allows_it() {
        let mut d = strict();
        d.allow_http = true;
        d.allow_private_destinations = true;
        assert!(validate(input("http://127.0.0.1:9000/hook"), &d).is_ok());
    }

    #[test]
    fn reserved_headers_bad_secrets_and_bad_policies_are_named() {
        let mut i = input("https://example.com/");
        i.headers.insert("webhook-id".into(), "x".into());
        i.headers.insert("X Bad".into(), "x".into());
        i.secret = Some("nope".into());
        i.retry = Some(RetryPolicy { max_attempts: 0, initial_ms: 10, max_ms: 5 });
        i.rate_limit = Some(RateLimit { per_second: 0, burst: 1 });
        let f = fields(validate(i, &strict()));
        for want in [
            "headers.webhook-id",
            "headers.X Bad",
            "secret",
            "retry.max_attempts",
            "retry.initial_ms",
            "retry.max_ms",
            "rate_limit.per_second",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [2, 3], "f": "x"}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [2, 3], "f": "x"}));
    }
}
