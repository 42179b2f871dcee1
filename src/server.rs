//! The HTTP/1.1 server loop: axum's router on hyper, with the limits a server facing the internet needs
//! and `axum::serve` does not set:
//! - a header read timeout (`server.header_read_timeout`), which also bounds how long a kept-alive
//!   connection may sit idle: a client trickling a request (slow loris) is cut off;
//! - a cap on open connections (`server.max_connections`): past it a new connection is closed at once,
//!   so a flood cannot take the file descriptors the store and deliveries need;
//! - a body read deadline (`server.body_read_timeout`, [`deadline`]): a request's whole body must arrive
//!   that long after its head, so a stalled or trickling body cannot hold a connection either;
//! - caps on the request head: [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields (past either, a 431);
//! - graceful shutdown: on `stop`, listening ends, idle connections close, requests in progress finish
//!   (the caller bounds the wait).
//!
//! Every request carries the peer address as axum's `ConnectInfo<SocketAddr>`, and a [`ConnectionAbort`].

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::Instrument;

mod deadline;

pub use deadline::BodyTimeout;
use deadline::DeadlineBody;

/// Largest request head (request line and headers) read; hyper answers 431 past it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;

/// In every request's extensions: [`ConnectionAbort::abort`] closes the request's connection at once.
/// For a handler whose response outlives its usefulness when the client stops reading (the activity
/// stream): hyper stops polling a body the client does not take, so the body itself cannot end it.
///
/// It aborts the connection's task, whose future owns the socket. Not a token the task waits on beside
/// the connection: that wait was polled again at every wake-up of every connection, for the rare
/// stream that needs it.
#[derive(Debug, Clone, Default)]
pub struct ConnectionAbort(Arc<Mutex<AbortState>>);

#[derive(Debug, Default)]
struct AbortState {
    /// The connection's task, once spawned.
    task: Option<AbortHandle>,
    /// Asked before the task was bound: it is aborted as soon as it is.
    asked: bool,
}

impl ConnectionAbort {
    /// Closes the connection: its task ends at its next await, dropping the socket.
    pub fn abort(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.asked = true;
        if let Some(task) = &state.task {
            tracing::debug!("connection closed by its handler");
            task.abort();
        }
    }

    /// Binds the connection's task (an abort asked before this applies now).
    fn bind(&self, task: AbortHandle) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.asked {
            task.abort();
        }
        state.task = Some(task);
    }
}

/// What the loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop`, then waits for the open connections to finish their
/// requests and close.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: pause a
                    // moment rather than spin, and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let abort = ConnectionAbort::default();
        let abort_handle = abort.clone();
        let body_read_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let started = std::time::Instant::now();
            let mut req = req.map(|body| {
                DeadlineBody::new(body, tokio::time::Instant::from_std(started), body_read_timeout)
            });
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(abort_handle.clone());
            let router = router.clone();
            // One span per request at debug level (`HOOKD_LOG=hookd=debug`): what a handler logs carries
            // the method and path (never the query string, which may hold search text, nor any header,
            // which may hold a credential). At the default `info` it is not created: formatting its
            // fields into a span slot cost ~15 % of a single-event ingest's CPU. A server error is
            // logged with its method, path and peer at every level (`api::ops::Track`).
            let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), peer = %peer);
            async move {
                let response = router.oneshot(req).await.unwrap_or_else(|never| match never {});
                tracing::debug!(
                    status = response.status().as_u16(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "request finished"
                );
                Ok::<_, Infallible>(response)
            }
            .instrument(span)
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let task = tokio::spawn(async move {
            // Errors here are the client's (a reset, a timeout, a malformed request): hyper has
            // answered what could be answered; nothing is left to do but close. Aborted (by a handler,
            // through `ConnectionAbort`), the connection and its slot are dropped all the same.
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
        abort.bind(task.abort_handle());
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, Bytes};
    use axum::extract::Extension;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// One request to `/stuck`: what came back before the connection closed, or `None` if it stayed open.
    async fn stuck_request(addr: std::net::SocketAddr) -> Option<String> {
        let mut conn = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        conn.write_all(b"GET /stuck HTTP/1.1\r\nhost: hookd\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
        let mut received = Vec::new();
        // A reset (the server closed with the request's body unfinished) is a close too.
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut received)).await;
        closed.is_ok().then(|| String::from_utf8_lossy(&received).into_owned())
    }

    /// A handler whose body never ends (a stream whose reader stopped reading) closes its connection
    /// through `ConnectionAbort`; the connection's slot comes back for the next one.
    #[tokio::test]
    async fn a_handler_closes_its_connection_and_the_slot_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let router = Router::new().route(
            "/stuck",
            get(|Extension(abort): Extension<ConnectionAbort>| async move {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    abort.abort();
                });
                Body::from_stream(futures_util::stream::pending::<Result<Bytes, Infallible>>())
            }),
        );
        // One connection at a time, and no idle timeout that could close it instead.
        let limits = Limits {
            header_read_timeout: Duration::from_secs(300),
            body_read_timeout: Duration::from_secs(300),
            max_connections: 1,
        };
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, limits, stop.clone()));
        let first = stuck_request(addr).await.unwrap_or_else(|| panic!("the connection is still open"));
        assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
        // The slot is given back as the aborted task is dropped: allow it a moment.
        let mut second = String::new();
        for _ in 0..50 {
            second =
                stuck_request(addr).await.unwrap_or_else(|| panic!("the second connection is still open"));
            if !second.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(second.starts_with("HTTP/1.1 200"), "the slot did not come back: {second:?}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap_or_else(|_| panic!("the server did not stop"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
