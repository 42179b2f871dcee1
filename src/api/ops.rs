//! Operational routes: liveness, readiness, metrics, the fallbacks, and the request metrics middleware.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::problem::Problem;

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process serves HTTP.", body = super::openapi::Health)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: started, not shutting down, and ingest accepts events (disk space: see [`crate::capacity`]).
/// A 503 names its reason, so that an operator reading a load balancer's probe knows what to fix.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: ingest accepts events.", body = super::openapi::Readiness),
    (status = 503, description = "Not ready: shutting down, or ingest paused for disk space; `reason` says which.",
        body = super::openapi::Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let serving = state.ready.load(Ordering::Acquire);
    let verdict = state.capacity.verdict();
    let reason = if serving { verdict.reason() } else { Some("hookd is shutting down") };
    let ready = reason.is_none();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"ready": ready, "log_full": verdict.log_full, "disk_low": verdict.disk_low});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    (status, Json(body)).into_response()
}

/// Prometheus metrics; here unless `server.metrics_listen` gives them their own address.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain"),
    (status = 404, response = super::openapi::NotFound),
))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
                .into_response()
        }
        None => Problem::not_found("route").into_response(),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the API.", body = Object)))]
pub async fn openapi_json() -> Response {
    super::openapi::serve().await
}

pub async fn not_found() -> Problem {
    Problem::not_found("route")
}

pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not take that method",
    )
}

/// Counts and times every answered request by route template, method and status class
/// (`hookd_http_requests_total`, `hookd_http_request_seconds`). The template, never the path, is the
/// label, and unmatched paths share one value: the series are bounded by the routes hookd declares.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or(crate::metrics::UNMATCHED_ROUTE, MatchedPath::as_str);
    crate::metrics::http_request(route, &method, resp.status().as_u16(), started.elapsed());
    resp
}
