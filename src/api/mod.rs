//! The HTTP API (axum): the contract in `API.md`, one file per resource.
//!
//! Every error is a [`problem::Problem`]; every `/v1` route needs a bearer token (for now the operator's
//! admin token; scoped API keys come later and plug into [`auth`]).

pub mod attempts;
pub mod auth;
pub mod endpoints;
pub mod event_types;
pub mod events;
pub mod extract;
pub mod ops;
pub mod problem;
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
    /// Set while the log is over `storage.max_log_bytes`: ingest answers 503.
    pub log_full: AtomicBool,
    /// Cleared when shutdown starts: `/readyz` answers 503.
    pub ready: AtomicBool,
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
    let v1 = Router::new()
        .route("/tenants", post(tenants::create).get(tenants::list))
        .route("/tenants/{tenant}", get(tenants::get).patch(tenants::update).delete(tenants::delete))
        .route("/event-types", get(event_types::list))
        .route("/event-types/{name}", get(event_types::get).put(event_types::put).delete(event_types::delete))
        .route("/tenants/{tenant}/events", post(events::ingest_one).get(events::list))
        .route("/tenants/{tenant}/events/batch", post(events::ingest_batch))
        .route("/tenants/{tenant}/events/{id}", get(events::get))
        .route("/tenants/{tenant}/endpoints", post(endpoints::create).get(endpoints::list))
        .route(
            "/tenants/{tenant}/endpoints/{id}",
            get(endpoints::get).patch(endpoints::update).delete(endpoints::delete),
        )
        .route("/tenants/{tenant}/endpoints/{id}/secret", get(endpoints::secret))
        .route("/tenants/{tenant}/endpoints/{id}/secret/rotate", post(endpoints::rotate_secret))
        .route("/tenants/{tenant}/attempts", get(attempts::list))
        .route("/tenants/{tenant}/attempts/{id}", get(attempts::get))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_admin));
    let mut app =
        Router::new().nest("/v1", v1).route("/healthz", get(ops::healthz)).route("/readyz", get(ops::readyz));
    if state.metrics.is_some() {
        app = app.route("/metrics", get(ops::metrics));
    }
    app.fallback(ops::not_found).method_not_allowed_fallback(ops::method_not_allowed).with_state(state)
}
