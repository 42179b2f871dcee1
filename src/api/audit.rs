//! The audit trail: who changed what, when, from where.
//!
//! [`record`] sits behind authentication on every `/v1` route but event ingest (data, not
//! configuration, and too hot to log per request: the router leaves it out) and keeps one
//! [`AuditRecord`] per authenticated write (`POST`, `PUT`, `PATCH`, `DELETE`), whatever its outcome —
//! refused writes are part of the story. Unauthenticated requests leave nothing (they would let
//! anyone fill the trail). The record holds the route, the path as sent, the tenant and the object's
//! id (from the path, or the `id` a create answered with); never a body, so never a secret.
//!
//! The record is written after the handler answered and made durable before the answer leaves, so a
//! write the caller saw succeed is in the trail; if the trail cannot be written the answer still goes
//! out (the change is made) and the failure is logged.
//!
//! `GET /v1/audit` lists the trail newest first (`admin` scope). A tenant-bound key sees only its own
//! tenant's entries.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Principal, forbidden};
use super::extract::{Page, Q, time_param};
use super::openapi::{BadRequest, Unprocessable};
use super::problem::Problem;
use super::views::ListView;
use crate::ids::AuditId;
use crate::model::AuditRecord;
use crate::store::AuditFilter;
use crate::time::format_ms;

/// Most of a create's answer read to find its `id` (answers are small; a larger one is not parsed).
const MAX_ANSWER_READ: usize = 256 * 1024;

fn is_write(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The middleware: runs the request, then appends its record.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !is_write(req.method()) {
        return next.run(req).await;
    }
    // A full disk refuses every write up front (see `store::space`): one that began would have to be
    // undone, and its audit record could not be written either. The body is read first: refusing
    // with it unread would leave the connection unusable under a client still sending.
    let verdict = state.capacity.verdict();
    if verdict.writes_refused() {
        let reason = verdict.reason().unwrap_or("the disk is full");
        if let Err(refused) = super::extract::read_body(req, state.config.limits.max_event_bytes.0).await {
            return refused.into_response();
        }
        return Problem::unavailable(format!("{reason}: nothing was changed"), verdict.retry_after())
            .into_response();
    }
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let principal = req.extensions().get::<Principal>().cloned();
    let (Some(route), Some(principal)) = (route, principal) else { return next.run(req).await };
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let (mut parts, body) = req.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &state).await.ok();
    let param = |name: &str| {
        params.as_ref().and_then(|p| p.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_owned()))
    };
    let tenant = param("tenant").or_else(|| principal.tenant.as_ref().map(|t| t.id.clone()));
    let mut target = param("id").or_else(|| param("name"));
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    let response = if status == StatusCode::CREATED && target.is_none() {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, MAX_ANSWER_READ).await {
            Ok(bytes) => {
                target = created_id(&bytes);
                Response::from_parts(parts, Body::from(bytes))
            }
            // Only a body that failed mid-way (or is past the cap) gets here; the answer is lost either
            // way, so say so plainly.
            Err(e) => {
                tracing::error!(error = %e, route = %route, "cannot read a create's answer for the audit trail");
                Problem::internal(&std::io::Error::other("answer lost")).into_response()
            }
        }
    } else {
        response
    };
    let rec = AuditRecord {
        at: crate::time::now_ms(),
        actor: principal.who(),
        client_ip: principal.client_ip.map(|ip| ip.to_string()),
        method,
        route,
        path,
        tenant,
        target,
        status: status.as_u16(),
    };
    let id = state.ids.next();
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.append_audit(id, &rec)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot append to the audit trail"),
        Err(e) => tracing::error!(error = %e, "the audit trail writer failed"),
    }
    response
}

/// The `id` member of a JSON object answer.
fn created_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Created {
        id: Option<serde_json::Value>,
    }
    let created: Created = serde_json::from_slice(body).ok()?;
    match created.id? {
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub actor: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: AuditId,
    pub at: String,
    pub actor: String,
    pub client_ip: Option<String>,
    pub method: String,
    pub route: String,
    pub path: String,
    pub tenant: Option<String>,
    pub target: Option<String>,
    pub status: u16,
}

impl AuditView {
    fn new(id: u64, r: AuditRecord) -> AuditView {
        AuditView {
            id: AuditId(id),
            at: format_ms(r.at),
            actor: r.actor,
            client_ip: r.client_ip,
            method: r.method,
            route: r.route,
            path: r.path,
            tenant: r.tenant,
            target: r.target,
            status: r.status,
        }
    }
}

/// `GET /v1/audit`: newest first; `tenant`, `actor` (`admin token` or a `key_…` id), `since`, `until`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), responses(
    (status = 200, description = "Newest first.", body = ListView<AuditView>),
    (status = 400, response = BadRequest), (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Q(q): Q<AuditQuery>,
) -> Result<Json<ListView<AuditView>>, Problem> {
    let limit = Page { limit: q.limit.clone(), cursor: None }.limit()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            AuditId::parse(c)
                .map(|a| a.0)
                .ok_or_else(|| Problem::invalid_field("cursor", "not a cursor of this list"))
        })
        .transpose()?;
    let tenant = match (&principal.tenant, q.tenant) {
        (None, t) => t,
        (Some(own), None) => Some(own.id.clone()),
        (Some(own), Some(t)) if t == own.id => Some(t),
        (Some(_), Some(_)) => return Err(forbidden("this key reads its own tenant's audit trail only")),
    };
    let filter = AuditFilter {
        tenant,
        actor: q.actor,
        since_ms: time_param("since", q.since.as_deref())?,
        until_ms: time_param("until", q.until.as_deref())?,
    };
    let store = state.store.clone();
    let (items, next) = tokio::task::spawn_blocking(move || store.list_audit(&filter, before, limit))
        .await
        .map_err(|e| Problem::internal(&e))??;
    Ok(Json(ListView {
        data: items.into_iter().map(|(id, r)| AuditView::new(id, r)).collect(),
        next_cursor: next.map(|id| AuditId(id).to_string()),
    }))
}
