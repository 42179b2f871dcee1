//! Durability: nothing acknowledged is lost across SIGKILL, SIGTERM and restarts, and delivery state
//! (the retry queue, each endpoint's cursor) survives them. A backlog built up while a receiver was down
//! or an endpoint disabled, even one larger than the in-memory feed, is caught up from the log.
//!
//! The crash tests drive ingest from many concurrent writers and stop the daemon while their requests
//! are in flight. Every event that got a 202 must then be readable and delivered at least once (the
//! receiver dedupes on `webhook-id`); an event whose request was cut off may or may not exist.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::harness::{ADMIN_TOKEN, Daemon, StatusCode, eventually};
use crate::receiver::{Received, Receiver};

const TENANT: &str = "acme";
const EVENT_TYPE: &str = "ticket.created";
const SECOND: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);

/// Concurrent ingest clients in the crash tests.
const WRITERS: usize = 16;
/// A crash cycle stops the daemon once this many events are acknowledged, or after `LOAD_FOR`.
const LOAD_MAX_ACKS: usize = 2_000;
const LOAD_FOR: Duration = Duration::from_millis(1500);
/// Every fourth request of a writer is a batch of this many events; the others carry one.
const LOAD_BATCH: usize = 5;
/// How long a receiver may take to get everything expected after a restart.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent `GET …/events/{id}` requests when checking that acknowledged events are readable.
const READERS: usize = 16;

/// An acknowledged event: its id and the sequence number its payload carries.
#[derive(Clone, Debug)]
struct Ack {
    id: String,
    seq: u64,
}

fn event(seq: u64) -> Value {
    json!({ "type": EVENT_TYPE, "payload": { "seq": seq } })
}

fn events_path() -> String {
    format!("/v1/tenants/{TENANT}/events")
}

/// Creates the tenant and one endpoint delivering to `receiver`, with `extra` fields merged into the
/// spec; returns the endpoint id.
async fn endpoint_to(daemon: &Daemon, receiver: &Receiver, extra: Value) -> String {
    let mut spec = json!({ "name": "sink", "url": receiver.url("/hook"), "max_in_flight": 32 });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    daemon.create_tenant(TENANT).await;
    daemon.create_endpoint(TENANT, spec).await.0
}

/// Ingests the events numbered `seqs` in one batch request; panics unless 202.
async fn ingest_batch(daemon: &Daemon, seqs: Range<u64>) -> Vec<Ack> {
    let events: Vec<Value> = seqs.clone().map(event).collect();
    let (status, body) = daemon.post(&format!("{}/batch", events_path()), json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "batch ingest of {seqs:?}: {body}");
    let acks = acks_of(&body["data"], seqs.clone());
    assert_eq!(acks.len(), seqs.clone().count(), "batch ingest of {seqs:?} answered {body}");
    acks
}

/// Pairs the ids of a batch answer (`[{"id": …}, …]`, in request order) with the sequence numbers sent.
fn acks_of(data: &Value, seqs: impl IntoIterator<Item = u64>) -> Vec<Ack> {
    let ids = data.as_array().map(Vec::as_slice).unwrap_or_default();
    ids.iter()
        .zip(seqs)
        .filter_map(|(item, seq)| Some(Ack { id: item["id"].as_str()?.to_owned(), seq }))
        .collect()
}

/// What a receiver got, by `webhook-id`.
struct Tally {
    requests: usize,
    /// Each webhook id and the `data.seq` of its (first) body, when there is one.
    seqs: HashMap<String, Option<u64>>,
}

impl Tally {
    fn of(requests: &[Received]) -> Tally {
        let mut seqs = HashMap::new();
        for r in requests {
            seqs.entry(r.webhook_id().to_owned()).or_insert_with(|| r.json()["data"]["seq"].as_u64());
        }
        Tally { requests: requests.len(), seqs }
    }

    fn duplicates(&self) -> usize {
        self.requests - self.seqs.len()
    }
}

