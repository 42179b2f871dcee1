//! Ingest: parsing and validating incoming events, and routing them to endpoints at ingest time.
//!
//! Everything here is pure and runs in the request's own task, in parallel across cores; only the
//! prepared events go to the single group-commit thread.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::api::extract::parse_json;
use crate::api::problem::{FieldError, Problem};
use crate::registry::Registry;
use crate::route::Payload;
use crate::store::PreparedEvent;

/// Limits on an event's fields.
pub const MAX_TYPE_LEN: usize = 128;
pub const MAX_CHANNELS: usize = 32;
pub const MAX_CHANNEL_LEN: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// One event as posted. It borrows from the request body where it can (the payload always, the type
/// unless it holds escapes): ingest copies an event's text once, into the record it stores.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn<'a> {
    /// `[a-z0-9_]+(\.[a-z0-9_]+)*`, at most 128 characters, e.g. `ticket.created`.
    #[serde(rename = "type", borrow)]
    #[schema(value_type = String)]
    pub event_type: Cow<'a, str>,
    /// Up to 32 channels; endpoints may subscribe to some.
    #[serde(default)]
    pub channels: Vec<String>,
    /// The event's data; validated against the type's schema when the catalog has one.
    #[serde(borrow)]
    #[schema(value_type = Object)]
    pub payload: &'a RawValue,
    /// The same key within the retention window answers with the original event and stores nothing.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A batch as posted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn<'a> {
    /// 1 to `limits.max_batch_events` (default 1000) events, stored all together or not at all.
    #[serde(borrow)]
    pub events: Vec<EventIn<'a>>,
}

/// Parses a single-event body. `header_key` is the `Idempotency-Key` header, if any.
pub fn parse_single<'a>(body: &'a [u8], header_key: Option<&str>) -> Result<EventIn<'a>, Problem> {
    let mut ev: EventIn = parse_json(body)?;
    let mut errors = Vec::new();
    merge_header_key(&mut ev, header_key, &mut errors);
    validate(&ev, None, &mut errors);
    if errors.is_empty() { Ok(ev) } else { Err(Problem::invalid(errors)) }
}

/// Parses a batch body: all events valid, or a 422 listing every invalid field.
pub fn parse_batch(body: &[u8], max_events: usize) -> Result<BatchIn<'_>, Problem> {
    let batch: BatchIn = parse_json(body)?;
    if batch.events.is_empty() {
        return Err(Problem::invalid_field("events", "must hold at least one event"));
    }
    if batch.events.len() > max_events {
        return Err(Problem::invalid_field("events", format!("holds more than {max_events} events")));
    }
    let mut errors = Vec::new();
    for (i, ev) in batch.events.iter().enumerate() {
        validate(ev, Some(i), &mut errors);
        if errors.len() >= 100 {
            break; // enough to fix the request
        }
    }
    if errors.is_empty() { Ok(batch) } else { Err(Problem::invalid(errors)) }
}

fn merge_header_key(ev: &mut EventIn<'_>, header_key: Option<&str>, errors: &mut Vec<FieldError>) {
    match (header_key, &ev.idempotency_key) {
        (Some(h), Some(f)) if h != f => {
            errors.push(FieldError::new("Idempotency-Key", "differs from the body's idempotency_key"));
        }
        (Some(h), _) => ev.idempotency_key = Some(h.to_owned()),
        (None, _) => {}
    }
}

/// Is this a valid event type name: `[a-z0-9_]+(\.[a-z0-9_]+)*`, at most 128 characters?
pub fn valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TYPE_LEN
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Is this a valid channel name: letters, digits and `_ - . : @`, at most 128 characters
/// (`client_1bd942c0-4cec-486f-be7a-7b14118ad4ad`)?
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

/// Checks one event's fields; `batch_index` is its place in a batch (fields are named `events[i].…`).
fn validate(ev: &EventIn<'_>, batch_index: Option<usize>, errors: &mut Vec<FieldError>) {
    // Only formatted for an error: a batch of valid events formats nothing.
    let field = |name: &str| match batch_index {
        Some(i) => format!("events[{i}].{name}"),
        None => name.to_owned(),
    };
    if !valid_type_name(&ev.event_type) {
        errors.push(FieldError::new(
            field("type"),
            "must be lowercase words of [a-z0-9_] separated by dots (e.g. ticket.created), at most 128 characters",
        ));
    }
    if ev.channels.len() > MAX_CHANNELS {
        errors.push(FieldError::new(field("channels"), format!("at most {MAX_CHANNELS} channels")));
    }
    for (i, c) in ev.channels.iter().enumerate() {
        if !valid_channel(c) {
            errors.push(FieldError::new(
                field(&format!("channels[{i}]")),
                "must be 1-128 characters of letters, digits and _ - . : @",
            ));
        }
    }
    if !ev.payload.get().trim_start().starts_with('{') {
        errors.push(FieldError::new(field("payload"), "must be a JSON object"));
    }
    if let Some(key) = &ev.idempotency_key
        && (key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_graphic()))
    {
        errors.push(FieldError::new(
            field("idempotency_key"),
            "must be 1-256 printable ASCII characters without spaces",
        ));
    }
}

