//! kill -9 and SIGTERM cycles under concurrent single and batch ingest: every event that got a `202`
//! is readable after each restart and delivered at least once, and no delivery is repeated more often
//! than the stops could cause (each stop may repeat the attempts in flight, once).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::Daemon;
use crate::ledger::{Ack, assert_readable, endpoint_to, wait_until_delivered};
use crate::load::{Stop, stop_under_load};
use crate::receiver::Receiver;
use crate::report::report;

/// How long a receiver may take to get everything expected after the last restart.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cycles` rounds of load → stop → restart against one daemon, checks that every acknowledged
/// event was readable after its restart and reaches the receiver, and reports the figures as `fault`.
async fn survive_stops(fault: &str, daemon: &mut Daemon, receiver: &Receiver, how: Stop, cycles: usize) {
    let seq = Arc::new(AtomicU64::new(0));
    let mut all: Vec<Ack> = Vec::new();
    let mut slowest_restart = Duration::ZERO;
    for _ in 0..cycles {
        let acks = stop_under_load(daemon, how, &seq).await;
        let restarting = Instant::now();
        daemon.restart().await;
        slowest_restart = slowest_restart.max(restarting.elapsed());
        assert_readable(daemon, &acks).await;
        all.extend(acks);
    }
    let started = Instant::now();
    let tally = wait_until_delivered(receiver, &all, DELIVERY_TIMEOUT).await;
    let caught_up = started.elapsed();
    // Each stop may cut off attempts whose outcome was not recorded yet; they are made again after
    // the restart. More repeats of one delivery than there were stops would be a loop.
    let mut per_delivery: HashMap<&str, usize> = HashMap::new();
    let requests = receiver.requests();
    for r in &requests {
        *per_delivery.entry(r.webhook_id()).or_default() += 1;
    }
    let most = per_delivery.values().copied().max().unwrap_or(0);
    assert!(most <= cycles + 1, "one delivery was received {most} times across {cycles} stops");
    report(
        fault,
        &[
            ("stops", cycles.to_string()),
            ("sent", seq.load(Ordering::Relaxed).to_string()),
            ("acknowledged", all.len().to_string()),
            // Every acknowledged event was delivered, or `wait_until_delivered` would have failed.
            ("delivered", all.len().to_string()),
            ("lost", "0".to_owned()),
            // Events whose 202 was cut off by a stop, but which were stored: delivered too.
            ("unacknowledged_delivered", (tally.seqs.len() - all.len()).to_string()),
            ("duplicated", tally.duplicates().to_string()),
            ("most_copies_of_one", most.to_string()),
            ("slowest_restart_ms", slowest_restart.as_millis().to_string()),
            ("caught_up_ms", caught_up.as_millis().to_string()),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_under_concurrent_single_and_batch_ingest_lose_nothing_acknowledged() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    survive_stops("kill-9", &mut daemon, &receiver, Stop::Kill, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_concurrent_ingest_exits_zero_and_loses_nothing_acknowledged() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start().await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    survive_stops("sigterm", &mut daemon, &receiver, Stop::Terminate, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_os_durability_sigkills_lose_nothing_acknowledged() {
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start_with(|setup| {
        setup.set("storage.durability", "os");
    })
    .await;
    endpoint_to(&daemon, &receiver, json!({})).await;
    survive_stops("kill-9-os-durability", &mut daemon, &receiver, Stop::Kill, 3).await;
}
