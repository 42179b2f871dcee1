//! Retention: events, attempts, idempotency keys and audit entries older than `storage.retention` are
//! purged in the background — but never an event a delivery still needs (a disabled endpoint keeps what
//! it accumulated).

use std::time::Duration;

use serde_json::json;

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::Receiver;

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);

#[tokio::test]
async fn old_data_is_purged_once_delivered_and_what_a_disabled_endpoint_needs_is_kept() {
    let daemon = Daemon::start_with(|s| {
        s.set("storage.retention", "2s");
    })
    .await;
    let receiver = Receiver::start().await;
    daemon.create_tenant("done").await;
    daemon.create_tenant("held").await;
    let (done_ep, _) = daemon.create_endpoint("done", json!({"url": receiver.url("/done")})).await;
    // Disabled, and subscribed to nothing that is sent: it needs none of the tenant's events, so it
    // must not hold the log either.
    daemon
        .create_endpoint(
            "done",
            json!({"url": receiver.url("/idle"), "event_types": ["never.sent"], "enabled": false}),
        )
        .await;
    let (held_ep, _) =
        daemon.create_endpoint("held", json!({"url": receiver.url("/held"), "enabled": false})).await;
    let (status, first) = daemon
        .post("/v1/tenants/done/events", json!({"type": "a.b", "payload": {}, "idempotency_key": "k1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let delivered = first["id"].as_str().unwrap_or_default().to_owned();
    let kept = daemon.ingest("held", "a.b", json!({"n": 1})).await;
    receiver.wait_for(1, 10 * SECOND).await;

    let purged = eventually(30 * SECOND, POLL, || async {
        let (status, _) = daemon.get(&format!("/v1/tenants/done/events/{delivered}")).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(purged.is_some(), "the delivered event was never purged");
    let (_, attempts) = daemon.get(&format!("/v1/tenants/done/attempts?endpoint_id={done_ep}")).await;
    assert_eq!(attempts["data"].as_array().map(Vec::len), Some(0), "its attempts went too: {attempts}");
    let (_, audit) = daemon.get("/v1/audit?tenant=done").await;
    assert!(
        audit["data"].as_array().into_iter().flatten().all(|e| e["route"] != "/v1/tenants"),
        "old audit entries are purged: {audit}"
    );
    // Past the window an idempotency key is forgotten: the same key makes a new event.
    let (status, again) = daemon
        .post("/v1/tenants/done/events", json!({"type": "a.b", "payload": {}, "idempotency_key": "k1"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(again["id"], first["id"], "{again}");

    // The disabled endpoint's event is still there, and goes out once it is enabled.
    let (status, _) = daemon.get(&format!("/v1/tenants/held/events/{kept}")).await;
    assert_eq!(status, StatusCode::OK, "an event a delivery still needs was purged");
    let (status, _) =
        daemon.patch(&format!("/v1/tenants/held/endpoints/{held_ep}"), json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    let got = eventually(10 * SECOND, POLL, || async {
        receiver.requests().into_iter().find(|r| r.uri == "/held")
    })
    .await
    .expect("the kept event was delivered");
    assert_eq!(got.webhook_id(), kept);
}
