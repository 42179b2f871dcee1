//! What an integration owner does by hand: test-send an event to an endpoint.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Daemon, StatusCode, assert_problem};
use crate::receiver::{Receiver, verify};

#[tokio::test]
async fn a_test_send_delivers_the_catalog_example_signed_and_answers_with_the_attempt() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let example = json!({ "ticket_id": "T1", "seats": [4] });
    let (status, _) =
        daemon.put("/v1/event-types/ticket.created", json!({ "description": "d", "example": example })).await;
    assert_eq!(status, StatusCode::CREATED);
    // Disabled: testing before enabling is the point.
    let spec = json!({ "url": receiver.url("/hook"), "enabled": false, "headers": { "X-Env": "test" } });
    let (endpoint, secret) = daemon.create_endpoint("acme", spec).await;
    let test = format!("/v1/tenants/acme/endpoints/{endpoint}/test");

    let (status, attempt) = daemon.post(&test, json!({ "type": "ticket.created" })).await;
    assert_eq!(status, StatusCode::OK, "{attempt}");
    assert_eq!((attempt["trigger"].as_str(), attempt["status"].as_str()), (Some("test"), Some("succeeded")));
    assert_eq!(attempt["status_code"], 200);
    let got = receiver.wait_for(1, std::time::Duration::from_secs(5)).await;
    let body = verify(&secret, &got[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["data"], example);
    assert_eq!(body["type"], "ticket.created");
    assert_eq!(got[0].header("x-env"), Some("test"));
    assert_eq!(got[0].webhook_id(), attempt["event_ids"][0].as_str().unwrap_or_default());
    let sent: serde_json::Value =
        serde_json::from_str(attempt["request_body"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(sent, body, "the answer shows the body as sent");

    // A given payload; a receiver's error is the attempt's outcome, not the test's.
    receiver.set_status(500);
    let (status, failed) = daemon.post(&test, json!({ "type": "other.thing", "payload": { "x": 1 } })).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!((failed["status"].as_str(), failed["status_code"].as_u64()), (Some("failed"), Some(500)));
    let got = receiver.wait_for(2, std::time::Duration::from_secs(5)).await;
    assert_eq!(got[1].json()["data"], json!({ "x": 1 }));

    // Both attempts are in the history, with their bodies; nothing is retried or delivered later.
    let (_, list) = daemon.get(&format!("/v1/tenants/acme/attempts?endpoint_id={endpoint}")).await;
    let items = list["data"].as_array().cloned().unwrap_or_default();
    let triggers: Vec<&str> = items.iter().filter_map(|a| a["trigger"].as_str()).collect();
    assert_eq!(triggers, ["test", "test"], "{list}");
    let first = list["data"][1]["id"].as_str().unwrap_or_default().to_owned();
    let (_, detail) = daemon.get(&format!("/v1/tenants/acme/attempts/{first}")).await;
    assert!(detail["request_body"].as_str().is_some_and(|b| b.contains("T1")), "{detail}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 2, "a test send was retried or delivered again");

    // Bad inputs.
    for (body, field) in [
        (json!({ "type": "Bad Type" }), "type"),
        (json!({ "type": "no.example" }), "payload"),
        (json!({ "type": "a.b", "payload": [1] }), "payload"),
    ] {
        let response = daemon.send(Method::POST, &test, Some(&body)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let missing = "/v1/tenants/acme/endpoints/ep_0000000000000/test";
    let response = daemon.send(Method::POST, missing, Some(&json!({ "type": "a.b", "payload": {} }))).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
}
