//! Durability: delivery state (the retry queue, each endpoint's cursor) survives SIGKILL, SIGTERM and
//! restarts, idempotency keys survive a SIGKILL, and a backlog built up while a receiver was down or an
//! endpoint disabled, even one larger than the in-memory feed, is caught up from the log. The crash
//! tests under concurrent ingest (kill -9 and SIGTERM cycles) are in the fault suite (`tests/faults`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, eventually};
use crate::ledger::{
    Ack, EVENT_TYPE, TENANT, Tally, endpoint_to, events_path, ingest_batch, wait_until_delivered,
};
use crate::receiver::Receiver;

const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);
/// How long a receiver may take to get everything expected after a restart.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The event's delivery to its only endpoint, from the event-detail API.
async fn delivery_of(daemon: &Daemon, id: &str) -> Value {
    let (status, body) = daemon.get(&format!("{}/{id}", events_path())).await;
    assert_eq!(status, StatusCode::OK, "GET event {id}: {body}");
    body["deliveries"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_deliveries_are_retrying_keeps_the_retry_queue() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let mut daemon = Daemon::start().await;
    let retry = json!({ "max_attempts": 10, "initial_ms": 200, "max_ms": 400 });
    endpoint_to(&daemon, &receiver, json!({ "retry": retry })).await;
    let mut acks = Vec::new();
    for seq in 0..20 {
        acks.push(Ack { id: daemon.ingest(TENANT, EVENT_TYPE, json!({ "seq": seq })).await, seq });
    }
    let all_tried = eventually(10 * SECOND, POLL, || async {
        for ack in &acks {
            let d = delivery_of(&daemon, &ack.id).await;
            if d["attempts"].as_u64().unwrap_or(0) < 1 {
                return None;
            }
            assert_eq!(d["state"], "pending", "{ack:?} gave up before the kill: {d}");
        }
        Some(())
    })
    .await;
    assert!(all_tried.is_some(), "not every event had a failed attempt within 10 s");
    // Delivery state is written without a flush of its own (sled flushes it within 500 ms, or with
    // the next group commit: sled has one log for all trees). An ingest into another tenant makes the
    // failed attempts durable now, so the kill below tests what a restart does with them rather than
    // racing the background flusher.
    daemon.create_tenant("bystander").await;
    daemon.ingest("bystander", EVENT_TYPE, json!({})).await;

    daemon.kill().await;
    receiver.clear();
    receiver.set_status(200);
    daemon.restart().await;

    wait_until_delivered(&receiver, &acks, DELIVERY_TIMEOUT).await;
    let settled = eventually(10 * SECOND, POLL, || async {
        let mut deliveries = Vec::new();
        for ack in &acks {
            let d = delivery_of(&daemon, &ack.id).await;
            if d["state"] != "succeeded" {
                return None;
            }
            deliveries.push(d);
        }
        Some(deliveries)
    })
    .await
    .expect("every event's delivery ends succeeded after the restart");
    for d in settled {
        // At least one failed attempt before the kill and the successful one after: the delivery record
        // with its attempt count survived, rather than the event being sent afresh.
        assert!(d["attempts"].as_u64().unwrap_or(0) >= 2, "the delivery's attempts were forgotten: {d}");
    }
    // The attempt records themselves (in the history segments, the index in sled) read back whole:
    // the failures from before the kill, then the success.
    for ack in &acks {
        let (status, page) =
            daemon.get(&format!("/v1/tenants/{TENANT}/attempts?event_id={}&sort=sent_at", ack.id)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let codes: Vec<u64> =
            page["data"].as_array().into_iter().flatten().filter_map(|a| a["status_code"].as_u64()).collect();
        assert!(codes.len() >= 2, "{ack:?}: {page}");
        let (last, before) = codes.split_last().unwrap_or((&0, &[]));
        assert_eq!((*last, before.iter().all(|c| *c == 500)), (200, true), "{ack:?}: {codes:?}");
    }
}

/// Old events a clean restart may deliver again before the test calls it a replay.
const MAX_REPLAYED: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_resumes_exactly_where_delivery_stopped() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    let before = ingest_batch(&daemon, 0..50).await;
    wait_until_delivered(&receiver, &before, DELIVERY_TIMEOUT).await;

    let status = daemon.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM: {status}");
    receiver.clear();
    daemon.restart().await;

    // Bounded quiet period: a replay from a stale cursor would start at once; stop waiting if it does.
    let replay = eventually(Duration::from_millis(1500), POLL, || async {
        (receiver.count() > MAX_REPLAYED).then(|| receiver.count())
    })
    .await;
    assert_eq!(replay, None, "the restart delivered the 50 old events again (the cursor was not persisted)");

    let after = ingest_batch(&daemon, 50..55).await;
    let tally = wait_until_delivered(&receiver, &after, DELIVERY_TIMEOUT).await;
    let old: HashSet<&str> = before.iter().map(|a| a.id.as_str()).collect();
    let new: HashSet<&str> = after.iter().map(|a| a.id.as_str()).collect();
    let replayed = tally.seqs.keys().filter(|id| old.contains(id.as_str())).count();
    let unknown: Vec<&String> =
        tally.seqs.keys().filter(|id| !old.contains(id.as_str()) && !new.contains(id.as_str())).collect();
    eprintln!("clean restart: {replayed} old events delivered again, {} requests in all", tally.requests);
    assert!(replayed <= MAX_REPLAYED, "{replayed} of the 50 old events were delivered again");
    assert!(unknown.is_empty(), "deliveries of events never ingested: {unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_during_a_restart_catches_up_from_the_log() {
    let down = Receiver::start().await;
    let addr = down.addr();
    let mut daemon = Daemon::start().await;
    let retry = json!({ "max_attempts": 50, "initial_ms": 200, "max_ms": 1000 });
    endpoint_to(&daemon, &down, json!({ "retry": retry })).await;
    drop(down); // connection refused from now on

    let mut acks = Vec::new();
    for first in (0..300).step_by(100) {
        acks.extend(ingest_batch(&daemon, first..first + 100).await);
    }
    let status = daemon.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM with deliveries failing: {status}");
    daemon.restart().await;

    let receiver = Receiver::start_at(addr).await;
    let tally = wait_until_delivered(&receiver, &acks, DELIVERY_TIMEOUT).await;
    eprintln!(
        "receiver back after a restart: {} requests, {} distinct for 300 events",
        tally.requests,
        tally.seqs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_in_memory_feed_is_delivered_completely() {
    // The feed holds 4096 events (deliver::feed::FEED_CAPACITY); this overflows it.
    const EVENTS: u64 = 6_000;
    const BATCH: u64 = 500;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start().await;
    let id = endpoint_to(&daemon, &receiver, json!({ "max_in_flight": 64 })).await;
    let endpoint_path = format!("/v1/tenants/{TENANT}/endpoints/{id}");
    // One delivery first, so that the endpoint's feed is live (in memory) before the backlog builds.
    let mut acks = ingest_batch(&daemon, 0..1).await;
    wait_until_delivered(&receiver, &acks, DELIVERY_TIMEOUT).await;

    let (status, body) = daemon.patch(&endpoint_path, json!({ "enabled": false })).await;
    assert_eq!(status, StatusCode::OK, "disable: {body}");
    for first in (1..=EVENTS).step_by(BATCH as usize) {
        acks.extend(ingest_batch(&daemon, first..first + BATCH).await);
    }
    let (status, body) = daemon.patch(&endpoint_path, json!({ "enabled": true })).await;
    assert_eq!(status, StatusCode::OK, "enable: {body}");

    let started = Instant::now();
    let tally = wait_until_delivered(&receiver, &acks, 25 * SECOND).await;
    let expected: HashSet<&str> = acks.iter().map(|a| a.id.as_str()).collect();
    let got: HashSet<&str> = tally.seqs.keys().map(String::as_str).collect();
    assert_eq!(got, expected, "the receiver got events that were never ingested");
    eprintln!(
        "backlog of {EVENTS}: delivered in {:?}, {} requests, {} duplicates",
        started.elapsed(),
        tally.requests,
        tally.duplicates()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_ingested_after_a_clean_restart_are_delivered_once_each() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    let mut delivered = 0;
    for round in 0..8u64 {
        let status = daemon.terminate().await;
        assert_eq!(status.code(), Some(0), "SIGTERM: {status}");
        daemon.restart().await;
        let acks = ingest_batch(&daemon, round * 300..round * 300 + 300).await;
        delivered += acks.len();
        wait_until_delivered(&receiver, &acks, DELIVERY_TIMEOUT).await;
        // Bounded quiet period: a duplicate is sent right beside the original.
        let extra = eventually(Duration::from_millis(500), POLL, || async {
            (receiver.count() > delivered).then(|| receiver.count())
        })
        .await;
        let tally = Tally::of(&receiver.requests());
        assert_eq!(
            extra,
            None,
            "round {round}: {} requests for {} events ({} duplicates) with no failure at all",
            tally.requests,
            tally.seqs.len(),
            tally.duplicates()
        );
    }
}

/// The idempotency keys live in the index, which is not synced per ingest: a key acknowledged just
/// before a SIGKILL must come back from the log's own copy and still dedupe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_acknowledged_just_before_a_sigkill_still_dedupe_after_it() {
    let mut daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    let events: Vec<Value> = (0..50u64)
        .map(|i| json!({"type": EVENT_TYPE, "payload": {"seq": i}, "idempotency_key": format!("order-{i}")}))
        .collect();
    let path = format!("{}/batch", events_path());
    let (status, first) = daemon.post(&path, json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, single) = daemon
        .post(
            &events_path(),
            json!({"type": EVENT_TYPE, "payload": {"seq": 50}, "idempotency_key": "order-50"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{single}");
    daemon.kill().await;
    daemon.restart().await;

    let (status, again) = daemon.post(&path, json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    let ids = |answer: &Value| -> Vec<Value> {
        answer["data"].as_array().map(|a| a.iter().map(|e| e["id"].clone()).collect()).unwrap_or_default()
    };
    assert_eq!(ids(&first).len(), 50);
    assert_eq!(ids(&again), ids(&first), "every key answers with the event it named before the kill");
    let replay = daemon
        .send(
            reqwest::Method::POST,
            &events_path(),
            Some(&json!({"type": EVENT_TYPE, "payload": {"seq": 50}, "idempotency_key": "order-50"})),
        )
        .await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text());
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], single["id"]);
    let (_, listed) = daemon.get(&format!("{}?limit=100", events_path())).await;
    let stored = listed["data"].as_array().map_or(0, Vec::len);
    assert_eq!(stored, 51, "nothing was stored twice: {listed}");
}
