//! Fault: a really full disk (issue 21, faults 1 and 2).
//!
//! A 64 MiB tmpfs holds the data dir, with the caps above its size (`min_free_bytes = 0`,
//! `max_log_bytes = 1GiB`), so that nothing but the filesystem stops the writes. Concurrent single and
//! batch ingest runs until hookd refuses, then a filler file takes what is left, to the last byte.
//! Then the filler and 20 MiB of other files go, and ingest must resume by itself within seconds.
//! While the disk is full every answer must be a 202 or a 503 with `Retry-After` (never a 500), `/readyz`
//! and admin writes 503. Then a
//! kill -9 and a SIGTERM (which must exit 0): every event answered 202 is delivered, and no event that
//! was refused ever is (each payload carries a sequence number the receiver reports back).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Daemon, Method, StatusCode, eventually};
use crate::receiver::Receiver;
use crate::report;

const TENANT: &str = "acme";
/// Payload padding: a few KiB per event fills 64 MiB in seconds.
const PAD: usize = 2000;
const BATCH: usize = 50;

/// A tmpfs mounted for the test; unmounted when dropped, also when the test fails.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(size: &str) -> Mount {
        let dir = tempfile::Builder::new().prefix("hookd-full-disk-").tempdir().expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Mount { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a daemon still exiting may hold files open.
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// What each sequence number was answered.
#[derive(Default)]
struct Answers {
    by_seq: Mutex<HashMap<u64, u16>>,
    /// Answers that were neither 202 nor a 503 with `Retry-After`: (status, body).
    insane: Mutex<Vec<(u16, String)>>,
}

impl Answers {
    fn record(&self, seqs: &[u64], status: u16, retry_after: bool, body: &str) {
        if !(status == 202 || (status == 503 && retry_after)) {
            self.insane.lock().expect("lock").push((status, body.chars().take(300).collect()));
        }
        let mut by_seq = self.by_seq.lock().expect("lock");
        for s in seqs {
            by_seq.insert(*s, status);
        }
    }

    fn count(&self, status: u16) -> usize {
        self.by_seq.lock().expect("lock").values().filter(|s| **s == status).count()
    }
}

fn event(seq: u64) -> Value {
    json!({ "type": "fill", "payload": { "seq": seq, "pad": "x".repeat(PAD) } })
}

/// Posts `body` to `url`; returns status, whether `Retry-After` came, and the body.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, bool, String), String> {
    let resp = client
        .post(url)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    Ok((status, retry_after, resp.text().await.unwrap_or_default()))
}

/// Ingests until `stop`: single events when `batch` is false, else batches of [`BATCH`].
async fn ingester(
    client: reqwest::Client,
    base: String,
    batch: bool,
    next: Arc<std::sync::atomic::AtomicU64>,
    answers: Arc<Answers>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        let n = if batch { BATCH as u64 } else { 1 };
        let first = next.fetch_add(n, Ordering::Relaxed);
        let seqs: Vec<u64> = (first..first + n).collect();
        let (url, body) = if batch {
            (format!("{base}/batch"), json!({ "events": seqs.iter().map(|s| event(*s)).collect::<Vec<_>>() }))
        } else {
            (base.clone(), event(first))
        };
        match post(&client, &url, &body).await {
            Ok((status, retry_after, text)) => {
                answers.record(&seqs, status, retry_after, &text);
                if status == 503 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            // No answer at all: the request may or may not have been stored, so it proves nothing.
            Err(e) => answers.record(&seqs, 0, false, &e),
        }
    }
}

/// Writes a file in `dir` until the filesystem refuses (ENOSPC); returns its path and size.
fn fill(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create filler");
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![7u8; chunk];
        while file.write_all(&buf).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = file.sync_all();
    (path, written)
}

/// Sequence numbers the receiver got, with how often each came.
fn delivered(receiver: &Receiver) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for r in receiver.requests() {
        if let Some(seq) = r.json()["data"]["seq"].as_u64() {
            *seen.entry(seq).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_back_pressure_that_lifts_by_itself_and_never_stores_a_refused_event() {
    full_disk("full_disk", When::Refused).await;
}

/// Another process takes the whole disk at once while ingest is open: between two of hookd's
/// measurements, so that ingest's appends (and sled, but for the blocks kept past its file's end) meet
/// `ENOSPC` for real and the refused groups must be cut back out of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_filled_by_another_process_mid_ingest_is_back_pressure_too() {
    full_disk("full_disk_by_another_process", When::Open).await;
}

/// When the test's filler takes the rest of the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    /// Once hookd has refused ingest for want of room.
    Refused,
    /// While ingest is still open, half a second after it started.
    Open,
}

