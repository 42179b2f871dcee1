//! The supervisor keeps one dispatcher task per endpoint, and the router hands committed events to them.
//!
//! The map of feeds is an immutable snapshot behind an `ArcSwap`, replaced when endpoints come and go:
//! the router (on the committer thread) reads it without a lock. A new endpoint's feed is published
//! before its task starts reading the log, so no event routed to it can fall between the two.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::HttpClient;
use super::dispatcher::Dispatcher;
use super::feed::{EventRef, Feed};
use crate::ids::IdGen;
use crate::registry::RegistryHandle;
use crate::store::{CommittedRecord, Store};

type Feeds = HashMap<u64, Arc<Feed>>;

/// What every dispatcher shares.
pub struct Shared {
    pub store: Store,
    pub registry: RegistryHandle,
    pub client: HttpClient,
    pub ids: Arc<IdGen>,
    pub user_agent: http::HeaderValue,
    /// Every event with an id up to this is in the log (set by the router before it pushes).
    pub committed_upto: AtomicU64,
    /// Every event with an id up to this has been routed (pushed to its feeds).
    pub routed_upto: AtomicU64,
    pub shutdown: CancellationToken,
    /// The live activity hub: committed events (here, in `Router::route`) and attempt outcomes.
    pub activity: Arc<crate::activity::Activity>,
}

/// Hands committed events to the feeds; used by the committer thread.
#[derive(Clone)]
pub struct Router {
    feeds: Arc<ArcSwap<Feeds>>,
    shared: Arc<Shared>,
}

impl Router {
    pub fn route(&self, committed: &[CommittedRecord]) {
        let last = committed
            .iter()
            .filter_map(|c| c.record.events.len().checked_sub(1).map(|n| c.first_id + n as u64))
            .max();
        if let Some(last) = last {
            self.shared.committed_upto.fetch_max(last, Ordering::AcqRel);
        }
        let feeds = self.feeds.load();
        let mut upto = 0;
        for c in committed {
            for (i, ev) in c.record.events.iter().enumerate() {
                let id = c.first_id + i as u64;
                upto = upto.max(id);
                for ep in &ev.routes {
                    if let Some(feed) = feeds.get(ep) {
                        feed.push(EventRef { id, record: c.record.clone(), index: i });
                    }
                }
            }
        }
        self.shared.routed_upto.fetch_max(upto, Ordering::AcqRel);
        self.shared.activity.ingested(committed);
    }
}

/// Read access to the dispatchers' progress, for the event-detail API.
#[derive(Clone)]
pub struct Progress {
    feeds: Arc<ArcSwap<Feeds>>,
}

impl Progress {
    /// Every event routed to `endpoint` with an id up to the returned one has been handed off.
    pub fn cursor(&self, endpoint: u64) -> Option<u64> {
        self.feeds.load().get(&endpoint).map(|f| f.cursor.load(Ordering::Acquire))
    }
}

pub struct Supervisor {
    shared: Arc<Shared>,
    feeds: Arc<ArcSwap<Feeds>>,
    tracker: TaskTracker,
}

impl Supervisor {
    pub fn new(shared: Shared) -> Supervisor {
        Supervisor { shared: Arc::new(shared), feeds: Arc::default(), tracker: TaskTracker::new() }
    }

    pub fn router(&self) -> Router {
        Router { feeds: self.feeds.clone(), shared: self.shared.clone() }
    }

    pub fn progress(&self) -> Progress {
        Progress { feeds: self.feeds.clone() }
    }

    /// Runs until shutdown, then waits for every dispatcher to finish its attempts in hand.
    pub async fn run(self) {
        let mut changes = self.shared.registry.subscribe();
        loop {
            self.sync_workers();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = self.shared.shutdown.cancelled() => break,
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Starts a dispatcher for every endpoint without one; forgets the feeds of deleted endpoints
    /// (their dispatchers notice the deletion themselves and stop).
    fn sync_workers(&self) {
        let snapshot = self.shared.registry.snapshot();
        let current = self.feeds.load_full();
        let mut next: Feeds = HashMap::with_capacity(current.len() + 1);
        let mut started = Vec::new();
        for entry in snapshot.endpoints() {
            let id = entry.record.id;
            if let Some(feed) = current.get(&id) {
                next.insert(id, feed.clone());
                continue;
            }
            let cursor = match self.shared.store.cursor(id) {
                Ok(Some(c)) => c,
                // Only events ingested after the endpoint existed can be routed to it, and their ids
                // are at least the id clock's value at its creation.
                Ok(None) => (entry.record.created_at.saturating_mul(1000) << 12).saturating_sub(1),
                Err(e) => {
                    tracing::error!(endpoint = %crate::ids::EndpointId(id), error = %e, "cannot read cursor");
                    continue;
                }
            };
            let feed =
                Arc::new(Feed::lagging_after(cursor, self.shared.committed_upto.load(Ordering::Acquire)));
            next.insert(id, feed.clone());
            started.push((entry.record.id, entry.record.tenant_serial, feed, cursor));
        }
        if started.is_empty() && next.len() == current.len() {
            return;
        }
        // Publish first, then start: see the module docs.
        self.feeds.store(Arc::new(next));
        for (id, tenant, feed, cursor) in started {
            let dispatcher = Dispatcher::new(self.shared.clone(), id, tenant, feed, cursor);
            self.tracker.spawn(dispatcher.run());
        }
    }
}
