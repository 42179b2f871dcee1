//! The harness and receiver themselves, and the daemon's process contract: it listens and answers
//! `/healthz`, SIGTERM exits 0, an invalid config exits 64 naming the key, the API wants a token, and a
//! SIGKILLed daemon restarts on its data dir.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::json;

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::{Receiver, verify};

/// A Standard Webhooks secret for signing tests.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECOND: Duration = Duration::from_secs(1);

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(10 * SECOND).build().expect("build reqwest client")
}

#[tokio::test]
async fn eventually_returns_the_first_value_found() {
    let mut calls = 0;
    let found = eventually(5 * SECOND, Duration::from_millis(1), || {
        calls += 1;
        let seen = calls;
        async move { (seen == 3).then_some(seen) }
    })
    .await;
    assert_eq!(found, Some(3));
}

#[tokio::test]
async fn eventually_gives_up_after_its_timeout_having_checked_at_the_deadline() {
    let started = Instant::now();
    let mut calls = 0;
    let found: Option<()> = eventually(Duration::from_millis(200), Duration::from_millis(50), || {
        calls += 1;
        async { None }
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(found, None);
    assert!(elapsed >= Duration::from_millis(200) && elapsed < 5 * SECOND, "took {elapsed:?}");
    assert!((4..=6).contains(&calls), "checked {calls} times");
}

#[tokio::test]
async fn healthz_answers_200_after_start() {
    let daemon = Daemon::start().await;
    let response = daemon.raw(Method::GET, "/healthz", &[], "").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let mut daemon = Daemon::start().await;
    let status = daemon.terminate().await;
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn an_invalid_durability_exits_64_naming_the_key() {
    let failure = Daemon::try_start_with(|setup| {
        setup.set("storage.durability", "sometimes");
    })
    .await
    .err()
    .expect("hookd started with durability = \"sometimes\"");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(64), "{failure}");
    assert!(failure.stderr_text().contains("durability"), "{failure}");
}

#[tokio::test]
async fn an_unknown_config_key_exits_64_naming_the_key() {
    let failure = Daemon::try_start_with(|setup| {
        setup.set("delivery.retries_forever", true);
    })
    .await
    .err()
    .expect("hookd started with an unknown config key");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(64), "{failure}");
    assert!(failure.stderr_text().contains("retries_forever"), "{failure}");
}

#[tokio::test]
async fn an_invalid_env_override_exits_64_naming_the_key() {
    let failure = Daemon::try_start_with(|setup| {
        setup.env("HOOKD_STORAGE__DURABILITY", "sometimes");
    })
    .await
    .err()
    .expect("hookd started with HOOKD_STORAGE__DURABILITY=sometimes");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(64), "{failure}");
    assert!(failure.stderr_text().to_lowercase().contains("durability"), "{failure}");
}

#[tokio::test]
async fn a_request_without_a_token_gets_401_problem_json() {
    let daemon = Daemon::start().await;
    let response = daemon.raw(Method::GET, "/v1/tenants", &[], "").await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/problem+json"), "content-type {content_type:?}");
    assert_eq!(response.json()["status"], 401, "{}", response.text());
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test]
async fn the_admin_token_is_accepted() {
    let daemon = Daemon::start().await;
    let (status, body) = daemon.get("/v1/tenants").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn metrics_are_described_and_group_commit_sizes_have_count_buckets() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let events: Vec<_> = (0..100).map(|i| json!({"type": "a", "payload": {"i": i}})).collect();
    let (status, body) = daemon.post("/v1/tenants/acme/events/batch", json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let response = client().get(daemon.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("metrics text");
    assert!(text.contains("# HELP hookd_events_ingested_total"), "{text}");
    assert!(text.contains("hookd_events_ingested_total 100"), "{text}");
    // The batch of 100 is one group commit: below the 128 bucket, above the 64 one.
    assert!(text.contains("hookd_group_commit_events_bucket{le=\"128\"} 1"), "{text}");
    assert!(text.contains("hookd_group_commit_events_bucket{le=\"64\"} 0"), "{text}");
}

#[tokio::test]
async fn a_sigkilled_daemon_restarts_on_the_same_data_dir() {
    let mut daemon = Daemon::start().await;
    let data_dir = daemon.data_dir();
    let status = daemon.kill().await;
    assert_eq!(status.code(), None, "SIGKILL leaves no exit code: {status}");
    daemon.restart().await;
    assert_eq!(daemon.data_dir(), data_dir);
    assert!(data_dir.is_dir(), "{} was not created", data_dir.display());
    let response = daemon.raw(Method::GET, "/healthz", &[], "").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
}

#[tokio::test]
async fn receiver_records_requests_and_answers_the_status_set() {
    let receiver = Receiver::start().await;
    let client = client();
    let response = client
        .post(receiver.url("/hooks/a?x=1"))
        .header("x-test", "yes")
        .body("hello")
        .send()
        .await
        .expect("POST to receiver");
    assert_eq!(response.status(), StatusCode::OK);

    receiver.set_status(503);
    let response = client.put(receiver.url("/b")).send().await.expect("PUT to receiver");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let requests = receiver.wait_for(2, 5 * SECOND).await;
    assert_eq!(receiver.count(), 2);
    assert_eq!((requests[0].method.as_str(), requests[0].uri.as_str()), ("POST", "/hooks/a?x=1"));
    assert_eq!(requests[0].header("x-test"), Some("yes"));
    assert_eq!(&requests[0].body[..], b"hello");
    assert_eq!((requests[1].method.as_str(), requests[1].uri.as_str()), ("PUT", "/b"));
    assert!(requests[0].at <= requests[1].at);
}

#[tokio::test]
async fn receiver_follows_a_scripted_sequence_then_its_status() {
    let receiver = Receiver::start().await;
    receiver.set_status(204);
    receiver.set_sequence([500, 500, 200]);
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = client.post(receiver.url("/")).send().await.expect("POST to receiver");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200, 204, 204]);
}