/// Checks a parsed event's payload against its type's schema, routes it and prepares it for the log.
/// Schema violations go to `errors`, each field named `payload` (`events[i].payload` for event `i` of a
/// batch) plus a JSON Pointer into it: `events[3].payload/seats/1`.
pub fn prepare(
    registry: &Registry,
    tenant: u64,
    ev: EventIn<'_>,
    batch_index: Option<usize>,
    errors: &mut Vec<FieldError>,
) -> Option<PreparedEvent> {
    let field = |pointer: &str| match batch_index {
        Some(i) => format!("events[{i}].payload{pointer}"),
        None => format!("payload{pointer}"),
    };
    let text = ev.payload.get().trim();
    let payload = Payload::new(text);
    if let Some(schema) = registry.schema(&ev.event_type) {
        match payload.value() {
            Some(v) if schema.is_valid(v) => {}
            Some(v) => {
                for violation in schema.violations(v) {
                    errors.push(FieldError::new(
                        field(&violation.pointer),
                        format!("does not satisfy the schema of `{}`: {}", ev.event_type, violation.message),
                    ));
                }
                return None;
            }
            None => {
                errors.push(FieldError::new(field(""), "not a JSON object"));
                return None;
            }
        }
    }
    let mut channels = ev.channels;
    channels.sort_unstable();
    channels.dedup();
    let routes = registry.route(tenant, &ev.event_type, &channels, &payload);
    Some(PreparedEvent {
        event_type: ev.event_type.into_owned(),
        channels,
        payload: text.to_owned(),
        idempotency_key: ev.idempotency_key,
        routes,
    })
}

/// [`prepare`] for a batch: every event, or a 422 listing what is wrong with which (at most 100 fields).
pub fn prepare_batch(
    registry: &Registry,
    tenant: u64,
    batch: BatchIn<'_>,
) -> Result<Vec<PreparedEvent>, Problem> {
    let mut errors = Vec::new();
    let mut prepared = Vec::with_capacity(batch.events.len());
    for (i, ev) in batch.events.into_iter().enumerate() {
        // Past the first error only the errors matter, and only while there is room to list them.
        if let Some(p) = prepare(registry, tenant, ev, Some(i), &mut errors)
            && errors.is_empty()
        {
            prepared.push(p);
        }
        if errors.len() >= 100 {
            break;
        }
    }
    if errors.is_empty() { Ok(prepared) } else { Err(Problem::invalid(errors)) }
}

/// [`prepare`] for a single event.
pub fn prepare_one(registry: &Registry, tenant: u64, ev: EventIn<'_>) -> Result<PreparedEvent, Problem> {
    let mut errors = Vec::new();
    match prepare(registry, tenant, ev, None, &mut errors) {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(Problem::invalid(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_valid_event_parses_with_its_payload_text_intact() {
        let ev = parse_single(
            br#"{"type":"ticket.created","channels":["client_42"],"payload":{"a": [1, 2]}}"#,
            None,
        );
        let ev = ev.map_err(|p| p.detail).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(ev.payload.get(), r#"{"a": [1, 2]}"#);
    }

    #[test]
    fn type_names_follow_the_catalog_grammar() {
        for ok in ["a", "ticket.created", "round_1.completed", "a.b.c"] {
            assert!(valid_type_name(ok), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "Ticket.created", "a b", "a-b", &"a".repeat(129)] {
            assert!(!valid_type_name(bad), "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let p = parse_single(br#"{"type":"Bad","channels":["ok","no way"],"payload":[1]}"#, None)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(p.status, 422);
        assert_eq!(fields(&p), ["type", "channels[1]", "payload"]);
    }

    #[test]
    fn missing_and_unknown_fields_are_422_naming_them_and_bad_json_is_400() {
        let p = parse_single(br#"{"payload":{}}"#, None).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!((p.status, p.detail.contains("type")), (422, true), "{}", p.detail);
        let p = parse_single(br#"{"type":"a","payload":{},"extra":1}"#, None)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(p.status, 422, "{}", p.detail);
        let p =
            parse_single(br#"{"type":"a","payload":{}"#, None).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!(p.status, 400);
        let p = parse_single(br#"{"type":7,"payload":{}}"#, None).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!(fields(&p), ["type"]);
    }

    #[test]
    fn batch_errors_name_the_event_index() {
        let p = parse_batch(br#"{"events":[{"type":"a","payload":{}},{"type":"B","payload":{}}]}"#, 10)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(fields(&p), ["events[1].type"]);
        let p = parse_batch(br#"{"events":[{"type":"a","payload":{}},{"payload":{}}]}"#, 10)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(p.errors[0].field.starts_with("events[1]"), "{:?}", p.errors);
        assert!(parse_batch(br#"{"events":[]}"#, 10).is_err());
        assert!(
            parse_batch(br#"{"events":[{"type":"a","payload":{}},{"type":"a","payload":{}}]}"#, 1).is_err()
        );
    }

    #[test]
    fn the_idempotency_header_and_field_must_agree() {
        assert!(parse_single(br#"{"type":"a","payload":{},"idempotency_key":"k1"}"#, Some("k2")).is_err());
        let ev = parse_single(br#"{"type":"a","payload":{}}"#, Some("k1")).ok();
        assert_eq!(ev.and_then(|e| e.idempotency_key).as_deref(), Some("k1"));
        assert!(parse_single(br#"{"type":"a","payload":{},"idempotency_key":"has space"}"#, None).is_err());
    }
}
