//! Operational events: hookd tells a tenant about its own endpoints' failures through the tenant's own
//! event stream, so that whoever runs an endpoint subscribed to them hears about it.
//!
//! - `hookd.endpoint.disabled`: hookd disabled an endpoint (every attempt failed for
//!   `delivery.disable_after`, or it answered `410 Gone`);
//! - `hookd.delivery.failed`: a delivery used up its retry policy, or its events' stored record is
//!   damaged and cannot be read (`"damaged": true`, see `deliver::damaged`);
//! - `hookd.endpoint.recovered`: an endpoint that had caused one of the above succeeded again.
//!
//! They are ordinary events of the tenant (durable in the log, listed, delivered with retries and
//! signatures), with two rules: they go only to endpoints that list the type explicitly (an endpoint
//! subscribed to every type does not start receiving them), and never to the endpoint they are about.
//! A delivery of operational events that fails for good emits no further `hookd.delivery.failed`, so two
//! failing endpoints cannot notify each other about each other forever.

use serde_json::Value;

use crate::registry::RegistryHandle;
use crate::store::{Committer, PreparedEvent};

pub const ENDPOINT_DISABLED: &str = "hookd.endpoint.disabled";
pub const DELIVERY_FAILED: &str = "hookd.delivery.failed";
pub const ENDPOINT_RECOVERED: &str = "hookd.endpoint.recovered";
/// Every type hookd emits starts with this.
pub const PREFIX: &str = "hookd.";

/// Emits operational events into tenants' logs.
#[derive(Clone)]
pub struct Notifier {
    committer: Committer,
    registry: RegistryHandle,
}

impl Notifier {
    pub fn new(committer: Committer, registry: RegistryHandle) -> Notifier {
        Notifier { committer, registry }
    }

    /// Appends the event to the tenant's log in the background (routed now, durable like any event).
    pub fn emit(&self, tenant: u64, event_type: &'static str, about_endpoint: u64, payload: &Value) {
        let snapshot = self.registry.snapshot();
        let text = payload.to_string();
        let routes: Vec<u64> = snapshot
            .route(tenant, event_type, &[], &crate::route::Payload::new(&text))
            .into_iter()
            .filter(|id| *id != about_endpoint)
            .filter(|id| {
                snapshot
                    .tenant_endpoint(tenant, *id)
                    .is_some_and(|e| e.record.event_types.iter().any(|t| t == event_type))
            })
            .collect();
        let event = PreparedEvent {
            event_type: event_type.to_owned(),
            channels: Vec::new(),
            payload: text,
            idempotency_key: None,
            routes,
        };
        let committer = self.committer.clone();
        tokio::spawn(async move {
            match committer.commit(tenant, vec![event]).await {
                Ok(accepted) => {
                    crate::metrics::ingested(accepted.len(), 0);
                    tracing::info!(event_type, endpoint = %crate::ids::EndpointId(about_endpoint), "operational event emitted");
                }
                Err(e) => {
                    tracing::warn!(event_type, endpoint = %crate::ids::EndpointId(about_endpoint), error = %e, "cannot emit an operational event")
                }
            }
        });
    }
}
