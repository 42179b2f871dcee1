//! The live activity stream, `GET /v1/tenants/{tenant}/activity` (Server-Sent Events): a reader sees
//! its tenant's ingests and attempt outcomes as they happen and nothing of another tenant's; bad
//! requests are refused with problem+json; a reader that stops reading is dropped without slowing
//! delivery.
//!
//! Every wait is bounded: stream reads time out, and the streams are dropped with the test.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{ADMIN_TOKEN, Daemon, StatusCode, eventually};
use crate::receiver::Receiver;

const SECOND: Duration = Duration::from_secs(1);

/// An open SSE stream, read event by event.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

/// One SSE event: its `event:` name and its `data:` parsed as JSON.
#[derive(Debug)]
struct SseEvent {
    name: String,
    data: Value,
}

impl SseClient {
    /// Opens `tenant`'s stream with `token`; returns the response when it is not a 200.
    async fn open(
        daemon: &Daemon,
        tenant: &str,
        token: &str,
    ) -> Result<SseClient, (StatusCode, String, Value)> {
        // No total timeout: the stream lives as long as the test reads it (reads are bounded below).
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        let response = tokio::time::timeout(
            10 * SECOND,
            client.get(daemon.url(&format!("/v1/tenants/{tenant}/activity"))).bearer_auth(token).send(),
        )
        .await
        .expect("the stream's head within 10 s")
        .expect("GET …/activity");
        if response.status() != StatusCode::OK {
            let status = response.status();
            let content_type =
                response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            return Err((status, content_type, body));
        }
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some("text/event-stream"));
        Ok(SseClient { response, buffer: String::new() })
    }

    /// The next event (heartbeat comments skipped); `None` at the end of the stream or after `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    let data =
                        serde_json::from_str(&data).unwrap_or_else(|e| panic!("SSE data {data:?}: {e}"));
                    return Some(SseEvent { name, data });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until `done` says every expected one was seen, or `timeout`; returns them all.
    async fn collect_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[SseEvent]) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(event) => seen.push(event),
                None => break,
            }
        }
        seen
    }
}

fn ids_of<'a>(events: &'a [SseEvent], name: &str) -> Vec<&'a str> {
    events.iter().filter(|e| e.name == name).filter_map(|e| e.data["id"].as_str()).collect()
}

fn attempts_for<'a>(events: &'a [SseEvent], event_id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.name == "attempt")
        .map(|e| &e.data)
        .filter(|d| d["event_ids"].as_array().is_some_and(|ids| ids.iter().any(|i| i == event_id)))
        .collect()
}

