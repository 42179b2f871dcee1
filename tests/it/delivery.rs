//! Delivery, end to end: what a receiver gets (Standard Webhooks headers and signature, the documented
//! body), who gets what (subscriptions), retries with backoff and `Retry-After`, exhaustion, 410 Gone,
//! timeouts and connect errors in the history, the attempt detail, per-endpoint isolation, ordering,
//! concurrency and rate limits, and endpoint changes reaching a running dispatcher.
//!
//! Every test runs its own daemon against real receivers on loopback. Waits are bounded polls; the few
//! "nothing more arrives" checks watch the receiver for a short, fixed period.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::{Received, Receiver, verify};

const TENANT: &str = "acme";
const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(25);

/// A daemon with the test tenant.
async fn daemon() -> Daemon {
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    daemon
}

/// A retry policy fast enough for tests (the minimum `initial_ms` is 100).
fn quick_retry(max_attempts: u32) -> Value {
    json!({ "max_attempts": max_attempts, "initial_ms": 100, "max_ms": 400 })
}

/// An endpoint at `url` with a quick retry policy and a short timeout, plus `extra` fields.
fn endpoint(url: &str, extra: Value) -> Value {
    let mut spec = json!({ "url": url, "retry": quick_retry(3), "timeout_ms": 1000 });
    let (Value::Object(spec_fields), Value::Object(extra)) = (&mut spec, extra) else {
        panic!("endpoint extras must be a JSON object");
    };
    spec_fields.extend(extra);
    spec
}

/// Ingests `payloads` as one batch of `event_type` events; returns their ids, oldest first.
async fn ingest_batch(daemon: &Daemon, event_type: &str, payloads: &[Value]) -> Vec<String> {
    let events: Vec<Value> = payloads.iter().map(|p| json!({ "type": event_type, "payload": p })).collect();
    let (status, body) =
        daemon.post(&format!("/v1/tenants/{TENANT}/events/batch"), json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "batch ingest: {body}");
    let ids: Vec<String> = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("batch answer has no data: {body}"))
        .iter()
        .map(|a| text(&a["id"]))
        .collect();
    assert_eq!(ids.len(), payloads.len(), "{body}");
    ids
}

async fn event_detail(daemon: &Daemon, id: &str) -> Value {
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/events/{id}")).await;
    assert_eq!(status, StatusCode::OK, "GET event {id}: {body}");
    body
}

/// The event's delivery entry at `endpoint`; panics when the event does not list it.
async fn delivery_at(daemon: &Daemon, event: &str, endpoint: &str) -> Value {
    let detail = event_detail(daemon, event).await;
    detail["deliveries"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["endpoint_id"] == endpoint))
        .cloned()
        .unwrap_or_else(|| panic!("event {event} lists no delivery at {endpoint}: {detail}"))
}

/// Polls the event until its delivery at `endpoint` is in `state`; returns that delivery entry.
async fn delivery_reaches(daemon: &Daemon, event: &str, endpoint: &str, state: &str) -> Value {
    let found = eventually(10 * SECOND, POLL, || async {
        let d = delivery_at(daemon, event, endpoint).await;
        (d["state"] == state).then_some(d)
    })
    .await;
    match found {
        Some(d) => d,
        None => panic!(
            "delivery of {event} at {endpoint} never became {state}: {}",
            delivery_at(daemon, event, endpoint).await
        ),
    }
}

/// `GET …/attempts?{query}`: the listed attempts.
async fn attempts(daemon: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts?{query}")).await;
    assert_eq!(status, StatusCode::OK, "GET attempts?{query}: {body}");
    body["data"].as_array().unwrap_or_else(|| panic!("attempt list without data: {body}")).clone()
}

/// Polls until at least `n` attempts match `query`; returns them sorted by attempt number.
async fn attempts_reach(daemon: &Daemon, query: &str, n: usize) -> Vec<Value> {
    let found = eventually(10 * SECOND, POLL, || async {
        let mut list = attempts(daemon, query).await;
        list.sort_by_key(|a| a["attempt_number"].as_u64());
        (list.len() >= n).then_some(list)
    })
    .await;
    match found {
        Some(list) => list,
        None => panic!("fewer than {n} attempts for {query}: {:?}", attempts(daemon, query).await),
    }
}

/// Watches `receiver` for `period` and panics if more than `n` requests arrive.
async fn stays_at(receiver: &Receiver, n: usize, period: Duration) {
    let extra =
        eventually(period, POLL, || async { (receiver.count() > n).then(|| receiver.requests()) }).await;
    if let Some(requests) = extra {
        let ids: Vec<&str> = requests.iter().map(Received::webhook_id).collect();
        panic!("receiver {} expected to stay at {n} requests, got {}: {ids:?}", receiver.addr(), ids.len());
    }
}

