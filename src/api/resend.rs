//! Re-sends, recovery and statistics: what support staff do about deliveries.
//!
//! - `POST …/attempts/{id}/resend` sends that attempt's delivery again (same `webhook-id`, same events);
//! - `POST …/events/{id}/resend` `{"endpoint_id"?}` sends an event again to one or all of its endpoints;
//! - `POST …/endpoints/{id}/recover` `{"since", "until"?}` puts every failed delivery of the window back
//!   in the queue;
//! - `GET …/endpoints/{id}/stats`.
//!
//! An endpoint's delivery state belongs to its dispatcher, so re-sends and recoveries are commands to it
//! (see `deliver::feed::Command`): they respect its rate limit and concurrency, and a re-send that
//! succeeds settles the delivery (a failed one becomes succeeded, a pending retry is cancelled).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::AppState;
use super::extract::{P, Tenant};
use super::openapi::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout, TenantPath, Unavailable, Unprocessable,
};
use super::problem::Problem;
use super::views::AttemptView;
use crate::deliver::feed::{Command, ManualOutcome};
use crate::deliver::stats::{self, WindowStats};
use crate::ids::{AttemptId, EndpointId, EventId};
use crate::model::Trigger;
use crate::store::history_id_floor;
use crate::time::format_ms;

/// How long a re-send may wait for its turn at the dispatcher, on top of the endpoint's timeout, before
/// the answer says it is still queued.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

/// One delivery to send again.
struct Target {
    endpoint: u64,
    webhook_id: u64,
    batch_id: Option<u64>,
    events: Vec<u64>,
}

/// How a re-send went: the attempt, or still queued when the answer was due.
enum Sent {
    Attempt(Box<AttemptView>),
    Queued(u64),
}

/// Hands the re-send to the endpoint's dispatcher and waits (bounded) for its attempt.
async fn resend(state: &AppState, tenant: u64, target: Target) -> Result<Sent, Problem> {
    let snapshot = state.registry.snapshot();
    let entry =
        snapshot.tenant_endpoint(tenant, target.endpoint).ok_or_else(|| Problem::not_found("endpoint"))?;
    if !entry.record.enabled {
        return Err(Problem::conflict("the endpoint is disabled: enable it to re-send"));
    }
    let wait = Duration::from_millis(entry.record.timeout_ms) + QUEUE_WAIT;
    let feed = state
        .progress
        .feed(target.endpoint)
        .ok_or_else(|| Problem::unavailable("the endpoint's dispatcher is starting", 1))?;
    let (reply, answer) = oneshot::channel::<ManualOutcome>();
    let command = Command::Resend {
        webhook_id: target.webhook_id,
        batch_id: target.batch_id,
        events: target.events,
        reply,
    };
    if feed.submit(command).is_err() {
        return Err(Problem::unavailable("too many re-sends wait for this endpoint", 5));
    }
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(Ok((id, attempt)))) => Ok(Sent::Attempt(Box::new(AttemptView::new(id, &attempt, true)))),
        Ok(Ok(Err(why))) => Err(Problem::conflict(format!("not re-sent: {why}"))),
        Ok(Err(_)) => Err(Problem::unavailable("the endpoint's dispatcher stopped", 1)),
        Err(_) => Ok(Sent::Queued(target.endpoint)),
    }
}

/// A re-send not finished when the answer was due: it is still queued and will show in the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedView {
    pub queued: bool,
    pub endpoint_id: EndpointId,
}

