//! What the durability and fault tests count: the events a producer got a `202` for (each with the
//! sequence number its payload carries), what a receiver got for them, and the checks between the two —
//! every acknowledged event readable and delivered with its own payload, duplicates counted.
// Shared by the it and faults test binaries: not every helper is used by both.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

use crate::harness::{Daemon, StatusCode, eventually};
use crate::receiver::{Received, Receiver};

pub const TENANT: &str = "acme";
pub const EVENT_TYPE: &str = "ticket.created";
/// Concurrent `GET …/events/{id}` requests when checking that acknowledged events are readable.
const READERS: usize = 16;

/// An acknowledged event: its id and the sequence number its payload carries.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: String,
    pub seq: u64,
}

pub fn event(seq: u64) -> Value {
    json!({ "type": EVENT_TYPE, "payload": { "seq": seq } })
}

pub fn events_path() -> String {
    format!("/v1/tenants/{TENANT}/events")
}

/// Creates the tenant and one endpoint delivering to `receiver`, with `extra` fields merged into the
/// spec; returns the endpoint id.
pub async fn endpoint_to(daemon: &Daemon, receiver: &Receiver, extra: Value) -> String {
    let mut spec = json!({ "name": "sink", "url": receiver.url("/hook"), "max_in_flight": 32 });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    daemon.create_tenant(TENANT).await;
    daemon.create_endpoint(TENANT, spec).await.0
}

/// Ingests the events numbered `seqs` in one batch request; panics unless 202.
pub async fn ingest_batch(daemon: &Daemon, seqs: Range<u64>) -> Vec<Ack> {
    let events: Vec<Value> = seqs.clone().map(event).collect();
    let (status, body) = daemon.post(&format!("{}/batch", events_path()), json!({ "events": events })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "batch ingest of {seqs:?}: {body}");
    let acks = acks_of(&body["data"], seqs.clone());
    assert_eq!(acks.len(), seqs.clone().count(), "batch ingest of {seqs:?} answered {body}");
    acks
}

/// Pairs the ids of a batch answer (`[{"id": …}, …]`, in request order) with the sequence numbers sent.
pub fn acks_of(data: &Value, seqs: impl IntoIterator<Item = u64>) -> Vec<Ack> {
    let ids = data.as_array().map(Vec::as_slice).unwrap_or_default();
    ids.iter()
        .zip(seqs)
        .filter_map(|(item, seq)| Some(Ack { id: item["id"].as_str()?.to_owned(), seq }))
        .collect()
}

/// What a receiver got, by `webhook-id`.
pub struct Tally {
    pub requests: usize,
    /// Each webhook id and the `data.seq` of its (first) body, when there is one.
    pub seqs: HashMap<String, Option<u64>>,
}

impl Tally {
    pub fn of(requests: &[Received]) -> Tally {
        let mut seqs = HashMap::new();
        for r in requests {
            seqs.entry(r.webhook_id().to_owned()).or_insert_with(|| r.json()["data"]["seq"].as_u64());
        }
        Tally { requests: requests.len(), seqs }
    }

    pub fn duplicates(&self) -> usize {
        self.requests - self.seqs.len()
    }
}

/// Waits until `receiver` has got every one of `expected` at least once; panics naming what is missing.
pub async fn wait_until_delivered(receiver: &Receiver, expected: &[Ack], timeout: Duration) -> Tally {
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
pub async fn assert_readable(daemon: &Daemon, acks: &[Ack]) {
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
