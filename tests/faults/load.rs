//! Concurrent ingest against a daemon that is about to be stopped: [`WRITERS`] clients, each sending
//! single events and every fourth request a batch, until the daemon goes away. What got a `202` is the
//! ledger the fault tests check after the restart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::harness::{ADMIN_TOKEN, Daemon, StatusCode, eventually};
use crate::ledger::{Ack, acks_of, event, events_path};

const SECOND: Duration = Duration::from_secs(1);
/// Concurrent ingest clients.
const WRITERS: usize = 16;
/// A cycle stops the daemon once this many events are acknowledged, or after `LOAD_FOR`.
const LOAD_MAX_ACKS: usize = 2_000;
const LOAD_FOR: Duration = Duration::from_millis(1500);
/// Every fourth request of a writer is a batch of this many events; the others carry one.
const LOAD_BATCH: usize = 5;

/// Ingest from [`WRITERS`] concurrent clients, each looping until the daemon goes away.
pub struct Load {
    acks: Arc<Mutex<Vec<Ack>>>,
    writers: JoinSet<Result<(), String>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Starts the writers; `seq` numbers the events, across cycles.
    pub fn start(daemon: &Daemon, seq: &Arc<AtomicU64>) -> Load {
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

    pub fn acked(&self) -> usize {
        self.acks.lock().expect("acks lock").len()
    }

    /// Waits until [`LOAD_MAX_ACKS`] events are acknowledged or [`LOAD_FOR`] has passed.
    pub async fn run_a_while(&self) {
        let _ = eventually(LOAD_FOR, Duration::from_millis(10), || async {
            (self.acked() >= LOAD_MAX_ACKS).then_some(())
        })
        .await;
    }

    /// Stops the writers (they stop by themselves once the daemon is gone) and returns what was
    /// acknowledged; panics if a writer got an answer other than 202 or 503.
    pub async fn finish(mut self) -> Vec<Ack> {
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
pub enum Stop {
    Kill,
    Terminate,
}

/// Loads `daemon` with concurrent ingest, stops it under that load, and returns what was acknowledged.
pub async fn stop_under_load(daemon: &mut Daemon, how: Stop, seq: &Arc<AtomicU64>) -> Vec<Ack> {
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