/// `POST …/attempts/{id}/resend`: 200 with the new attempt (`trigger: manual`), or 202 while it is
/// still queued behind the endpoint's other requests.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/attempts/{id}/resend", tag = "attempts",
    params(TenantPath, ("id" = AttemptId, Path, description = "The attempt whose delivery to send again.")),
    responses(
        (status = 200, description = "The new attempt (trigger manual), whatever the receiver answered.", body = AttemptView),
        (status = 202, description = "Still queued at the endpoint when the answer was due.", body = QueuedView),
        (status = 404, response = NotFound), (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
))]
pub async fn resend_attempt(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<Response, Problem> {
    let id = AttemptId::parse(&id).ok_or_else(|| Problem::not_found("attempt"))?.0;
    let a = state.store.attempt(tenant.serial, id)?.ok_or_else(|| Problem::not_found("attempt"))?;
    if a.trigger == Trigger::Test {
        return Err(Problem::conflict("a test send belongs to no delivery: send a new test instead"));
    }
    let target = Target {
        endpoint: a.endpoint_id,
        webhook_id: a.webhook_id,
        batch_id: a.batch.then_some(a.webhook_id),
        events: a.events,
    };
    Ok(match resend(&state, tenant.serial, target).await? {
        Sent::Attempt(view) => (StatusCode::OK, Json(*view)).into_response(),
        Sent::Queued(ep) => {
            (StatusCode::ACCEPTED, Json(QueuedView { queued: true, endpoint_id: EndpointId(ep) }))
                .into_response()
        }
    })
}

/// The body of an event re-send; optional as a whole.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventResendIn {
    /// Only to this endpoint (`ep_…`); absent: to every endpoint the event was routed to.
    pub endpoint_id: Option<String>,
}

/// What an event re-send did at each endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventResendView {
    /// The attempts made, by endpoint id.
    pub data: Vec<AttemptView>,
    /// Endpoints where the re-send was still queued when the answer was due.
    pub queued: Vec<EndpointId>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Skipped {
    pub endpoint_id: EndpointId,
    pub reason: String,
}