/// Waits until `receiver` has got every one of `expected` at least once; panics naming what is missing.
async fn wait_until_delivered(receiver: &Receiver, expected: &[Ack], timeout: Duration) -> Tally {
    let found = eventually(timeout, Duration::from_millis(100), || async {
        if receiver.count() < expected.len() {
            return None; // cheap check first: a tally copies every request received
        }
        let tally = Tally::of(&receiver.requests());
        expected.iter().all(|ack| tally.seqs.contains_key(&ack.id)).then_some(tally)
    })
    .await;
    let tally = found.unwrap_or_else(|| {
        let tally = Tally::of(&receiver.requests());
        let missing: Vec<&Ack> = expected.iter().filter(|ack| !tally.seqs.contains_key(&ack.id)).collect();
        panic!(
            "after {timeout:?} the receiver still lacks {} of {} expected events ({} requests, {} distinct), \
             e.g. {:?}",
            missing.len(),
            expected.len(),
            tally.requests,
            tally.seqs.len(),
            &missing[..missing.len().min(5)]
        )
    });
    let wrong: Vec<(&Ack, Option<u64>)> = expected
        .iter()
        .filter_map(|ack| {
            let got = tally.seqs[&ack.id];
            (got.is_some() && got != Some(ack.seq)).then_some((ack, got))
        })
        .collect();
    assert!(wrong.is_empty(), "delivered bodies carry the wrong payload: {:?}", &wrong[..wrong.len().min(5)]);
    tally
}

/// Checks that every acknowledged event can be read back with the payload it was acknowledged with.
async fn assert_readable(daemon: &Daemon, acks: &[Ack]) {
    let problems: Vec<String> = stream::iter(acks)
        .map(|ack| async move {
            let (status, body) = daemon.get(&format!("{}/{}", events_path(), ack.id)).await;
            let seq = body["payload"]["seq"].as_u64();
            (status != StatusCode::OK || seq != Some(ack.seq)).then(|| format!("{ack:?}: {status} {body}"))
        })
        .buffer_unordered(READERS)
        .filter_map(|problem| async move { problem })
        .collect()
        .await;
    assert!(
        problems.is_empty(),
        "{} of {} acknowledged events are not readable after the restart, e.g. {:?}",
        problems.len(),
        acks.len(),
        &problems[..problems.len().min(5)]
    );
}

/// Ingest from [`WRITERS`] concurrent clients, each looping until the daemon goes away.
struct Load {
    acks: Arc<Mutex<Vec<Ack>>>,
    writers: JoinSet<Result<(), String>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Starts the writers; `seq` numbers the events, across cycles.
    fn start(daemon: &Daemon, seq: &Arc<AtomicU64>) -> Load {
        // A client of its own: the daemon's pooled connections die with it.
        let client =
            reqwest::Client::builder().no_proxy().timeout(10 * SECOND).build().expect("build reqwest client");
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let url = daemon.url(&events_path());
        let mut writers = JoinSet::new();
        for writer in 0..WRITERS {
            let w = Writer {
                client: client.clone(),
                url: url.clone(),
                seq: seq.clone(),
                acks: acks.clone(),
                stop: stop.clone(),
            };
            writers.spawn(w.run(writer));
        }
        Load { acks, writers, stop }
    }

    fn acked(&self) -> usize {
        self.acks.lock().expect("acks lock").len()
    }

    /// Waits until [`LOAD_MAX_ACKS`] events are acknowledged or [`LOAD_FOR`] has passed.
    async fn run_a_while(&self) {
        let _ = eventually(LOAD_FOR, Duration::from_millis(10), || async {
            (self.acked() >= LOAD_MAX_ACKS).then_some(())
        })
        .await;
    }

    /// Stops the writers (they stop by themselves once the daemon is gone) and returns what was
    /// acknowledged; panics if a writer got an answer other than 202 or 503.
    async fn finish(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let joined = tokio::time::timeout(15 * SECOND, async {
            let mut failures = Vec::new();
            while let Some(result) = self.writers.join_next().await {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(format!("writer task failed: {e}")),
                }
            }
            failures
        })
        .await;
        let failures = joined.expect("the writers did not stop within 15 s of the daemon stopping");
        assert!(failures.is_empty(), "ingest answered unexpectedly under load: {failures:?}");
        std::mem::take(&mut *self.acks.lock().expect("acks lock"))
    }
}

