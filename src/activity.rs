//! The live activity hub: what `GET /v1/tenants/{tenant}/activity` streams (see `api::activity`).
//!
//! Publishers are the committer thread (every committed log record, via `deliver::Router::route`), the
//! dispatchers (every finished attempt) and the test-send handler. Invariants:
//! - **Publishing never blocks and never waits for a reader.** Each tenant with at least one listener
//!   has its own `tokio::sync::broadcast` channel of bounded capacity; a send overwrites the oldest item
//!   when a reader is behind, and that reader learns it lagged (and is dropped) when it next reads.
//! - **Nobody listening costs one atomic load** (a count of open streams). The per-tenant channels live
//!   in an immutable map behind an `ArcSwap`; a tenant without a listener has no entry, and nothing is
//!   built or cloned for it.
//!   The map is replaced (under a mutex, off the hot path) only when a tenant's first stream opens or its
//!   last one closes.
//! - **Ingest items are the committed records themselves** (an `Arc` clone, no copy, no serialization
//!   on the committer thread); streams render them. Attempt items are small summaries, never the
//!   request or response bodies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::model::{AttemptRecord, LogRecord, Trigger};
use crate::store::CommittedRecord;

/// Items a tenant's channel holds for its slowest reader. An item is a committed log record (up to
/// ~8 KiB of payload, many events) or one attempt, so this bounds a tenant's buffered memory to a few MiB.
pub const CHANNEL_CAPACITY: usize = 256;

/// One thing that happened in a tenant.
#[derive(Debug, Clone)]
pub enum Item {
    /// Events made durable together: ids `first_id..first_id + record.events.len()`.
    Ingested { first_id: u64, record: Arc<LogRecord> },
    /// One finished attempt.
    Attempt(Arc<AttemptSummary>),
}

impl Item {
    /// SSE events this item becomes.
    pub fn events(&self) -> usize {
        match self {
            Item::Ingested { record, .. } => record.events.len(),
            Item::Attempt(_) => 1,
        }
    }
}

/// What the stream tells of an attempt: its outcome, not its bodies or headers.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptSummary {
    pub attempt_id: u64,
    pub endpoint_id: u64,
    pub events: Vec<u64>,
    /// `Some` for a batch: the `bat_…` id.
    pub batch_id: Option<u64>,
    pub status_code: Option<u16>,
    pub succeeded: bool,
    pub error_class: Option<String>,
    pub duration_ms: u64,
    pub attempt_number: u32,
    pub trigger: Trigger,
    pub sent_at: u64,
}

impl AttemptSummary {
    pub fn new(attempt_id: u64, a: &AttemptRecord) -> AttemptSummary {
        AttemptSummary {
            attempt_id,
            endpoint_id: a.endpoint_id,
            events: a.events.clone(),
            batch_id: a.batch.then_some(a.webhook_id),
            status_code: a.status_code,
            succeeded: a.succeeded,
            error_class: a.error_class.clone(),
            duration_ms: a.duration_ms,
            attempt_number: a.attempt_number,
            trigger: a.trigger,
            sent_at: a.sent_at,
        }
    }
}

type Channels = HashMap<u64, broadcast::Sender<Item>>;

/// The hub; shared (in an `Arc`) by the API, the router and the dispatchers.
pub struct Activity {
    /// By tenant serial; only tenants with a listener have an entry.
    channels: ArcSwap<Channels>,
    /// Serializes the rare map replacements (subscribe, last unsubscribe); never taken by publishers.
    change: Mutex<()>,
    /// Open streams at most (`server.max_activity_streams`).
    slots: Arc<Semaphore>,
    /// Open streams now: the publishers' first check, one relaxed load when nobody listens.
    listening: AtomicUsize,
    /// Cancelled when shutdown starts: every stream ends, so the HTTP drain does not wait for them.
    closed: CancellationToken,
}

/// A stream's membership: its receiver and its slot. Dropping it gives both back.
pub struct Subscription {
    pub receiver: broadcast::Receiver<Item>,
    tenant: u64,
    hub: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.forget_if_unheard(self.tenant);
    }
}

impl Activity {
    pub fn new(max_streams: usize) -> Activity {
        Activity {
            channels: ArcSwap::default(),
            change: Mutex::new(()),
            slots: Arc::new(Semaphore::new(max_streams)),
            listening: AtomicUsize::new(0),
            closed: CancellationToken::new(),
        }
    }