/// A loopback URL where nothing listens (the port was just bound and released).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    let addr = listener.local_addr().expect("throwaway port address");
    drop(listener);
    format!("http://{addr}/hook")
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("expected a string, got {value}")).to_owned()
}

fn ids(requests: &[Received]) -> Vec<String> {
    requests.iter().map(|r| r.webhook_id().to_owned()).collect()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

#[tokio::test]
async fn every_delivery_is_signed_and_carries_the_documented_headers_and_body() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let (endpoint_id, secret) = daemon
        .create_endpoint(
            TENANT,
            endpoint(&receiver.url("/hook"), json!({ "headers": { "X-Env": "prod", "X-Team": "billing" } })),
        )
        .await;
    let payloads = [
        json!({ "ticket": 42, "subject": "Printer on fire", "tags": ["urgent", "hw"] }),
        json!({ "text": "héllo \"quoted\" \\ \u{1F600}", "nested": { "a": [1, 2.5, null, true] } }),
        json!({ "list": [1, "two", { "three": 3 }], "empty": {} }),
    ];
    let mut sent = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let channels: &[&str] = if i == 0 { &["client_42", "agent_7"] } else { &[] };
        let (id, received_at) = daemon.ingest_on(TENANT, "ticket.created", channels, payload.clone()).await;
        sent.push((id, received_at, channels, payload));
    }

    let requests = receiver.wait_for(sent.len(), 10 * SECOND).await;
    assert_eq!(requests.len(), sent.len());
    for (id, received_at, channels, payload) in &sent {
        let request = requests
            .iter()
            .find(|r| r.webhook_id() == id)
            .unwrap_or_else(|| panic!("no delivery with webhook-id {id}: {:?}", ids(&requests)));
        let body = verify(&secret, request).unwrap_or_else(|e| panic!("signature of {id}: {e}"));

        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/hook");
        let timestamp: i64 = request
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{id}: webhook-timestamp is not unix seconds: {:?}", request.headers));
        assert!((timestamp - unix_now()).abs() <= 10, "{id}: webhook-timestamp {timestamp} is not now");
        let user_agent = request.header("user-agent").unwrap_or_default();
        assert!(user_agent.starts_with("hookd/"), "{id}: user-agent {user_agent:?}");
        assert_eq!(request.header("content-type"), Some("application/json"), "{id}");
        assert_eq!(request.header("x-env"), Some("prod"), "{id}: custom header");
        assert_eq!(request.header("x-team"), Some("billing"), "{id}: custom header");

        let fields: BTreeSet<&str> =
            body.as_object().expect("body is an object").keys().map(String::as_str).collect();
        assert_eq!(fields, BTreeSet::from(["id", "type", "timestamp", "channels", "data"]), "{body}");
        assert_eq!(body["id"], *id);
        assert_eq!(body["type"], "ticket.created");
        assert_eq!(body["timestamp"], *received_at);
        // Channels are a set: the daemon may normalise their order, consistently with the event API.
        let delivered: BTreeSet<&str> = body["channels"]
            .as_array()
            .expect("channels is a list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(delivered, channels.iter().copied().collect(), "{body}");
        assert_eq!(body["channels"], event_detail(&daemon, id).await["channels"], "{body}");
        assert_eq!(body["data"], **payload);

        let d = delivery_reaches(&daemon, id, &endpoint_id, "succeeded").await;
        assert_eq!(d["attempts"], 1, "{d}");
    }
    stays_at(&receiver, sent.len(), Duration::from_millis(300)).await;
}

