//! Auto-disabling and failure notifications: an endpoint whose every attempt failed for
//! `delivery.disable_after` is disabled; `hookd.endpoint.disabled`, `hookd.delivery.failed` and
//! `hookd.endpoint.recovered` go to the tenant's endpoints that subscribe to them by name — never to the
//! endpoint they are about, never to an endpoint subscribed to every type.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::{Received, Receiver, verify};

const TENANT: &str = "acme";
const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(25);
const OPERATIONAL: [&str; 3] =
    ["hookd.endpoint.disabled", "hookd.delivery.failed", "hookd.endpoint.recovered"];

fn types_of(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.json()["type"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Waits for a delivery of `event_type` at `receiver`; returns its body after checking the signature.
async fn notified(receiver: &Receiver, secret: &str, event_type: &str) -> Value {
    let found = eventually(15 * SECOND, POLL, || async {
        receiver.requests().into_iter().find(|r| r.json()["type"] == event_type)
    })
    .await
    .unwrap_or_else(|| panic!("no {event_type}; got {:?}", types_of(&receiver.requests())));
    verify(secret, &found).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_failing_endpoint_is_disabled_and_the_tenant_is_told_and_told_again_when_it_recovers() {
    let daemon = Daemon::start_with(|s| {
        s.set("delivery.disable_after", "1h");
    })
    .await;
    // The tenant's own setting overrides the daemon's.
    let (status, tenant) =
        daemon.post("/v1/tenants", json!({"id": TENANT, "name": "Acme", "disable_after": "2s"})).await;
    assert_eq!((status, tenant["disable_after"].as_str()), (StatusCode::CREATED, Some("2s")), "{tenant}");
    let watcher = Receiver::start().await;
    let everything = Receiver::start().await;
    let broken = Receiver::start().await;
    broken.set_status(500);
    let (watch_ep, watch_secret) =
        daemon.create_endpoint(TENANT, json!({"url": watcher.url("/ops"), "event_types": OPERATIONAL})).await;
    daemon.create_endpoint(TENANT, json!({"url": everything.url("/all")})).await;
    // The failing endpoint subscribes to the notice about itself too: it must not get it.
    let (broken_ep, _) = daemon
        .create_endpoint(
            TENANT,
            json!({
                "url": broken.url("/b"),
                "event_types": ["order.created", "hookd.endpoint.disabled"],
                "retry": {"max_attempts": 100, "initial_ms": 100, "max_ms": 300},
                "timeout_ms": 1000,
            }),
        )
        .await;
    let event = daemon.ingest(TENANT, "order.created", json!({"n": 1})).await;

    let disabled = notified(&watcher, &watch_secret, "hookd.endpoint.disabled").await;
    assert_eq!(disabled["data"]["endpoint_id"], broken_ep.as_str(), "{disabled}");
    assert!(disabled["data"]["reason"].as_str().is_some_and(|r| r.contains("disable_after")), "{disabled}");
    assert!(disabled["data"]["failing_since"].is_string(), "{disabled}");
    let (_, ep) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints/{broken_ep}")).await;
    assert_eq!((ep["enabled"].as_bool(), ep["state"].as_str()), (Some(false), Some("disabled")), "{ep}");
    assert!(ep["disabled_reason"].as_str().is_some_and(|r| r.contains("disable_after")), "{ep}");
    // The operational event is an ordinary event of the tenant, in its log.
    let (_, events) = daemon.get(&format!("/v1/tenants/{TENANT}/events?type=hookd.endpoint.disabled")).await;
    assert_eq!(events["data"].as_array().map(Vec::len), Some(1), "{events}");

    // It comes back: enabled again, its kept delivery goes out, and the tenant hears it recovered.
    broken.set_status(200);
    let (status, _) =
        daemon.patch(&format!("/v1/tenants/{TENANT}/endpoints/{broken_ep}"), json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK);
    let recovered = notified(&watcher, &watch_secret, "hookd.endpoint.recovered").await;
    assert_eq!(recovered["data"]["endpoint_id"], broken_ep.as_str());
    let delivered = eventually(10 * SECOND, POLL, || async {
        let (_, detail) = daemon.get(&format!("/v1/tenants/{TENANT}/events/{event}")).await;
        let d =
            detail["deliveries"].as_array()?.iter().find(|d| d["endpoint_id"] == broken_ep.as_str())?.clone();
        (d["state"] == "succeeded").then_some(d)
    })
    .await;
    assert!(delivered.is_some(), "the kept delivery went out after enabling");

    assert!(
        broken.requests().iter().all(|r| r.json()["type"] == "order.created"),
        "an endpoint is never told about itself: {:?}",
        types_of(&broken.requests())
    );
    assert!(
        everything.requests().iter().all(|r| r.json()["type"] == "order.created"),
        "subscribing to every type does not subscribe to hookd's own: {:?}",
        types_of(&everything.requests())
    );
    let _ = watch_ep;
}

#[tokio::test]
async fn a_delivery_that_exhausts_its_retries_is_notified_once() {
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    let watcher = Receiver::start().await;
    let broken = Receiver::start().await;
    broken.set_status(503);
    let (_, watch_secret) = daemon
        .create_endpoint(
            TENANT,
            json!({"url": watcher.url("/ops"), "event_types": ["hookd.delivery.failed"]}),
        )
        .await;
    let (broken_ep, _) = daemon
        .create_endpoint(
            TENANT,
            json!({
                "url": broken.url("/b"),
                "event_types": ["order.created"],
                "retry": {"max_attempts": 2, "initial_ms": 100, "max_ms": 200},
            }),
        )
        .await;
    let event = daemon.ingest(TENANT, "order.created", json!({"n": 1})).await;
    let failed = notified(&watcher, &watch_secret, "hookd.delivery.failed").await;
    let data = &failed["data"];
    assert_eq!(data["endpoint_id"], broken_ep.as_str(), "{failed}");
    assert_eq!(data["webhook_id"], event.as_str());
    assert_eq!(data["event_ids"], json!([event]));
    assert_eq!(
        (data["attempts"].as_u64(), data["last_status_code"].as_u64()),
        (Some(2), Some(503)),
        "{failed}"
    );
    assert!(data["last_attempt_id"].as_str().is_some_and(|a| a.starts_with("att_")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watcher.count(), 1, "one notice per failed delivery");
}

#[tokio::test]
async fn a_tenant_sets_its_own_disable_after_and_bad_values_are_refused() {
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    let path = format!("/v1/tenants/{TENANT}");
    let (status, t) = daemon.patch(&path, json!({"disable_after": "12h"})).await;
    assert_eq!(
        (status, t["disable_after"].as_str(), t["name"].as_str()),
        (StatusCode::OK, Some("12h"), Some(TENANT))
    );
    let (status, t) = daemon.patch(&path, json!({"name": "Acme"})).await;
    assert_eq!(
        (status, t["disable_after"].as_str()),
        (StatusCode::OK, Some("12h")),
        "a name change keeps it"
    );
    let (status, t) = daemon.patch(&path, json!({"disable_after": null})).await;
    assert_eq!(
        (status, t["disable_after"].clone()),
        (StatusCode::OK, Value::Null),
        "null: the daemon's setting"
    );
    for bad in [json!("soon"), json!("0s"), json!("400d"), json!(5)] {
        let response = daemon.send(reqwest::Method::PATCH, &path, Some(&json!({"disable_after": bad}))).await;
        crate::harness::assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "disable_after");
    }
}
