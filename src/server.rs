//! The HTTP/1.1 server loop: axum's router on hyper, with the limits a server facing the internet needs
//! and `axum::serve` does not set:
//! - a header read timeout (`server.header_read_timeout`), which also bounds how long a kept-alive
//!   connection may sit idle: a client trickling a request (slow loris) is cut off;
//! - a cap on open connections (`server.max_connections`): past it a new connection is closed at once,
//!   so a flood cannot take the file descriptors the store and deliveries need;
//! - caps on the request head: [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields (past either, a 431);
//! - graceful shutdown: on `stop`, listening ends, idle connections close, requests in progress finish
//!   (the caller bounds the wait).
//!
//! Every request carries the peer address as axum's `ConnectInfo<SocketAddr>`, and a [`ConnectionAbort`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::Instrument;

/// Largest request head (request line and headers) read; hyper answers 431 past it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;

/// In every request's extensions: cancelling it closes the request's connection at once. For a
/// handler whose response outlives its usefulness when the client stops reading (the activity stream):
/// hyper stops polling a body the client does not take, so the body itself cannot end it.
#[derive(Debug, Clone)]
pub struct ConnectionAbort(pub CancellationToken);

/// What the loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
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
        let abort = CancellationToken::new();
        let abort_handle = ConnectionAbort(abort.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
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
                let started = std::time::Instant::now();
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
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a timeout, a malformed request): hyper has
            // answered what could be answered; nothing is left to do but close.
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                },
                // Dropping the connection closes the socket, whatever it was doing.
                () = abort.cancelled() => tracing::debug!(peer = %peer, "connection closed by its handler"),
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
