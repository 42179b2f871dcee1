//! `/v1/tenants/{tenant}/attempts`: the delivery history, one entry per HTTP request made.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::extract::{P, Page, Q, Tenant, time_param};
use super::openapi::{BadRequest, NotFound, TenantPath, Unprocessable};
use super::problem::Problem;
use super::views::{AttemptView, ListView};
use crate::deliver::request;
use crate::ids::{AttemptId, EndpointId, EventId};
use crate::model::{AttemptRecord, EventRecord, HttpMethod};
use crate::store::{AttemptCursor, AttemptFilter, AttemptSort, HistoryError, Store, StoreError};

/// `?…` of the attempt list. Unknown parameters are refused: a misspelt filter must not quietly return
/// everything.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only attempts to this endpoint (`ep_…`).
    pub endpoint_id: Option<String>,
    /// Only attempts carrying this event (`evt_…`).
    pub event_id: Option<String>,
    /// `succeeded` or `failed`: the attempt's own outcome.
    pub status: Option<String>,
    /// RFC 3339; attempts sent at or after it.
    pub since: Option<String>,
    /// RFC 3339; attempts sent at or before it.
    pub until: Option<String>,
    /// Case-insensitive text in the URL, error, response body or a response header value, or an exact
    /// status code; at most 200 characters.
    pub q: Option<String>,
    /// `-sent_at` (default), `sent_at`, `status_code`, `-status_code`, `duration_ms`, `-duration_ms`.
    /// The time order is the order attempts were recorded (finished): as `sent_at`, except among
    /// attempts that were in flight together.
    pub sort: Option<String>,
    /// Page size, 1-250 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Longest `q=` text.
const MAX_QUERY_TEXT: usize = 200;

/// Filtered by endpoint, event, the attempt's own outcome, time window and text; sorted by `sort`
/// (`-sent_at`, the default, `sent_at`, `status_code`, `duration_ms`, or `-` either of the last two).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/attempts", tag = "attempts", params(TenantPath, ListQuery),
    responses(
        (status = 200, description = "In the order asked for (newest first by default).", body = ListView<AttemptView>),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Q(q): Q<ListQuery>,
) -> Result<Json<ListView<AttemptView>>, Problem> {
    let limit = Page { limit: q.limit.clone(), cursor: None }.limit()?;
    let sort = match q.sort.as_deref() {
        None => AttemptSort::default(),
        Some(s) => AttemptSort::parse(s).ok_or_else(|| {
            Problem::invalid_field(
                "sort",
                "must be one of sent_at, -sent_at, status_code, -status_code, duration_ms, -duration_ms",
            )
        })?,
    };
    let after = q.cursor.as_deref().map(|c| parse_cursor(c, sort)).transpose()?;
    let snapshot = state.registry.snapshot();
    let endpoint = match q.endpoint_id.as_deref() {
        None => None,
        Some(e) => {
            let id = EndpointId::parse(e)
                .ok_or_else(|| Problem::invalid_field("endpoint_id", "not an endpoint id"))?
                .0;
            // Another tenant's endpoint looks like a missing one.
            if snapshot.tenant_endpoint(tenant.serial, id).is_none() {
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
    let since_ms = time_param("since", q.since.as_deref())?;
    let until_ms = time_param("until", q.until.as_deref())?;
    if let (Some(s), Some(u)) = (since_ms, until_ms)
        && s > u
    {
        return Err(Problem::invalid_field("until", "is before since"));
    }
    let text = match q.q {
        Some(t) if t.chars().count() > MAX_QUERY_TEXT => {
            return Err(Problem::invalid_field("q", format!("at most {MAX_QUERY_TEXT} characters")));
        }
        Some(t) if t.trim().is_empty() => None,
        Some(t) => Some(t.trim().to_lowercase()),
        None => None,
    };
    let store = state.store.clone();
    let serial = tenant.serial;
    let (items, next) = tokio::task::spawn_blocking(move || {
        let webhooks = event.map(|ev| event_webhooks(&store, serial, ev)).transpose()?;
        let filter = AttemptFilter { endpoint, webhooks, succeeded, since_ms, until_ms, text, sort };
        store.list_attempts(serial, &filter, after, limit)
    })
    .await
    .map_err(|e| Problem::internal(&e))??;
    Ok(Json(ListView {
        data: items.iter().map(|(id, a)| AttemptView::new(*id, a, false)).collect(),
        next_cursor: next.map(format_cursor),
    }))
}

/// The webhook ids an event was sent under: its own id, and the batches that carried it.
fn event_webhooks(store: &Store, tenant: u64, event: u64) -> Result<Vec<(u64, Option<u64>)>, HistoryError> {
    let mut out = vec![(event, None)];
    // A damaged event's routes are in its damaged bytes: its own id is all that can be looked up.
    let ev = match store.event(tenant, event) {
        Err(StoreError::Damaged(_)) => None,
        read => read?,
    };
    if let Some(ev) = ev {
        for ep in ev.routes {
            if let Some(batch) = store.batch_of(ep, event)? {
                out.push((batch, Some(ep)));
            }
        }
    }
    Ok(out)
}

/// A cursor is the last attempt's id, preceded by its sort value for the value sorts (`503.att_…`).
fn format_cursor(c: AttemptCursor) -> String {
    match c.value {
        Some(v) => format!("{v}.{}", AttemptId(c.id)),
        None => AttemptId(c.id).to_string(),
    }
}

fn parse_cursor(text: &str, sort: AttemptSort) -> Result<AttemptCursor, Problem> {
    let bad = || Problem::invalid_field("cursor", "not a cursor of this list (with this sort)");
    let valued = sort.by_value();
    let (value, id) = match (valued, text.split_once('.')) {
        (true, Some((v, id))) => (Some(v.parse::<u64>().map_err(|_| bad())?), id),
        (false, None) => (None, text),
        _ => return Err(bad()),
    };
    Ok(AttemptCursor { value, id: AttemptId::parse(id).ok_or_else(bad)?.0 })
}

/// One attempt with the request headers as sent.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/attempts/{id}", tag = "attempts", params(TenantPath, ("id" = crate::ids::AttemptId, Path, description = "The attempt's id.")),
    responses(
        (status = 200, description = "With the request headers and body as sent.", body = AttemptView),
        (status = 404, response = NotFound), (status = 410, response = super::openapi::Damaged),
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
        match state.store.event(tenant, *id) {
            Ok(Some(ev)) => events.push((*id, ev)),
            // Purged, or damaged: the body cannot be rebuilt; the attempt itself is still shown.
            Ok(None) | Err(StoreError::Damaged(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    let refs: Vec<(u64, &EventRecord)> = events.iter().map(|(id, e)| (*id, e)).collect();
    let json = request::body(&refs, a.batch);
    let form = a.request_headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("content-type") && v.starts_with("application/x-www-form-urlencoded")
    });
    Ok(Some(if form { request::form_body(&json) } else { json }))
}
