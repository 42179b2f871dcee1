//! Group commit: one thread writes what many concurrent ingest requests hand it, makes it durable once,
//! routes it to the dispatchers, and only then answers them all.
//!
//! Why a dedicated OS thread: the flush and `fdatasync` block for milliseconds; while one group is being
//! made durable the next group accumulates in the channel, so the number of syncs per second stays
//! constant while the events per sync grow with load.
//!
//! Why here and not in the request task: the committer is the single place where ids are assigned and
//! idempotency keys are checked, so two concurrent requests with the same key cannot both store an event.
//! A request whose client went away still completes: the committer owns the work once it is queued, so
//! an event is either not stored at all or stored and routed — never stored and forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::ordered::Ordered;
use super::records::{self, IdempotencyRecord};
use super::segment::Append;
use super::{Store, StoreError, keys};
use crate::ids::IdGen;
use crate::model::{EventRecord, LogRecord};

/// Upper bounds of one group: past them the next group starts (a single larger request still goes alone).
const MAX_GROUP_EVENTS: usize = 20_000;
const MAX_GROUP_BYTES: usize = 32 << 20;
/// Requests waiting for the committer; past this, ingest handlers wait (back-pressure, not memory growth).
const QUEUE_DEPTH: usize = 4096;

/// An event validated and routed by ingest, waiting for its id.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub event_type: String,
    pub channels: Vec<String>,
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub routes: Vec<u64>,
}

/// The answer for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub id: u64,
    pub received_at: u64,
    /// True when an idempotency key matched an earlier event: nothing new was stored.
    pub duplicate: bool,
}

/// A log record just made durable, as handed to the router.
#[derive(Debug, Clone)]
pub struct CommittedRecord {
    pub tenant: u64,
    pub first_id: u64,
    pub record: Arc<LogRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log is shutting down")]
    Stopped,
}

/// Called by the committer thread after each durable group, before the requests are answered.
pub type OnCommit = Box<dyn Fn(&[CommittedRecord]) + Send>;

enum Msg {
    Commit(Request),
    Stop,
}

struct Request {
    tenant: u64,
    events: Vec<PreparedEvent>,
    bytes: usize,
    reply: oneshot::Sender<Result<Answer, Arc<StoreError>>>,
}

/// What a request gets back: its events' answers, and a share of the group's records. The records are
/// freed by whichever request drops the last share, on a runtime worker (where the events' memory was
/// allocated) rather than on the committer thread: freeing a group's events there was ~19 % of the
/// thread's CPU under batch ingest, and the thread is the one serial step of ingest.
struct Answer {
    accepted: Vec<Accepted>,
    _records: Option<Arc<Vec<CommittedRecord>>>,
}

/// Handle to the committer thread; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Msg>,
}

impl Committer {
    /// Starts the committer thread.
    pub fn spawn(
        store: Store,
        ids: Arc<IdGen>,
        on_commit: OnCommit,
    ) -> std::io::Result<(Committer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("hookd-commit".into())
            .spawn(move || run(rx, &store, &ids, &*on_commit))?;
        Ok((Committer { tx }, handle))
    }

    /// Appends `events` of one tenant atomically; resolves once they are durable and routed.
    pub async fn commit(
        &self,
        tenant: u64,
        events: Vec<PreparedEvent>,
    ) -> Result<Vec<Accepted>, CommitError> {
        let bytes = events.iter().map(|e| e.payload.len() + e.event_type.len() + 64).sum();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Commit(Request { tenant, events, bytes, reply }))
            .await
            .map_err(|_| CommitError::Stopped)?;
        match answer.await {
            Ok(Ok(answer)) => Ok(answer.accepted),
            Ok(Err(e)) => Err(CommitError::Store(shared_error(&e))),
            Err(_) => Err(CommitError::Stopped),
        }
    }

    /// Asks the thread to finish what is queued before this call and exit.
    pub async fn stop(&self) {
        let _ = self.tx.send(Msg::Stop).await;
    }
}

