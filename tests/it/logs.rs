//! Structured logs: `--log-format json` (here through `HOOKD_LOG_FORMAT`) writes one JSON object per
//! line; requests and delivery attempts carry their spans; the start line names every bound address and
//! the data dir; no credential ever reaches the log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Daemon, eventually};
use crate::receiver::Receiver;

const RECEIVER_CREDENTIAL: &str = "receiver-credential-5eb1";

#[tokio::test]
async fn json_logs_carry_request_and_attempt_spans_and_never_a_credential() {
    let mut daemon = Daemon::start_with(|s| {
        s.env("HOOKD_LOG_FORMAT", "json").env("HOOKD_LOG", "hookd=debug");
    })
    .await;
    let receiver = Receiver::start().await;
    daemon.create_tenant("acme").await;
    let (_, secret) = daemon
        .create_endpoint(
            "acme",
            json!({"url": receiver.url("/hook"), "headers": {"Authorization": format!("Bearer {RECEIVER_CREDENTIAL}")}}),
        )
        .await;
    daemon.ingest("acme", "order.created", json!({"n": 1})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let attempt_logged = eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        daemon.stderr_lines().iter().any(|l| l.contains("attempt finished")).then_some(())
    })
    .await;
    assert!(attempt_logged.is_some(), "{:?}", daemon.stderr_lines());
    assert!(daemon.terminate().await.success());

    let lines = daemon.stderr_lines();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let started = parsed
        .iter()
        .find(|l| l["message"] == "hookd started")
        .unwrap_or_else(|| panic!("no start line: {lines:?}"));
    assert_eq!(started["listen"], daemon.addr().to_string(), "{started}");
    assert!(started["data_dir"].as_str().is_some_and(|d| !d.is_empty()), "{started}");
    let request = parsed
        .iter()
        .find(|l| l["message"] == "request finished" && l["span"]["path"] == "/v1/tenants/acme/events")
        .unwrap_or_else(|| panic!("no request span: {lines:?}"));
    assert_eq!((request["span"]["method"].as_str(), request["status"].as_u64()), (Some("POST"), Some(202)));
    let attempt = parsed
        .iter()
        .find(|l| l["message"] == "attempt finished")
        .unwrap_or_else(|| panic!("no attempt line: {lines:?}"));
    assert_eq!(attempt["span"]["name"], "attempt", "{attempt}");
    assert!(attempt["span"]["endpoint"].as_str().is_some_and(|e| e.starts_with("ep_")), "{attempt}");
    assert_eq!(attempt["status"], 200, "{attempt}");

    let all = lines.join("\n");
    for credential in [ADMIN_TOKEN, secret.as_str(), secret.trim_start_matches("whsec_"), RECEIVER_CREDENTIAL]
    {
        assert!(!all.contains(credential), "a credential reached the log: {credential}");
    }
}