async fn full_disk(fault: &str, when: When) {
    if !report::required(report::is_root(), "root (to mount a tmpfs)") {
        return;
    }
    let mount = Mount::tmpfs("64m");
    let data_dir = mount.path().join("data");
    let receiver = Receiver::start().await;
    let mut daemon = Daemon::start_with(|s| {
        s.set("storage.data_dir", data_dir.to_str().expect("utf-8 path"));
        s.set("storage.min_free_bytes", 0);
        s.set("storage.max_log_bytes", "1GiB");
    })
    .await;
    daemon.create_tenant(TENANT).await;
    daemon
        .create_endpoint(
            TENANT,
            json!({ "url": receiver.url("/hook"), "timeout_ms": 1000, "event_types": ["fill"] }),
        )
        .await;

    // Other files share the disk; the operator deletes them later to make room.
    let others = mount.path().join("others");
    std::fs::write(&others, vec![1u8; 20 << 20]).expect("write the other files");

    // Phase 1: concurrent single and batch ingest until hookd refuses.
    let answers = Arc::new(Answers::default());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let base = daemon.url(&format!("/v1/tenants/{TENANT}/events"));
    let tasks: Vec<_> = [false, false, false, true, true]
        .into_iter()
        .map(|batch| {
            tokio::spawn(ingester(
                daemon.client().clone(),
                base.clone(),
                batch,
                next.clone(),
                answers.clone(),
                stop.clone(),
            ))
        })
        .collect();
    if when == When::Refused {
        let refused = eventually(Duration::from_secs(60), Duration::from_millis(50), || async {
            (answers.count(503) + answers.insane.lock().expect("lock").len() > 0).then_some(())
        })
        .await;
        assert!(refused.is_some(), "64 MiB never filled: {} events acknowledged", answers.count(202));
    } else {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Phase 2: take the rest of the disk, to the last byte, while ingest goes on.
    let (filler, filler_bytes) = tokio::task::spawn_blocking({
        let dir = mount.path().to_path_buf();
        move || fill(&dir)
    })
    .await
    .expect("filler");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = daemon.send(Method::GET, "/readyz", None).await;
    let admin =
        daemon.send(Method::POST, "/v1/tenants", Some(&json!({ "id": "other", "name": "other" }))).await;
    let ingest_full =
        daemon.send(Method::POST, &format!("/v1/tenants/{TENANT}/events"), Some(&event(0))).await;

    // Phase 3: free the space; ingest must resume by itself.
    std::fs::remove_file(&filler).expect("remove filler");
    std::fs::remove_file(&others).expect("remove the other files");
    let freed = Instant::now();
    // Resumed: an event of its own is taken (the producers' answers count as they come).
    let resumed = eventually(Duration::from_secs(30), Duration::from_millis(100), || async {
        let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = daemon.send(Method::POST, &format!("/v1/tenants/{TENANT}/events"), Some(&event(seq))).await;
        answers.record(&[seq], r.status.as_u16(), r.header("retry-after").is_some(), &r.text());
        (r.status == StatusCode::ACCEPTED).then_some(())
    })
    .await
    .map(|()| freed.elapsed());
    let ready_again = daemon.send(Method::GET, "/readyz", None).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.expect("ingester");
    }
    // A few more after the resumption, which must be taken.
    let mut after = Vec::new();
    for _ in 0..20 {
        let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = daemon.send(Method::POST, &format!("/v1/tenants/{TENANT}/events"), Some(&event(seq))).await;
        answers.record(&[seq], r.status.as_u16(), r.header("retry-after").is_some(), &r.text());
        after.push(r.status.as_u16());
    }

    // Phase 4: a crash, then a clean stop, then the last start delivers everything.
    daemon.kill().await;
    daemon.restart().await;
    let exit = daemon.terminate().await;
    daemon.restart().await;

    let acked: HashSet<u64> =
        answers.by_seq.lock().expect("lock").iter().filter(|(_, s)| **s == 202).map(|(q, _)| *q).collect();
    let refused: HashSet<u64> = answers
        .by_seq
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, s)| **s != 202 && **s != 0)
        .map(|(q, _)| *q)
        .collect();
    eventually(Duration::from_secs(60), Duration::from_millis(250), || async {
        let seen = delivered(&receiver);
        acked.iter().all(|q| seen.contains_key(q)).then_some(())
    })
    .await;
    // Whatever would show a refused event shows within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = delivered(&receiver);
    let lost = acked.iter().filter(|q| !seen.contains_key(q)).count();
    let phantom: Vec<u64> = refused.iter().filter(|q| seen.contains_key(q)).copied().collect();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let insane = answers.insane.lock().expect("lock").clone();
    report::report(
        fault,
        &[
            ("acknowledged", acked.len().to_string()),
            ("refused_503", answers.count(503).to_string()),
            ("other_answers", insane.len().to_string()),
            ("delivered", seen.len().to_string()),
            ("lost", lost.to_string()),
            ("duplicated", duplicated.to_string()),
            ("phantom", phantom.len().to_string()),
            ("filler_bytes", filler_bytes.to_string()),
            ("seconds_to_resume", resumed.map_or("never".into(), |d| format!("{:.1}", d.as_secs_f64()))),
        ],
    );

    assert!(
        insane.is_empty(),
        "answers other than 202 or 503 + Retry-After: {:?}",
        &insane[..insane.len().min(5)]
    );
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "/readyz on a full disk: {}", ready.text());
    assert_eq!(admin.status, StatusCode::SERVICE_UNAVAILABLE, "admin write on a full disk: {}", admin.text());
    assert!(admin.header("retry-after").is_some(), "admin 503 without Retry-After");
    assert_eq!(
        ingest_full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "ingest on a full disk: {}",
        ingest_full.text()
    );
    assert!(resumed.is_some_and(|d| d < Duration::from_secs(15)), "ingest did not resume: {resumed:?}");
    assert!(after.iter().all(|s| *s == 202), "ingest after the space came back: {after:?}");
    assert_eq!(ready_again.status, StatusCode::OK, "/readyz once ingest resumed: {}", ready_again.text());
    assert!(exit.success(), "SIGTERM after a full disk: {exit}");
    assert!(
        phantom.is_empty(),
        "{} refused events delivered, e.g. {:?}",
        phantom.len(),
        &phantom[..phantom.len().min(5)]
    );
    assert_eq!(lost, 0, "acknowledged events never delivered");
    drop(daemon);
    drop(mount);
}
