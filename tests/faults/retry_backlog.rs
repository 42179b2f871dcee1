//! Fault 6 of issue 21: a receiver down past thousands of pending retries. Every delivery's second
//! attempt must come on its schedule, however many wait: before the fix, past 4,096 pending retries per
//! endpoint the rest waited for the others (904 of 5,000 got their second attempt 87 s late).
//!
//! One endpoint with a short retry policy (1 s, 2 s, 4 s, … ±20 %), its receiver answering 500 until
//! every delivery has had its second attempt, then 200. Figures: pending, delivered, lost, duplicated, the
//! worst lateness of a second attempt past its latest due time, and how far in the past the endpoint
//! statistics' `next_retry_at` stood at worst.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::harness::{Daemon, eventually};
use crate::receiver::Receiver;
use crate::report;

const TENANT: &str = "acme";
/// Past the 4,096 retries a dispatcher used to keep in memory.
const PENDING: usize = 5_200;
/// Events per batch request (the daemon's default limit is 1,000).
const BATCH: usize = 1_000;
const MAX_ATTEMPTS: usize = 6;
/// The first retry's delay: `initial_ms` plus its 20 % jitter.
const SECOND_ATTEMPT_LATEST: Duration = Duration::from_millis(1_200);
/// How late a second attempt may be: time to send 5,200 requests on a shared 2-core machine, with room.
const LATENESS_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_4096_retries_gets_every_second_attempt_on_schedule() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    let retry = json!({ "max_attempts": MAX_ATTEMPTS, "initial_ms": 1000, "max_ms": 8000 });
    let spec =
        json!({ "url": receiver.url("/hook"), "retry": retry, "timeout_ms": 2000, "max_in_flight": 64 });
    let (endpoint, _) = daemon.create_endpoint(TENANT, spec).await;

    let mut ids = Vec::with_capacity(PENDING);
    for start in (0..PENDING).step_by(BATCH) {
        let events: Vec<Value> = (start..(start + BATCH).min(PENDING))
            .map(|n| json!({"type": "order.paid", "payload": {"n": n}}))
            .collect();
        let (status, body) =
            daemon.post(&format!("/v1/tenants/{TENANT}/events/batch"), json!({ "events": events })).await;
        assert_eq!(status.as_u16(), 202, "batch ingest: {body}");
        let data = body["data"].as_array().unwrap_or_else(|| panic!("no data in {body}"));
        ids.extend(data.iter().map(|e| e["id"].as_str().unwrap_or_default().to_owned()));
    }
    let acknowledged = ids.len();
    assert_eq!(acknowledged, PENDING);

    // The receiver stays down until every delivery has been tried twice (bounded: before the fix the
    // last ones never were while the first 4,096 kept failing). Meanwhile the endpoint's statistics
    // show when the next retry is due: it must not stand in the past (it stood 82 s there).
    let stats_path = format!("/v1/tenants/{TENANT}/endpoints/{endpoint}/stats");
    let worst_overdue = Mutex::new(Duration::ZERO);
    let tried_twice = eventually(Duration::from_secs(40), Duration::from_millis(250), || async {
        let (_, stats) = daemon.get(&stats_path).await;
        if let Some(due) = stats["next_retry_at"].as_str().and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        {
            let overdue = SystemTime::now().duration_since(due).unwrap_or_default();
            let mut worst = worst_overdue.lock().unwrap_or_else(|e| e.into_inner());
            *worst = (*worst).max(overdue);
        }
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(PENDING);
        for r in receiver.requests() {
            *seen.entry(r.webhook_id().to_owned()).or_default() += 1;
        }
        (seen.len() == PENDING && seen.values().all(|n| *n >= 2)).then_some(())
    })
    .await
    .is_some();
    receiver.set_status(200);

    let worst_overdue = worst_overdue.into_inner().unwrap_or_else(|e| e.into_inner());
    // Then everything goes out: nothing waits at the endpoint.
    let drained = eventually(Duration::from_secs(40), Duration::from_millis(250), || async {
        let (_, stats) = daemon.get(&stats_path).await;
        (stats["queue_depth"] == json!(0)).then_some(())
    })
    .await
    .is_some();

    let started = Instant::now();
    let succeeded = succeeded_attempts(&daemon, &endpoint).await;
    let mut by_webhook: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for r in receiver.requests() {
        by_webhook.entry(r.webhook_id().to_owned()).or_default().push(r.at);
    }
    let mut worst = Duration::ZERO;
    let mut late = 0usize;
    for times in by_webhook.values() {
        if let [first, second, ..] = times[..] {
            let lateness = second.saturating_duration_since(first).saturating_sub(SECOND_ATTEMPT_LATEST);
            worst = worst.max(lateness);
            late += usize::from(lateness > LATENESS_BOUND);
        }
    }
    let missing_second = ids.iter().filter(|id| by_webhook.get(*id).is_none_or(|t| t.len() < 2)).count();
    let delivered: HashSet<&String> = succeeded.iter().collect();
    let lost = ids.iter().filter(|id| !delivered.contains(id)).count();
    let duplicated = succeeded.len() - delivered.len();
    let most_requests = by_webhook.values().map(Vec::len).max().unwrap_or(0);
    report::report(
        "retry_backlog",
        &[
            ("acknowledged", acknowledged.to_string()),
            ("pending", PENDING.to_string()),
            ("delivered", delivered.len().to_string()),
            ("lost", lost.to_string()),
            ("duplicated", duplicated.to_string()),
            ("second_attempt_worst_lateness_ms", worst.as_millis().to_string()),
            ("second_attempts_late", late.to_string()),
            ("second_attempts_missing", missing_second.to_string()),
            ("next_retry_at_worst_overdue_ms", worst_overdue.as_millis().to_string()),
            ("most_requests_per_delivery", most_requests.to_string()),
            ("history_read_ms", started.elapsed().as_millis().to_string()),
        ],
    );
    assert!(
        tried_twice,
        "{missing_second} of {PENDING} deliveries never got a second attempt while the receiver was down"
    );
    assert!(late == 0, "{late} second attempts came more than {LATENESS_BOUND:?} late (worst {worst:?})");
    assert!(worst_overdue <= LATENESS_BOUND, "next_retry_at stood {worst_overdue:?} in the past");
    assert!(drained, "the endpoint still had deliveries waiting 40 s after the receiver came back");
    assert_eq!(lost, 0, "acknowledged events never delivered");
    assert_eq!(duplicated, 0, "deliveries that succeeded more than once");
    assert!(
        most_requests <= MAX_ATTEMPTS,
        "a delivery was sent {most_requests} times (max_attempts {MAX_ATTEMPTS})"
    );
}

/// The webhook ids of the endpoint's succeeded attempts, one per attempt, read page by page.
async fn succeeded_attempts(daemon: &Daemon, endpoint: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path =
            format!("/v1/tenants/{TENANT}/attempts?endpoint_id={endpoint}&status=succeeded&limit=250");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = daemon.get(&path).await;
        assert_eq!(status.as_u16(), 200, "attempts page: {page}");
        let data = page["data"].as_array().unwrap_or_else(|| panic!("no data in {page}"));
        out.extend(data.iter().map(|a| a["webhook_id"].as_str().unwrap_or_default().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}