#[tokio::test]
async fn receiver_delays_its_response() {
    let receiver = Receiver::start().await;
    receiver.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    let response = client().post(receiver.url("/")).send().await.expect("POST to receiver");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(elapsed >= Duration::from_millis(300), "answered after {elapsed:?}");
    // Recorded on arrival, not when answered.
    assert!(receiver.requests()[0].at < started + Duration::from_millis(300));
}

#[tokio::test]
async fn receiver_sends_extra_headers_and_body() {
    let receiver = Receiver::start().await;
    receiver.set_status(429);
    receiver.set_header("Retry-After", "7");
    receiver.set_body("slow down");
    let response = client().post(receiver.url("/")).send().await.expect("POST to receiver");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.text().await.expect("receiver body"), "slow down");

    receiver.clear_headers();
    let response = client().post(receiver.url("/")).send().await.expect("POST to receiver");
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn receiver_verify_accepts_a_valid_signature_and_rejects_others() {
    let receiver = Receiver::start().await;
    let body = json!({"id": "evt_1", "type": "ticket.created", "data": {"n": 1}}).to_string();
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64;
    let signature = standardwebhooks::Webhook::new(SECRET)
        .expect("test secret")
        .sign("evt_1", timestamp, body.as_bytes())
        .expect("sign");
    let client = client();
    let send = |signature: String, body: String| {
        client
            .post(receiver.url("/"))
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    send(signature.clone(), body.clone()).await.expect("POST signed");
    // During a secret rotation, any one matching signature will do.
    send(format!("v1,bm9wZQ== {signature}"), body.clone()).await.expect("POST signed twice");
    send(signature.clone(), body.replace("\"n\":1", "\"n\":2")).await.expect("POST tampered");

    let requests = receiver.wait_for(3, 5 * SECOND).await;
    assert_eq!(requests[0].webhook_id(), "evt_1");
    let parsed = verify(SECRET, &requests[0]).expect("valid signature");
    assert_eq!(parsed["data"]["n"], 1);
    verify(SECRET, &requests[1]).expect("valid signature among two");
    assert!(verify(SECRET, &requests[2]).is_err(), "tampered body verified");
    assert!(verify("whsec_c2VjcmV0LWJ1dC13cm9uZw==", &requests[0]).is_err(), "wrong secret verified");
}

#[tokio::test]
async fn receiver_refuses_connections_once_dropped() {
    let receiver = Receiver::start().await;
    let url = receiver.url("/");
    let client = client();
    client.post(&url).send().await.expect("POST to live receiver");
    drop(receiver);
    // Even the client's pooled keep-alive connection must stop working.
    let refused =
        eventually(5 * SECOND, Duration::from_millis(20), || async { client.post(&url).send().await.err() })
            .await;
    assert!(refused.is_some(), "dropped receiver still answers");
}

#[tokio::test]
async fn receiver_comes_back_on_the_same_address() {
    let receiver = Receiver::start().await;
    let addr = receiver.addr();
    drop(receiver);
    let receiver = Receiver::start_at(addr).await;
    assert_eq!(receiver.addr(), addr);
    let response = client().post(receiver.url("/")).send().await.expect("POST to restarted receiver");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
#[should_panic(expected = "expected 2 requests")]
async fn receiver_wait_for_panics_when_too_few_arrive() {
    let receiver = Receiver::start().await;
    client().post(receiver.url("/")).send().await.expect("POST to receiver");
    receiver.wait_for(2, Duration::from_millis(200)).await;
}
