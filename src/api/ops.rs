//! Operational routes: liveness, readiness, metrics, and the fallbacks.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
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
