//! `/v1/tenants/{tenant}/events`: ingest (the hot path) and the event log.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::AppState;
use super::extract::{P, Page, Q, Tenant, read_body, time_param};
use super::openapi::{
    Accepted as AcceptedView, BadRequest, BatchAccepted, NotFound, PayloadTooLarge, RequestTimeout,
    TenantPath, Unavailable, Unprocessable,
};
use super::problem::Problem;
use super::views::{DeliveryView, EventView, ListView};
use crate::ids::{AttemptId, EventId};
use crate::ingest;
use crate::model::DeliveryState;
use crate::store::{Accepted, CommitError, EventFilter};
use crate::time::{display_ms, format_ms};

/// Refuses ingest while disk space is short (see [`crate::capacity`]): a load of a few atomics.
/// Called once the body is read: a refusal that leaves the body unread makes the connection unusable,
/// and closing it under a client still sending resets it, so the client may never see the 503 (the
/// full-disk fault test saw `IncompleteMessage` and broken pipes).
fn check_capacity(state: &AppState) -> Result<(), Problem> {
    let verdict = state.capacity.verdict();
    match verdict.reason() {
        Some(reason) => Err(Problem::unavailable(
            format!("{reason}: ingest is paused, retry later"),
            verdict.retry_after(),
        )),
        None => Ok(()),
    }
}

fn commit_problem(e: CommitError) -> Problem {
    match e {
        CommitError::Stopped => Problem::unavailable("hookd is shutting down", 5),
        CommitError::Store(e) => e.into(),
    }
}

/// A constant: looking a header up by `&str` parses the name on every request.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Problem::invalid_field("Idempotency-Key", "must be printable ASCII"))
        })
        .transpose()
}

/// An accepted event as answered (`AcceptedView` in the OpenAPI document). Ingest answers are
/// serialized straight from these, without a JSON tree in between: building one per event was ~10 %
/// of batch ingest's CPU.
#[derive(Serialize)]
struct AcceptedOut<'a> {
    id: EventId,
    received_at: &'a str,
}

/// The body of a single event's `202`, written directly rather than through `serde_json`: the same
/// bytes as serializing an [`AcceptedOut`] (neither an id's base32 nor an RFC 3339 time holds a
/// character JSON escapes) for a fraction of the instructions, on the answer hookd gives most.
fn accepted_body(a: &Accepted) -> Vec<u8> {
    use std::io::Write as _;
    let mut body = Vec::with_capacity(64);
    // Writing to a `Vec` cannot fail.
    let _ = write!(body, r#"{{"id":"{}","received_at":"{}"}}"#, EventId(a.id), display_ms(a.received_at));
    body
}

/// The `data` of a batch's answer. The events of a group share their `received_at`, so its text is
/// formatted once per run of equal times.
struct AcceptedList<'a>(&'a [Accepted]);

impl Serialize for AcceptedList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut time: Option<(u64, String)> = None;
        for a in self.0 {
            if time.as_ref().map(|(t, _)| *t) != Some(a.received_at) {
                time = Some((a.received_at, format_ms(a.received_at)));
            }
            let received_at = time.as_ref().map_or("", |(_, text)| text.as_str());
            seq.serialize_element(&AcceptedOut { id: EventId(a.id), received_at })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct BatchOut<'a> {
    data: AcceptedList<'a>,
}

/// `POST …/events`: 202 once the event is durable.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(TenantPath, ("Idempotency-Key" = Option<String>, Header,
        description = "The event's idempotency key (same as the body's `idempotency_key`).")),
    request_body(content = crate::ingest::EventIn, description = "Up to `limits.max_event_bytes` (1 MiB)."),
    responses(
        (status = 202, description = "Durable; will be delivered to every matching endpoint at least once. \
            A replay of an idempotency key answers the original with `idempotent-replayed: true`.",
            body = AcceptedView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
))]
pub async fn ingest_one(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    req: Request,
) -> Result<Response, Problem> {
    let key = idempotency_header(req.headers())?;
    let body = read_body(req, state.config.limits.max_event_bytes.0).await?;
    check_capacity(&state)?;
    let ev = ingest::parse_single(&body, key.as_deref())?;
    let prepared = ingest::prepare_one(&state.registry.snapshot(), tenant.serial, ev)?;
    let bytes = prepared.payload.len();
    let accepted = state.committer.commit(tenant.serial, vec![prepared]).await.map_err(commit_problem)?;
    let Some(a) = accepted.first() else {
        return Err(Problem::internal(&std::io::Error::other("the committer answered no event")));
    };
    let json = [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    let mut resp = (StatusCode::ACCEPTED, json, accepted_body(a)).into_response();
    if a.duplicate {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    } else {
        crate::metrics::ingested(1, bytes);
        crate::metrics::tenant_ingested(&tenant.id, 1);
    }
    Ok(resp)
}

/// `POST …/events/batch`: all events durable together, or none.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events/batch", tag = "events", params(TenantPath),
    request_body(content = crate::ingest::BatchIn, description = "Up to `limits.max_batch_bytes` (16 MiB)."),
    responses(
        (status = 202, description = "Every event durable.", body = BatchAccepted),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
))]
pub async fn ingest_batch(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    req: Request,
) -> Result<Response, Problem> {
    // One key cannot name many events; ignoring it would let a producer believe its retries are safe.
    if req.headers().contains_key(IDEMPOTENCY_KEY) {
        return Err(Problem::invalid_field(
            "Idempotency-Key",
            "not accepted on batch ingest: give each event its own idempotency_key",
        ));
    }
    let body = read_body(req, state.config.limits.max_batch_bytes.0).await?;
    check_capacity(&state)?;
    let batch = ingest::parse_batch(&body, state.config.limits.max_batch_events as usize)?;
    let prepared = ingest::prepare_batch(&state.registry.snapshot(), tenant.serial, batch)?;
    let sizes: Vec<usize> = prepared.iter().map(|p| p.payload.len()).collect();
    let accepted = state.committer.commit(tenant.serial, prepared).await.map_err(commit_problem)?;
    // Replayed duplicates are not ingested again, in events or in bytes (as for single events).
    let (fresh, bytes) = accepted
        .iter()
        .zip(&sizes)
        .filter(|(a, _)| !a.duplicate)
        .fold((0, 0), |(n, b), (_, size)| (n + 1, b + size));
    crate::metrics::ingested(fresh, bytes);
    crate::metrics::tenant_ingested(&tenant.id, fresh);
    Ok((StatusCode::ACCEPTED, Json(BatchOut { data: AcceptedList(&accepted) })).into_response())
}