/// StoreError is not Clone (it holds io/sled errors); a group's failure is shared by all its requests.
fn shared_error(e: &Arc<StoreError>) -> StoreError {
    super::refuse::shared(e)
}

fn run(
    mut rx: mpsc::Receiver<Msg>,
    store: &Store,
    ids: &IdGen,
    on_commit: &(dyn Fn(&[CommittedRecord]) + Send),
) {
    // The gathering slices are tens of microseconds: with Linux's default 50 µs timer slack each would
    // last twice as long as asked.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(GATHER_TIMER_SLACK_NS))
    {
        tracing::debug!(error = %e, "cannot narrow the committer's timer slack");
    }
    let mut gather = Gather::default();
    while let Some(first) = rx.blocking_recv() {
        let Msg::Commit(first) = first else { break };
        let taken = Instant::now();
        let mut group =
            Group { n: first.events.len(), bytes: first.bytes, requests: vec![first], stop: false };
        group.drain(&mut rx);
        let budget = gather.budget(group.n);
        loop {
            let left = budget.saturating_sub(taken.elapsed());
            if left.is_zero() || group.stop || group.is_full() || group.n >= GATHER_EVENTS {
                break;
            }
            // The last slice is cut to what is left: a budget shorter than a slice (an `os`-mode
            // commit takes tens of microseconds) is kept too.
            std::thread::sleep(left.min(GATHER_SLICE));
            // A slice that brought nothing: the burst is over, waiting longer would only add latency.
            if group.drain(&mut rx) == 0 {
                break;
            }
        }
        let (events, stop) = (group.n, group.stop);
        let committing = Instant::now();
        commit_group(store, ids, group.requests, on_commit);
        gather.committed(events, taken, committing.elapsed());
        if stop {
            break;
        }
    }
    tracing::debug!("group committer stopped");
}

/// The requests of the group being formed.
struct Group {
    n: usize,
    bytes: usize,
    requests: Vec<Request>,
    /// A stop request came after them: commit this group, then exit.
    stop: bool,
}

impl Group {
    fn is_full(&self) -> bool {
        self.n >= MAX_GROUP_EVENTS || self.bytes >= MAX_GROUP_BYTES
    }

    /// Takes what is queued, up to the group's bounds; returns how many requests it took.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Msg>) -> usize {
        let before = self.requests.len();
        while !self.stop && !self.is_full() {
            match rx.try_recv() {
                Ok(Msg::Commit(r)) => {
                    self.n += r.events.len();
                    self.bytes += r.bytes;
                    self.requests.push(r);
                }
                Ok(Msg::Stop) => self.stop = true,
                Err(_) => break,
            }
        }
        self.requests.len() - before
    }
}

/// A group of this many events is worth its sync: it is committed at once.
const GATHER_EVENTS: usize = 32;
/// How long the committer sleeps between two looks at the queue while it gathers a group.
const GATHER_SLICE: Duration = Duration::from_micros(50);
/// The longest a group is held back, whatever the rate.
const GATHER_MAX: Duration = Duration::from_micros(200);
/// The committer thread's timer slack, so that a slice lasts about what it asks.
const GATHER_TIMER_SLACK_NS: u64 = 5_000;

/// How long the committer holds a small group back for the requests about to join it.
///
/// A group costs about the same whatever its size (one `fdatasync`, one `pwrite`, one sled insert of
/// the pointers, and the time every request in it waits for them): under load, committing the first
/// request found in the queue at once makes the requests arriving microseconds later wait for a whole
/// further commit, and spends a sync on one event. Under single-event ingest at 64 connections, a
/// quarter of the groups held one event and the mean was 15–18.
///
/// So while events arrive fast enough that a [`GATHER_SLICE`] should bring another (the rate is
/// smoothed over recent groups), a group smaller than [`GATHER_EVENTS`] is held back, slice by slice,
/// until a slice brings nothing, the group is large enough, or the budget is spent: [`GATHER_MAX`], and
/// never longer than a commit recently took (holding a group back longer than a commit lasts gains
/// nothing: the late requests would have made the next group in that time). At low rates nothing is
/// held: an event arriving alone is committed at once.
#[derive(Debug, Default)]
struct Gather {
    /// Events per second arriving at the committer, smoothed over recent groups.
    rate: f64,
    /// How long a commit took, smoothed.
    commit: Duration,
    /// When the previous group was taken from the queue.
    last: Option<Instant>,
}