#[tokio::test]
async fn events_fan_out_to_exactly_the_endpoints_whose_types_and_channels_match() {
    let daemon = daemon().await;
    let (all, tickets, client_1, rounds_of_agent_7) =
        (Receiver::start().await, Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let (ep_all, _) = daemon.create_endpoint(TENANT, endpoint(&all.url("/all"), json!({}))).await;
    let (ep_tickets, _) = daemon
        .create_endpoint(TENANT, endpoint(&tickets.url("/t"), json!({ "event_types": ["ticket.created"] })))
        .await;
    let (ep_client_1, _) = daemon
        .create_endpoint(TENANT, endpoint(&client_1.url("/c"), json!({ "channels": ["client_1"] })))
        .await;
    let (ep_rounds, _) = daemon
        .create_endpoint(
            TENANT,
            endpoint(
                &rounds_of_agent_7.url("/r"),
                json!({ "event_types": ["round.completed"], "channels": ["agent_7"] }),
            ),
        )
        .await;
    let receivers = [&all, &tickets, &client_1, &rounds_of_agent_7];
    let endpoints = [&ep_all, &ep_tickets, &ep_client_1, &ep_rounds];

    // (type, channels, which endpoints match: all, tickets, client_1, rounds of agent_7)
    let cases: [(&str, &[&str], [bool; 4]); 8] = [
        ("ticket.created", &[], [true, true, false, false]),
        ("ticket.created", &["client_1"], [true, true, true, false]),
        ("round.completed", &["agent_7"], [true, false, false, true]),
        ("round.completed", &["client_1"], [true, false, true, false]),
        ("ticket.updated", &["agent_7"], [true, false, false, false]),
        ("round.completed", &[], [true, false, false, false]),
        ("ticket.updated", &["client_1", "agent_7"], [true, false, true, false]),
        ("round.completed", &["client_2", "agent_7"], [true, false, false, true]),
    ];
    let mut expected: [BTreeSet<String>; 4] = Default::default();
    let mut events = Vec::new();
    for (i, (event_type, channels, matches)) in cases.iter().enumerate() {
        let (id, _) = daemon.ingest_on(TENANT, event_type, channels, json!({ "case": i })).await;
        for (k, matched) in matches.iter().enumerate() {
            if *matched {
                expected[k].insert(id.clone());
            }
        }
        events.push((id, matches));
    }

    for (k, receiver) in receivers.iter().enumerate() {
        let got = receiver.wait_for(expected[k].len(), 10 * SECOND).await;
        let got: BTreeSet<String> = ids(&got).into_iter().collect();
        assert_eq!(got, expected[k], "endpoint {k} ({}) got the wrong events", endpoints[k]);
    }
    // Nobody gets anything more once things settle.
    let extra = eventually(Duration::from_millis(500), POLL, || async {
        receivers.iter().zip(&expected).position(|(r, want)| r.count() > want.len())
    })
    .await;
    if let Some(k) = extra {
        panic!("endpoint {k} got more than expected: {:?}", ids(&receivers[k].requests()));
    }
    for (id, matches) in &events {
        let detail = event_detail(&daemon, id).await;
        let listed: BTreeSet<String> = detail["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("event {id} has no deliveries list: {detail}"))
            .iter()
            .map(|d| text(&d["endpoint_id"]))
            .collect();
        let want: BTreeSet<String> =
            endpoints.iter().zip(matches.iter()).filter(|(_, m)| **m).map(|(e, _)| (*e).clone()).collect();
        assert_eq!(listed, want, "event {id}: {detail}");
    }
}

#[tokio::test]
async fn a_failing_delivery_is_retried_with_growing_delays_under_the_same_webhook_id() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let retry = json!({ "max_attempts": 5, "initial_ms": 200, "max_ms": 2000 });
    let (endpoint_id, secret) =
        daemon.create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({ "retry": retry }))).await;
    receiver.set_sequence([500, 500]);
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;

    let requests = receiver.wait_for(3, 10 * SECOND).await;
    assert_eq!(ids(&requests), [&*event, &*event, &*event], "the webhook-id is stable across retries");
    for (i, request) in requests.iter().enumerate() {
        verify(&secret, request).unwrap_or_else(|e| panic!("attempt {}: {e}", i + 1));
    }
    let first_gap = requests[1].at - requests[0].at;
    let second_gap = requests[2].at - requests[1].at;
    // Backoff 200 ms then 400 ms, ±20 %.
    assert!(first_gap >= Duration::from_millis(150), "first retry after {first_gap:?}");
    assert!(second_gap > first_gap, "delays must grow: {first_gap:?} then {second_gap:?}");

    let d = delivery_reaches(&daemon, &event, &endpoint_id, "succeeded").await;
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["next_attempt_at"], Value::Null, "{d}");

    let by_endpoint = format!("endpoint_id={endpoint_id}&event_id={event}");
    let list = attempts_reach(&daemon, &by_endpoint, 3).await;
    assert_eq!(list.len(), 3, "{list:?}");
    let summary: Vec<(u64, u64, String, String)> = list
        .iter()
        .map(|a| {
            (
                a["attempt_number"].as_u64().unwrap_or(0),
                a["status_code"].as_u64().unwrap_or(0),
                text(&a["trigger"]),
                text(&a["status"]),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, 500, "scheduled".into(), "failed".into()),
            (2, 500, "retry".into(), "failed".into()),
            (3, 200, "retry".into(), "succeeded".into()),
        ],
        "{list:?}"
    );
    for a in &list {
        assert_eq!(a["endpoint_id"], endpoint_id.as_str(), "{a}");
        assert_eq!(a["event_ids"], json!([event]), "{a}");
    }
    let failed = attempts(&daemon, &format!("{by_endpoint}&status=failed")).await;
    let codes: Vec<&Value> = failed.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500)], "{failed:?}");
    let succeeded = attempts(&daemon, &format!("{by_endpoint}&status=succeeded")).await;
    assert_eq!(succeeded.len(), 1, "{succeeded:?}");
    assert_eq!(succeeded[0]["status_code"], 200);
    assert_eq!(succeeded[0]["attempt_number"], 3);
}

