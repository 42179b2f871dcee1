//! `GET /v1/tenants/{tenant}/activity`: the tenant's live activity as Server-Sent Events.
//!
//! Each stream has a forwarder task between the tenant's broadcast channel ([`crate::activity`]) and the
//! response body, joined by a small bounded queue. The forwarder never waits on the reader: when the
//! queue is full (the reader is not reading fast enough, or at all) or the broadcast channel overtook
//! it, the stream is dropped — a final `lagged` event is queued, the body ends after it, and if the
//! reader has not taken it within [`LAG_GRACE`] the connection is closed. Delivery and ingest never
//! notice a reader.
//!
//! Events: `ingest` (one per event: id, type, channels, received_at, payload_bytes — never the
//! payload), `attempt` (one per attempt: its outcome), `lagged` (last event of a dropped stream). A
//! comment line every [`HEARTBEAT`] keeps proxies from closing an idle stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::AppState;
use super::extract::Tenant;
use super::problem::Problem;
use crate::activity::{AttemptSummary, Item, Subscription};
use crate::ids::{AttemptId, BatchId, EndpointId, EventId};
use crate::server::ConnectionAbort;
use crate::time::format_ms;

/// Comment line sent on an idle stream.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Items queued between the forwarder and the body (an ingest item is a committed record, often
/// many events).
pub const STREAM_QUEUE: usize = 128;
/// Events queued between the forwarder and the body at most: a reader this far behind is dropped.
/// About 500 KiB of SSE text, on top of what the socket and hyper already buffer.
pub const MAX_QUEUED_EVENTS: usize = 2048;
/// How long a dropped reader has to take its `lagged` event before its connection is closed.
pub const LAG_GRACE: Duration = Duration::from_secs(5);

/// What the body sends: the hub's items, or the final notice of a dropped stream.
enum Out {
    Item(Item),
    Lagged { missed: u64 },
}

/// `GET …/activity`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/activity", tag = "events", params(super::openapi::TenantPath),
    responses(
        (status = 200, description = "Server-Sent Events, live: `ingest` (id, type, channels, received_at, size) and \
            `attempt` (id, endpoint_id, event_ids, batch_id, status_code, succeeded, error_class, duration_ms, \
            trigger) events as JSON data; a final `lagged` event when the reader fell too far behind; \
            a comment heartbeat every 15 s.", content_type = "text/event-stream", body = String),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
))]
pub async fn stream(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    abort: Option<Extension<ConnectionAbort>>,
) -> Result<Response, Problem> {
    let max = state.config.server.max_activity_streams as usize;
    let Some(subscription) = state.activity.subscribe(tenant.serial) else {
        return Err(Problem::unavailable(
            format!("{max} activity streams are open (server.max_activity_streams); retry later"),
            5,
        ));
    };
    crate::metrics::activity_streams(state.activity.open_streams());
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let (body_gone_tx, body_gone_rx) = oneshot::channel::<Infallible>();
    let queued = Arc::new(AtomicUsize::new(0));
    let forwarder = Forwarder {
        subscription,
        tx,
        queued: queued.clone(),
        body_gone: body_gone_rx,
        abort: abort.map(|Extension(a)| a),
        state: state.clone(),
    };
    tokio::spawn(forwarder.run());
    let body = Body { rx, queued, pending: Vec::new(), _alive: body_gone_tx };
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")).into_response())
}

struct Forwarder {
    subscription: Subscription,
    tx: mpsc::Sender<Out>,
    /// Events sent to the body and not yet rendered by it.
    queued: Arc<AtomicUsize>,
    /// Resolves (with an error: nothing is ever sent) when the response body is dropped.
    body_gone: oneshot::Receiver<Infallible>,
    abort: Option<ConnectionAbort>,
    state: AppState,
}

