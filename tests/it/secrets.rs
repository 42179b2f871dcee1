//! Endpoint signing secrets: sealed at rest with `auth.master_key`, and rotated with a grace period
//! during which both secrets sign.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, assert_problem, eventually};
use crate::receiver::{Received, Receiver, verify};

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "test-master-key-0123456789abcdefghijklmnop";
/// A Standard Webhooks secret whose text the data dir must never hold.
const SECRET: &str = "whsec_c2VhbGVkLWF0LXJlc3QtdGVzdC1zZWNyZXQtMzJi";

/// Sets (or with `None` removes) `auth.master_key` in the daemon's config file, for its next start.
fn set_master_key(daemon: &Daemon, key: Option<&str>) {
    let path = daemon.config_path();
    let text = std::fs::read_to_string(&path).expect("read hookd.toml");
    let mut config: toml::Table = text.parse().expect("hookd.toml parses");
    let auth = config.entry("auth").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let auth = auth.as_table_mut().expect("[auth] is a table");
    match key {
        Some(k) => auth.insert("master_key".into(), k.into()),
        None => auth.remove("master_key"),
    };
    std::fs::write(&path, config.to_string()).expect("write hookd.toml");
}

/// Does any file under `dir` contain `needle`?
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        }
    })
}

async fn endpoint_with_secret(daemon: &Daemon, receiver: &Receiver) -> String {
    daemon.create_tenant(TENANT).await;
    daemon.create_endpoint(TENANT, json!({ "url": receiver.url("/hook"), "secret": SECRET })).await.0
}

/// Sends one event and returns the request the receiver got for it (the `n`th it has seen).
async fn deliver(daemon: &Daemon, receiver: &Receiver, n: usize) -> Received {
    daemon.ingest(TENANT, "ticket.created", json!({ "n": n })).await;
    receiver.wait_for(n, WAIT).await.pop().expect("a request")
}

#[tokio::test]
async fn signing_secrets_are_sealed_at_rest_and_need_their_master_key_to_start() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start_with(|s| {
        s.set("auth.master_key", KEY);
    })
    .await;
    endpoint_with_secret(&daemon, &receiver).await;
    verify(SECRET, &deliver(&daemon, &receiver, 1).await).unwrap_or_else(|e| panic!("{e}"));
    daemon.terminate().await;
    let base64_part = SECRET.trim_start_matches("whsec_");
    assert!(!dir_contains(&daemon.data_dir(), base64_part.as_bytes()), "the secret is in the data dir");

    // Without the key, or with another one, hookd refuses to start rather than sign with garbage.
    set_master_key(&daemon, None);
    let failure = daemon.try_restart().await.expect_err("started without the master key");
    assert!(failure.stderr_text().contains("auth.master_key"), "{failure}");
    set_master_key(&daemon, Some("another-master-key-0123456789abcdefghijkl"));
    let failure = daemon.try_restart().await.expect_err("started with the wrong master key");
    assert!(failure.stderr_text().contains("does not open"), "{failure}");

    // With it, deliveries are signed with the secret as given.
    set_master_key(&daemon, Some(KEY));
    daemon.restart().await;
    verify(SECRET, &deliver(&daemon, &receiver, 2).await).unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.to_string().contains(base64_part), "a list shows the secret: {body}");
}

#[tokio::test]
async fn secrets_written_without_a_master_key_are_sealed_once_one_is_set() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    // stderr is read by a background task: the line may land just after the daemon says it listens.
    let warned = eventually(Duration::from_secs(5), Duration::from_millis(20), || async {
        daemon.stderr_lines().iter().any(|l| l.contains("auth.master_key is not set")).then_some(())
    })
    .await;
    assert!(warned.is_some(), "no warning about unsealed secrets: {:?}", daemon.stderr_lines());
    endpoint_with_secret(&daemon, &receiver).await;
    daemon.terminate().await;
    set_master_key(&daemon, Some(KEY));
    daemon.restart().await;
    verify(SECRET, &deliver(&daemon, &receiver, 1).await).unwrap_or_else(|e| panic!("{e}"));
    daemon.terminate().await;
    // Sealed now: without the key it no longer starts.
    set_master_key(&daemon, None);
    assert!(daemon.try_restart().await.is_err(), "the secret was left unsealed");
}