#[tokio::test]
async fn a_delivery_that_runs_out_of_attempts_is_failed_and_stays_visible() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let (endpoint_id, _) = daemon.create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({}))).await;
    receiver.set_status(503);
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;

    let requests = receiver.wait_for(3, 10 * SECOND).await;
    assert_eq!(ids(&requests), [&*event, &*event, &*event]);
    let d = delivery_reaches(&daemon, &event, &endpoint_id, "failed").await;
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["next_attempt_at"], Value::Null, "{d}");

    // A fourth attempt would have come within ~0.5 s (max_ms 400 + jitter).
    stays_at(&receiver, 3, SECOND).await;
    let d = delivery_at(&daemon, &event, &endpoint_id).await;
    assert_eq!(d["state"], "failed", "the failed delivery is kept: {d}");
    assert_eq!(d["attempts"], 3, "{d}");
    let list = attempts(&daemon, &format!("endpoint_id={endpoint_id}&event_id={event}&status=failed")).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|a| a["status_code"] == 503), "{list:?}");
}

#[tokio::test]
async fn retry_after_on_429_delays_the_next_attempt_beyond_the_backoff() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let retry = json!({ "max_attempts": 3, "initial_ms": 100, "max_ms": 5000 });
    let (endpoint_id, _) =
        daemon.create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({ "retry": retry }))).await;
    receiver.set_sequence([429]);
    receiver.set_header("retry-after", "1");
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;

    let requests = receiver.wait_for(2, 10 * SECOND).await;
    assert_eq!(ids(&requests), [&*event, &*event]);
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(900), "Retry-After: 1 not honoured: second attempt after {gap:?}");
    assert!(gap < 5 * SECOND, "second attempt only after {gap:?}");
    let d = delivery_reaches(&daemon, &event, &endpoint_id, "succeeded").await;
    assert_eq!(d["attempts"], 2, "{d}");
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_reenabling_delivers_what_was_kept() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let spec = endpoint(&receiver.url("/hook"), json!({ "retry": quick_retry(5) }));
    let (endpoint_id, _) = daemon.create_endpoint(TENANT, spec).await;
    receiver.set_sequence([410]);
    let path = format!("/v1/tenants/{TENANT}/endpoints/{endpoint_id}");
    let first = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;
    receiver.wait_for(1, 10 * SECOND).await;

    let disabled = eventually(10 * SECOND, POLL, || async {
        let (status, body) = daemon.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["enabled"] == false).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("a 410 did not disable the endpoint"));
    let reason = disabled["disabled_reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "a disabled endpoint says why: {disabled}");

    let later = [
        daemon.ingest(TENANT, "ticket.created", json!({ "n": 2 })).await,
        daemon.ingest(TENANT, "ticket.created", json!({ "n": 3 })).await,
    ];
    // Neither the retry of the first event (due in ~0.1 s) nor the new events go out while disabled.
    stays_at(&receiver, 1, SECOND).await;
    for id in later.iter().chain([&first]) {
        let d = delivery_at(&daemon, id, &endpoint_id).await;
        assert_eq!(d["state"], "pending", "{id} while the endpoint is disabled: {d}");
    }

    let (status, body) = daemon.patch(&path, json!({ "enabled": true })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], true, "{body}");
    assert_eq!(body["disabled_reason"], Value::Null, "{body}");

    let requests = receiver.wait_for(4, 10 * SECOND).await;
    let resumed: BTreeSet<String> = ids(&requests[1..]).into_iter().collect();
    let want: BTreeSet<String> = [first.clone(), later[0].clone(), later[1].clone()].into();
    assert_eq!(resumed, want, "after re-enabling: {:?}", ids(&requests));
    for id in [&first, &later[0], &later[1]] {
        delivery_reaches(&daemon, id, &endpoint_id, "succeeded").await;
    }
    stays_at(&receiver, 4, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_slow_and_a_dead_endpoint_do_not_hold_up_a_fast_one_or_ingest() {
    let daemon = daemon().await;
    let (fast, slow) = (Receiver::start().await, Receiver::start().await);
    let (fast_ep, _) = daemon.create_endpoint(TENANT, endpoint(&fast.url("/fast"), json!({}))).await;
    let (slow_ep, _) =
        daemon.create_endpoint(TENANT, endpoint(&slow.url("/slow"), json!({ "timeout_ms": 5000 }))).await;
    let (dead, _) = daemon.create_endpoint(TENANT, endpoint(&closed_port_url(), json!({}))).await;
    slow.set_delay(3 * SECOND);

    let started = Instant::now();
    let mut slowest_ingest = Duration::ZERO;
    let mut events = Vec::new();
    for n in 0..20 {
        let one = Instant::now();
        events.push(daemon.ingest(TENANT, "ticket.created", json!({ "n": n })).await);
        slowest_ingest = slowest_ingest.max(one.elapsed());
    }
    let ingest_time = started.elapsed();
    assert!(ingest_time < 5 * SECOND, "20 ingests took {ingest_time:?} (slowest {slowest_ingest:?})");

    let ingested = Instant::now();
    let got = fast.wait_for(20, 10 * SECOND).await;
    let got_ids: BTreeSet<String> = ids(&got).into_iter().collect();
    assert_eq!(got_ids, events.iter().cloned().collect(), "the fast endpoint gets every event once");
    let last_arrival = got.iter().map(|r| r.at).max().expect("20 arrivals");
    let lag = last_arrival.saturating_duration_since(ingested);
    // The slow receiver answers after 3 s, at most 8 (max_in_flight) at a time: 20 take three rounds.
    let slow_count = slow.count();
    assert!(
        lag < 2 * SECOND && slow_count < 20,
        "the fast endpoint got its last event {lag:?} after the last ingest, while the slow one had \
         {slow_count} of 20"
    );
    let last = &events[19];
    delivery_reaches(&daemon, last, &fast_ep, "succeeded").await;
    let at_slow = delivery_at(&daemon, last, &slow_ep).await;
    assert_eq!(at_slow["state"], "pending", "the slow endpoint is still on its first round: {at_slow}");
    // The dead endpoint was tried meanwhile, and failed with connection errors.
    let tried = attempts_reach(&daemon, &format!("endpoint_id={dead}"), 1).await;
    assert_eq!(tried[0]["error_class"], "connect", "{:?}", tried[0]);
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_recorded_as_failed_attempts() {
    let daemon = daemon().await;
    let slow = Receiver::start().await;
    let once = json!({ "max_attempts": 1, "initial_ms": 100, "max_ms": 100 });
    let (slow_ep, _) = daemon
        .create_endpoint(TENANT, endpoint(&slow.url("/slow"), json!({ "timeout_ms": 500, "retry": once })))
        .await;
    let (dead_ep, _) =
        daemon.create_endpoint(TENANT, endpoint(&closed_port_url(), json!({ "retry": once }))).await;
    slow.set_delay(2 * SECOND);
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;

    for (ep, class) in [(&slow_ep, "timeout"), (&dead_ep, "connect")] {
        let list = attempts_reach(&daemon, &format!("endpoint_id={ep}&event_id={event}"), 1).await;
        assert_eq!(list.len(), 1, "{list:?}");
        let a = &list[0];
        assert_eq!(a["error_class"], class, "{a}");
        assert_eq!(a["status"], "failed", "{a}");
        assert_eq!(a["status_code"], Value::Null, "{a}");
        assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "an error says what happened: {a}");
        assert_eq!(a["event_ids"], json!([event]), "{a}");
        let d = delivery_reaches(&daemon, &event, ep, "failed").await;
        assert_eq!(d["attempts"], 1, "{d}");
    }
    let timed_out = &attempts(&daemon, &format!("endpoint_id={slow_ep}&event_id={event}")).await[0];
    let took = timed_out["duration_ms"].as_u64().unwrap_or(0);
    assert!((400..1900).contains(&took), "a 500 ms timeout took {took} ms: {timed_out}");
    assert_eq!(slow.count(), 1, "the slow receiver did get the request");
}

#[tokio::test]
async fn the_attempt_detail_shows_the_request_headers_and_the_response() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let (endpoint_id, _) = daemon
        .create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({ "headers": { "X-Env": "prod" } })))
        .await;
    receiver.set_body(r#"{"received": true, "ref": "r-123"}"#);
    receiver.set_header("x-receipt", "r-123");
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;
    let request = receiver.wait_for(1, 10 * SECOND).await.remove(0);

    let listed = attempts_reach(&daemon, &format!("endpoint_id={endpoint_id}&event_id={event}"), 1).await;
    let attempt_id = text(&listed[0]["id"]);
    assert!(
        listed[0].get("request_headers").is_none(),
        "the list leaves request headers out: {:?}",
        listed[0]
    );
    let (status, a) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts/{attempt_id}")).await;
    assert_eq!(status, StatusCode::OK, "{a}");

    assert_eq!(a["id"], attempt_id.as_str(), "{a}");
    assert_eq!(a["endpoint_id"], endpoint_id.as_str(), "{a}");
    assert_eq!(a["event_ids"], json!([event]), "{a}");
    assert_eq!(a["url"], receiver.url("/hook"), "{a}");
    assert_eq!(a["method"], "POST", "{a}");
    assert_eq!(a["status"], "succeeded", "{a}");
    assert_eq!(a["status_code"], 200, "{a}");
    assert_eq!(a["attempt_number"], 1, "{a}");
    assert_eq!(a["trigger"], "scheduled", "{a}");

    let sent = &a["request_headers"];
    assert_eq!(sent["webhook-id"], event.as_str(), "{a}");
    assert_eq!(sent["webhook-signature"].as_str(), request.header("webhook-signature"), "{a}");
    assert!(sent["webhook-signature"].as_str().is_some_and(|s| s.starts_with("v1,")), "{a}");
    assert_eq!(sent["webhook-timestamp"].as_str(), request.header("webhook-timestamp"), "{a}");
    assert_eq!(sent["x-env"], "prod", "{a}");

    assert_eq!(a["response_headers"]["x-receipt"], "r-123", "{a}");
    assert_eq!(a["response_body"], r#"{"received": true, "ref": "r-123"}"#, "{a}");
    assert_eq!(a["response_truncated"], false, "{a}");
}

#[tokio::test]
async fn the_attempt_detail_shows_the_request_body_sent() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let (endpoint_id, _) = daemon.create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({}))).await;
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;
    let request = receiver.wait_for(1, 10 * SECOND).await.remove(0);
    let listed = attempts_reach(&daemon, &format!("endpoint_id={endpoint_id}&event_id={event}"), 1).await;
    let (status, a) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts/{}", text(&listed[0]["id"]))).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let body = String::from_utf8_lossy(&request.body);
    assert_eq!(a["request_body"].as_str(), Some(&*body), "{a}");
}

