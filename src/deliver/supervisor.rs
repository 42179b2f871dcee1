//! The supervisor keeps one dispatcher task per endpoint, and the router hands committed events to them.
//!
//! The map of feeds is an immutable snapshot behind an `ArcSwap`, replaced when endpoints come and go:
//! the router (on the committer thread) reads it without a lock. A new endpoint's feed is published
//! before its task starts reading the log, so no event routed to it can fall between the two.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// How often the queue gauges are refreshed.
const QUEUE_GAUGES_EVERY: Duration = Duration::from_secs(5);

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
    /// Set once the committer runs (it is started after the supervisor).
    pub notifier: std::sync::OnceLock<super::notify::Notifier>,
    /// An endpoint whose every attempt failed for this long is disabled (0: never).
    pub disable_after_ms: u64,
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

    /// The endpoint's feed, through which its dispatcher takes commands and publishes its state.
    pub fn feed(&self, endpoint: u64) -> Option<Arc<Feed>> {
        self.feeds.load().get(&endpoint).cloned()
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

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
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
        let mut gauges = tokio::time::interval(QUEUE_GAUGES_EVERY);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.sync_workers();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = gauges.tick() => self.publish_queue_gauges(),
                () = self.shared.shutdown.cancelled() => break,
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The queue across endpoints, from what each dispatcher last published: deliveries waiting, and the
    /// age of the oldest (ids come from the id clock: `unix µs << 12`).
    fn publish_queue_gauges(&self) {
        let mut depth = 0u64;
        let mut oldest: Option<u64> = None;
        for feed in self.feeds.load().values() {
            let w = feed.waiting();
            depth += w.first_attempts + w.retries;
            for id in [w.oldest_event, w.first_retry].into_iter().flatten() {
                oldest = Some(oldest.map_or(id, |o| o.min(id)));
            }
        }
        let now = crate::time::now_ms();
        let age_ms = oldest.map_or(0, |id| now.saturating_sub((id >> 12) / 1000));
        crate::metrics::queue(depth, Duration::from_millis(age_ms));
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
            match self.shared.store.endpoint_stats(id) {
                Ok(Some(stats)) => *super::feed::lock(&feed.stats) = stats,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(endpoint = %crate::ids::EndpointId(id), error = %e, "cannot read the endpoint's statistics")
                }
            }
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
