//! Faults 3, 4 and 5 of the fault suite: damaged files. A byte flipped in a log segment, a segment cut
//! short in the middle of a frame, a byte flipped near the start of sled's `db` file — each made by the
//! test on the real files of a real daemon, between a stop and a restart (and one while it runs).
//!
//! What must hold: the start refuses (exit 65) naming the file and the events; `hookd repair`
//! quarantines and rebuilds; the daemon then starts, delivers every event not in the damaged bytes,
//! reports the lost ones, repeats nothing endlessly, and lists events with `200`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Daemon, eventually};
use crate::receiver::Receiver;
use crate::report;

const TENANT: &str = "acme";
/// Events per batch request: one log record (one frame) each.
const PER_BATCH: usize = 100;
const BATCHES: usize = 20;
/// How long the deliveries of all events may take after the endpoint is enabled.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the test goes on watching after the last expected delivery, to see repeats.
const WATCH_FOR_REPEATS: Duration = Duration::from_secs(2);

/// A daemon with the tenant, a disabled batching endpoint at `receiver` (so that nothing is delivered
/// before the damage), and `batches` × `PER_BATCH` acknowledged events. Returns the endpoint's id and
/// the acknowledged event ids.
async fn daemon_with_events(receiver: &Receiver, batches: usize) -> (Daemon, String, Vec<String>) {
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    let spec = json!({
        "url": receiver.url("/hooks"),
        "enabled": false,
        "batch": { "max_events": 50, "max_wait_ms": 50 },
        "retry": { "max_attempts": 3, "initial_ms": 100, "max_ms": 400 },
    });
    let (endpoint, _) = daemon.create_endpoint(TENANT, spec).await;
    let mut acknowledged = Vec::new();
    for b in 0..batches {
        let events: Vec<Value> = (0..PER_BATCH)
            .map(|i| json!({ "type": "order.created", "payload": { "n": b * PER_BATCH + i, "pad": "x".repeat(150) } }))
            .collect();
        let (status, body) =
            daemon.post(&format!("/v1/tenants/{TENANT}/events/batch"), json!({ "events": events })).await;
        assert_eq!(status, StatusCode::ACCEPTED, "batch ingest: {body}");
        let ids = body["data"].as_array().unwrap_or_else(|| panic!("no data: {body}"));
        acknowledged.extend(ids.iter().map(|a| a["id"].as_str().unwrap_or_default().to_owned()));
    }
    assert_eq!(acknowledged.len(), batches * PER_BATCH);
    (daemon, endpoint, acknowledged)
}