#[tokio::test]
async fn response_bodies_in_the_history_are_capped() {
    let daemon = Daemon::start_with(|s| {
        s.set("delivery.max_response_body_bytes", "1KiB");
    })
    .await;
    daemon.create_tenant(TENANT).await;
    let receiver = Receiver::start().await;
    let (endpoint_id, _) = daemon.create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({}))).await;
    receiver.set_body("x".repeat(10 * 1024));
    let event = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;
    receiver.wait_for(1, 10 * SECOND).await;

    let listed = attempts_reach(&daemon, &format!("endpoint_id={endpoint_id}&event_id={event}"), 1).await;
    let (status, a) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts/{}", text(&listed[0]["id"]))).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "succeeded", "a long body is still a success: {a}");
    assert_eq!(a["response_truncated"], true, "{a}");
    let body = a["response_body"].as_str().unwrap_or_default();
    assert!(!body.is_empty() && body.len() <= 1024, "kept {} bytes of the response body", body.len());
    assert!(body.bytes().all(|b| b == b'x'), "the kept part is the start of the body");
    stays_at(&receiver, 1, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_ordered_endpoint_holds_later_events_until_the_earlier_one_succeeds() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let spec = endpoint(&receiver.url("/hook"), json!({ "ordered": true, "retry": quick_retry(5) }));
    let (endpoint_id, _) = daemon.create_endpoint(TENANT, spec).await;
    receiver.set_sequence([500, 500]);
    let mut events = vec![daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await];
    // The rest arrive while the first waits for its retry.
    receiver.wait_for(1, 10 * SECOND).await;
    for n in 2..=5 {
        events.push(daemon.ingest(TENANT, "ticket.created", json!({ "n": n })).await);
    }

    let requests = receiver.wait_for(7, 10 * SECOND).await;
    let got = ids(&requests);
    let mut want = vec![events[0].clone(); 3];
    want.extend(events[1..].iter().cloned());
    assert_eq!(got, want, "the first event fails twice, then succeeds; the rest follow in order");
    for pair in requests.windows(2) {
        assert!(pair[1].at >= pair[0].at, "arrival order");
    }
    stays_at(&receiver, 7, Duration::from_millis(300)).await;
    for id in &events {
        delivery_reaches(&daemon, id, &endpoint_id, "succeeded").await;
    }
}

