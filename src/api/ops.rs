//! Operational routes: liveness, readiness, metrics, the fallbacks, and the request metrics middleware.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::{Layer, Service};

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
///
/// A server error is also logged, with the method, path (never the query string) and peer: the request
/// span that would carry them is debug-only (see `server::serve`), so this line is what ties a
/// handler's error to its request at the default level. Not a `503`: that is deliberate back-pressure
/// (disk space, shutdown), logged once by its cause, and would otherwise flood the log at full rate.
///
/// A tower layer rather than `axum::middleware::from_fn`: every request passes here, and `from_fn`
/// boxes the inner service's future and clones the boxed inner service per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Track;

impl<S> Layer<S> for Track {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner }
    }
}

/// A service wrapped by [`Track`].
#[derive(Clone, Debug)]
pub struct Tracked<S> {
    inner: S,
}

impl<S> Service<Request> for Tracked<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let seen = Seen {
            started: Instant::now(),
            route: req.extensions().get::<MatchedPath>().cloned(),
            peer: req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            method: req.method().clone(),
            uri: req.uri().clone(),
        };
        TrackedFuture { inner: self.inner.call(req), seen: Some(seen) }
    }
}

/// What [`Track`] notes of a request before it is handled.
struct Seen {
    started: Instant,
    route: Option<MatchedPath>,
    peer: Option<SocketAddr>,
    method: Method,
    uri: Uri,
}

impl Seen {
    fn answered(self, status: StatusCode) {
        let route = self.route.as_ref().map_or(crate::metrics::UNMATCHED_ROUTE, MatchedPath::as_str);
        let elapsed = self.started.elapsed();
        crate::metrics::http_request(route, &self.method, status.as_u16(), elapsed);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(
                method = %self.method,
                path = self.uri.path(),
                peer = self.peer.map(|p| p.to_string()).as_deref(),
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request answered with a server error"
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Tracked`] service: the inner one's, recorded when it answers.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
    }
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        // An error is not an answer (axum's services have none): the connection ends without one.
        if let (Ok(resp), Some(seen)) = (&answer, this.seen.take()) {
            seen.answered(resp.status());
        }
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    /// A writer the test reads back: every log line the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_server_error_is_logged_with_its_request_but_back_pressure_and_success_are_not() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let app = Router::new()
            .route("/v1/boom/{id}", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .route("/v1/busy", get(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route("/v1/fine", get(|| async { "fine" }))
            .layer(Track);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                for path in ["/v1/boom/x1?q=secret-search", "/v1/busy", "/v1/fine"] {
                    let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
                    req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 7], 4000))));
                    app.clone().oneshot(req).await.unwrap();
                }
            });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        for part in [
            "WARN",
            "request answered with a server error",
            "method=GET",
            "path=\"/v1/boom/x1\"",
            "peer=\"127.0.0.7:4000\"",
            "status=500",
        ] {
            assert!(lines[0].contains(part), "{part} missing: {text}");
        }
        assert!(!text.contains("secret-search"), "the query string reached the log: {text}");
    }
}
