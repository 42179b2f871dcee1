//! Fault 8 of issue 21: a step of the wall clock while a retry is pending. Retries are scheduled on the
//! monotonic clock, so the retry comes on time; before the fix a clock stepped back 1 h delayed a retry
//! due in 6 s by the hour, and one stepped forward sent it at the next wake-up.
//!
//! The daemon runs under libfaketime (Debian package `faketime`) with `LD_PRELOAD`, reading its offset
//! from a file the test rewrites (`FAKETIME_TIMESTAMP_FILE`, re-read at every call with
//! `FAKETIME_NO_CACHE`), with the monotonic clock left alone: only the wall clock steps, as with
//! `date -s` or an NTP step. The test checks that the step really reaches the daemon (an event ingested
//! after it is `received_at` an hour away, and the retry's `webhook-timestamp` too): otherwise it could
//! not fail.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::harness::Daemon;
use crate::receiver::Receiver;
use crate::report;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const TENANT: &str = "acme";
/// The retry's delay (`initial_ms` = `max_ms`), ±20 % jitter.
const RETRY_DELAY: Duration = Duration::from_secs(5);
/// The earliest the retry is due after the first attempt (jitter −20 %).
const EARLIEST: Duration = Duration::from_secs(4);
/// The latest it may come: its latest due time (+20 %) and 3 s of margin.
const LATEST: Duration = Duration::from_secs(9);

/// What one run measured.
struct Stepped {
    /// How far the daemon's wall clock moved, as its `received_at` shows.
    seen_step: i64,
    /// The retry's arrival after the first attempt's, if it came within 20 s.
    retry_after: Option<Duration>,
    /// How far the retry's `webhook-timestamp` is from the first attempt's.
    timestamp_step: Option<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_comes_on_schedule_when_the_wall_clock_steps_back_an_hour() {
    let Some(run) = step_while_a_retry_waits(-3600).await else { return };
    let after =
        run.retry_after.unwrap_or_else(|| panic!("no retry within 20 s of the first attempt (due in 4–6 s)"));
    assert!(
        after <= LATEST,
        "the retry came {after:?} after the first attempt; due within {:?}",
        RETRY_DELAY * 6 / 5
    );
    // What receivers read stays wall time: the retry's timestamp shows the step.
    let timestamp_step = run.timestamp_step.unwrap_or_default();
    assert!((timestamp_step + 3600).abs() < 60, "webhook-timestamp moved by {timestamp_step} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_come_early_when_the_wall_clock_steps_forward_an_hour() {
    let Some(run) = step_while_a_retry_waits(3600).await else { return };
    let after =
        run.retry_after.unwrap_or_else(|| panic!("no retry within 20 s of the first attempt (due in 4–6 s)"));
    assert!(
        after >= EARLIEST,
        "the retry came {after:?} after the first attempt; not due before {EARLIEST:?}"
    );
    assert!(
        after <= LATEST,
        "the retry came {after:?} after the first attempt; due within {:?}",
        RETRY_DELAY * 6 / 5
    );
}

/// Runs the daemon under libfaketime; a first attempt fails (its retry due in 4–6 s), the wall clock
/// steps by `step` seconds, and an event ingested right after (delivered at once) wakes the dispatcher.
/// `None` when libfaketime is missing on a developer's machine.
async fn step_while_a_retry_waits(step: i64) -> Option<Stepped> {
    if !report::required(Path::new(LIBFAKETIME).exists(), "libfaketime (Debian package faketime)") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let offset_file = dir.path().join("faketime");
    set_offset(&offset_file, 0);
    let offset_path = offset_file.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
    let receiver = Receiver::start().await;
    let daemon = Daemon::start_with(|setup| {
        setup
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", offset_path)
            .env("FAKETIME_NO_CACHE", "1")
            // Only the wall clock moves (both spellings: the variable was renamed in libfaketime 0.9.10).
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("DONT_FAKE_MONOTONIC", "1");
    })
    .await;
    daemon.create_tenant(TENANT).await;
    let delay_ms = RETRY_DELAY.as_millis() as u64;
    let retry = json!({ "max_attempts": 3, "initial_ms": delay_ms, "max_ms": delay_ms });
    let spec = json!({ "url": receiver.url("/hook"), "retry": retry, "timeout_ms": 2000 });
    daemon.create_endpoint(TENANT, spec).await;

    // The first attempt fails; its retry is due in 4–6 s.
    receiver.set_sequence([500]);
    let id = daemon.ingest(TENANT, "order.paid", json!({ "n": 1 })).await;
    let first = receiver.wait_for(1, Duration::from_secs(20)).await.remove(0);
    // Let the daemon record the outcome (and schedule the retry) before the step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_offset(&offset_file, step);

    // The step reaches the daemon: an event ingested now is received `step` away. Its delivery wakes
    // the dispatcher, which then looks at the retry's due time.
    let (_, received_at) = daemon.ingest_on(TENANT, "clock.probe", &[], json!({})).await;
    let test_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let seen_step = parse_rfc3339_secs(&received_at) - test_now;
    assert!(
        (seen_step - step).abs() < 60,
        "libfaketime did not step the daemon's clock: received_at {received_at}"
    );

    let deadline = first.at + Duration::from_secs(20);
    let retry = loop {
        if let Some(r) = receiver.requests().into_iter().skip(1).find(|r| r.webhook_id() == id) {
            break Some(r);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let run = Stepped {
        seen_step,
        retry_after: retry.as_ref().map(|r| r.at.saturating_duration_since(first.at)),
        timestamp_step: retry.as_ref().map(|r| webhook_timestamp(r) - webhook_timestamp(&first)),
    };
    report::report(
        if step < 0 { "clock_step_back" } else { "clock_step_forward" },
        &[
            ("step_s", step.to_string()),
            ("step_seen_by_daemon_s", run.seen_step.to_string()),
            ("retry_due_ms", format!("{}..{}", EARLIEST.as_millis(), (RETRY_DELAY * 6 / 5).as_millis())),
            (
                "retry_after_ms",
                run.retry_after.map_or("none within 20 s".into(), |d| d.as_millis().to_string()),
            ),
            ("webhook_timestamp_step_s", run.timestamp_step.map_or("-".into(), |s| s.to_string())),
            ("delivered", u8::from(retry.is_some()).to_string()),
            ("lost", u8::from(retry.is_none()).to_string()),
        ],
    );
    Some(run)
}

/// Writes libfaketime's relative offset (seconds) to the file the daemon re-reads at every clock call.
fn set_offset(path: &Path, seconds: i64) {
    // Write then rename, so the daemon never reads a half-written file.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{seconds:+}\n")).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

fn webhook_timestamp(r: &crate::receiver::Received) -> i64 {
    r.header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no webhook-timestamp"))
}

/// Seconds since the epoch of `2026-12-08T03:00:00.123Z`.
fn parse_rfc3339_secs(text: &str) -> i64 {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(|| panic!("not an RFC 3339 time: {text}"), |d| d.as_secs() as i64)
}