#[tokio::test]
async fn max_in_flight_bounds_concurrent_requests_to_an_endpoint() {
    const DELAY: Duration = Duration::from_millis(300);
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    daemon.create_endpoint(TENANT, endpoint(&receiver.url("/hook"), json!({ "max_in_flight": 2 }))).await;
    receiver.set_delay(DELAY);
    let payloads: Vec<Value> = (0..6).map(|n| json!({ "n": n })).collect();
    let sent = ingest_batch(&daemon, "ticket.created", &payloads).await;

    let requests = receiver.wait_for(6, 10 * SECOND).await;
    let got: BTreeSet<String> = ids(&requests).into_iter().collect();
    assert_eq!(got, sent.into_iter().collect::<BTreeSet<_>>());
    // A request is in flight from its arrival until the receiver answers, DELAY later; a new one can
    // only start after an answer. Allow a little clock slack.
    let busy = DELAY - Duration::from_millis(20);
    let most_at_once = requests
        .iter()
        .map(|r| requests.iter().filter(|o| o.at <= r.at && o.at + busy > r.at).count())
        .max()
        .unwrap_or(0);
    assert!(most_at_once <= 2, "{most_at_once} requests were in flight at once (max_in_flight 2)");
    assert_eq!(most_at_once, 2, "with 6 events queued, two requests go out at once");
    let span = requests[5].at - requests[0].at;
    assert!(span >= 2 * busy, "6 requests, 2 at a time, 300 ms each, spanned only {span:?}");
}