/// `?…` of the event list; unknown parameters are refused (see [`Page`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only events on this channel.
    pub channel: Option<String>,
    /// RFC 3339: received at or after.
    pub since: Option<String>,
    /// RFC 3339: received before.
    pub until: Option<String>,
    /// 1 to 250; 50 when absent.
    pub limit: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// `GET …/events`: newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events", params(TenantPath, ListQuery),
    responses(
        (status = 200, description = "Newest first.", body = ListView<EventView>),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Q(mut q): Q<ListQuery>,
) -> Result<Json<ListView<EventView>>, Problem> {
    let page = Page { limit: q.limit.take(), cursor: q.cursor.take() };
    let limit = page.limit()?;
    let before = page
        .cursor
        .as_deref()
        .map(|c| {
            EventId::parse(c)
                .map(|id| id.0)
                .ok_or_else(|| Problem::invalid_field("cursor", "not a cursor of this list"))
        })
        .transpose()?;
    let filter = EventFilter {
        event_type: q.event_type,
        channel: q.channel,
        since_ms: time_param("since", q.since.as_deref())?,
        until_ms: time_param("until", q.until.as_deref())?,
    };
    let store = state.store.clone();
    let (events, next) =
        tokio::task::spawn_blocking(move || store.list_events(tenant.serial, &filter, before, limit))
            .await
            .map_err(|e| Problem::internal(&e))??;
    Ok(Json(ListView {
        data: events.iter().map(|(id, e)| EventView::new(*id, e)).collect(),
        next_cursor: next.map(|id| EventId(id).to_string()),
    }))
}

/// `GET …/events/{id}`: the event and where it stands at each endpoint it matched.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events/{id}", tag = "events", params(TenantPath, ("id" = crate::ids::EventId, Path, description = "The event's id.")),
    responses(
        (status = 200, description = "The event with `deliveries`.", body = EventView),
        (status = 404, response = NotFound), (status = 410, response = super::openapi::Damaged),
))]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<Json<EventView>, Problem> {
    let id = EventId::parse(&id).ok_or_else(|| Problem::not_found("event"))?.0;
    let ev = state.store.event(tenant.serial, id)?.ok_or_else(|| Problem::not_found("event"))?;
    let snapshot = state.registry.snapshot();
    let mut deliveries = Vec::with_capacity(ev.routes.len());
    for ep in &ev.routes {
        if snapshot.tenant_endpoint(tenant.serial, *ep).is_none() {
            continue; // deleted since
        }
        let batch = state.store.batch_of(*ep, id)?;
        let record = match state.store.delivery(*ep, id)? {
            Some(d) => Some(d),
            None => match batch {
                Some(batch) => state.store.delivery(*ep, batch)?,
                None => None,
            },
        };
        let view = match record {
            Some(d) => DeliveryView {
                endpoint_id: crate::ids::EndpointId(*ep),
                state: d.state,
                attempts: d.attempts,
                next_attempt_at: d.next_attempt_at.map(format_ms),
                last_attempt_id: d.last_attempt_id.map(AttemptId),
                batch_id: d.batch_id.map(crate::ids::BatchId),
            },
            None => {
                // No record: either its first attempt succeeded (the cursor passed it) or it is to come.
                let cursor = match state.progress.cursor(*ep) {
                    Some(c) => c,
                    None => state.store.cursor(*ep)?.unwrap_or(0),
                };
                let done = id <= cursor;
                let (attempts, last) = state.store.attempts_of(tenant.serial, batch.unwrap_or(id), *ep)?;
                DeliveryView {
                    endpoint_id: crate::ids::EndpointId(*ep),
                    state: if done { DeliveryState::Succeeded } else { DeliveryState::Pending },
                    attempts: (attempts as u32).max(u32::from(done)),
                    next_attempt_at: None,
                    last_attempt_id: last.map(AttemptId),
                    batch_id: batch.map(crate::ids::BatchId),
                }
            }
        };
        deliveries.push(view);
    }
    let mut view = EventView::new(id, &ev);
    view.deliveries = Some(deliveries);
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_answer_is_written_as_serde_would_write_it() {
        for (id, at) in
            [(0, 0), (1, 1_764_000_000_123), (u64::MAX, 253_402_300_799_999), (0x0123_4567_89ab_cdef, 999)]
        {
            let a = Accepted { id, received_at: at, duplicate: false };
            let text = format_ms(at);
            let expected = serde_json::to_vec(&AcceptedOut { id: EventId(id), received_at: &text }).unwrap();
            assert_eq!(String::from_utf8(accepted_body(&a)).unwrap(), String::from_utf8(expected).unwrap());
        }
    }
}