impl Gather {
    /// How long a group of `events` so far may be held back in all (zero: commit it now).
    fn budget(&self, events: usize) -> Duration {
        if events >= GATHER_EVENTS || self.rate * GATHER_SLICE.as_secs_f64() < 1.0 {
            return Duration::ZERO;
        }
        GATHER_MAX.min(self.commit)
    }

    /// Records a group of `events`, taken from the queue at `taken`, whose commit took `took`.
    fn committed(&mut self, events: usize, taken: Instant, took: Duration) {
        const WEIGHT: f64 = 0.2;
        if let Some(last) = self.last {
            // What arrived between two takes is what the second one found (or gathered).
            let secs = taken.saturating_duration_since(last).as_secs_f64().max(1e-6);
            self.rate += WEIGHT * (events as f64 / secs - self.rate);
        }
        self.last = Some(taken);
        self.commit = self.commit.mul_f64(1.0 - WEIGHT) + took.mul_f64(WEIGHT);
    }
}

/// Where one event of a request ended up.
#[derive(Clone)]
enum Slot {
    /// Stored as event `pos` of the group's record for tenant `t`.
    New { t: usize, pos: usize },
    /// Same idempotency key as an event stored earlier in this group.
    SameAs { t: usize, pos: usize },
    /// Same idempotency key as an event already in the log.
    Existing(IdempotencyRecord),
}

fn commit_group(
    store: &Store,
    ids: &IdGen,
    group: Vec<Request>,
    on_commit: &(dyn Fn(&[CommittedRecord]) + Send),
) {
    let started = Instant::now();
    let now = crate::time::now_ms();
    let log = &store.inner.log;
    let mut tenants: Vec<(u64, Vec<EventRecord>)> = Vec::new();
    let mut tenant_index: HashMap<u64, usize> = HashMap::new();
    let mut in_group_keys: HashMap<(u64, String), (usize, usize)> = HashMap::new();
    let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut failed: Option<StoreError> = None;
    // About what the group adds to the disk, for ingest's room (see `space`): no syscall.
    let group_bytes: u64 = group.iter().map(|r| r.bytes as u64).sum();

    for req in group {
        replies.push(req.reply);
        if failed.is_some() {
            continue;
        }
        let t = *tenant_index.entry(req.tenant).or_insert_with(|| {
            tenants.push((req.tenant, Vec::new()));
            tenants.len() - 1
        });
        let mut req_slots = Vec::with_capacity(req.events.len());
        for ev in req.events {
            if let Some(key) = &ev.idempotency_key {
                if let Some(&(t0, pos)) = in_group_keys.get(&(req.tenant, key.clone())) {
                    req_slots.push(Slot::SameAs { t: t0, pos });
                    continue;
                }
                let k = keys::tenant_named(keys::IDEMPOTENCY, req.tenant, key);
                match log
                    .get(&k)
                    .map_err(StoreError::from)
                    .and_then(|v| v.map(|bytes| records::decode::<IdempotencyRecord>(&k, &bytes)).transpose())
                {
                    Ok(Some(existing)) => {
                        req_slots.push(Slot::Existing(existing));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // The log cannot be read: nothing in this group can be trusted to dedupe.
                        failed = Some(e);
                        break;
                    }
                }
            }
            let events = &mut tenants[t].1;
            let pos = events.len();
            if let Some(key) = &ev.idempotency_key {
                in_group_keys.insert((req.tenant, key.clone()), (t, pos));
            }
            events.push(EventRecord {
                event_type: ev.event_type,
                channels: ev.channels,
                payload: ev.payload,
                received_at: now,
                idempotency_key: ev.idempotency_key,
                routes: ev.routes,
            });
            req_slots.push(Slot::New { t, pos });
        }
        slots.push(req_slots);
    }

    let result = match failed {
        Some(e) => Err(e),
        None => write_group(store, ids, tenants, now, group_bytes),
    };
    let (committed, first_ids) = match result {
        Ok(written) => written,
        Err(e) => {
            let e = Arc::new(e);
            tracing::error!(error = %e, "group commit failed");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    on_commit(&committed);
    let events: usize = committed.iter().map(|c| c.record.events.len()).sum();
    crate::metrics::group_committed(events, started.elapsed());
    // The last request takes this thread's share too, so that no share stays here to be the last.
    let mut share = Some(Arc::new(committed));
    let last = replies.len().saturating_sub(1);
    for (i, (reply, slots)) in replies.into_iter().zip(slots).enumerate() {
        let accepted = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::New { t, pos } => {
                    Accepted { id: first_ids[t] + pos as u64, received_at: now, duplicate: false }
                }
                Slot::SameAs { t, pos } => {
                    Accepted { id: first_ids[t] + pos as u64, received_at: now, duplicate: true }
                }
                Slot::Existing(r) => Accepted { id: r.event_id, received_at: r.received_at, duplicate: true },
            })
            .collect();
        let records = if i == last { share.take() } else { share.clone() };
        // The client may have gone away; the events are stored regardless.
        let _ = reply.send(Ok(Answer { accepted, _records: records }));
    }
}

