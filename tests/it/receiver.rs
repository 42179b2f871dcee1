//! A real HTTP receiver for deliveries: an axum server on `127.0.0.1:0` that records every request and
//! answers what the test tells it to, changeable at any time — a status code, a scripted sequence of
//! statuses (e.g. 500, 500, 200) that takes precedence until used up, a delay, extra headers
//! (e.g. `Retry-After`) and a body.
//!
//! [`verify`] checks a delivery's Standard Webhooks signature with the `standardwebhooks` crate, an
//! implementation independent of hookd's own signer.
//!
//! Dropping a [`Receiver`] shuts it down: it stops accepting, closes idle keep-alive connections and cuts
//! short any delayed response, so "the receiver went away" really means connection refused.
// Shared helpers: not every one is used by every capability module yet.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::harness::eventually;

/// How often [`Receiver::wait_for`] looks at what has arrived.
const POLL: Duration = Duration::from_millis(20);

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    /// Path and query, e.g. `/hooks/42?x=1`.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request (headers and body) had fully arrived.
    pub at: Instant,
}

impl Received {
    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics (showing the body) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {:?}",
                self.method,
                self.uri,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `webhook-id` header; panics when absent.
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").unwrap_or_else(|| panic!("{} {} has no webhook-id", self.method, self.uri))
    }
}

/// Checks `received`'s `webhook-id`, `webhook-timestamp` and `webhook-signature` against the endpoint
/// secret (`whsec_…`) and returns the parsed body. The timestamp must be within 5 minutes of now, so
/// verify soon after receipt.
pub fn verify(secret_whsec: &str, received: &Received) -> Result<Value, String> {
    let webhook = standardwebhooks::Webhook::new(secret_whsec)
        .map_err(|e| format!("secret {secret_whsec:?} is not a Standard Webhooks secret: {e}"))?;
    webhook.verify(&received.body, &received.headers).map_err(|e| {
        format!("{} {}: {e} (headers: {:?})", received.method, received.uri, received.headers)
    })?;
    serde_json::from_slice(&received.body)
        .map_err(|e| format!("{} {}: body is not JSON: {e}", received.method, received.uri))
}

/// What the receiver answers, and what it has seen.
struct Behaviour {
    requests: Vec<Received>,
    status: StatusCode,
    script: VecDeque<StatusCode>,
    delay: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

struct Shared {
    // Sync mutex: held only to record a request or copy the response settings, never across an await.
    behaviour: Mutex<Behaviour>,
    /// Cancelled on drop; also cuts short delayed responses.
    stop: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Behaviour> {
        self.behaviour.lock().expect("receiver lock")
    }
}

/// A running receiver; see the module docs.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port, answering 200 with an empty body.
    pub async fn start() -> Receiver {
        Receiver::start_at("127.0.0.1:0".parse().expect("loopback address")).await
    }

    /// Starts a receiver on `addr`, e.g. the address of one dropped earlier (to bring "the same
    /// receiver" back). Retries the bind for a few seconds while the old socket is released.
    pub async fn start_at(addr: SocketAddr) -> Receiver {
        let listener = eventually(Duration::from_secs(5), Duration::from_millis(50), || async {
            tokio::net::TcpListener::bind(addr).await.ok()
        })
        .await
        .unwrap_or_else(|| panic!("receiver: cannot bind {addr}"));
        let addr = listener.local_addr().expect("receiver local address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour {
                requests: Vec::new(),
                status: StatusCode::OK,
                script: VecDeque::new(),
                delay: Duration::ZERO,
                headers: Vec::new(),
                body: Bytes::new(),
            }),
            stop: CancellationToken::new(),
        });
        let app = Router::new()
            .fallback(handle)
            // Batches can be large; the receiver must record whatever hookd sends.
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                eprintln!("receiver on {addr} failed: {e}");
            }
        });
        Receiver { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        assert!(path.starts_with('/'), "path {path:?} must start with /");
        format!("http://{}{path}", self.addr)
    }

    /// The status answered once any scripted sequence is used up.
    pub fn set_status(&self, status: u16) {
        self.shared.lock().status = status_code(status);
    }

    /// Statuses for the next requests, one each, in order; replaces any sequence not yet used up.
    pub fn set_sequence(&self, statuses: impl IntoIterator<Item = u16>) {
        self.shared.lock().script = statuses.into_iter().map(status_code).collect();
    }

    /// How long to wait before answering (after recording the request).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Adds a header to every response from now on (e.g. `Retry-After: 2`).
    pub fn set_header(&self, name: &str, value: &str) {
        let name = HeaderName::try_from(name).unwrap_or_else(|e| panic!("header name {name:?}: {e}"));
        let value = HeaderValue::try_from(value).unwrap_or_else(|e| panic!("header value {value:?}: {e}"));
        let mut behaviour = self.shared.lock();
        behaviour.headers.retain(|(n, _)| *n != name);
        behaviour.headers.push((name, value));
    }

    /// Removes every header added with [`Receiver::set_header`].
    pub fn clear_headers(&self) {
        self.shared.lock().headers.clear();
    }

    /// The response body from now on.
    pub fn set_body(&self, body: impl Into<Bytes>) {
        self.shared.lock().body = body.into();
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.shared.lock().requests.clear();
    }

    /// Waits until at least `n` requests have arrived and returns all of them; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let arrived = eventually(timeout, POLL, || async {
            let requests = self.requests();
            (requests.len() >= n).then_some(requests)
        })
        .await;
        arrived.unwrap_or_else(|| {
            let got: Vec<String> =
                self.requests().iter().map(|r| format!("{} {}", r.method, r.uri)).collect();
            panic!(
                "receiver {}: expected {n} requests within {timeout:?}, got {}: {got:?}",
                self.addr,
                got.len()
            )
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or_else(|e| panic!("status {status}: {e}"))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let uri = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let (status, delay, extra_headers, body) = {
        let mut behaviour = shared.lock();
        behaviour.requests.push(Received { method, uri, headers, body, at });
        let status = behaviour.script.pop_front().unwrap_or(behaviour.status);
        (status, behaviour.delay, behaviour.headers.clone(), behaviour.body.clone())
    };
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stop.cancelled() => {}
        }
    }
    let mut response = (status, body).into_response();
    for (name, value) in extra_headers {
        response.headers_mut().insert(name, value);
    }
    response
}
