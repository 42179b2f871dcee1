//! Outbound safety end to end: with private destinations refused (the production default), a host name that resolves to a private address is refused at connect time —
//! after resolution, so a name that looked public when the endpoint was saved cannot reach an internal
//! service — and the refusal is in the attempt history.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::Receiver;

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_at_connect_time_and_recorded() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start_with(|s| {
        // http, because rustls refuses a numeric name as a TLS server name before any connection.
        s.set("delivery.allow_private_destinations", false).set("delivery.allow_http", true);
    })
    .await;
    daemon.create_tenant("acme").await;
    // `2130706433` is 127.0.0.1 in the decimal notation the system resolver accepts (a classic SSRF
    // bypass): not an IP literal to the creation-time check, so only the resolved address says it is
    // loopback.
    let url = format!("http://2130706433:{}/hook", receiver.addr().port());
    let spec = json!({ "url": url, "retry": { "max_attempts": 1, "initial_ms": 100, "max_ms": 100 } });
    let (endpoint, _) = daemon.create_endpoint("acme", spec).await;
    // A literal private address is refused when the endpoint is saved.
    let literal = json!({ "url": format!("http://127.0.0.1:{}/hook", receiver.addr().port()) });
    let (status, body) = daemon.post("/v1/tenants/acme/endpoints", literal).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    daemon.ingest("acme", "ticket.created", json!({ "n": 1 })).await;
    let path = format!("/v1/tenants/acme/attempts?endpoint_id={endpoint}");
    let attempt = eventually(Duration::from_secs(10), Duration::from_millis(50), || async {
        let (_, list) = daemon.get(&path).await;
        list["data"].as_array().and_then(|a| a.first().cloned())
    })
    .await
    .unwrap_or_else(|| panic!("no attempt recorded for {endpoint}"));
    assert_eq!(attempt["status"], "failed", "{attempt}");
    assert_eq!(attempt["error_class"], "blocked", "{attempt}");
    assert_eq!(attempt["status_code"], serde_json::Value::Null, "{attempt}");
    assert_eq!(receiver.count(), 0, "the receiver was reached");
}

#[tokio::test]
async fn an_allowlisted_private_network_is_reachable_and_nothing_else_is() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start_with(|s| {
        s.set("delivery.allow_private_destinations", false)
            .set("delivery.allow_http", true)
            .set("delivery.private_destination_allowlist", "10.0.0.0/8, 127.0.0.1/32");
    })
    .await;
    daemon.create_tenant("acme").await;
    // Allowed: the receiver's loopback address is listed, by literal and by a name resolving to it.
    let port = receiver.addr().port();
    daemon.create_endpoint("acme", json!({ "url": format!("http://127.0.0.1:{port}/literal") })).await;
    daemon.create_endpoint("acme", json!({ "url": format!("http://2130706433:{port}/name") })).await;
    // Not listed: 127.0.0.2 is loopback too, but outside the list.
    let (status, body) = daemon
        .post("/v1/tenants/acme/endpoints", json!({ "url": format!("http://127.0.0.2:{port}/x") }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    daemon.ingest("acme", "ticket.created", json!({ "n": 1 })).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let mut paths: Vec<&str> = got.iter().map(|r| r.uri.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/literal", "/name"]);
}

#[tokio::test]
async fn a_malformed_allowlist_stops_the_start_naming_the_key() {
    let failure = Daemon::try_start_with(|s| {
        s.set("delivery.private_destination_allowlist", "10.0.0.0/8, not-a-network");
    })
    .await
    .err()
    .unwrap_or_else(|| panic!("started with a malformed allowlist"));
    assert!(failure.stderr_text().contains("delivery.private_destination_allowlist"), "{failure}");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(64), "{failure}");
}
