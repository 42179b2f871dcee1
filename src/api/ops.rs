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
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: started, not shutting down, and the log accepts writes.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ready = state.ready.load(Ordering::Acquire);
    let log_full = state.log_full.load(Ordering::Acquire);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready, "log_full": log_full}))).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
                .into_response()
        }
        None => Problem::not_found("route").into_response(),
    }
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
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or(crate::metrics::UNMATCHED_ROUTE);
    crate::metrics::http_request(route, &method, resp.status().as_u16(), started.elapsed());
    resp
}