/// `POST …/events/{id}/resend` `{"endpoint_id"?}`: the event again to that endpoint, or to every
/// endpoint it was routed to (disabled ones and batch endpoints that have not sent it yet are listed
/// as skipped). A batch endpoint gets the batch that carried the event, under the batch's id.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events/{id}/resend", tag = "events",
    params(TenantPath, ("id" = EventId, Path, description = "The event to send again.")),
    request_body(content = Option<EventResendIn>, description = "Optional; without it, every endpoint."),
    responses(
        (status = 200, description = "The attempts made.", body = EventResendView),
        (status = 202, description = "Some re-sends were still queued when the answer was due.", body = EventResendView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 409, response = Conflict), (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable), (status = 503, response = Unavailable),
))]
pub async fn resend_event(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    // The body is optional: none (or whitespace) re-sends to every endpoint.
    let body: EventResendIn = if body.iter().all(u8::is_ascii_whitespace) {
        EventResendIn::default()
    } else {
        super::extract::parse_json(&body)?
    };
    let id = EventId::parse(&id).ok_or_else(|| Problem::not_found("event"))?.0;
    let ev = state.store.event(tenant.serial, id)?.ok_or_else(|| Problem::not_found("event"))?;
    let snapshot = state.registry.snapshot();
    let only = match body.endpoint_id.as_deref() {
        None => None,
        Some(e) => {
            let ep = EndpointId::parse(e)
                .ok_or_else(|| Problem::invalid_field("endpoint_id", "not an endpoint id"))?
                .0;
            if snapshot.tenant_endpoint(tenant.serial, ep).is_none() {
                return Err(Problem::not_found("endpoint"));
            }
            if !ev.routes.contains(&ep) {
                return Err(Problem::invalid_field(
                    "endpoint_id",
                    "the event was not routed to this endpoint",
                ));
            }
            Some(ep)
        }
    };
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for ep in ev.routes.iter().copied().filter(|ep| only.is_none_or(|o| o == *ep)) {
        let Some(entry) = snapshot.tenant_endpoint(tenant.serial, ep) else { continue };
        if !entry.record.enabled {
            if only.is_some() {
                return Err(Problem::conflict("the endpoint is disabled: enable it to re-send"));
            }
            skipped.push(Skipped { endpoint_id: EndpointId(ep), reason: "disabled".into() });
            continue;
        }
        match state.store.batch_of(ep, id)? {
            Some(batch) => match state.store.batch_events(tenant.serial, batch)? {
                Some(events) => {
                    targets.push(Target { endpoint: ep, webhook_id: batch, batch_id: Some(batch), events })
                }
                None => {
                    skipped.push(Skipped { endpoint_id: EndpointId(ep), reason: "batch not found".into() })
                }
            },
            None if entry.record.batch.is_some() => skipped
                .push(Skipped { endpoint_id: EndpointId(ep), reason: "not sent in a batch yet".into() }),
            None => targets.push(Target { endpoint: ep, webhook_id: id, batch_id: None, events: vec![id] }),
        }
    }
    if only.is_some() && targets.is_empty() {
        let reason = skipped.pop().map_or_else(String::new, |s| s.reason);
        return Err(Problem::conflict(format!("not re-sent: {reason}")));
    }
    let mut sends = tokio::task::JoinSet::new();
    for t in targets {
        let state = state.clone();
        let serial = tenant.serial;
        sends.spawn(async move { resend(&state, serial, t).await });
    }
    let mut attempts = Vec::new();
    let mut queued = Vec::new();
    while let Some(joined) = sends.join_next().await {
        match joined.map_err(|e| Problem::internal(&e))? {
            Ok(Sent::Attempt(view)) => attempts.push(view),
            Ok(Sent::Queued(ep)) => queued.push(EndpointId(ep)),
            Err(p) if only.is_some() => return Err(p),
            Err(p) => tracing::debug!(detail = %p.detail, "a re-send was refused"),
        }
    }
    attempts.sort_by_key(|a| a.endpoint_id.0);
    let status = if queued.is_empty() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let data = attempts.into_iter().map(|a| *a).collect();
    Ok((status, Json(EventResendView { data, queued, skipped })).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverIn {
    /// RFC 3339: deliveries of events (or batches) from this time on.
    pub since: String,
    /// RFC 3339, default now.
    pub until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoverView {
    /// Failed deliveries put back in the queue.
    pub requeued: usize,
    pub since: String,
    pub until: String,
}

/// `POST …/endpoints/{id}/recover` `{"since", "until"?}`: every delivery of the endpoint that failed
/// for good, for events (or batches) from `since` to `until` (default now), goes back in the queue, due
/// now; each gets one more attempt (`trigger: manual`). On a disabled endpoint they wait until it is
/// enabled. 202 with how many were re-queued.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{id}/recover", tag = "endpoints",
    params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")), request_body = RecoverIn,
    responses(
        (status = 202, description = "Re-queued; they go out as the endpoint's queue allows.", body = RecoverView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
))]
pub async fn recover(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let ep = EndpointId::parse(&id).ok_or_else(|| Problem::not_found("endpoint"))?.0;
    if state.registry.snapshot().tenant_endpoint(tenant.serial, ep).is_none() {
        return Err(Problem::not_found("endpoint"));
    }
    // Parsed after the lookup: another tenant's endpoint is a 404 whatever the body.
    let body: RecoverIn = super::extract::parse_json(&body)?;
    let since = super::extract::time_param("since", Some(&body.since))?.unwrap_or(0);
    let now = crate::time::now_ms();
    let until = super::extract::time_param("until", body.until.as_deref())?.unwrap_or(now);
    if since > now {
        return Err(Problem::invalid_field("since", "is in the future"));
    }
    if since > until {
        return Err(Problem::invalid_field("until", "is before since"));
    }
    let lo = history_id_floor(since);
    let hi = history_id_floor(until.saturating_add(1)).saturating_sub(1);
    let feed = state
        .progress
        .feed(ep)
        .ok_or_else(|| Problem::unavailable("the endpoint's dispatcher is starting", 1))?;
    let (reply, answer) = oneshot::channel();
    if feed.submit(Command::Recover { lo, hi, reply }).is_err() {
        return Err(Problem::unavailable("too many commands wait for this endpoint", 5));
    }
    let n = match tokio::time::timeout(QUEUE_WAIT, answer).await {
        Ok(Ok(Ok(n))) => n,
        Ok(Ok(Err(e))) => return Err(Problem::unavailable(format!("recover failed: {e}"), 1)),
        Ok(Err(_)) => return Err(Problem::unavailable("the endpoint's dispatcher stopped", 1)),
        Err(_) => return Err(Problem::unavailable("the endpoint's dispatcher is busy; try again", 5)),
    };
    let view = RecoverView { requeued: n, since: format_ms(since), until: format_ms(until) };
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WindowView {
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub error_rate: f64,
    /// Upper edge of the latency bucket (ms) holding the median / 99th percentile.
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
}

impl From<WindowStats> for WindowView {
    fn from(w: WindowStats) -> WindowView {
        WindowView {
            attempts: w.attempts(),
            succeeded: w.succeeded,
            failed: w.failed,
            error_rate: w.error_rate(),
            latency_p50_ms: w.p50_ms,
            latency_p99_ms: w.p99_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub endpoint_id: EndpointId,
    /// `enabled` or `disabled`.
    pub state: &'static str,
    pub disabled_reason: Option<String>,
    pub last_triggered_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    /// When the current run of failures began; `null` when the last attempt succeeded.
    pub failing_since: Option<String>,
    pub last_hour: WindowView,
    pub last_day: WindowView,
    /// Deliveries waiting: first attempts not made yet plus retries scheduled.
    pub queue_depth: u64,
    /// The queue is deeper than counted (the endpoint is behind the log, or more than 100,000 retries
    /// wait).
    pub queue_depth_is_lower_bound: bool,
    pub retries_waiting: u64,
    pub oldest_pending_at: Option<String>,
    pub oldest_pending_age_ms: Option<u64>,
    pub next_retry_at: Option<String>,
}

/// Retry-queue entries counted for the stats; past it the depth is a lower bound.
const MAX_COUNTED_RETRIES: usize = 100_000;

/// `GET …/endpoints/{id}/stats`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{id}/stats", tag = "endpoints",
    params(TenantPath, ("id" = EndpointId, Path, description = "The endpoint's id.")),
    responses(
        (status = 200, description = "Health, counts over the last hour and day, and the queue.", body = StatsView),
        (status = 404, response = NotFound),
))]
pub async fn endpoint_stats(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    P((_, id)): P<(String, String)>,
) -> Result<Json<StatsView>, Problem> {
    let ep = EndpointId::parse(&id).ok_or_else(|| Problem::not_found("endpoint"))?.0;
    let snapshot = state.registry.snapshot();
    let entry = snapshot.tenant_endpoint(tenant.serial, ep).ok_or_else(|| Problem::not_found("endpoint"))?;
    let feed = state.progress.feed(ep);
    let record = match &feed {
        Some(f) => f.stats_snapshot(),
        None => state.store.endpoint_stats(ep)?.unwrap_or_default(),
    };
    let waiting = feed.as_ref().map(|f| f.waiting()).unwrap_or_default();
    let store = state.store.clone();
    let (retries, first_due) = tokio::task::spawn_blocking(move || {
        let n = store.due_count(ep, MAX_COUNTED_RETRIES);
        store.due(ep, 1).map(|d| (n, d.first().copied()))
    })
    .await
    .map_err(|e| Problem::internal(&e))??;
    // The oldest retry's delivery is as old as its webhook id (an event's or a batch's, both from the
    // id clock); the retry queue is ordered by due time, so its first entry is a good approximation.
    let now = crate::time::now_ms();
    let oldest_ms = [waiting.oldest_event, first_due.map(|(_, w)| w)]
        .into_iter()
        .flatten()
        .map(|id| (id >> 12) / 1000)
        .min();
    Ok(Json(StatsView {
        endpoint_id: EndpointId(ep),
        state: if entry.record.enabled { "enabled" } else { "disabled" },
        disabled_reason: entry.record.disabled_reason.clone(),
        last_triggered_at: record.last_triggered_at.map(format_ms),
        last_success_at: record.last_success_at.map(format_ms),
        last_failure_at: record.last_failure_at.map(format_ms),
        failing_since: record.failing_since.map(format_ms),
        last_hour: stats::last_hour(&record, now).into(),
        last_day: stats::last_day(&record, now).into(),
        queue_depth: waiting.first_attempts + retries as u64,
        queue_depth_is_lower_bound: waiting.lagging || retries >= MAX_COUNTED_RETRIES,
        retries_waiting: retries as u64,
        oldest_pending_at: oldest_ms.map(format_ms),
        oldest_pending_age_ms: oldest_ms.map(|t| now.saturating_sub(t)),
        next_retry_at: first_due.map(|(due, _)| format_ms(due)),
    }))
}
