//! The HTTP API (axum): the contract in `API.md`, one file per resource.
//!
//! Every error is a [`problem::Problem`]; every `/v1` route needs a bearer token — the operator's admin
//! token or a scoped API key — and is listed in [`auth::ROUTES`], which says what it needs. Every route is
//! also documented in [`openapi::ApiDoc`] (served at `/openapi.json`); see there how to add one.

pub mod activity;
pub mod api_keys;
pub mod attempts;
pub mod audit;
pub mod auth;
pub mod endpoints;
pub mod event_types;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod resend;
pub mod tenants;
pub mod views;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::deliver::Progress;
use crate::ids::IdGen;
use crate::registry::RegistryHandle;
use crate::store::{Committer, Store};

/// What every handler can reach; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub registry: RegistryHandle,
    pub committer: Committer,
    pub progress: Progress,
    pub ids: Arc<IdGen>,
    /// Rendered on `/metrics` (unless metrics have their own listener).
    pub metrics: Option<PrometheusHandle>,
    /// SHA-256 of the operator's admin token.
    pub admin_token_hash: [u8; 32],
    /// The outbound client (shared pools with the dispatchers), for test sends.
    pub client: crate::deliver::client::HttpClient,
    pub user_agent: http::HeaderValue,
    /// The API keys, read by [`auth::Authenticate`] on every request.
    pub keys: api_keys::KeyTable,
    /// Whether ingest may write (database cap, free disk space), refreshed by [`crate::capacity::watch`]:
    /// while it refuses, ingest answers 503 and `/readyz` too.
    pub capacity: Arc<crate::capacity::Gate>,
    /// Cleared when shutdown starts: `/readyz` answers 503.
    pub ready: AtomicBool,
    /// The live activity hub that `GET …/activity` streams read.
    pub activity: Arc<crate::activity::Activity>,
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    // The routes are declared with their `/v1` prefix rather than nested under it: a nested router
    // rewrites every request's URI to strip the prefix, a cost on the ingest path for nothing.
    let configuration = Router::new()
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route("/v1/tenants/{tenant}", get(tenants::get).patch(tenants::update).delete(tenants::delete))
        .route("/v1/event-types", get(event_types::list))
        .route(
            "/v1/event-types/{name}",
            get(event_types::get).put(event_types::put).delete(event_types::delete),
        )
        .route("/v1/tenants/{tenant}/events/{id}", get(events::get))
        .route("/v1/tenants/{tenant}/endpoints", post(endpoints::create).get(endpoints::list))
        .route(
            "/v1/tenants/{tenant}/endpoints/{id}",
            get(endpoints::get).patch(endpoints::update).delete(endpoints::delete),
        )
        .route("/v1/tenants/{tenant}/endpoints/{id}/secret", get(endpoints::secret))
        .route("/v1/tenants/{tenant}/endpoints/{id}/secret/rotate", post(endpoints::rotate_secret))
        .route("/v1/tenants/{tenant}/endpoints/{id}/test", post(endpoints::test_send))
        .route("/v1/tenants/{tenant}/attempts", get(attempts::list))
        .route("/v1/tenants/{tenant}/attempts/{id}", get(attempts::get))
        .route("/v1/tenants/{tenant}/attempts/{id}/resend", post(resend::resend_attempt))
        .route("/v1/tenants/{tenant}/events/{id}/resend", post(resend::resend_event))
        .route("/v1/tenants/{tenant}/endpoints/{id}/recover", post(resend::recover))
        .route("/v1/tenants/{tenant}/endpoints/{id}/stats", get(resend::endpoint_stats))
        .route("/v1/tenants/{tenant}/activity", get(activity::stream))
        .route("/v1/api-keys", post(api_keys::create).get(api_keys::list))
        .route("/v1/api-keys/{id}", get(api_keys::get).patch(api_keys::update).delete(api_keys::revoke))
        .route("/v1/api-keys/{id}/regenerate", post(api_keys::regenerate))
        .route("/v1/audit", get(audit::list))
        // Every authenticated write to these leaves an audit record. It runs after authentication,
        // added below (layers run outside in), and needs the principal that leaves.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::record));
    // Event ingest is data, not configuration, and too hot to log per request: outside the audit
    // trail (`GET …/events` shares the path; reads are never audited).
    let v1 = configuration
        .route("/v1/tenants/{tenant}/events", post(events::ingest_one).get(events::list))
        .route("/v1/tenants/{tenant}/events/batch", post(events::ingest_batch))
        .route_layer(auth::Authenticate::new(state.clone()));
    let mut app = v1
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi_json));
    if state.metrics.is_some() {
        app = app.route("/metrics", get(ops::metrics));
    }
    app.fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // Outermost: sees every answer, refusals and unmatched paths included.
        .layer(ops::Track)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::deliver::client::{ClientSettings, HttpClient};
    use crate::store::StoreSettings;

    const TOKEN: &str = "unit-test-admin-token";

    /// The real API state over a store in `dir`, with no dispatchers running.
    fn state(dir: &std::path::Path) -> AppState {
        let store = Store::open(&StoreSettings {
            data_dir: dir.to_path_buf(),
            durability: crate::config::Durability::Os,
            cache_bytes: 1 << 20,
            master_key: None,
        })
        .unwrap();
        let registry = RegistryHandle::load(&store).unwrap();
        let ids = Arc::new(IdGen::new(0));
        let (committer, _thread) = Committer::spawn(store.clone(), ids.clone(), Box::new(|_| {})).unwrap();
        let client = HttpClient::new(ClientSettings {
            connect_timeout: Duration::from_secs(1),
            max_response_body_bytes: 1024,
            allow_http: true,
            allow_private_destinations: true,
            private_allowlist: Vec::new(),
            user_agent: "test".into(),
        })
        .unwrap();
        let activity = Arc::new(crate::activity::Activity::new(2));
        let supervisor = crate::deliver::Supervisor::new(crate::deliver::Shared {
            store: store.clone(),
            registry: registry.clone(),
            client: client.clone(),
            ids: ids.clone(),
            user_agent: http::HeaderValue::from_static("test"),
            committed_upto: Default::default(),
            routed_upto: Default::default(),
            shutdown: Default::default(),
            notifier: Default::default(),
            disable_after_ms: 0,
            activity: activity.clone(),
        });
        AppState::new(Shared {
            config: Arc::new(Config::default()),
            keys: api_keys::KeyTable::load(&store).unwrap(),
            store,
            registry,
            committer,
            progress: supervisor.progress(),
            ids,
            metrics: None,
            admin_token_hash: auth::hash_token(TOKEN),
            client,
            user_agent: http::HeaderValue::from_static("test"),
            capacity: Default::default(),
            ready: AtomicBool::new(true),
            activity,
        })
    }

    async fn call(app: &Router, method: &Method, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))));
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The `/v1` route paths `router` declares, read from this file's source: axum cannot list a
    /// router's routes, and a route added there must not escape this test.
    fn declared_v1_paths() -> Vec<String> {
        let paths: BTreeSet<String> =
            declared_routes().into_iter().map(|(_, p)| p).filter(|p| p.starts_with("/v1/")).collect();
        assert!(paths.len() >= 10, "cannot read the routes from the source: {paths:?}");
        paths.into_iter().collect()
    }

    /// Every route (method, path) that `router` declares, read from this file's source, with the
    /// methods of each `.route("…", get(..).post(..))`.
    fn declared_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let start = source.find("pub fn router(").unwrap();
        let body = &source[start..start + source[start..].find("#[cfg(test)]").unwrap()];
        let method = regex::Regex::new(r"(?:^|[^:\w])(get|post|put|patch|delete)\(").unwrap();
        let path = regex::Regex::new(r#"^\s*"([^"]+)""#).unwrap();
        let mut routes = BTreeSet::new();
        for (at, call) in body.match_indices(".route(") {
            // The call's arguments: up to the parenthesis that closes it.
            let args_start = at + call.len();
            let mut depth = 1;
            let len = body[args_start..]
                .char_indices()
                .find_map(|(i, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    (depth == 0).then_some(i)
                })
                .unwrap();
            let args = &body[args_start..args_start + len];
            let p = &path.captures(args).unwrap_or_else(|| panic!("no path in .route({args})"))[1];
            let before = routes.len();
            routes.extend(method.captures_iter(args).map(|m| (m[1].to_uppercase(), p.to_owned())));
            assert!(routes.len() > before, "no method read in .route({args})");
        }
        assert!(routes.len() >= 30, "cannot read the routes from the source: {routes:?}");
        routes
    }

    /// A route cannot be added without documenting it: the document and the router list the same
    /// (method, path) pairs, and the `/v1` ones are exactly those of `auth::ROUTES`.
    #[test]
    fn the_document_lists_exactly_the_routes_of_the_router() {
        let routes = declared_routes();
        let doc = serde_json::to_value(openapi::document()).unwrap();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().unwrap().keys();
                methods
                    .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                    .map(|m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let undocumented: Vec<_> = routes.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in the OpenAPI document (annotate the handler with #[utoipa::path] and list it \
             in openapi::ApiDoc's paths): {undocumented:?}"
        );
        let unserved: Vec<_> = documented.difference(&routes).collect();
        assert!(unserved.is_empty(), "documented but not served: {unserved:?}");
        let v1: BTreeSet<(String, String)> =
            routes.into_iter().filter(|(_, p)| p.starts_with("/v1/")).collect();
        let table: BTreeSet<(String, String)> =
            auth::ROUTES.iter().map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned())).collect();
        assert_eq!(v1, table, "the router's /v1 routes and auth::ROUTES differ");
    }

    #[tokio::test]
    async fn the_document_is_served_without_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        let (status, body) = call(&app, &Method::GET, "/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let served: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(served, serde_json::to_value(openapi::document()).unwrap());
    }

    fn concrete(path: &str) -> String {
        path.replace("{tenant}", "acme").replace("{id}", "x").replace("{name}", "x")
    }

    #[tokio::test]
    async fn the_table_lists_exactly_the_routes_of_the_router() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        let paths = declared_v1_paths();
        for path in &paths {
            for method in
                [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
            {
                let (status, body) = call(&app, &method, &concrete(path), Some(TOKEN)).await;
                let listed = auth::requirement(&method, path).is_some();
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    assert!(!listed, "{method} {path} is in the table but not served");
                    continue;
                }
                assert!(listed, "{method} {path} is served but not in auth::ROUTES");
                // The admin token passes every listed route: its handler answered, whatever it said.
                assert!(
                    !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
                    "{method} {path}: {status} {body}"
                );
                let (status, _) = call(&app, &method, &concrete(path), None).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
            }
        }
        for (method, path, _) in auth::ROUTES {
            assert!(
                paths.iter().any(|p| p == path),
                "auth::ROUTES lists {method} {path}, which the router lacks"
            );
        }
    }

    #[tokio::test]
    async fn a_route_missing_from_the_table_is_refused_even_to_the_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let app = Router::new()
            .route("/v1/unlisted", get(|| async { "open" }))
            .route("/v1/tenants", get(|| async { "listed" }))
            .route_layer(auth::Authenticate::new(state.clone()))
            .with_state(state);
        let (status, body) = call(&app, &Method::GET, "/v1/unlisted", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("no access rule"), "{body}");
        let (status, body) = call(&app, &Method::GET, "/v1/tenants", Some(TOKEN)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "listed"));
    }
}