impl Forwarder {
    async fn run(mut self) {
        let closed = self.state.activity.closed().clone();
        let lagged = loop {
            let item = tokio::select! {
                item = self.subscription.receiver.recv() => item,
                _ = self.tx.closed() => break None,
                () = closed.cancelled() => break None,
            };
            match item {
                // One slot is kept for the `lagged` notice. A record larger than the budget still goes
                // to a reader that has taken everything before it.
                Ok(item)
                    if self.tx.capacity() > 1 && {
                        let queued = self.queued.load(Ordering::Acquire);
                        queued == 0 || queued + item.events() <= MAX_QUEUED_EVENTS
                    } =>
                {
                    self.queued.fetch_add(item.events(), Ordering::AcqRel);
                    if self.tx.try_send(Out::Item(item)).is_err() {
                        break None; // the body is gone
                    }
                }
                Ok(item) => break Some((self.subscription.receiver.len() + item.events()) as u64),
                Err(broadcast::error::RecvError::Lagged(n)) => break Some(n),
                Err(broadcast::error::RecvError::Closed) => break None,
            }
        };
        let Forwarder { subscription, tx, body_gone, abort, state, .. } = self;
        // Leave the hub first: a dropped reader holds nothing of the tenant's channel.
        drop(subscription);
        crate::metrics::activity_streams(state.activity.open_streams());
        let Some(missed) = lagged else { return };
        crate::metrics::activity_stream_dropped();
        tracing::info!(missed, "activity stream dropped: its reader fell behind");
        let _ = tx.try_send(Out::Lagged { missed });
        drop(tx);
        // The body ends after the notice; a reader that does not take it loses its connection.
        if tokio::time::timeout(LAG_GRACE, body_gone).await.is_err()
            && let Some(abort) = abort
        {
            abort.abort();
        }
    }
}

/// The response body: SSE events rendered from the queue.
struct Body {
    rx: mpsc::Receiver<Out>,
    queued: Arc<AtomicUsize>,
    /// Events of an item not yet sent (an ingest item holds many), last first.
    pending: Vec<Event>,
    /// Dropped with the body, which tells the forwarder.
    _alive: oneshot::Sender<Infallible>,
}

impl Stream for Body {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.pending.pop() {
                return Poll::Ready(Some(Ok(event)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(out)) => {
                    if let Out::Item(item) = &out {
                        self.queued.fetch_sub(item.events(), Ordering::AcqRel);
                    }
                    self.pending = render(out);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The SSE events of one queued item, last first.
fn render(out: Out) -> Vec<Event> {
    match out {
        Out::Item(Item::Ingested { first_id, record }) => record
            .events
            .iter()
            .enumerate()
            .rev()
            .map(|(i, ev)| {
                let id = EventId(first_id + i as u64);
                let data = json!({
                    "id": id,
                    "type": ev.event_type,
                    "channels": ev.channels,
                    "received_at": format_ms(ev.received_at),
                    "payload_bytes": ev.payload.len(),
                });
                Event::default().event("ingest").data(data.to_string())
            })
            .collect(),
        Out::Item(Item::Attempt(a)) => {
            vec![Event::default().event("attempt").data(attempt_json(&a).to_string())]
        }
        Out::Lagged { missed } => {
            let data = json!({
                "missed": missed,
                "detail": "this reader fell behind the activity buffer and is disconnected; reconnect to resume (events in between are not replayed)",
            });
            vec![Event::default().event("lagged").data(data.to_string())]
        }
    }
}

fn attempt_json(a: &AttemptSummary) -> serde_json::Value {
    json!({
        "id": AttemptId(a.attempt_id),
        "endpoint_id": EndpointId(a.endpoint_id),
        "event_ids": a.events.iter().map(|e| EventId(*e)).collect::<Vec<_>>(),
        "batch_id": a.batch_id.map(BatchId),
        "status_code": a.status_code,
        "succeeded": a.succeeded,
        "error_class": a.error_class,
        "duration_ms": a.duration_ms,
        "attempt_number": a.attempt_number,
        "trigger": a.trigger,
        "sent_at": format_ms(a.sent_at),
    })
}