#[tokio::test]
async fn a_rate_limit_spreads_deliveries_over_time() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let spec = endpoint(&receiver.url("/hook"), json!({ "rate_limit": { "per_second": 5, "burst": 1 } }));
    daemon.create_endpoint(TENANT, spec).await;
    let payloads: Vec<Value> = (0..10).map(|n| json!({ "n": n })).collect();
    ingest_batch(&daemon, "ticket.created", &payloads).await;

    let requests = receiver.wait_for(10, 10 * SECOND).await;
    let span = requests[9].at - requests[0].at;
    // One every 200 ms: nine gaps, 1.8 s.
    assert!(span >= Duration::from_millis(1500), "10 deliveries at 5/s spanned only {span:?}");
    stays_at(&receiver, 10, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn header_changes_reach_deliveries_made_after_the_patch() {
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    let spec = endpoint(&receiver.url("/hook"), json!({ "headers": { "X-Env": "blue", "X-Old": "1" } }));
    let (endpoint_id, secret) = daemon.create_endpoint(TENANT, spec).await;
    let before: Vec<String> = {
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(daemon.ingest(TENANT, "ticket.created", json!({ "n": n })).await);
        }
        ids
    };
    receiver.wait_for(3, 10 * SECOND).await;

    let patch = json!({ "headers": { "X-Env": "green", "X-Old": null, "X-New": "yes" } });
    let (status, body) = daemon.patch(&format!("/v1/tenants/{TENANT}/endpoints/{endpoint_id}"), patch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"], json!({ "X-Env": "green", "X-New": "yes" }), "{body}");
    let mut after = Vec::new();
    for n in 3..6 {
        after.push(daemon.ingest(TENANT, "ticket.created", json!({ "n": n })).await);
    }

    let requests = receiver.wait_for(6, 10 * SECOND).await;
    let by_id: BTreeMap<String, &Received> =
        requests.iter().map(|r| (r.webhook_id().to_owned(), r)).collect();
    for id in &before {
        let r = by_id.get(id).unwrap_or_else(|| panic!("{id} not delivered"));
        assert_eq!(
            (r.header("x-env"), r.header("x-old")),
            (Some("blue"), Some("1")),
            "{id} before the patch"
        );
    }
    for id in &after {
        let r = by_id.get(id).unwrap_or_else(|| panic!("{id} not delivered"));
        verify(&secret, r).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(r.header("x-env"), Some("green"), "{id} after the patch");
        assert_eq!(r.header("x-new"), Some("yes"), "{id} after the patch");
        assert_eq!(r.header("x-old"), None, "{id}: the removed header is gone");
    }
}

/// Regression: a new endpoint's dispatcher starts by reading the log; an event it read there after the
/// committer wrote it but before the router pushed it used to go out a second time.
#[tokio::test]
async fn each_event_goes_out_once_to_each_new_endpoint_under_concurrent_ingest() {
    const ENDPOINTS: usize = 8;
    const EVENTS: usize = 40;
    let daemon = daemon().await;
    let receiver = Receiver::start().await;
    for k in 0..ENDPOINTS {
        daemon.create_endpoint(TENANT, endpoint(&receiver.url(&format!("/ep{k}")), json!({}))).await;
    }
    let ingests = (0..EVENTS).map(|n| daemon.ingest(TENANT, "ticket.created", json!({ "n": n })));
    let sent = futures_util::future::join_all(ingests).await;
    assert_eq!(sent.iter().collect::<BTreeSet<_>>().len(), EVENTS);

    let tally = || {
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in receiver.requests() {
            *seen.entry((r.uri.clone(), r.webhook_id().to_owned())).or_default() += 1;
        }
        seen
    };
    let all_in =
        eventually(15 * SECOND, POLL, || async { (tally().len() == ENDPOINTS * EVENTS).then_some(()) });
    assert!(
        all_in.await.is_some(),
        "every endpoint gets every event: {} of {}",
        tally().len(),
        ENDPOINTS * EVENTS
    );
    // Every receiver answered 200 at once: nothing has a reason to go out twice. A duplicate starts
    // right beside the original, so a short watch catches any straggler.
    let count = receiver.count();
    let _ =
        eventually(Duration::from_millis(300), POLL, || async { (receiver.count() > count).then_some(()) })
            .await;
    let repeated: Vec<_> = tally().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} (endpoint, event) pairs sent more than once: {repeated:?}",
        repeated.len()
    );
}

