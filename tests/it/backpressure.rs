//! Back-pressure on disk space: over `storage.max_log_bytes` (or under `storage.min_free_bytes`) ingest
//! answers 503 problem+json with `Retry-After` and `/readyz` answers 503 naming why, while deliveries
//! keep draining; once there is room again ingest resumes, and every event acknowledged with 202 is
//! delivered.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, assert_problem, eventually};
use crate::receiver::Receiver;

const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// `hookd_log_bytes` from `/metrics`, once the disk check has published it.
async fn log_bytes(daemon: &Daemon) -> u64 {
    eventually(WAIT, POLL, || async {
        let response = daemon.send(Method::GET, "/metrics", None).await;
        let text = response.text();
        let line = text.lines().find(|l| l.starts_with("hookd_log_bytes "))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok().filter(|v| *v > 0.0).map(|v| v as u64)
    })
    .await
    .expect("hookd_log_bytes is published")
}

/// Rewrites `storage.<key>` in the daemon's config file, for the next restart.
fn set_storage(daemon: &Daemon, key: &str, value: toml::Value) {
    let path = daemon.config_path();
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&path).expect("read hookd.toml")).expect("hookd.toml parses");
    config
        .entry("storage")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[storage] is a table")
        .insert(key.to_owned(), value);
    std::fs::write(&path, config.to_string()).expect("write hookd.toml");
}

async fn restart_cleanly(daemon: &mut Daemon) {
    assert!(daemon.terminate().await.success(), "clean stop");
    daemon.restart().await;
}

async fn readyz(daemon: &Daemon) -> (StatusCode, Value) {
    daemon.get("/readyz").await
}

/// Posts one event of about 4 KiB.
async fn post_event(daemon: &Daemon, n: usize) -> crate::harness::RawResponse {
    let body = json!({ "type": "load.filler", "payload": { "n": n, "pad": "x".repeat(4096) } });
    daemon.send(Method::POST, "/v1/tenants/acme/events", Some(&body)).await
}

/// The webhook-ids the receiver has been sent (any attempt, any status).
fn received_ids(receiver: &Receiver) -> BTreeSet<String> {
    receiver.requests().iter().map(|r| r.webhook_id().to_owned()).collect()
}

/// Every event of `ids` has reached the receiver, and hookd has recorded its delivery as succeeded
/// (a 2xx from the receiver), as `GET …/events/{id}` tells.
async fn all_delivered(daemon: &Daemon, receiver: &Receiver, ids: &BTreeSet<String>) -> Result<(), String> {
    let received = received_ids(receiver);
    if let Some(missing) = ids.difference(&received).next() {
        return Err(format!("{missing} never reached the receiver"));
    }
    for id in ids {
        let (_, event) = daemon.get(&format!("/v1/tenants/acme/events/{id}")).await;
        if event["deliveries"][0]["state"] != "succeeded" {
            return Err(format!("{id}: {}", event["deliveries"]));
        }
    }
    Ok(())
}

async fn wait_all_delivered(daemon: &Daemon, receiver: &Receiver, ids: &BTreeSet<String>) {
    let done = eventually(WAIT, Duration::from_millis(500), || async {
        all_delivered(daemon, receiver, ids).await.ok()
    })
    .await;
    if done.is_none() {
        let why = all_delivered(daemon, receiver, ids).await.err().unwrap_or_default();
        panic!("not every acknowledged event ({}) was delivered: {why}", ids.len());
    }
}