    /// Opens a stream on `tenant`; `None` when `server.max_activity_streams` are open.
    pub fn subscribe(self: &Arc<Self>, tenant: u64) -> Option<Subscription> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        // The lock only orders map replacements; a poisoned one guards no broken state.
        let _guard = self.change.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.channels.load();
        let receiver = match current.get(&tenant) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(CHANNEL_CAPACITY);
                let mut next = Channels::clone(&current);
                next.insert(tenant, sender);
                self.channels.store(Arc::new(next));
                receiver
            }
        };
        self.listening.fetch_add(1, Ordering::Relaxed);
        Some(Subscription { receiver, tenant, hub: self.clone(), _slot: slot })
    }

    /// Removes `tenant`'s channel when the subscription being dropped holds its last receiver.
    fn forget_if_unheard(&self, tenant: u64) {
        self.listening.fetch_sub(1, Ordering::Relaxed);
        let _guard = self.change.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.channels.load();
        let Some(sender) = current.get(&tenant) else { return };
        // `leaving` still counts: it is dropped after this returns. A channel is only removed with its
        // last receiver, so the one in the map is `leaving`'s.
        if sender.receiver_count() > 1 {
            return;
        }
        let mut next = Channels::clone(&current);
        next.remove(&tenant);
        self.channels.store(Arc::new(next));
    }

    /// Ends every stream (shutdown).
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.listening.load(Ordering::Relaxed)
    }

    /// Events just made durable (the committer thread, after each group commit).
    pub fn ingested(&self, committed: &[CommittedRecord]) {
        // Relaxed: a stream that opens concurrently sees what is committed after it opened, give or
        // take this group, which a live view does not promise either way.
        if self.listening.load(Ordering::Relaxed) == 0 {
            return;
        }
        let channels = self.channels.load();
        if channels.is_empty() {
            return;
        }
        for c in committed {
            if let Some(sender) = channels.get(&c.tenant) {
                // An error means no receiver is left: nothing to do.
                let _ = sender.send(Item::Ingested { first_id: c.first_id, record: c.record.clone() });
            }
        }
    }

    /// One finished attempt of `tenant`.
    pub fn attempt(&self, tenant: u64, attempt_id: u64, attempt: &AttemptRecord) {
        if self.listening.load(Ordering::Relaxed) == 0 {
            return;
        }
        let channels = self.channels.load();
        if let Some(sender) = channels.get(&tenant)
            && sender.receiver_count() > 0
        {
            let _ = sender.send(Item::Attempt(Arc::new(AttemptSummary::new(attempt_id, attempt))));
        }
    }
}

/// What a dispatcher reports when it has recorded a round of attempts (called once, at the end of
/// `Dispatcher::finish`): the batch-size histogram, and the activity stream.
pub fn attempts_finished<'a>(
    hub: &Activity,
    tenant: u64,
    attempts: impl IntoIterator<Item = (u64, &'a AttemptRecord)>,
) {
    for (attempt_id, attempt) in attempts {
        crate::metrics::request_events(attempt.events.len());
        hub.attempt(tenant, attempt_id, attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(tenant: u64, first_id: u64, events: usize) -> CommittedRecord {
        let event = crate::model::EventRecord {
            event_type: "a.b".into(),
            channels: vec![],
            payload: "{}".into(),
            received_at: 0,
            idempotency_key: None,
            routes: vec![],
        };
        CommittedRecord { tenant, first_id, record: Arc::new(LogRecord { events: vec![event; events] }) }
    }

    #[tokio::test]
    async fn a_subscriber_gets_its_tenants_records_only_and_its_channel_goes_with_it() {
        let hub = Arc::new(Activity::new(4));
        let mut sub = hub.subscribe(1).expect("a slot");
        hub.ingested(&[committed(2, 10, 1), committed(1, 20, 3)]);
        match sub.receiver.try_recv() {
            Ok(Item::Ingested { first_id, record }) => assert_eq!((first_id, record.events.len()), (20, 3)),
            other => panic!("{other:?}"),
        }
        assert!(sub.receiver.try_recv().is_err(), "tenant 2's record leaked");
        let second = hub.subscribe(1).expect("a slot");
        drop(sub);
        assert_eq!(hub.channels.load().len(), 1, "a listener is left");
        drop(second);
        assert!(hub.channels.load().is_empty(), "the last listener took the channel with it");
    }

    #[test]
    fn streams_are_capped_and_slots_come_back() {
        let hub = Arc::new(Activity::new(2));
        let a = hub.subscribe(1).expect("first");
        let _b = hub.subscribe(2).expect("second");
        assert!(hub.subscribe(3).is_none(), "over the cap");
        assert_eq!(hub.open_streams(), 2);
        drop(a);
        assert!(hub.subscribe(3).is_some(), "a slot came back");
    }

    #[test]
    fn a_lagging_receiver_learns_it_and_the_sender_never_waits() {
        let hub = Arc::new(Activity::new(1));
        let mut sub = hub.subscribe(7).expect("a slot");
        for i in 0..(CHANNEL_CAPACITY as u64 + 10) {
            hub.ingested(&[committed(7, i, 1)]);
        }
        assert!(matches!(sub.receiver.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
    }

    /// Publishing with nobody listening: what every group commit pays. Run with `--ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn publish_cost_with_nobody_listening() {
        let hub = Activity::new(1);
        let batch = [committed(1, 1, 1)];
        let rounds = 10_000_000u32;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            hub.ingested(std::hint::black_box(&batch));
        }
        println!("ingested(): {:?} per call with nobody listening", started.elapsed() / rounds);
        let hub = Arc::new(hub);
        let _other = hub.subscribe(2).expect("a slot");
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            hub.ingested(std::hint::black_box(&batch));
        }
        println!("ingested(): {:?} per call with another tenant listening", started.elapsed() / rounds);
    }
}