// ---- batched delivery ----

/// The `{"events": [...]}` of a batch request, as `(event id, payload n)` pairs.
fn batch_events(request: &Received) -> Vec<(String, i64)> {
    request.json()["events"]
        .as_array()
        .unwrap_or_else(|| panic!("not a batch body: {}", String::from_utf8_lossy(&request.body)))
        .iter()
        .map(|e| (text(&e["id"]), e["data"]["n"].as_i64().unwrap_or(-1)))
        .collect()
}

#[tokio::test]
async fn a_batch_endpoint_gets_full_batches_then_the_rest_after_max_wait() {
    let receiver = Receiver::start().await;
    let daemon = daemon().await;
    let (_, secret) = daemon
        .create_endpoint(
            TENANT,
            endpoint(&receiver.url("/batch"), json!({ "batch": { "max_events": 5, "max_wait_ms": 400 } })),
        )
        .await;
    let payloads: Vec<Value> = (0..12).map(|n| json!({ "n": n })).collect();
    let ids = ingest_batch(&daemon, "ticket.created", &payloads).await;
    let requests = receiver.wait_for(3, 10 * SECOND).await;
    stays_at(&receiver, 3, Duration::from_millis(600)).await;
    let mut seen = Vec::new();
    for r in &requests {
        verify(&secret, r).unwrap_or_else(|e| panic!("a batch does not verify: {e}"));
        assert!(
            r.webhook_id().starts_with("bat_"),
            "a batch is identified by its batch id: {}",
            r.webhook_id()
        );
        seen.extend(batch_events(r));
    }
    let sizes: Vec<usize> = requests.iter().map(|r| batch_events(r).len()).collect();
    assert_eq!(sizes, [5, 5, 2], "full batches first, the remainder after max_wait_ms");
    // Unordered endpoints send batches concurrently: events are oldest first within each batch, and
    // the batches together carry every event exactly once.
    let mut batches: Vec<Vec<(String, i64)>> = requests.iter().map(batch_events).collect();
    for b in &batches {
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "a batch lists its events oldest first: {b:?}");
    }
    batches.sort();
    let got: Vec<String> = batches.iter().flatten().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids, "every event exactly once");
    let ns: Vec<i64> = batches.iter().flatten().map(|(_, n)| *n).collect();
    assert_eq!(ns, (0..12).collect::<Vec<i64>>());
    let webhook_ids: BTreeSet<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(webhook_ids.len(), 3, "each batch has its own id");
}

#[tokio::test]
async fn a_failed_batch_is_retried_as_the_same_batch_and_its_events_show_it() {
    let receiver = Receiver::start().await;
    receiver.set_sequence([500]);
    let daemon = daemon().await;
    let (ep, secret) = daemon
        .create_endpoint(
            TENANT,
            endpoint(&receiver.url("/batch"), json!({ "batch": { "max_events": 3, "max_wait_ms": 100 } })),
        )
        .await;
    let payloads: Vec<Value> = (0..3).map(|n| json!({ "n": n })).collect();
    let ids = ingest_batch(&daemon, "ticket.created", &payloads).await;
    let requests = receiver.wait_for(2, 10 * SECOND).await;
    for r in &requests {
        verify(&secret, r).unwrap_or_else(|e| panic!("a retried batch does not verify: {e}"));
    }
    assert_eq!(requests[0].webhook_id(), requests[1].webhook_id(), "a retry keeps the batch id");
    assert_eq!(batch_events(&requests[0]), batch_events(&requests[1]), "a retry carries the same events");
    let tried = attempts_reach(&daemon, &format!("endpoint_id={ep}"), 2).await;
    for a in &tried {
        assert_eq!(a["webhook_id"], requests[0].webhook_id(), "{a}");
        let carried: Vec<String> = a["event_ids"].as_array().into_iter().flatten().map(text).collect();
        assert_eq!(carried, ids, "the history shows which events the batch carried");
    }
    for id in &ids {
        let d = delivery_reaches(&daemon, id, &ep, "succeeded").await;
        assert_eq!(d["attempts"], 2, "{d}");
        assert_eq!(d["batch_id"], requests[0].webhook_id(), "{d}");
    }
}
