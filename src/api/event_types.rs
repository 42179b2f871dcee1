//! `/v1/event-types`: the event catalog (descriptions, JSON Schemas and example payloads).
//!
//! The catalog documents what producers send; ingest does not require a type to be listed here, but a
//! payload of a listed type with a schema must satisfy it. A deprecated type is still accepted: the flag
//! is for the people who read the catalog.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::AppState;
use super::extract::{JsonBody, P, Page, Q};
use super::openapi::{BadRequest, NotFound, PayloadTooLarge, RequestTimeout, Unprocessable};
use super::problem::{FieldError, Problem};
use super::views::{EventTypeView, ListView};
use crate::ingest::valid_type_name;
use crate::model::EventTypeRecord;
use crate::schema::{MAX_SCHEMA_BYTES, PayloadSchema};

pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_EXAMPLE_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutEventType {
    #[serde(default)]
    pub description: String,
    /// A JSON Schema (draft from `$schema`, 2020-12 by default) that payloads of this type must satisfy.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<Box<RawValue>>,
    /// An example payload (sent by endpoint test sends); its own schema must accept it.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub example: Option<Box<RawValue>>,
    #[serde(default)]
    pub deprecated: bool,
}

fn check_name(name: &str) -> Result<(), Problem> {
    if valid_type_name(name) {
        Ok(())
    } else {
        Err(Problem::invalid_field(
            "type",
            "must be lowercase words of [a-z0-9_] separated by dots, at most 128 characters",
        ))
    }
}

/// Creates or replaces a catalog entry: 201 when new, 200 when replaced.
#[utoipa::path(put, path = "/v1/event-types/{name}", tag = "event-types", params(("name" = String, Path, description = "The event type, e.g. `ticket.created`.")),
    request_body = PutEventType, responses(
    (status = 200, description = "Replaced.", body = EventTypeView),
    (status = 201, description = "Created.", body = EventTypeView),
    (status = 400, response = BadRequest), (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge),
    (status = 422, response = Unprocessable),
))]
pub async fn put(
    State(state): State<AppState>,
    P(name): P<String>,
    JsonBody(body): JsonBody<PutEventType>,
) -> Result<(StatusCode, Json<EventTypeView>), Problem> {
    check_name(&name)?;
    let mut errors = Vec::new();
    if body.description.chars().count() > MAX_DESCRIPTION_LEN {
        errors.push(FieldError::new("description", format!("at most {MAX_DESCRIPTION_LEN} characters")));
    }
    let example = body.example.map(|e| e.get().trim().to_owned());
    if let Some(ex) = &example {
        if ex.len() > MAX_EXAMPLE_BYTES {
            errors.push(FieldError::new("example", format!("at most {MAX_EXAMPLE_BYTES} bytes")));
        } else if !ex.starts_with('{') {
            errors.push(FieldError::new("example", "must be a JSON object (an example payload)"));
        }
    }
    let schema_text = body.schema.map(|s| s.get().trim().to_owned());
    let mut schema = None;
    if let Some(text) = &schema_text {
        if text.len() > MAX_SCHEMA_BYTES {
            errors.push(FieldError::new("schema", format!("at most {MAX_SCHEMA_BYTES} bytes")));
        } else {
            match PayloadSchema::compile_text(text) {
                Ok(s) => schema = Some(s),
                Err(e) => errors.push(FieldError::new("schema", format!("not a usable JSON Schema: {e}"))),
            }
        }
    }
    // An example the schema would refuse at ingest documents nothing; say so now.
    if let (Some(s), Some(ex)) = (&schema, &example)
        && errors.is_empty()
    {
        let value: serde_json::Value = serde_json::from_str(ex)
            .map_err(|e| Problem::invalid_field("example", format!("not JSON: {e}")))?;
        for v in s.violations(&value) {
            errors.push(FieldError::new(
                format!("example{}", v.pointer),
                format!("does not satisfy the schema: {}", v.message),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let now = crate::time::now_ms();
    let (rec, created) = state.registry.mutate(|reg, store| -> Result<(EventTypeRecord, bool), Problem> {
        let existing = reg.event_type(&name);
        let rec = EventTypeRecord {
            name: name.clone(),
            description: body.description,
            schema: schema_text,
            example,
            deprecated: body.deprecated,
            created_at: existing.map_or(now, |e| e.created_at),
            updated_at: now,
        };
        let created = existing.is_none();
        store.put_event_type(&rec)?;
        reg.put_event_type(rec.clone(), schema);
        Ok((rec, created))
    })?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(EventTypeView::from(&rec))))
}

#[utoipa::path(get, path = "/v1/event-types", tag = "event-types", params(Page), responses(
    (status = 200, description = "The catalog, by name.", body = ListView<EventTypeView>),
    (status = 400, response = BadRequest), (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    Q(page): Q<Page>,
) -> Result<Json<ListView<EventTypeView>>, Problem> {
    let limit = page.limit()?;
    let snapshot = state.registry.snapshot();
    let mut data: Vec<EventTypeView> = snapshot
        .event_types()
        .filter(|t| page.cursor.as_deref().is_none_or(|c| t.name.as_str() > c))
        .take(limit + 1)
        .map(|t| EventTypeView::from(t.as_ref()))
        .collect();
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|t| t.name.clone())
    } else {
        None
    };
    Ok(Json(ListView { data, next_cursor }))
}

#[utoipa::path(get, path = "/v1/event-types/{name}", tag = "event-types", params(("name" = String, Path, description = "The event type, e.g. `ticket.created`.")), responses(
    (status = 200, description = "The entry.", body = EventTypeView), (status = 404, response = NotFound),
))]
pub async fn get(State(state): State<AppState>, P(name): P<String>) -> Result<Json<EventTypeView>, Problem> {
    let snapshot = state.registry.snapshot();
    snapshot
        .event_type(&name)
        .map(|t| Json(EventTypeView::from(t.as_ref())))
        .ok_or_else(|| Problem::not_found("event type"))
}

#[utoipa::path(delete, path = "/v1/event-types/{name}", tag = "event-types", params(("name" = String, Path, description = "The event type, e.g. `ticket.created`.")), responses(
    (status = 204, description = "Deleted."), (status = 404, response = NotFound),
))]
pub async fn delete(State(state): State<AppState>, P(name): P<String>) -> Result<StatusCode, Problem> {
    let deleted = state.registry.mutate(|reg, store| -> Result<bool, Problem> {
        if reg.event_type(&name).is_none() {
            return Ok(false);
        }
        store.delete_event_type(&name)?;
        reg.remove_event_type(&name);
        Ok(true)
    })?;
    if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(Problem::not_found("event type")) }
}
