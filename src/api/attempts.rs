//! `/v1/tenants/{tenant}/attempts`: the delivery history, one entry per HTTP request made.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::extract::{P, Page, Q, Tenant};
use super::openapi::{BadRequest, NotFound, TenantPath, Unprocessable};
use super::problem::Problem;
use super::views::{AttemptView, ListView};
use crate::deliver::request;
use crate::ids::{AttemptId, EndpointId, EventId};
use crate::model::{AttemptRecord, EventRecord, HttpMethod};
use crate::store::AttemptFilter;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only attempts to this endpoint (`ep_…`).
    pub endpoint_id: Option<String>,
    /// Only attempts carrying this event (`evt_…`).
    pub event_id: Option<String>,
    /// `succeeded` or `failed`: the attempt's own outcome.
    pub status: Option<String>,
}

/// Newest first; filtered by endpoint, event and the attempt's own outcome.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/attempts", tag = "attempts", params(TenantPath, Page, ListQuery),
    responses(
        (status = 200, description = "Newest first.", body = ListView<AttemptView>),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Q(page): Q<Page>,
    Q(q): Q<ListQuery>,
) -> Result<Json<ListView<AttemptView>>, Problem> {
    let limit = page.limit()?;
    let before = page
        .cursor
        .as_deref()
        .map(|c| {
            AttemptId::parse(c)
                .map(|a| a.0)
                .ok_or_else(|| Problem::invalid_field("cursor", "not a cursor of this list"))
        })
        .transpose()?;
    let endpoint = match q.endpoint_id.as_deref() {
        None => None,
        Some(e) => {
            let id = EndpointId::parse(e)
                .ok_or_else(|| Problem::invalid_field("endpoint_id", "not an endpoint id"))?
                .0;
            // Another tenant's endpoint looks like a missing one.
            if state.registry.snapshot().tenant_endpoint(tenant.serial, id).is_none() {
                return Err(Problem::not_found("endpoint"));
            }
            Some(id)
        }
    };
    let event = q
        .event_id
        .as_deref()
        .map(|e| {
            EventId::parse(e)
                .map(|id| id.0)
                .ok_or_else(|| Problem::invalid_field("event_id", "not an event id"))
        })
        .transpose()?;
    let succeeded = match q.status.as_deref() {
        None => None,
        Some("succeeded") => Some(true),
        Some("failed") => Some(false),
        Some(_) => return Err(Problem::invalid_field("status", "must be succeeded or failed")),
    };
    let filter = AttemptFilter { endpoint, event, succeeded };
    let store = state.store.clone();
    let (items, next) =
        tokio::task::spawn_blocking(move || store.list_attempts(tenant.serial, &filter, before, limit))
            .await
            .map_err(|e| Problem::internal(&e))??;
    Ok(Json(ListView {
        data: items.iter().map(|(id, a)| AttemptView::new(*id, a, false)).collect(),
        next_cursor: next.map(|id| AttemptId(id).to_string()),
    }))
}

/// One attempt with the request headers as sent.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/attempts/{id}", tag = "attempts", params(TenantPath, ("id" = crate::ids::AttemptId, Path, description = "The attempt's id.")),
    responses(
        (status = 200, description = "With the request headers and body as sent.", body = AttemptView),
        (status = 404, response = NotFound),
))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<Json<AttemptView>, Problem> {
    let id = AttemptId::parse(&id).ok_or_else(|| Problem::not_found("attempt"))?.0;
    let a = state.store.attempt(tenant.serial, id)?.ok_or_else(|| Problem::not_found("attempt"))?;
    let mut view = AttemptView::new(id, &a, true);
    view.request_body = request_body(&state, tenant.serial, &a)?;
    Ok(Json(view))
}

/// The body as sent. A `GET` has none; a templated body was kept with the attempt; any other body is
/// rebuilt from the stored events rather than stored again with every attempt: it is a pure function of
/// the events and the format (recorded in the attempt's `content-type`). `None` once retention has
/// purged the events.
fn request_body(state: &AppState, tenant: u64, a: &AttemptRecord) -> Result<Option<String>, Problem> {
    if a.method == HttpMethod::Get {
        return Ok(Some(String::new()));
    }
    if let Some(body) = &a.request_body {
        return Ok(Some(body.clone()));
    }
    let mut events = Vec::with_capacity(a.events.len());
    for id in &a.events {
        match state.store.event(tenant, *id)? {
            Some(ev) => events.push((*id, ev)),
            None => return Ok(None),
        }
    }
    let refs: Vec<(u64, &EventRecord)> = events.iter().map(|(id, e)| (*id, e)).collect();
    let json = request::body(&refs, a.batch);
    let form = a.request_headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("content-type") && v.starts_with("application/x-www-form-urlencoded")
    });
    Ok(Some(if form { request::form_body(&json) } else { json }))
}