#[tokio::test]
async fn a_reader_sees_its_tenants_ingests_and_attempts_live_and_nothing_of_another_tenant() {
    let daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    daemon.create_tenant("other").await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = daemon.create_endpoint("acme", json!({ "url": receiver.url("/hook") })).await;
    let mut acme = SseClient::open(&daemon, "acme", ADMIN_TOKEN).await.expect("acme stream");
    let mut other = SseClient::open(&daemon, "other", ADMIN_TOKEN).await.expect("other stream");

    let foreign = daemon.ingest("other", "secret.thing", json!({ "n": 0 })).await;
    let (single, received_at) =
        daemon.ingest_on("acme", "ticket.created", &["client_42"], json!({ "n": 1, "pad": "xxxx" })).await;
    let (status, body) = daemon
        .post(
            "/v1/tenants/acme/events/batch",
            json!({ "events": [
                { "type": "ticket.updated", "payload": { "n": 2 } },
                { "type": "ticket.closed", "channels": ["a", "b"], "payload": { "n": 3 } },
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch: Vec<String> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect();
    let (status, test_attempt) = daemon
        .post(
            &format!("/v1/tenants/acme/endpoints/{endpoint}/test"),
            json!({ "type": "ping", "payload": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{test_attempt}");

    let expected: Vec<&str> = [single.as_str()].into_iter().chain(batch.iter().map(String::as_str)).collect();
    let seen = acme
        .collect_until(15 * SECOND, |seen| {
            let ingests = ids_of(seen, "ingest");
            expected.iter().all(|id| ingests.contains(id) && !attempts_for(seen, id).is_empty())
                && ids_of(seen, "attempt").contains(&test_attempt["id"].as_str().unwrap_or("?"))
        })
        .await;
    let ingests = ids_of(&seen, "ingest");
    assert_eq!(ingests, expected, "one ingest event per event, in commit order: {seen:#?}");
    assert!(!ingests.contains(&foreign.as_str()), "another tenant's event leaked");

    let first = seen.iter().find(|e| e.name == "ingest").expect("an ingest");
    assert_eq!(
        first.data,
        json!({
            "id": single, "type": "ticket.created", "channels": ["client_42"], "received_at": received_at,
            "payload_bytes": r#"{"n":1,"pad":"xxxx"}"#.len(),
        }),
        "the ingest event tells the event without its payload"
    );
    let closed = seen.iter().find(|e| e.data["id"] == batch[1].as_str()).expect("the batch's second event");
    assert_eq!(closed.data["type"], "ticket.closed");
    assert_eq!(closed.data["channels"], json!(["a", "b"]));

    for id in &expected {
        let attempts = attempts_for(&seen, id);
        let a = attempts[0];
        assert_eq!(a["endpoint_id"], endpoint.as_str(), "{a}");
        assert_eq!(a["status_code"], 200, "{a}");
        assert_eq!(a["succeeded"], true, "{a}");
        assert_eq!(a["error_class"], Value::Null, "{a}");
        assert_eq!(a["trigger"], "scheduled", "{a}");
        assert_eq!(a["batch_id"], Value::Null, "{a}");
        assert!(a["id"].as_str().is_some_and(|s| s.starts_with("att_")), "{a}");
        assert!(a["duration_ms"].is_u64(), "{a}");
    }
    let test = seen.iter().find(|e| e.data["id"] == test_attempt["id"]).expect("the test send's attempt");
    assert_eq!(test.data["trigger"], "test");
    assert_eq!(test.data["endpoint_id"], endpoint.as_str());

    // The other tenant's reader saw its own event, and none of acme's.
    let theirs = other.collect_until(5 * SECOND, |seen| !seen.is_empty()).await;
    assert_eq!(ids_of(&theirs, "ingest"), vec![foreign.as_str()], "{theirs:#?}");
    let more = other.next(SECOND).await;
    assert!(more.is_none(), "the other tenant's stream saw more: {more:?}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_problem_details() {
    let daemon = Daemon::start_with(|s| {
        s.set("server.max_activity_streams", 1);
    })
    .await;
    daemon.create_tenant("acme").await;
    daemon.create_tenant("other").await;

    let (status, content_type, body) =
        SseClient::open(&daemon, "nope", ADMIN_TOKEN).await.err().expect("unknown tenant refused");
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json"),
        "{body}"
    );

    let no_auth = daemon.raw(reqwest::Method::GET, "/v1/tenants/acme/activity", &[], "").await;
    assert_eq!(no_auth.status, StatusCode::UNAUTHORIZED);

    // A key bound to `other` reads its own tenant's stream, never acme's.
    let (status, key) =
        daemon.post("/v1/api-keys", json!({ "name": "other", "tenant": "other", "scopes": ["read"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let other_key = key["key"].as_str().expect("key text");
    let (status, _, body) =
        SseClient::open(&daemon, "acme", other_key).await.err().expect("foreign tenant refused");
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let first = SseClient::open(&daemon, "other", other_key).await.expect("its own tenant's stream");
    let (status, content_type, body) =
        SseClient::open(&daemon, "acme", ADMIN_TOKEN).await.err().expect("over the cap refused");
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "application/problem+json")
    );
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("server.max_activity_streams")), "{body}");

    // A reader that leaves gives its slot back.
    drop(first);
    let reopened = eventually(20 * SECOND, Duration::from_millis(100), || async {
        SseClient::open(&daemon, "acme", ADMIN_TOKEN).await.ok()
    })
    .await;
    assert!(reopened.is_some(), "the slot of a closed stream was not given back");
}

#[tokio::test]
async fn a_reader_that_never_reads_is_dropped_and_delivery_does_not_wait_for_it() {
    let daemon = Daemon::start_with(|s| {
        s.set("server.max_activity_streams", 1).set("storage.durability", "os");
    })
    .await;
    daemon.create_tenant("acme").await;
    let receiver = Receiver::start().await;
    daemon
        .create_endpoint(
            "acme",
            json!({ "url": receiver.url("/hook"), "batch": { "max_events": 1000, "max_wait_ms": 20 } }),
        )
        .await;

    // A raw connection with a small receive window that sends its request and never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stuck = socket.connect(daemon.addr()).await.expect("connect");
    let request = format!(
        "GET /v1/tenants/acme/activity HTTP/1.1\r\nhost: hookd\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    );
    stuck.write_all(request.as_bytes()).await.expect("send the request");
    // Read the response head only (a probe racing it could take the slot first); then never again.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(10 * SECOND, stuck.read(&mut byte))
            .await
            .expect("head in 10 s")
            .expect("read");
        assert_eq!(n, 1, "closed before the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let (status, ..) =
        SseClient::open(&daemon, "acme", ADMIN_TOKEN).await.err().expect("the only slot is taken");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Traffic until the stuck reader is dropped (its slot comes back), each batch delivered promptly.
    let started = Instant::now();
    let mut ingested = 0;
    let mut freed = false;
    for round in 0..200 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({ "type": "load.tick", "payload": { "round": round, "i": i } }))
            .collect();
        let (status, body) = daemon.post("/v1/tenants/acme/events/batch", json!({ "events": events })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ingested += 1000;
        if SseClient::open(&daemon, "acme", ADMIN_TOKEN).await.is_ok() {
            freed = true;
            break;
        }
        assert!(started.elapsed() < 60 * SECOND, "the stuck reader was not dropped after {ingested} events");
    }
    assert!(freed, "the stuck reader was not dropped after {ingested} events");

    // Every event reached the receiver, within a bound that a blocked publisher could not meet.
    let delivered = eventually(20 * SECOND, Duration::from_millis(50), || async {
        let n: usize =
            receiver.requests().iter().map(|r| r.json()["events"].as_array().map_or(0, Vec::len)).sum();
        (n >= ingested).then_some(n)
    })
    .await;
    assert_eq!(delivered, Some(ingested), "delivery stalled behind a stuck activity reader");

    // The stuck connection was closed: reading it drains what was buffered, then ends.
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(30 * SECOND, async {
        loop {
            match stuck.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stuck reader's connection is still open");
    let dropped = daemon.get("/metrics").await.1;
    let text = dropped.as_str().unwrap_or_default();
    assert!(text.contains("hookd_activity_streams_dropped_total 1"), "{text}");
}

#[tokio::test]
async fn open_streams_end_at_shutdown_and_do_not_hold_up_the_drain() {
    let mut daemon = Daemon::start().await;
    daemon.create_tenant("acme").await;
    let mut stream = SseClient::open(&daemon, "acme", ADMIN_TOKEN).await.expect("stream");
    let started = Instant::now();
    let status = daemon.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < 10 * SECOND, "the drain waited for the stream: {:?}", started.elapsed());
    assert!(stream.next(5 * SECOND).await.is_none(), "the stream ended with the daemon");
}
