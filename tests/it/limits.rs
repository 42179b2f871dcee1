//! Connection-level limits, with raw TCP clients: a slow client (slow loris) is cut off after
//! `server.header_read_timeout`, connections past `server.max_connections` are closed at once, an
//! oversized request head gets 431 — and the daemon keeps serving everyone else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Daemon, StatusCode};

/// Reads until the server closes the connection (or `limit` passes); returns what it sent and when the
/// connection ended (`None`: still open at `limit`).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

async fn healthy(daemon: &Daemon) {
    let (status, body) = daemon.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_and_others_are_served_meanwhile() {
    let daemon = Daemon::start_with(|s| {
        s.set("server.header_read_timeout", "500ms");
    })
    .await;
    let mut slow = TcpStream::connect(daemon.addr()).await.expect("connect");
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    // One header byte every 100 ms: the request head never completes.
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    let (_, ()) = tokio::join!(healthy(&daemon), trickle);
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let closed = closed.expect("the slow connection is still open");
    assert!(closed - started < Duration::from_secs(4), "cut off after {:?}", closed - started);

    // An idle kept-alive connection is closed too.
    let mut idle = TcpStream::connect(daemon.addr()).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert!(closed.is_some(), "an idle connection stays open");
    healthy(&daemon).await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_the_cap_frees_up() {
    let daemon = Daemon::start_with(|s| {
        s.set("server.max_connections", 2).set("server.header_read_timeout", "2s");
    })
    .await;
    // Both slots held by raw connections that send nothing.
    let held = [
        TcpStream::connect(daemon.addr()).await.expect("connect"),
        TcpStream::connect(daemon.addr()).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(daemon.addr()).await.expect("the listener accepts");
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(1)).await;
    assert!(answer.is_empty(), "answered past the cap: {}", String::from_utf8_lossy(&answer));
    assert!(closed.is_some(), "the connection past the cap was kept open");
    drop(held);
    // The slots free up when the held connections close.
    let mut served = false;
    for _ in 0..50 {
        let mut next = TcpStream::connect(daemon.addr()).await.expect("connect");
        let _ = next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        let (answer, _) = read_until_closed(&mut next, Duration::from_secs(2)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no connection was served after the held ones closed");
    let metrics = daemon.client().get(daemon.url("/metrics")).send().await.expect("GET /metrics");
    let text = metrics.text().await.expect("metrics text");
    let refused = text
        .lines()
        .find_map(|l| l.strip_prefix("hookd_http_connections_refused_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 1), "{text}");
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_the_daemon_lives_on() {
    let daemon = Daemon::start().await;
    let mut stream = TcpStream::connect(daemon.addr()).await.expect("connect");
    let big = "x".repeat(100 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    // Many header fields: refused as well.
    let mut stream = TcpStream::connect(daemon.addr()).await.expect("connect");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let _ = stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    healthy(&daemon).await;
}