/// Log records are cut at about this many payload bytes (a single larger event still gets one record).
/// A record is one index entry in sled and one frame in a segment; reading one event of it decodes only
/// that event, but reads the whole frame.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Appends each tenant's events as records of consecutive ids to the segments in one write (synced in
/// `fsync` mode), then puts their idempotency keys, their pointers and the indexed position in the
/// index, in that order ([`Ordered`]: not a sled batch, which costs a write of sled's log each). Returns
/// the records and, per tenant (in the order given), the id of its first event.
/// A group refused leaves nothing behind, not even for a replay after a restart ([`super::refuse`]).
fn write_group(
    store: &Store,
    ids: &IdGen,
    tenants: Vec<(u64, Vec<EventRecord>)>,
    now: u64,
    bytes: u64,
) -> Result<(Vec<CommittedRecord>, Vec<u64>), StoreError> {
    let space = &store.inner.space;
    super::refuse::admit(space, bytes)?;
    let mut keys_of_group = Ordered::default();
    let mut committed = Vec::with_capacity(tenants.len());
    let mut first_ids = Vec::with_capacity(tenants.len());
    for (tenant, events) in tenants {
        // Every tenant keeps its slot so that `first_ids[t]` lines up; an empty one writes nothing.
        let first_id = if events.is_empty() { 0 } else { ids.next_block(events.len() as u64) };
        first_ids.push(first_id);
        for (pos, ev) in events.iter().enumerate() {
            if let Some(key) = &ev.idempotency_key {
                let rec = IdempotencyRecord { event_id: first_id + pos as u64, received_at: now };
                keys_of_group
                    .insert(keys::tenant_named(keys::IDEMPOTENCY, tenant, key), records::encode(&rec)?);
            }
        }
        let mut next_id = first_id;
        let mut chunk: Vec<EventRecord> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut cut = |chunk: Vec<EventRecord>, committed: &mut Vec<CommittedRecord>| {
            let n = chunk.len() as u64;
            committed.push(CommittedRecord {
                tenant,
                first_id: next_id,
                record: Arc::new(LogRecord { events: chunk }),
            });
            next_id += n;
        };
        for ev in events {
            let size = ev.payload.len() + ev.event_type.len() + 32;
            if !chunk.is_empty() && chunk_bytes + size > MAX_RECORD_BYTES {
                cut(std::mem::take(&mut chunk), &mut committed);
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push(ev);
        }
        if !chunk.is_empty() {
            cut(chunk, &mut committed);
        }
    }
    let appends: Vec<Append<'_, _>> = committed
        .iter()
        .map(|c| Append { tenant: c.tenant, first_id: c.first_id, items: &c.record.events })
        .collect();
    let (pointers, written_up_to) = store.inner.segments.append(&appends).inspect_err(|e| space.noted(e))?;
    for (c, p) in committed.iter().zip(&pointers) {
        keys_of_group.insert(keys::two(keys::LOG, c.tenant, c.first_id), p.encode());
    }
    // Last: the position says that the keys before it are written (sled recovers a prefix).
    keys_of_group.insert(super::log::indexed_key(), super::log::encode_position(written_up_to));
    // Not flushed: the frames are the durable copy, and a crash replays them into the index.
    super::refuse::index_or_roll_back(
        &store.inner.segments,
        space,
        keys_of_group,
        &store.inner.log,
        pointers.first(),
    )?;
    store.inner.segments.add_refs(pointers.iter().map(|p| p.segment));
    Ok((committed, first_ids))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::Durability;
    use crate::store::StoreSettings;

    fn event(key: &str) -> PreparedEvent {
        PreparedEvent {
            event_type: "a".into(),
            channels: Vec::new(),
            payload: "{}".into(),
            idempotency_key: Some(key.into()),
            routes: Vec::new(),
        }
    }

    /// A committer over a fresh `fsync` store in `dir`, and a two-worker runtime to drive it.
    fn committer_in(
        dir: &std::path::Path,
        on_commit: OnCommit,
    ) -> (Committer, std::thread::JoinHandle<()>, tokio::runtime::Runtime) {
        let store = Store::open(&StoreSettings {
            data_dir: dir.to_path_buf(),
            durability: Durability::Fsync,
            cache_bytes: 8 << 20,
            master_key: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let (committer, thread) =
            Committer::spawn(store, Arc::new(IdGen::new(0)), on_commit).unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        (committer, thread, rt)
    }

    /// Awaits every task (their outputs in order), then stops the committer and joins its thread.
    fn finish<T: Send + 'static>(
        rt: &tokio::runtime::Runtime,
        committer: &Committer,
        thread: std::thread::JoinHandle<()>,
        tasks: Vec<tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let out = rt.block_on(async {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| panic!("{e}")));
            }
            committer.stop().await;
            out
        });
        thread.join().unwrap_or_else(|_| panic!("committer panicked"));
        out
    }

    /// Feeds `gather` groups of `events` taken every `every`, each commit taking `took`.
    fn steady(
        gather: &mut Gather,
        start: Instant,
        groups: u32,
        events: usize,
        every: Duration,
        took: Duration,
    ) {
        for i in 0..groups {
            gather.committed(events, start + every * i, took);
        }
    }

    #[test]
    fn a_group_is_held_back_only_while_events_arrive_fast() {
        let start = Instant::now();
        let took = Duration::from_micros(250);
        let mut gather = Gather::default();
        assert_eq!(gather.budget(1), Duration::ZERO, "nothing known yet: commit at once");
        // 1,000 events/s, one per group: a slice would rarely bring another, so none is held.
        steady(&mut gather, start, 50, 1, Duration::from_millis(1), took);
        assert_eq!(gather.budget(1), Duration::ZERO);
        // 60,000 events/s in groups of 15 every 250 µs: a small group is held, at most a commit's time.
        let mut gather = Gather::default();
        steady(&mut gather, start, 50, 15, Duration::from_micros(250), took);
        assert!(gather.rate > 50_000.0, "{gather:?}");
        assert_eq!(gather.budget(1), GATHER_MAX.min(took));
        assert_eq!(gather.budget(GATHER_EVENTS - 1), GATHER_MAX.min(took));
        assert_eq!(gather.budget(GATHER_EVENTS), Duration::ZERO, "large enough: commit at once");
        // Commits as fast as an unsynced write: never held longer than one takes.
        let fast = Duration::from_micros(20);
        steady(&mut gather, start + Duration::from_millis(20), 50, 15, Duration::from_micros(250), fast);
        assert!(gather.budget(1) <= Duration::from_micros(21), "{gather:?}");
        // The load stops: after a quiet second the next lone event is not held.
        let later = start + Duration::from_secs(1);
        steady(&mut gather, later, 10, 1, Duration::from_millis(100), took);
        assert_eq!(gather.budget(1), Duration::ZERO, "{gather:?}");
    }

    /// Many concurrent single-event requests, as under load: every one is answered with its own id
    /// whether its group was held back or not, and groups are formed (fewer commits than requests).
    #[test]
    fn concurrent_requests_are_each_answered_once_by_gathered_groups() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let groups = Arc::new(AtomicUsize::new(0));
        let counted = groups.clone();
        let on_commit: OnCommit = Box::new(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let (committer, thread, rt) = committer_in(dir.path(), on_commit);
        const CLIENTS: usize = 32;
        const EACH: usize = 50;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let committer = committer.clone();
                rt.spawn(async move {
                    let mut ids = Vec::with_capacity(EACH);
                    for i in 0..EACH {
                        let accepted = committer
                            .commit(1, vec![event(&format!("c{c}-{i}"))])
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert_eq!(accepted.len(), 1);
                        assert!(!accepted[0].duplicate);
                        ids.push(accepted[0].id);
                    }
                    ids
                })
            })
            .collect();
        let ids: Vec<u64> = finish(&rt, &committer, thread, tasks).into_iter().flatten().collect();
        let distinct: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), CLIENTS * EACH, "every event has its own id");
        let groups = groups.load(Ordering::Relaxed);
        assert!(groups < CLIENTS * EACH, "{groups} commits for {} requests", CLIENTS * EACH);
    }

    /// Requests reusing keys, spread over many groups (a key's next request usually comes while its
    /// first event is being synced): each key stores one event and every request gets its id. It
    /// caught a pipelined committer that checked keys only against the index (DECISIONS.md).
    #[test]
    fn a_key_reused_across_groups_is_answered_with_its_first_event() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let routed = Arc::new(AtomicUsize::new(0));
        let on_commit: OnCommit = Box::new({
            let routed = routed.clone();
            move |c: &[CommittedRecord]| {
                routed.fetch_add(c.iter().map(|c| c.record.events.len()).sum(), Ordering::Relaxed);
            }
        });
        let (committer, thread, rt) = committer_in(dir.path(), on_commit);
        // Four requests in a row share a key.
        const REQUESTS: usize = 400;
        const PER_KEY: usize = 4;
        let tasks: Vec<_> = (0..REQUESTS)
            .map(|i| {
                let committer = committer.clone();
                rt.spawn(async move {
                    // Spread over time so that requests with one key fall in different groups.
                    tokio::time::sleep(std::time::Duration::from_micros(50 * i as u64)).await;
                    let key = format!("k{}", i / PER_KEY);
                    let answer = committer.commit(1, vec![event(&key)]).await;
                    (key, answer.map_err(|e| e.to_string()))
                })
            })
            .collect();
        let answers = finish(&rt, &committer, thread, tasks);
        let mut by_key: HashMap<String, (HashSet<u64>, usize)> = HashMap::new();
        for (key, answer) in answers {
            let accepted = answer.unwrap_or_else(|e| panic!("{e}"));
            let entry = by_key.entry(key).or_default();
            entry.0.insert(accepted[0].id);
            entry.1 += usize::from(!accepted[0].duplicate);
        }
        for (key, (ids, originals)) in &by_key {
            assert_eq!(ids.len(), 1, "{key}: every request gets the one event's id: {ids:?}");
            assert_eq!(*originals, 1, "{key}: one original, the rest replays");
        }
        assert_eq!(routed.load(Ordering::Relaxed), REQUESTS / PER_KEY, "one event stored and routed per key");
    }
}
