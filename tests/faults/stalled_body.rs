//! Stalled and trickling request bodies (fault 7 of the issue that made this suite): a client that sends
//! a request's headers and then nothing, or one byte at a time, must not hold its connection for longer
//! than `server.body_read_timeout`. Before the deadline existed, such clients held their connections for
//! as long as they liked: with `server.max_connections` of them, everyone was locked out, `/metrics`
//! included, and SIGTERM waited out its whole grace.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::harness::{ADMIN_TOKEN, Daemon, StatusCode, eventually};
use crate::report::report;

const TENANT: &str = "acme";
/// The deadline the daemon runs with here, and the connection cap the stalled clients fill.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: usize = 6;
/// Generous bound on how long past the deadline a stalled connection may stay open (a loaded CI
/// machine is slow); before the fix they stayed open indefinitely.
const CLOSE_BOUND: Duration = Duration::from_secs(15);
/// The body each client announces and never finishes sending.
const ANNOUNCED: usize = 200;

async fn daemon() -> Daemon {
    let daemon = Daemon::start_with(|s| {
        s.set("server.max_connections", MAX_CONNECTIONS as i64)
            .set("server.body_read_timeout", "2s")
            .set("server.shutdown_grace", "25s");
    })
    .await;
    daemon.create_tenant(TENANT).await;
    daemon
}

/// How a client misbehaves once its headers are sent.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// Sends nothing more.
    Silent,
    /// Sends one byte of the body every 200 ms: never idle, never done.
    Trickle,
}

/// What a stalled client saw: the status line the daemon answered (if any) and how long after the
/// headers its connection was closed.
#[derive(Debug)]
struct Cut {
    status_line: String,
    after: Duration,
}

/// Connects, sends an ingest request's headers announcing a body it never completes, and waits (up to
/// [`CLOSE_BOUND`]) for the daemon to answer and close. `None`: still open at the bound.
async fn stalled_client(addr: std::net::SocketAddr, stall: Stall) -> Option<Cut> {
    let mut conn = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /v1/tenants/{TENANT}/events HTTP/1.1\r\nhost: hookd\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {ANNOUNCED}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.ok()?;
    let sent = Instant::now();
    let (mut reader, mut writer) = conn.into_split();
    let trickle = async move {
        if let Stall::Trickle = stall {
            // Always fewer bytes than announced: the body never completes.
            for _ in 0..ANNOUNCED - 1 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if writer.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    let mut answer = Vec::new();
    let read = async {
        // Until the daemon closes (a reset counts as closed too).
        let _ = reader.read_to_end(&mut answer).await;
    };
    let closed = tokio::time::timeout(BODY_READ_TIMEOUT + CLOSE_BOUND, async {
        tokio::select! {
            () = read => {}
            () = trickle => {}
        }
    })
    .await;
    closed.ok()?;
    let text = String::from_utf8_lossy(&answer);
    Some(Cut { status_line: text.lines().next().unwrap_or_default().to_owned(), after: sent.elapsed() })
}

/// Stalled clients: every connection slot but the one the harness's client keeps alive after creating
/// the tenant.
const STALLED: usize = MAX_CONNECTIONS - 1;

/// Fills every free connection slot with stalled clients (half silent, half trickling).
fn stall_every_slot(daemon: &Daemon) -> JoinSet<(Stall, Option<Cut>)> {
    let mut clients = JoinSet::new();
    for i in 0..STALLED {
        let stall = if i % 2 == 0 { Stall::Silent } else { Stall::Trickle };
        let addr = daemon.addr();
        clients.spawn(async move { (stall, stalled_client(addr, stall).await) });
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_bodies_are_cut_off_with_408_and_free_their_connections() {
    let daemon = daemon().await;
    let started = Instant::now();
    let mut clients = stall_every_slot(&daemon);
    let mut cuts = Vec::new();
    while let Some(joined) = clients.join_next().await {
        let (stall, cut) = joined.expect("stalled client task");
        let cut = cut.unwrap_or_else(|| {
            panic!("a {stall:?} body held its connection open {CLOSE_BOUND:?} past the body deadline")
        });
        assert!(
            cut.status_line.starts_with("HTTP/1.1 408"),
            "a {stall:?} body was answered {:?}, not 408",
            cut.status_line
        );
        assert!(cut.after >= BODY_READ_TIMEOUT, "a {stall:?} body was cut off before its deadline: {cut:?}");
        cuts.push(cut.after);
    }
    // The slots are free again: a new connection is served /metrics, and a real event is stored.
    let fresh = reqwest::Client::builder().no_proxy().build().expect("build reqwest client");
    let served = eventually(Duration::from_secs(10), Duration::from_millis(50), || async {
        let response = fresh.get(daemon.url("/metrics")).timeout(Duration::from_secs(2)).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(served.is_some(), "/metrics is not served after the stalled clients were cut off");
    let id = daemon.ingest(TENANT, "ticket.created", json!({ "n": 1 })).await;
    // Nothing of the cut-off requests was stored: the one event is the only one.
    let (status, list) = daemon.get(&format!("/v1/tenants/{TENANT}/events")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> =
        list["data"].as_array().into_iter().flatten().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "events stored besides the one sent whole");
    let worst = cuts.iter().max().copied().unwrap_or_default();
    report(
        "stalled-body",
        &[
            ("clients", cuts.len().to_string()),
            ("answered_408", cuts.len().to_string()),
            ("deadline_ms", BODY_READ_TIMEOUT.as_millis().to_string()),
            ("worst_close_ms", worst.as_millis().to_string()),
            ("served_again_after_ms", started.elapsed().as_millis().to_string()),
            ("stored_from_stalled", "0".to_owned()),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_out_its_grace_for_stalled_bodies() {
    let mut daemon = daemon().await;
    let mut clients = stall_every_slot(&daemon);
    // Let every client get its headers in (the daemon is then waiting on their bodies).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let status = daemon.terminate().await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "SIGTERM with stalled bodies: {status}");
    // The grace is 25 s; the stalled bodies end at their 2 s deadline, so the drain ends long before.
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?}: it waited for the stalled bodies");
    clients.abort_all();
    report(
        "stalled-body-sigterm",
        &[
            ("clients", STALLED.to_string()),
            ("exit_code", "0".to_owned()),
            ("exit_ms", took.as_millis().to_string()),
            ("grace_ms", "25000".to_owned()),
        ],
    );
}