struct Writer {
    client: reqwest::Client,
    url: String,
    seq: Arc<AtomicU64>,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    /// Ingests until told to stop or the daemon goes away (a transport error or 503 "shutting down").
    async fn run(self, writer: usize) -> Result<(), String> {
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let size = if n % 4 == 0 { LOAD_BATCH } else { 1 };
            let first = self.seq.fetch_add(size as u64, Ordering::Relaxed);
            let seqs = first..first + size as u64;
            let request = if size == 1 {
                self.client.post(&self.url).json(&event(first))
            } else {
                let events: Vec<Value> = seqs.clone().map(event).collect();
                self.client.post(format!("{}/batch", self.url)).json(&json!({ "events": events }))
            };
            let Ok(response) = request.bearer_auth(ADMIN_TOKEN).send().await else {
                return Ok(()); // the daemon went away, which is what these tests do to it
            };
            let status = response.status();
            let Ok(body) = response.json::<Value>().await else {
                return Ok(()); // cut off while reading the answer: not acknowledged
            };
            match status {
                StatusCode::ACCEPTED => {
                    let acks = if size == 1 {
                        acks_of(&json!([body]), seqs.clone())
                    } else {
                        acks_of(&body["data"], seqs.clone())
                    };
                    if acks.len() != size {
                        return Err(format!("writer {writer}: 202 without {size} ids: {body}"));
                    }
                    self.acks.lock().expect("acks lock").extend(acks);
                }
                StatusCode::SERVICE_UNAVAILABLE => return Ok(()),
                other => return Err(format!("writer {writer}: {other}: {body}")),
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Terminate,
}

/// Loads `daemon` with concurrent ingest, stops it under that load, and returns what was acknowledged.
async fn stop_under_load(daemon: &mut Daemon, how: Stop, seq: &Arc<AtomicU64>) -> Vec<Ack> {
    let load = Load::start(daemon, seq);
    load.run_a_while().await;
    let acked_before_stop = load.acked();
    match how {
        Stop::Kill => {
            daemon.kill().await;
        }
        Stop::Terminate => {
            let status = daemon.terminate().await;
            assert_eq!(status.code(), Some(0), "SIGTERM under load: {status}");
        }
    }
    let acks = load.finish().await;
    assert!(acked_before_stop > 0, "no event was acknowledged before {how:?}");
    acks
}

/// Runs `cycles` rounds of load → stop → restart against one daemon, then checks that every
/// acknowledged event was readable after its restart and reaches the receiver.
async fn survive_stops(daemon: &mut Daemon, receiver: &Receiver, how: Stop, cycles: usize) {
    let seq = Arc::new(AtomicU64::new(0));
    let mut all: Vec<Ack> = Vec::new();
    let mut per_cycle = Vec::new();
    for _ in 0..cycles {
        let acks = stop_under_load(daemon, how, &seq).await;
        daemon.restart().await;
        assert_readable(daemon, &acks).await;
        per_cycle.push(acks.len());
        all.extend(acks);
    }
    let started = Instant::now();
    let tally = wait_until_delivered(receiver, &all, DELIVERY_TIMEOUT).await;
    eprintln!(
        "{how:?} x{cycles}: acknowledged {per_cycle:?} of {} sent; receiver got {} requests, {} distinct, \
         {} duplicates; caught up {:?} after the last restart",
        seq.load(Ordering::Relaxed),
        tally.requests,
        tally.seqs.len(),
        tally.duplicates(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_concurrent_ingest_loses_nothing_acknowledged() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    survive_stops(&mut daemon, &receiver, Stop::Kill, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_concurrent_ingest_exits_zero_and_loses_nothing_acknowledged() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    survive_stops(&mut daemon, &receiver, Stop::Terminate, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_os_durability_sigkill_loses_nothing_acknowledged() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start_with(|setup| {
        setup.set("storage.durability", "os");
    })
    .await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    survive_stops(&mut daemon, &receiver, Stop::Kill, 1).await;
}

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