/// The `v1,` signatures of a delivery.
fn signatures(r: &Received) -> Vec<&str> {
    r.header("webhook-signature").unwrap_or_default().split(' ').collect()
}

#[tokio::test]
async fn a_rotated_secret_signs_alongside_the_old_one_until_the_grace_period_ends() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start().await;
    let id = endpoint_with_secret(&daemon, &receiver).await;
    let rotate = format!("/v1/tenants/{TENANT}/endpoints/{id}/secret/rotate");

    let (status, body) = daemon.post(&rotate, json!({ "grace_seconds": 2 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["key"].as_str().expect("a new key").to_owned();
    assert!(new.starts_with("whsec_") && new != SECRET, "{body}");
    assert!(body["previous_signs_until"].is_string(), "{body}");
    let (_, shown) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints/{id}/secret")).await;
    assert_eq!(shown["key"], new);

    // During the grace period: two signatures, and a receiver with either secret accepts.
    let during = deliver(&daemon, &receiver, 1).await;
    assert_eq!(signatures(&during).len(), 2, "{:?}", signatures(&during));
    verify(SECRET, &during).unwrap_or_else(|e| panic!("old secret: {e}"));
    verify(&new, &during).unwrap_or_else(|e| panic!("new secret: {e}"));

    // After it, only the new one.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = deliver(&daemon, &receiver, 2).await;
    assert_eq!(signatures(&after).len(), 1, "{:?}", signatures(&after));
    verify(&new, &after).unwrap_or_else(|e| panic!("new secret: {e}"));
    assert!(verify(SECRET, &after).is_err(), "the old secret still signs after its grace period");

    // A rotation with no grace retires the old secret at once; a given secret is used as is.
    let (status, body) = daemon.post(&rotate, json!({ "grace_seconds": 0, "secret": SECRET })).await;
    assert_eq!((status, body["key"].as_str()), (StatusCode::OK, Some(SECRET)), "{body}");
    let now = deliver(&daemon, &receiver, 3).await;
    assert_eq!(signatures(&now).len(), 1);
    verify(SECRET, &now).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn bad_rotations_are_refused_and_change_nothing() {
    let receiver = Receiver::start().await;
    let daemon = Daemon::start().await;
    let id = endpoint_with_secret(&daemon, &receiver).await;
    let rotate = format!("/v1/tenants/{TENANT}/endpoints/{id}/secret/rotate");
    let cases: [(Value, &str); 4] = [
        (json!({ "grace_seconds": 8 * 24 * 3600 }), "grace_seconds"),
        (json!({ "secret": "not-a-secret" }), "secret"),
        (json!({ "secret": SECRET }), "secret"),
        (json!({ "grace_seconds": -1 }), "grace_seconds"),
    ];
    for (body, field) in cases {
        let response = daemon.send(Method::POST, &rotate, Some(&body)).await;
        assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, field);
    }
    let response = daemon.send(Method::POST, &rotate, Some(&json!({ "grace": 5 }))).await;
    assert_problem(&response, StatusCode::UNPROCESSABLE_ENTITY, "");
    let missing = format!("/v1/tenants/{TENANT}/endpoints/ep_0000000000000/secret/rotate");
    let response = daemon.send(Method::POST, &missing, None).await;
    assert_problem(&response, StatusCode::NOT_FOUND, "");
    let (_, shown) = daemon.get(&format!("/v1/tenants/{TENANT}/endpoints/{id}/secret")).await;
    assert_eq!(shown["key"], SECRET, "a refused rotation changed the secret");
    // An empty body rotates with the defaults.
    let response = daemon.send(Method::POST, &rotate, None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
}