#[tokio::test]
async fn over_the_disk_cap_ingest_pauses_delivery_drains_and_nothing_acknowledged_is_lost() {
    let receiver = Receiver::start().await;
    // Failing at first, so that deliveries are still pending when ingest is refused.
    receiver.set_status(500);
    let mut daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let spec = json!({
        "url": receiver.url("/hook"),
        "retry": { "max_attempts": 100, "initial_ms": 100, "max_ms": 200 },
    });
    daemon.create_endpoint("acme", spec).await;

    // A cap just above what the database holds after a restart, so that some events are accepted
    // and a few hundred more cross it. sled grows its file in segments, and a restart may add one, so
    // the cap is measured again after each restart (a few rounds at most).
    let mut cap = 0;
    for _ in 0..4 {
        let size = log_bytes(&daemon).await;
        if size < cap {
            break;
        }
        cap = size + 256 * 1024;
        set_storage(&daemon, "max_log_bytes", toml::Value::Integer(i64::try_from(cap).expect("small")));
        restart_cleanly(&mut daemon).await;
    }
    let (status, body) = readyz(&daemon).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Ingest until refused; the disk check runs every second, so this is bounded by a few seconds of
    // ingest (and a hard limit on events).
    let mut accepted = BTreeSet::new();
    let mut refused = None;
    for n in 0..20_000 {
        let response = post_event(&daemon, n).await;
        match response.status {
            StatusCode::ACCEPTED => {
                accepted.insert(response.json()["id"].as_str().expect("id").to_owned());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some(response);
                break;
            }
            other => panic!("ingest answered {other}: {}", response.text()),
        }
    }
    let refused = refused.expect("ingest was never refused");
    let problem = assert_problem(&refused, StatusCode::SERVICE_UNAVAILABLE, "");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("storage.max_log_bytes")), "{problem}");
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert!(!accepted.is_empty(), "the cap was reached before any event was accepted");
    let (status, body) = readyz(&daemon).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!((body["ready"].as_bool(), body["log_full"].as_bool()), (Some(false), Some(true)), "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("max_log_bytes")), "{body}");
    // Batch ingest is refused the same way; the admin API keeps working.
    let batch = json!({ "events": [{ "type": "a.b", "payload": {} }] });
    let response = daemon.send(Method::POST, "/v1/tenants/acme/events/batch", Some(&batch)).await;
    assert_problem(&response, StatusCode::SERVICE_UNAVAILABLE, "");
    let (status, _) = daemon.get("/v1/tenants/acme/endpoints").await;
    assert_eq!(status, StatusCode::OK);

    // The receiver recovers: every acknowledged event is delivered while ingest is still refused.
    receiver.set_status(200);
    wait_all_delivered(&daemon, &receiver, &accepted).await;
    let response = post_event(&daemon, 0).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "ingest stayed refused while draining");
    assert_eq!(readyz(&daemon).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // Room again (the operator raises the cap): ready, ingest resumes, and that event is delivered too.
    set_storage(&daemon, "max_log_bytes", toml::Value::String("10GiB".into()));
    restart_cleanly(&mut daemon).await;
    let ready = eventually(WAIT, POLL, || async {
        let (status, body) = readyz(&daemon).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await
    .expect("ready again");
    assert_eq!((ready["log_full"].as_bool(), ready.get("reason")), (Some(false), None), "{ready}");
    let response = post_event(&daemon, 1).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    accepted.insert(response.json()["id"].as_str().expect("id").to_owned());
    wait_all_delivered(&daemon, &receiver, &accepted).await;
    let logs = daemon.stderr_lines().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn below_the_free_space_floor_ingest_and_readyz_answer_503_naming_min_free_bytes() {
    // No disk has 4 EiB free: the floor is crossed from the first check on.
    let daemon = Daemon::start_with(|s| {
        s.set("storage.min_free_bytes", 1_i64 << 62);
    })
    .await;
    daemon.create_tenant("acme").await;
    let (status, body) = eventually(WAIT, POLL, || async {
        let (status, body) = readyz(&daemon).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some((status, body))
    })
    .await
    .expect("readyz turns 503");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((body["disk_low"].as_bool(), body["log_full"].as_bool()), (Some(true), Some(false)), "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("storage.min_free_bytes")), "{body}");
    let response = post_event(&daemon, 0).await;
    let problem = assert_problem(&response, StatusCode::SERVICE_UNAVAILABLE, "");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("storage.min_free_bytes")), "{problem}");
    assert_eq!(response.header("retry-after"), Some("30"));
    assert!(daemon.stderr_lines().iter().any(|l| l.contains("below storage.min_free_bytes")));
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_token() {
    let daemon = Daemon::start().await;
    let response = daemon.client().get(daemon.url("/openapi.json")).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{doc}");
    assert!(doc["paths"]["/v1/tenants/{tenant}/events"]["post"].is_object());
}