/// The newest log segment and where its data ends (after it: the zeros reserved for later writes).
fn newest_segment(data_dir: &Path) -> (PathBuf, u64) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("segments"))
        .unwrap_or_else(|e| panic!("segments dir: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    let path = files.pop().unwrap_or_else(|| panic!("no segment in {}", data_dir.display()));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i as u64 + 1);
    (path, end)
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file =
        std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap_or_else(|e| panic!("{e}"));
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, at).unwrap_or_else(|e| panic!("{e}"));
    file.sync_all().unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `hookd repair` on the daemon's config; returns its exit code and output.
fn repair(daemon: &Daemon) -> (Option<i32>, String) {
    offline(daemon, "repair")
}

/// Runs an offline command (`repair`, `inspect`) on the daemon's config; returns its exit code and
/// output.
fn offline(daemon: &Daemon, command: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .arg(command)
        .arg("--config")
        .arg(daemon.config_path())
        .output()
        .unwrap_or_else(|e| panic!("run hookd {command}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// Whether a repair left anything in the data dir's quarantine.
fn has_quarantine(daemon: &Daemon) -> bool {
    std::fs::read_dir(daemon.data_dir().join("quarantine")).is_ok_and(|mut d| d.next().is_some())
}

/// The count before `marker` in a line of the repair's report (`- 100 acknowledged event(s) …`).
fn reported_count(report: &str, marker: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            l.split_once(marker).and_then(|(head, _)| head.trim_start_matches(['-', ' ']).trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Event ids the receiver got, with how many times each.
fn received_ids(receiver: &Receiver) -> HashMap<String, u64> {
    let mut seen = HashMap::new();
    for r in receiver.requests() {
        let body = r.json();
        let events = match body.get("events").and_then(Value::as_array) {
            Some(list) => list.clone(),
            None => vec![body],
        };
        for e in events {
            *seen.entry(e["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    seen
}

/// Enables the endpoint and waits until `expected` distinct events arrived (or the timeout), then
/// watches a little longer for repeats.
async fn enable_and_collect(
    daemon: &Daemon,
    receiver: &Receiver,
    endpoint: &str,
    expected: usize,
) -> HashMap<String, u64> {
    let (status, body) =
        daemon.patch(&format!("/v1/tenants/{TENANT}/endpoints/{endpoint}"), json!({ "enabled": true })).await;
    assert_eq!(status, StatusCode::OK, "enable: {body}");
    eventually(DELIVERY_TIMEOUT, Duration::from_millis(100), || async {
        (received_ids(receiver).len() >= expected).then_some(())
    })
    .await;
    tokio::time::sleep(WATCH_FOR_REPEATS).await;
    received_ids(receiver)
}

/// Pages through the tenant's event list: how many it listed, or the first answer that was not 200.
async fn list_all(daemon: &Daemon, tenant: &str) -> Result<usize, String> {
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants/{tenant}/events?limit=100&cursor={c}"),
            None => format!("/v1/tenants/{tenant}/events?limit=100"),
        };
        let (status, body) = daemon.get(&path).await;
        if status != StatusCode::OK {
            return Err(format!("{status}: {body}"));
        }
        listed += body["data"].as_array().map_or(0, Vec::len);
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    Ok(listed)
}

/// The figure of a list for the report: the count, or the status it answered.
fn listed_figure(listed: &Result<usize, String>) -> String {
    match listed {
        Ok(n) => n.to_string(),
        Err(e) => e.split(':').next().unwrap_or_default().replace(' ', "_"),
    }
}

/// The count of a list that must have answered 200 all through.
fn listed_ok(what: &str, listed: Result<usize, String>) -> usize {
    listed.unwrap_or_else(|e| panic!("{what}: the event list answers 200 past damage: {e}"))
}

/// The whole cycle of a start-up fault: stop, `damage`, a start that refuses, repair, a start that
/// delivers what is left. `what` names the fault in the report.
async fn refuse_repair_and_deliver(what: &str, damage: impl FnOnce(&Path)) {
    let receiver = Receiver::start().await;
    let (mut daemon, endpoint, acknowledged) = daemon_with_events(&receiver, BATCHES).await;
    daemon.terminate().await;
    damage(&daemon.data_dir());

    let refused =
        daemon.try_restart().await.err().unwrap_or_else(|| panic!("{what}: hookd started on damaged files"));
    let stderr = refused.stderr_text();
    assert_eq!(refused.status.and_then(|s| s.code()), Some(65), "{what}: exit 65 (EX_DATAERR)\n{stderr}");
    assert!(stderr.contains("segments/0000000000000001.log"), "{what}: the refusal names the file\n{stderr}");
    assert!(stderr.contains("evt_") && stderr.contains("tenant acme"), "{what}: and the events\n{stderr}");

    let (code, inspected) = offline(&daemon, "inspect");
    assert_eq!(code, Some(65), "{what}: inspect reports the damage too\n{inspected}");
    assert!(inspected.contains("segments/0000000000000001.log"), "{what}: naming the file\n{inspected}");

    let (code, repaired) = repair(&daemon);
    assert_eq!(code, Some(0), "{what}: hookd repair\n{repaired}");
    let (code, inspected) = offline(&daemon, "inspect");
    assert!(code == Some(0) && inspected.contains("log check     ok"), "{what}: repaired\n{inspected}");
    let reported_lost = reported_count(&repaired, " acknowledged event(s)");
    assert!(has_quarantine(&daemon), "{what}: the damaged bytes are kept\n{repaired}");

    daemon.try_restart().await.unwrap_or_else(|f| panic!("{what}: no start after the repair: {f}"));
    let expected = acknowledged.len() - reported_lost as usize;
    let seen = enable_and_collect(&daemon, &receiver, &endpoint, expected).await;
    let ack: HashSet<&String> = acknowledged.iter().collect();
    let delivered = seen.keys().filter(|id| ack.contains(id)).count();
    let duplicated: u64 = seen.values().map(|n| n.saturating_sub(1)).sum();
    let lost = acknowledged.len() - delivered;
    let listed = list_all(&daemon, TENANT).await;
    report::report(
        what,
        &[
            ("acknowledged", acknowledged.len().to_string()),
            ("delivered", delivered.to_string()),
            ("lost", lost.to_string()),
            ("duplicated", duplicated.to_string()),
            ("reported-as-lost", reported_lost.to_string()),
            ("listed", listed_figure(&listed)),
        ],
    );
    let listed = listed_ok(what, listed);
    assert!(reported_lost > 0, "{what}: the repair reports the lost events\n{repaired}");
    assert_eq!(
        lost as u64, reported_lost,
        "{what}: every event not in the damaged bytes is delivered\n{repaired}"
    );
    assert_eq!(listed, delivered, "{what}: the list holds what is left");
    assert!(
        duplicated <= 3 * acknowledged.len() as u64 / 100,
        "{what}: nothing loops ({duplicated} repeats)"
    );
}

#[tokio::test]
async fn a_flipped_byte_in_a_segment_stops_the_start_and_repair_delivers_every_other_event() {
    refuse_repair_and_deliver("damage: flipped byte in a log segment", |dir| {
        let (path, end) = newest_segment(dir);
        flip_byte(&path, end / 2);
    })
    .await;
}

#[tokio::test]
async fn a_segment_cut_mid_frame_stops_the_start_and_repair_delivers_what_is_before_the_cut() {
    refuse_repair_and_deliver("damage: segment truncated mid-frame", |dir| {
        let (path, end) = newest_segment(dir);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        // Two thirds in: mid-frame (a frame is ~20 KB here), with whole frames before and after.
        file.set_len(end * 2 / 3 + 7).unwrap_or_else(|e| panic!("{e}"));
    })
    .await;
}

/// The operational events that report damaged records, and how many events they name.
fn damage_notices(watcher: &Receiver) -> (usize, u64) {
    let notices: Vec<Value> =
        watcher.requests().iter().map(|r| r.json()).filter(|b| b["data"]["damaged"] == true).collect();
    (notices.len(), notices.iter().map(|n| n["data"]["event_count"].as_u64().unwrap_or(0)).sum())
}

/// A run-time fault: `damage` (given the newest segment and where its data ends) while the daemon
/// runs with the endpoint disabled, then the endpoint enabled. At most `max_lost` events may be lost.
async fn damaged_at_run_time(what: &str, max_lost: usize, damage: impl FnOnce(&Path, u64)) {
    let receiver = Receiver::start().await;
    // More than a feed holds in memory (4,096 events), so that the dispatcher reads the last ones back
    // from the log, where the damage is.
    let (daemon, endpoint, acknowledged) = daemon_with_events(&receiver, 3 * BATCHES).await;
    // Whoever listens for operational events hears about the damaged records.
    let watcher = Receiver::start().await;
    let spec = json!({ "url": watcher.url("/ops"), "event_types": ["hookd.delivery.failed"] });
    daemon.create_endpoint(TENANT, spec).await;
    let (path, end) = newest_segment(&daemon.data_dir());
    damage(&path, end);
    // A repair beside the running daemon refuses, and leaves nothing behind.
    let (code, out) = repair(&daemon);
    assert_eq!(code, Some(1), "{what}: hookd repair beside a running daemon\n{out}");
    assert!(!has_quarantine(&daemon), "{what}: a refused repair copies nothing\n{out}");

    let (status, body) =
        daemon.patch(&format!("/v1/tenants/{TENANT}/endpoints/{endpoint}"), json!({ "enabled": true })).await;
    assert_eq!(status, StatusCode::OK, "enable: {body}");
    // Every event is accounted for: delivered, or named by an operational event.
    eventually(DELIVERY_TIMEOUT, Duration::from_millis(100), || async {
        (received_ids(&receiver).len() as u64 + damage_notices(&watcher).1 >= acknowledged.len() as u64)
            .then_some(())
    })
    .await;
    tokio::time::sleep(WATCH_FOR_REPEATS).await;
    let seen = received_ids(&receiver);
    let (notices, reported) = damage_notices(&watcher);
    let ack: HashSet<&String> = acknowledged.iter().collect();
    let delivered = seen.keys().filter(|id| ack.contains(id)).count();
    let duplicated: u64 = seen.values().map(|n| n.saturating_sub(1)).sum();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !seen.contains_key(*id)).collect();
    let listed = list_all(&daemon, TENANT).await;
    report::report(
        what,
        &[
            ("acknowledged", acknowledged.len().to_string()),
            ("delivered", delivered.to_string()),
            ("lost", lost.len().to_string()),
            ("duplicated", duplicated.to_string()),
            ("reported-as-lost", reported.to_string()),
            ("listed", listed_figure(&listed)),
        ],
    );
    let listed = listed_ok(what, listed);
    assert!(
        !lost.is_empty() && lost.len() <= max_lost,
        "{what}: the damaged records are lost, the rest flow ({} lost)",
        lost.len()
    );
    assert_eq!(reported, lost.len() as u64, "{what}: operational events report the damaged records' events");
    // The operational events are events of the tenant too.
    assert_eq!(listed, delivered + notices, "{what}: the list answers 200 without the damaged records");
    assert_eq!(duplicated, 0, "{what}: nothing loops");
    let (status, body) = daemon.get(&format!("/v1/tenants/{TENANT}/events/{}", lost[0])).await;
    assert_eq!(status, StatusCode::GONE, "{what}: a damaged event answers 410, not 500: {body}");
    assert_eq!(body["type"], "urn:hookd:problem:damaged", "{body}");
}

#[tokio::test]
async fn a_record_damaged_while_the_daemon_runs_becomes_a_failed_delivery_and_the_rest_flow() {
    damaged_at_run_time("damage: flipped byte in a log segment at run time", PER_BATCH, |path, end| {
        flip_byte(path, end * 7 / 8);
    })
    .await;
}

#[tokio::test]
async fn a_segment_cut_while_the_daemon_runs_repeats_nothing_and_reports_what_was_cut() {
    damaged_at_run_time(
        "damage: segment truncated mid-frame at run time",
        3 * BATCHES * PER_BATCH / 8 + PER_BATCH,
        |path, end| {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("{e}"));
            file.set_len(end * 7 / 8 + 7).unwrap_or_else(|e| panic!("{e}"));
        },
    )
    .await;
}

#[tokio::test]
async fn a_flipped_byte_in_sleds_db_file_stops_the_start_and_repair_rebuilds_the_index() {
    let what = "damage: flipped byte near the start of sled's db file";
    let receiver = Receiver::start().await;
    let (mut daemon, _, acknowledged) = daemon_with_events(&receiver, BATCHES).await;
    daemon.terminate().await;
    flip_byte(&daemon.data_dir().join("db"), 64);

    let refused = daemon
        .try_restart()
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: hookd started on an empty database"));
    let stderr = refused.stderr_text();
    eprintln!("{stderr}");
    assert_eq!(refused.status.and_then(|s| s.code()), Some(65), "{what}: exit 65 (EX_DATAERR)\n{stderr}");
    assert!(
        stderr.contains("lost data") && stderr.contains("evt_"),
        "{what}: the refusal names what is missing\n{stderr}"
    );

    let (code, repaired) = repair(&daemon);
    eprintln!("{repaired}");
    assert_eq!(code, Some(0), "{what}: hookd repair\n{repaired}");
    assert!(
        repaired.contains("NOT rebuilt"),
        "{what}: the repair says what it could not rebuild\n{repaired}"
    );
    daemon.try_restart().await.unwrap_or_else(|f| panic!("{what}: no start after the repair: {f}"));
    let (status, body) = daemon.get("/v1/tenants").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let recovered: Vec<String> = body["data"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert_eq!(recovered.len(), 1, "{what}: one placeholder tenant for the lost one: {body}");
    let listed = list_all(&daemon, &recovered[0]).await;
    report::report(
        what,
        &[
            ("acknowledged", acknowledged.len().to_string()),
            // The endpoints lived only in the database: nothing is delivered until they are re-created.
            ("delivered", "0".into()),
            ("lost", listed.as_ref().map_or(acknowledged.len(), |n| acknowledged.len() - n).to_string()),
            ("duplicated", "0".into()),
            ("reported-as-lost", reported_count(&repaired, " acknowledged event(s)").to_string()),
            ("reachable", listed_figure(&listed)),
            ("endpoints-rebuilt", "0".into()),
        ],
    );
    let listed = listed_ok(what, listed);
    assert_eq!(listed, acknowledged.len(), "{what}: every acknowledged event is reachable again");
}

/// A delivery waiting for its retry whose event is damaged meanwhile: the retry reads the event back
/// from the log, finds it damaged, reports it once as a failed delivery and leaves it out; the other
/// retries go on. (Before, the retry logged "cannot read an event" and the delivery waited forever.)
#[tokio::test]
async fn a_retry_whose_event_is_damaged_meanwhile_is_reported_once_and_the_other_retries_go_on() {
    const EVENTS: usize = 20;
    let what = "damage: an event damaged while its retry waits";
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let daemon = Daemon::start().await;
    daemon.create_tenant(TENANT).await;
    let watcher = Receiver::start().await;
    let ops = json!({ "url": watcher.url("/ops"), "event_types": ["hookd.delivery.failed"] });
    daemon.create_endpoint(TENANT, ops).await;
    let retry = json!({ "max_attempts": 5, "initial_ms": 1500, "max_ms": 1500 });
    let spec = json!({ "url": receiver.url("/hooks"), "event_types": ["order.created"], "retry": retry });
    daemon.create_endpoint(TENANT, spec).await;
    // One request each: every event is a frame of its own.
    let mut acknowledged = Vec::new();
    for n in 0..EVENTS {
        acknowledged
            .push(daemon.ingest(TENANT, "order.created", json!({ "n": n, "pad": "x".repeat(150) })).await);
    }
    receiver.wait_for(EVENTS, Duration::from_secs(20)).await;
    // Every first attempt failed; the retries wait 1.5 s. Damage one event's frame meanwhile.
    let (path, end) = newest_segment(&daemon.data_dir());
    flip_byte(&path, end / 2);
    receiver.clear();
    receiver.set_status(200);
    let accounted = eventually(Duration::from_secs(20), Duration::from_millis(100), || async {
        (received_ids(&receiver).len() as u64 + damage_notices(&watcher).1 >= EVENTS as u64).then_some(())
    })
    .await;
    tokio::time::sleep(WATCH_FOR_REPEATS).await;
    let seen = received_ids(&receiver);
    let (notices, reported) = damage_notices(&watcher);
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !seen.contains_key(*id)).collect();
    let duplicated: u64 = seen.values().map(|n| n.saturating_sub(1)).sum();
    report::report(
        what,
        &[
            ("acknowledged", acknowledged.len().to_string()),
            ("delivered", seen.len().to_string()),
            ("lost", lost.len().to_string()),
            ("duplicated", duplicated.to_string()),
            ("reported-as-lost", reported.to_string()),
            ("notices", notices.to_string()),
        ],
    );
    assert!(
        accounted.is_some(),
        "{what}: {} events neither delivered nor reported",
        lost.len() as u64 - reported
    );
    assert_eq!(lost.len(), 1, "{what}: one damaged event, the other retries delivered: lost {lost:?}");
    assert_eq!((notices, reported), (1, 1), "{what}: the damaged event is reported once");
    assert_eq!(duplicated, 0, "{what}: nothing loops");
    // The history says why its delivery failed: the last entry made no request, its event being damaged.
    let (status, page) = daemon.get(&format!("/v1/tenants/{TENANT}/attempts?event_id={}", lost[0])).await;
    assert_eq!(status, StatusCode::OK, "{what}: {page}");
    let newest = &page["data"][0];
    assert_eq!(
        (newest["error_class"].as_str(), newest["status_code"].is_null(), newest["status"].as_str()),
        (Some("damaged"), true, Some("failed")),
        "{what}: the attempt history names the damage: {page}"
    );
}
