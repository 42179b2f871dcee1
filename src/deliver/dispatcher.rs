//! The dispatcher: one task per endpoint, owning all of that endpoint's mutable delivery state.
//!
//! Work comes from three places, oldest first: retries that are due (the `Q` queue in the store), events
//! read back from the log while catching up, and events the router pushed into the feed. The task starts
//! up to `max_in_flight` attempts at once (one when `ordered`), each as its own tokio task, subject to the
//! endpoint's rate limit; whatever an attempt changes is written in one store batch when it completes,
//! together with the other attempts that finished meanwhile (they wait at most [`OUTCOME_LINGER`]).
//!
//! The cursor: every event routed here with an id up to the cursor has been handed off — succeeded at
//! its first attempt, or recorded as a delivery with its own state and retry schedule. It is the oldest
//! first attempt still in flight (or not yet started) minus one, persisted with the attempt outcomes, and
//! it is where the task resumes reading the log after a restart. Nothing before it is ever re-read; a
//! crash between an attempt and its write repeats the attempt (at-least-once).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::client::{HttpClient, OutboundRequest};
use super::due::DueQueue;
use super::feed::{Command, EventRef, Feed, ManualOutcome, Waiting};
use super::notify;
use super::request;
use super::retry::{self, Verdict};
use super::supervisor::Shared;
use crate::activity::attempts_finished;
use crate::ids::{EndpointId, EventId};
use crate::model::{
    AttemptRecord, DeliveryRecord, DeliveryState, EventRecord, RateLimit, RetryPolicy, Trigger,
};
use crate::registry::EndpointEntry;
use crate::store::{AttemptOutcomeWrite, DeliveryChange, StoreError};
use crate::time::format_ms;

/// Events read from the log per catch-up pass; bounds memory however far behind the endpoint is.
const CATCH_UP_CHUNK: usize = 512;
/// Retry-queue entries held in memory; the rest stay in the store, read in windows (see `due`).
const DUE_IN_MEMORY: usize = 4096;
/// An idle endpoint's cursor follows the log at most this often (one small write).
const IDLE_PERSIST_EVERY: Duration = Duration::from_secs(5);
/// Statistics are persisted at most this often (and at shutdown).
const STATS_PERSIST_EVERY: Duration = Duration::from_secs(60);
/// Finished attempts are recorded together: sled's cost is per write batch and per cursor update, and
/// an endpoint draining a backlog finishes attempts one or two at a time. They wait at most this long
/// (and at most [`OUTCOMES_PER_WRITE`] of them) before the write; until then a crash repeats them,
/// like any attempt whose outcome was not written yet.
const OUTCOME_LINGER: Duration = Duration::from_millis(2);
const OUTCOMES_PER_WRITE: usize = 64;

/// What an attempt is for.
#[derive(Debug)]
enum Job {
    /// The first attempt of a delivery: one event, or a batch (`batch_id` set) of several.
    First { events: Vec<u64>, batch_id: Option<u64> },
    /// A later attempt of a delivery whose retry came due.
    Retry { webhook_id: u64, due: u64, record: DeliveryRecord },
    /// A re-send a person asked for; the attempt goes back to them.
    Manual { webhook_id: u64, reply: tokio::sync::oneshot::Sender<ManualOutcome> },
}

/// A re-send waiting for its turn.
struct ManualRequest {
    webhook_id: u64,
    batch_id: Option<u64>,
    events: Vec<u64>,
    reply: tokio::sync::oneshot::Sender<ManualOutcome>,
}

/// A finished attempt.
struct Done {
    job: Job,
    attempt: AttemptRecord,
    verdict: Verdict,
    /// Every event it carried is an operational one (`hookd.…`).
    operational: bool,
}

/// What finishing one attempt leads to, besides the store write.
#[derive(Default)]
struct Consequences {
    /// The endpoint answered 410 Gone.
    gone: bool,
    /// The delivery used up its retry policy with this attempt.
    failed_for_good: Option<DeliveryRecord>,
    reply: Option<tokio::sync::oneshot::Sender<ManualOutcome>>,
}

pub struct Dispatcher {
    shared: Arc<Shared>,
    endpoint: u64,
    tenant: u64,
    feed: Arc<Feed>,
    in_flight: JoinSet<Done>,
    /// Finished attempts not recorded yet (see [`OUTCOME_LINGER`]), and when the oldest finished.
    unwritten: Vec<Done>,
    unwritten_since: Option<Instant>,
    /// First attempts in flight, by event id.
    pending: BTreeSet<u64>,
    /// Events read from the log during catch-up, not started yet.
    backlog: VecDeque<EventRef>,
    /// The highest event id read from the feed or the log.
    read_pos: u64,
    cursor: u64,
    persisted_cursor: u64,
    last_persist: Instant,
    /// The retry queue's window in memory, as (due ms on the scheduling clock, webhook id).
    due: DueQueue,
    /// Webhook ids whose retry is in flight.
    retrying: HashSet<u64>,
    limiter: Option<(RateLimit, DefaultDirectRateLimiter)>,
    rate_wait: Option<Instant>,
    /// Batch endpoints: events gathered for the next batch (already in `pending`), and when the first
    /// of them was taken (the batch goes out `max_wait_ms` after it, or when full).
    open_batch: Vec<EventRef>,
    open_since: Option<Instant>,
    /// Re-sends asked for, oldest first.
    manual: VecDeque<ManualRequest>,
    stats_dirty: bool,
    stats_persisted: Instant,
}

impl Dispatcher {
    pub fn new(shared: Arc<Shared>, endpoint: u64, tenant: u64, feed: Arc<Feed>, cursor: u64) -> Dispatcher {
        Dispatcher {
            shared,
            endpoint,
            tenant,
            feed,
            in_flight: JoinSet::new(),
            unwritten: Vec::new(),
            unwritten_since: None,
            pending: BTreeSet::new(),
            backlog: VecDeque::new(),
            read_pos: cursor,
            cursor,
            persisted_cursor: cursor,
            last_persist: Instant::now(),
            due: DueQueue::new(DUE_IN_MEMORY),
            retrying: HashSet::new(),
            limiter: None,
            rate_wait: None,
            open_batch: Vec::new(),
            open_since: None,
            manual: VecDeque::new(),
            stats_dirty: false,
            stats_persisted: Instant::now(),
        }
    }

    /// Runs until the endpoint is deleted, or until shutdown and the attempts in hand are finished.
    pub async fn run(mut self) {
        let mut changes = self.shared.registry.subscribe();
        // Only idle bookkeeping runs on this tick; spread over endpoints so that thousands of idle
        // dispatchers do not wake together.
        let period = IDLE_PERSIST_EVERY;
        let offset = Duration::from_millis(self.endpoint % period.as_millis().max(1) as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // A feed starts behind the log, from the cursor. Read up to the log's end now rather than at the
        // first tick: for an endpoint just created disabled on a busy tenant, the tick came up to 5 s
        // later and then scanned every event committed meanwhile (the load bench's fan-out phase spent
        // a quarter of the daemon's CPU there, 100 new endpoints each scanning ~100k events).
        self.read_ahead();
        // The entry of the previous pass: the outcomes still unwritten when the endpoint is deleted are
        // recorded with it.
        let mut previous: Option<Arc<EndpointEntry>> = None;
        loop {
            let snapshot = self.shared.registry.snapshot();
            let Some(entry) = snapshot.tenant_endpoint(self.tenant, self.endpoint).cloned() else {
                if let Some(entry) = &previous {
                    self.write_outcomes(entry);
                }
                tracing::debug!(endpoint = %EndpointId(self.endpoint), "endpoint deleted; dispatcher stops");
                return;
            };
            let stopping = self.shared.shutdown.is_cancelled();
            let active = entry.record.enabled && !stopping;
            if !self.unwritten.is_empty() && (!active || self.outcomes_due()) {
                self.write_outcomes(&entry);
            }
            if stopping && self.in_flight.is_empty() {
                break;
            }
            self.take_commands(&entry, stopping);
            // A disk full past its ballast: no attempt starts (each writes bookkeeping sled must not
            // meet a full disk with) until the space watcher finds room (see `store::space`).
            let paused = self.shared.store.space().deliveries_paused();
            if active && !paused {
                self.fill(&entry);
            }
            self.publish_waiting();
            let wake_at = match (active, paused) {
                (true, false) => self.next_wake(&entry),
                (true, true) => Some(Instant::now() + crate::store::space::PAUSED_RECHECK),
                (false, _) => None,
            };
            tokio::select! {
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    // Every attempt that has finished by now joins the outcomes to record; they are
                    // written in one store write at the top of a pass (see `outcomes_due`).
                    let mut next = Some(joined);
                    while let Some(joined) = next {
                        match joined {
                            Ok(done) => self.unwritten.push(done),
                            Err(e) => {
                                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "attempt task failed")
                            }
                        }
                        next = self.in_flight.try_join_next();
                    }
                    if !self.unwritten.is_empty() {
                        self.unwritten_since.get_or_insert_with(Instant::now);
                    }
                }
                () = self.feed.notified() => {}
                _ = changes.changed() => {}
                () = sleep_until(wake_at), if wake_at.is_some() => {}
                () = self.shared.shutdown.cancelled(), if !stopping => {}
                _ = tick.tick() => self.on_tick(),
            }
            previous = Some(entry);
        }
        self.advance_cursor();
        self.persist_cursor();
        self.persist_stats();
        for m in self.manual.drain(..) {
            let _ = m.reply.send(Err("hookd is shutting down".into()));
        }
    }

    /// Takes the commands people sent: re-sends wait their turn in `fill`; recovers run now.
    fn take_commands(&mut self, entry: &EndpointEntry, stopping: bool) {
        for command in self.feed.take_commands() {
            match command {
                Command::Resend { reply, .. } if stopping => {
                    let _ = reply.send(Err("hookd is shutting down".into()));
                }
                Command::Resend { reply, .. } if !entry.record.enabled => {
                    let _ = reply.send(Err("the endpoint is disabled".into()));
                }
                Command::Resend { webhook_id, batch_id, events, reply } => {
                    self.manual.push_back(ManualRequest { webhook_id, batch_id, events, reply });
                }
                Command::Recover { lo, hi, reply } => {
                    // A large recovery reads and writes for a while: let the runtime move other tasks
                    // off this thread meanwhile.
                    let result = if tokio::runtime::Handle::current().runtime_flavor()
                        == tokio::runtime::RuntimeFlavor::MultiThread
                    {
                        tokio::task::block_in_place(|| self.recover(lo, hi))
                    } else {
                        self.recover(lo, hi)
                    };
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            }
        }
    }

    /// Puts every failed delivery with a webhook id in `lo..=hi` back in the retry queue, due now; each
    /// gets one more attempt (`trigger: manual`), and fails for good again if that fails.
    fn recover(&mut self, mut lo: u64, hi: u64) -> Result<usize, StoreError> {
        const CHUNK: usize = 1000;
        let now = crate::time::now_ms();
        let due = crate::time::clock_ms();
        let mut total = 0;
        while lo <= hi {
            let mut chunk = self.shared.store.failed_deliveries(self.endpoint, lo, hi, CHUNK)?;
            let Some(last) = chunk.last().map(|(w, _)| *w) else { break };
            for (_, record) in &mut chunk {
                record.state = DeliveryState::Pending;
                record.next_attempt_at = Some(due);
                record.updated_at = now;
                record.manual = true;
            }
            self.shared.store.requeue(self.endpoint, due, &chunk)?;
            for (webhook_id, _) in &chunk {
                self.queue_due(due, *webhook_id);
            }
            total += chunk.len();
            if chunk.len() < CHUNK {
                break;
            }
            lo = last.saturating_add(1);
        }
        if total > 0 {
            tracing::info!(endpoint = %EndpointId(self.endpoint), deliveries = total, "failed deliveries re-queued");
        }
        Ok(total)
    }

    /// Notes a retry-queue entry in memory (the store has it).
    fn queue_due(&mut self, due: u64, webhook_id: u64) {
        self.due.insert((due, webhook_id));
    }

    /// Publishes what waits for a first attempt, for the stats API.
    fn publish_waiting(&self) {
        let (queued, front) = self.feed.queued();
        let lag = self.feed.lag_from();
        let oldest = [self.pending.first().copied(), self.backlog.front().map(|e| e.id), front, lag]
            .into_iter()
            .flatten()
            .min();
        self.feed.set_waiting(Waiting {
            first_attempts: (self.pending.len() + self.backlog.len() + queued) as u64,
            oldest_event: oldest,
            lagging: lag.is_some(),
            retries: (self.due.in_memory() + self.retrying.len()) as u64,
            retries_more: self.due.more_in_store(),
            first_retry: self.due.first().map(|(_, w)| w),
        });
    }

    /// Starts attempts until the endpoint's concurrency is used up or nothing is ready. A rate-limit
    /// token is taken only for a request that is about to be sent.
    fn fill(&mut self, entry: &EndpointEntry) {
        let ordered = entry.record.ordered;
        let max = if ordered { 1 } else { entry.record.max_in_flight.max(1) as usize };
        let now = crate::time::clock_ms();
        while self.in_flight.len() < max {
            // A re-send of a delivery whose retry is in flight waits for that retry to finish.
            if self.manual.front().is_some_and(|m| !self.retrying.contains(&m.webhook_id)) {
                if !self.permit(entry) {
                    return;
                }
                if let Some(m) = self.manual.pop_front() {
                    self.start_manual(entry, m);
                }
                continue;
            }
            if self.due.needs_reload() {
                self.reload_due();
            }
            if self.due.first().is_some_and(|(due, _)| due <= now) {
                if !self.permit(entry) {
                    return;
                }
                if let Some((due, webhook_id)) = self.due.pop_first() {
                    self.start_retry(entry, due, webhook_id);
                }
                continue;
            }
            // Ordered: while a delivery waits for its retry, nothing behind it may start.
            if ordered && (self.due.first().is_some() || !self.retrying.is_empty()) {
                return;
            }
            match entry.record.batch {
                Some(batch) => {
                    if !self.batch_ready(batch.max_events as usize, batch.max_wait_ms) || !self.permit(entry)
                    {
                        return;
                    }
                    self.start_batch(entry);
                }
                // The endpoint stopped batching: what was gathered goes out as the batch it became.
                None if !self.open_batch.is_empty() => {
                    if !self.permit(entry) {
                        return;
                    }
                    self.start_batch(entry);
                }
                None => {
                    if (self.backlog.is_empty() && !self.feed.has_work()) || !self.permit(entry) {
                        return;
                    }
                    match self.next_event() {
                        Some(ev) => self.start_first(entry, ev),
                        None => return, // the log read found nothing for this endpoint
                    }
                }
            }
        }
    }

    /// Tops up the open batch; is it full, or has its first event waited `max_wait_ms`?
    fn batch_ready(&mut self, max_events: usize, max_wait_ms: u64) -> bool {
        while self.open_batch.len() < max_events {
            let Some(ev) = self.next_event() else { break };
            self.pending.insert(ev.id);
            self.open_since.get_or_insert_with(Instant::now);
            self.open_batch.push(ev);
        }
        let full = self.open_batch.len() >= max_events;
        let old = self.open_since.is_some_and(|t| t.elapsed() >= Duration::from_millis(max_wait_ms));
        !self.open_batch.is_empty() && (full || old)
    }

    /// Sends the open batch as one request, under a new `bat_…` id.
    fn start_batch(&mut self, entry: &EndpointEntry) {
        let capacity = entry.record.batch.map_or(0, |b| b.max_events as usize);
        let batch = std::mem::replace(&mut self.open_batch, Vec::with_capacity(capacity));
        self.open_since = None;
        let batch_id = self.shared.ids.next();
        let ids: Vec<u64> = batch.iter().map(|e| e.id).collect();
        let events: Vec<(u64, &EventRecord)> = batch.iter().map(|e| (e.id, e.event())).collect();
        self.spawn(
            entry,
            Job::First { events: ids, batch_id: Some(batch_id) },
            &events,
            1,
            Trigger::Scheduled,
        );
    }

    /// The next event for a first attempt: the catch-up backlog, then the feed, then the log.
    fn next_event(&mut self) -> Option<EventRef> {
        if let Some(ev) = self.backlog.pop_front() {
            return Some(ev);
        }
        while let Some(ev) = self.feed.pop() {
            // A log read can reach a record the router has not pushed yet; when the router then pushes
            // it, those events were already read. Ids only grow, so anything at or below what was read
            // is such a repeat.
            if ev.id <= self.read_pos {
                continue;
            }
            self.read_pos = ev.id;
            return Some(ev);
        }
        let from = self.feed.lag_from()?;
        self.read_log(from);
        self.backlog.pop_front()
    }

    /// Reads the log from `from` into the backlog (a bounded chunk), then tells the feed how far it got.
    fn read_log(&mut self, from: u64) {
        // Every event up to `head` was in the log before this read began (the router publishes it
        // after the write): a read that reaches the end of the tenant's log has covered all of them,
        // whichever tenant the latest ones belong to.
        let head = self.shared.committed_upto.load(Ordering::Acquire);
        let mut scanned_to = from.saturating_sub(1);
        let mut exhausted = true;
        for item in self.shared.store.records_from(self.tenant, from) {
            let (first, record) = match item {
                Ok(r) => r,
                Err(StoreError::Damaged(d)) => {
                    let last = super::damaged::skip(&self.shared, self.tenant, self.endpoint, &d);
                    scanned_to = scanned_to.max(last);
                    continue; // never retried: see `damaged`
                }
                Err(e) => {
                    tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot read the log");
                    exhausted = false; // lagging from past what was read: never hand it out again
                    break;
                }
            };
            let record = Arc::new(record);
            for (index, ev) in record.events.iter().enumerate() {
                let id = first + index as u64;
                if id < from {
                    continue;
                }
                scanned_to = id;
                if ev.routes.contains(&self.endpoint) {
                    self.backlog.push_back(EventRef { id, record: record.clone(), index });
                }
            }
            if self.backlog.len() >= CATCH_UP_CHUNK {
                exhausted = false;
                break;
            }
        }
        if exhausted {
            scanned_to = scanned_to.max(head);
        }
        self.read_pos = self.read_pos.max(scanned_to);
        self.feed.catch_up_done(scanned_to);
    }

    /// Reads the retry queue's next window; retries in flight keep their store keys until their outcome
    /// is written, and are skipped.
    fn reload_due(&mut self) {
        let (store, endpoint, retrying) = (&self.shared.store, self.endpoint, &self.retrying);
        let read = |from, limit| store.due_from(endpoint, from, limit);
        if let Err(e) = self.due.reload(read, |(_, w)| !retrying.contains(w)) {
            tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot read the retry queue")
        }
    }

    /// Takes a token from the endpoint's rate limiter; when there is none, notes when to try again.
    fn permit(&mut self, entry: &EndpointEntry) -> bool {
        let Some(rl) = entry.record.rate_limit else {
            self.limiter = None;
            return true;
        };
        if self.limiter.as_ref().is_none_or(|(cfg, _)| *cfg != rl) {
            let (Some(rate), Some(burst)) =
                (NonZeroU32::new(rl.per_second), NonZeroU32::new(rl.burst.max(1)))
            else {
                return true; // validated at creation: per_second >= 1
            };
            self.limiter = Some((rl, RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))));
        }
        let Some((_, limiter)) = &self.limiter else { return true };
        match limiter.check() {
            Ok(()) => {
                self.rate_wait = None;
                true
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.rate_wait = Some(Instant::now() + wait);
                crate::metrics::rate_limited(wait);
                false
            }
        }
    }

    fn start_first(&mut self, entry: &EndpointEntry, ev: EventRef) {
        self.pending.insert(ev.id);
        let event = ev.event();
        let job = Job::First { events: vec![ev.id], batch_id: None };
        self.spawn(entry, job, &[(ev.id, event)], 1, Trigger::Scheduled);
    }

    fn start_manual(&mut self, entry: &EndpointEntry, m: ManualRequest) {
        let store = &self.shared.store;
        let mut events: Vec<(u64, EventRecord)> = Vec::with_capacity(m.events.len());
        for id in &m.events {
            match store.event(self.tenant, *id) {
                Ok(Some(ev)) => events.push((*id, ev)),
                Ok(None) => {}
                Err(e) => {
                    let _ = m.reply.send(Err(format!("cannot read an event: {e}")));
                    return;
                }
            }
        }
        if events.is_empty() {
            let _ = m.reply.send(Err("its events were purged by retention".into()));
            return;
        }
        let attempt_number = match store.attempt_count(self.tenant, m.webhook_id, self.endpoint) {
            Ok(n) => n as u32 + 1,
            Err(e) => {
                let _ = m.reply.send(Err(format!("cannot read the history: {e}")));
                return;
            }
        };
        let refs: Vec<(u64, &EventRecord)> = events.iter().map(|(id, e)| (*id, e)).collect();
        let job = Job::Manual { webhook_id: m.webhook_id, reply: m.reply };
        self.spawn_with(entry, job, m.batch_id, &refs, attempt_number, Trigger::Manual);
    }

    fn start_retry(&mut self, entry: &EndpointEntry, due: u64, webhook_id: u64) {
        let store = &self.shared.store;
        let mut record = match store.delivery(self.endpoint, webhook_id) {
            Ok(Some(r)) if r.state == DeliveryState::Pending => r,
            Ok(_) => {
                // A stale queue entry (the delivery was finished another way): drop it.
                if let Err(e) = store.drop_due(self.endpoint, due, webhook_id) {
                    tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot drop a queue entry");
                }
                return;
            }
            Err(e) => {
                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot read a delivery");
                return;
            }
        };
        let mut events: Vec<(u64, EventRecord)> = Vec::with_capacity(record.events.len());
        let mut damaged = Vec::new();
        for id in &record.events {
            match store.event(self.tenant, *id) {
                Ok(Some(ev)) => events.push((*id, ev)),
                Ok(None) => {}
                // Its bytes will not change: reported once as a failed delivery, and left out of this
                // delivery for good (the record written with the attempt's outcome no longer lists it).
                Err(StoreError::Damaged(d)) => {
                    super::damaged::skip(&self.shared, self.tenant, self.endpoint, &d);
                    damaged.push(*id);
                }
                Err(e) => {
                    tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot read an event");
                    return;
                }
            }
        }
        if events.is_empty() {
            let result = if damaged.is_empty() {
                // Its events are gone (retention): nothing left to deliver.
                store.drop_due(self.endpoint, due, webhook_id)
            } else {
                super::damaged::fail_delivery(
                    &self.shared,
                    self.tenant,
                    entry,
                    (webhook_id, due),
                    record,
                    damaged,
                )
            };
            if let Err(e) = result {
                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot settle a delivery");
            }
            return;
        }
        record.events.retain(|id| !damaged.contains(id));
        self.retrying.insert(webhook_id);
        let attempt_number = record.attempts + 1;
        let trigger = if record.manual { Trigger::Manual } else { Trigger::Retry };
        let refs: Vec<(u64, &EventRecord)> = events.iter().map(|(id, e)| (*id, e)).collect();
        self.spawn(entry, Job::Retry { webhook_id, due, record }, &refs, attempt_number, trigger);
    }

    fn spawn(
        &mut self,
        entry: &EndpointEntry,
        job: Job,
        events: &[(u64, &EventRecord)],
        attempt_number: u32,
        trigger: Trigger,
    ) {
        let batch_id = match &job {
            Job::First { batch_id, .. } => *batch_id,
            Job::Retry { record, .. } => record.batch_id,
            Job::Manual { .. } => None,
        };
        self.spawn_with(entry, job, batch_id, events, attempt_number, trigger);
    }

    fn spawn_with(
        &mut self,
        entry: &EndpointEntry,
        job: Job,
        batch_id: Option<u64>,
        events: &[(u64, &EventRecord)],
        attempt_number: u32,
        trigger: Trigger,
    ) {
        let now = crate::time::now_ms();
        let webhook_id = match &job {
            Job::First { events, batch_id } => batch_id.or(events.first().copied()).unwrap_or(0),
            Job::Retry { webhook_id, .. } | Job::Manual { webhook_id, .. } => *webhook_id,
        };
        let operational = events.iter().all(|(_, e)| e.event_type.starts_with(notify::PREFIX));
        let (attempt, req) = prepare_attempt(
            entry,
            webhook_id,
            batch_id,
            events,
            &self.shared.user_agent,
            attempt_number,
            trigger,
            now,
        );
        let client = self.shared.client.clone();
        // One span per attempt, at debug level like the line it carries: the client's and the
        // classifier's logs say which delivery they are about. (Its attempt id is taken when it is
        // recorded: see `finish`.) At `info` nothing is logged within an attempt, and the span would
        // only cost its formatting per attempt.
        let span = tracing::debug_span!(
            "attempt",
            endpoint = %EndpointId(self.endpoint),
            webhook_id = %webhook_text(webhook_id, batch_id),
            number = attempt_number,
            trigger = ?trigger,
        );
        self.in_flight.spawn(
            async move {
                let (attempt, verdict) = send(client, req, attempt).await;
                tracing::debug!(
                    status = attempt.status_code,
                    error_class = attempt.error_class.as_deref(),
                    duration_ms = attempt.duration_ms,
                    "attempt finished"
                );
                Done { job, attempt, verdict, operational }
            }
            .instrument(span),
        );
    }

    /// Should the finished attempts be recorded now? When enough have gathered, when nothing else is in
    /// flight (no more will join soon), when the oldest has waited [`OUTCOME_LINGER`], or when a person
    /// waits for one (a re-send).
    fn outcomes_due(&self) -> bool {
        self.unwritten.len() >= OUTCOMES_PER_WRITE
            || self.in_flight.is_empty()
            || self.unwritten_since.is_none_or(|t| t.elapsed() >= OUTCOME_LINGER)
            || self.unwritten.iter().any(|d| matches!(d.job, Job::Manual { .. }))
    }

    /// Records the finished attempts gathered so far (see [`Dispatcher::finish`]).
    fn write_outcomes(&mut self, entry: &EndpointEntry) {
        self.unwritten_since = None;
        let finished = std::mem::take(&mut self.unwritten);
        if !finished.is_empty() {
            self.finish(finished, entry);
        }
    }

    /// Records finished attempts and decides what comes next for each delivery, in one store write;
    /// then answers re-sends, updates the statistics, and disables or notifies as they call for.
    ///
    /// The attempts get their ids here, one block for all of them: consecutive ids let the store keep
    /// them as one run (one frame, two index keys), and an attempt's id is when it was recorded.
    fn finish(&mut self, finished: Vec<Done>, entry: &EndpointEntry) {
        let now = crate::time::now_ms();
        let policy = entry.record.retry;
        let first_id = self.shared.ids.next_block(finished.len() as u64);
        let mut outcomes = Vec::with_capacity(finished.len());
        let mut after = Vec::with_capacity(finished.len());
        for (attempt_id, done) in (first_id..).zip(finished) {
            let (change, consequences) =
                self.outcome(done.job, &done.verdict, attempt_id, &done.attempt, &policy, now);
            outcomes.push((attempt_id, done.attempt, change));
            after.push((consequences, done.operational));
        }
        let moved = self.advance_cursor();
        let last = outcomes.len().saturating_sub(1);
        let writes: Vec<AttemptOutcomeWrite<'_>> = outcomes
            .iter()
            .enumerate()
            .map(|(i, (attempt_id, attempt, change))| AttemptOutcomeWrite {
                tenant: self.tenant,
                endpoint: self.endpoint,
                attempt_id: *attempt_id,
                attempt,
                delivery: change,
                cursor: (moved && i == last).then_some(self.cursor),
            })
            .collect();
        let written = self.shared.store.write_attempt_outcomes(&writes);
        match &written {
            Ok(()) => {
                if moved {
                    self.persisted_cursor = self.cursor;
                    self.last_persist = Instant::now();
                }
            }
            Err(e) => {
                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot record attempts");
                // The queue keys of the write are not in the store: read the queue again from it.
                self.due.forget();
            }
        }
        // Live activity: every outcome, as recorded.
        attempts_finished(&self.shared.activity, self.tenant, outcomes.iter().map(|(id, a, _)| (*id, a)));
        let mut disable = None;
        for ((attempt_id, attempt, _), (consequences, operational)) in outcomes.into_iter().zip(after) {
            if consequences.gone {
                disable = Some("the endpoint answered 410 Gone".to_owned());
            }
            self.account(entry, &attempt, &mut disable);
            if let Some(record) = &consequences.failed_for_good
                && !operational
            {
                self.notify_failed(entry, attempt_id, &attempt, record);
            }
            if let Some(reply) = consequences.reply {
                let answer = match &written {
                    Ok(()) => Ok((attempt_id, attempt)),
                    Err(e) => Err(format!("the attempt was made but could not be recorded: {e}")),
                };
                let _ = reply.send(answer);
            }
        }
        if let Some(reason) = disable {
            self.disable(entry, &reason);
        }
    }

    /// Counts an attempt in the endpoint's statistics; notes when the endpoint has failed long enough
    /// to be disabled, and notifies its recovery.
    fn account(&mut self, entry: &EndpointEntry, attempt: &AttemptRecord, disable: &mut Option<String>) {
        if entry.record.metrics {
            let elapsed = Duration::from_millis(attempt.duration_ms);
            crate::metrics::endpoint_attempt(
                EndpointId(self.endpoint).to_string(),
                attempt.succeeded,
                elapsed,
            );
        }
        let recovered = {
            let mut stats = super::feed::lock(&self.feed.stats);
            let was_failing_since = stats.failing_since;
            super::stats::record(&mut stats, attempt.sent_at, attempt.succeeded, attempt.duration_ms);
            if let Some(since) = stats.failing_since
                && disable.is_none()
            {
                // The tenant's own setting, else the daemon's (read only while failing).
                let limit = self
                    .shared
                    .registry
                    .snapshot()
                    .tenant_by_serial(self.tenant)
                    .and_then(|t| t.disable_after_ms)
                    .unwrap_or(self.shared.disable_after_ms);
                if limit > 0 && crate::time::now_ms().saturating_sub(since) >= limit {
                    *disable = Some(format!(
                        "every attempt failed since {} (disable_after: {})",
                        format_ms(since),
                        crate::config::HumanDuration(Duration::from_millis(limit))
                    ));
                }
            }
            let recovered = attempt.succeeded && stats.failure_notified;
            if recovered {
                stats.failure_notified = false;
            }
            recovered.then_some(was_failing_since)
        };
        self.stats_dirty = true;
        if let Some(failing_since) = recovered {
            self.emit(
                notify::ENDPOINT_RECOVERED,
                serde_json::json!({
                    "endpoint_id": EndpointId(self.endpoint),
                    "endpoint_name": entry.record.name,
                    "url": entry.record.url,
                    "failing_since": failing_since.map(format_ms),
                    "recovered_at": format_ms(attempt.sent_at),
                }),
            );
        }
    }

    fn notify_failed(
        &mut self,
        entry: &EndpointEntry,
        attempt_id: u64,
        attempt: &AttemptRecord,
        d: &DeliveryRecord,
    ) {
        self.emit(
            notify::DELIVERY_FAILED,
            serde_json::json!({
                "endpoint_id": EndpointId(self.endpoint),
                "endpoint_name": entry.record.name,
                "url": entry.record.url,
                "webhook_id": webhook_text(attempt.webhook_id, d.batch_id),
                "event_ids": d.events.iter().map(|e| EventId(*e)).collect::<Vec<_>>(),
                "attempts": d.attempts,
                "last_attempt_id": crate::ids::AttemptId(attempt_id),
                "last_status_code": attempt.status_code,
                "last_error": attempt.error,
                "failed_at": format_ms(d.updated_at),
            }),
        );
        super::feed::lock(&self.feed.stats).failure_notified = true;
    }

    fn emit(&self, event_type: &'static str, payload: serde_json::Value) {
        match self.shared.notifier.get() {
            Some(n) => n.emit(self.tenant, event_type, self.endpoint, &payload),
            None => tracing::warn!(event_type, "no notifier: operational event dropped"),
        }
    }

    /// What one finished attempt changes for its delivery, and what follows from it.
    fn outcome(
        &mut self,
        job: Job,
        verdict: &Verdict,
        attempt_id: u64,
        attempt: &AttemptRecord,
        policy: &RetryPolicy,
        now: u64,
    ) -> (DeliveryChange, Consequences) {
        let (succeeded, retry_after, gone) = match verdict {
            Verdict::Success => (true, None, false),
            Verdict::Retry { retry_after, .. } => (false, *retry_after, false),
            Verdict::RetryAndDisable { .. } => (false, None, true),
        };
        crate::metrics::attempt(succeeded, attempt.status_code, Duration::from_millis(attempt.duration_ms));
        let mut consequences = Consequences { gone, ..Consequences::default() };
        let change = match job {
            Job::First { events, batch_id } => {
                for e in &events {
                    self.pending.remove(e);
                }
                let webhook_id = batch_id.or(events.first().copied()).unwrap_or(0);
                if succeeded {
                    DeliveryChange::Unchanged
                } else {
                    let record = DeliveryRecord {
                        events,
                        batch_id,
                        state: DeliveryState::Pending,
                        attempts: 0,
                        next_attempt_at: None,
                        last_attempt_id: None,
                        created_at: now,
                        updated_at: now,
                        manual: false,
                    };
                    self.next_step(record, webhook_id, None, attempt_id, policy, false, retry_after, now)
                }
            }
            Job::Retry { webhook_id, due, record } => {
                self.retrying.remove(&webhook_id);
                self.next_step(record, webhook_id, Some(due), attempt_id, policy, succeeded, retry_after, now)
            }
            Job::Manual { webhook_id, reply } => {
                consequences.reply = Some(reply);
                self.manual_outcome(webhook_id, attempt_id, succeeded, now)
            }
        };
        if let DeliveryChange::Put { record, .. } = &change
            && record.state == DeliveryState::Failed
            && attempt.trigger != Trigger::Manual
        {
            consequences.failed_for_good = Some(record.clone());
        }
        (change, consequences)
    }

    /// A re-send that succeeded settles its delivery (a pending retry is cancelled); one that failed
    /// changes nothing but the count (the delivery keeps its own schedule).
    fn manual_outcome(
        &mut self,
        webhook_id: u64,
        attempt_id: u64,
        succeeded: bool,
        now: u64,
    ) -> DeliveryChange {
        // A retry of the same delivery started meanwhile writes its own outcome: leave the record to it.
        if self.retrying.contains(&webhook_id) {
            return DeliveryChange::Unchanged;
        }
        let mut record = match self.shared.store.delivery(self.endpoint, webhook_id) {
            Ok(Some(r)) => r,
            Ok(None) => return DeliveryChange::Unchanged, // it succeeded at its first attempt
            Err(e) => {
                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot read a delivery");
                return DeliveryChange::Unchanged;
            }
        };
        record.attempts += 1;
        record.last_attempt_id = Some(attempt_id);
        record.updated_at = now;
        let mut old_due = None;
        if succeeded && record.state != DeliveryState::Succeeded {
            if record.state == DeliveryState::Pending
                && let Some(due) = record.next_attempt_at
            {
                self.due.remove(&(due, webhook_id));
                old_due = Some(due);
            }
            record.state = DeliveryState::Succeeded;
            record.next_attempt_at = None;
            record.manual = false;
        }
        DeliveryChange::Put { webhook_id, record, old_due, new_due: None }
    }

    /// The delivery's state after an attempt: succeeded, retry at a time, or failed for good.
    #[allow(clippy::too_many_arguments)]
    fn next_step(
        &mut self,
        mut record: DeliveryRecord,
        webhook_id: u64,
        old_due: Option<u64>,
        attempt_id: u64,
        policy: &RetryPolicy,
        succeeded: bool,
        retry_after: Option<Duration>,
        now: u64,
    ) -> DeliveryChange {
        record.attempts += 1;
        record.last_attempt_id = Some(attempt_id);
        record.updated_at = now;
        record.next_attempt_at = None;
        record.manual = false;
        let mut new_due = None;
        if succeeded {
            record.state = DeliveryState::Succeeded;
        } else if let Some(delay) = retry::next_delay(policy, record.attempts, retry_after, &mut rand::rng())
        {
            // Due on the scheduling clock, which a step of the wall clock does not move.
            let due = crate::time::clock_ms().saturating_add(delay.as_millis() as u64);
            record.state = DeliveryState::Pending;
            record.next_attempt_at = Some(due);
            new_due = Some(due);
            self.queue_due(due, webhook_id);
            crate::metrics::retry_scheduled();
        } else {
            record.state = DeliveryState::Failed;
            crate::metrics::delivery_failed();
        }
        DeliveryChange::Put { webhook_id, record, old_due, new_due }
    }

    /// Moves the cursor up to just before the oldest event not handed off. Returns whether it moved.
    fn advance_cursor(&mut self) -> bool {
        let mut low = self.read_pos;
        if let Some(&p) = self.pending.first() {
            low = low.min(p.saturating_sub(1));
        }
        if let Some(b) = self.backlog.front() {
            low = low.min(b.id.saturating_sub(1));
        }
        if low > self.cursor {
            self.cursor = low;
            self.feed.cursor.store(low, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// Every few seconds: an idle endpoint's cursor follows the log, so a restart does not re-read what
    /// other endpoints got meanwhile.
    fn on_tick(&mut self) {
        self.read_ahead();
        // Read the routed mark before looking at the feed: everything up to it was pushed already.
        let routed = self.shared.routed_upto.load(Ordering::Acquire);
        if self.pending.is_empty() && self.backlog.is_empty() && !self.feed.has_work() {
            self.read_pos = self.read_pos.max(routed);
        }
        self.advance_cursor();
        if self.cursor > self.persisted_cursor && self.last_persist.elapsed() >= IDLE_PERSIST_EVERY {
            self.persist_cursor();
        }
        if self.stats_persisted.elapsed() >= STATS_PERSIST_EVERY {
            self.persist_stats();
        }
    }

    /// Behind the log with nothing read ahead (typically a disabled endpoint, which starts no attempts
    /// and so never reads): reads ahead into the bounded backlog, sending nothing, so that the cursor
    /// moves up to just before the first event this endpoint still needs. Otherwise a disabled endpoint
    /// would hold its tenant's log from where it was disabled, even when none of the later events are
    /// for it, and retention could purge none of them.
    fn read_ahead(&mut self) {
        if self.backlog.is_empty()
            && let Some(from) = self.feed.lag_from()
        {
            self.read_log(from);
        }
    }

    fn persist_stats(&mut self) {
        if !self.stats_dirty {
            return;
        }
        let stats = self.feed.stats_snapshot();
        match self.shared.store.put_endpoint_stats(self.endpoint, &stats) {
            Ok(()) => {
                self.stats_dirty = false;
                self.stats_persisted = Instant::now();
            }
            Err(e) => {
                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot persist the statistics")
            }
        }
    }

    fn persist_cursor(&mut self) {
        if self.cursor <= self.persisted_cursor {
            return;
        }
        match self.shared.store.put_cursor(self.endpoint, self.cursor) {
            Ok(()) => {
                self.persisted_cursor = self.cursor;
                self.last_persist = Instant::now();
            }
            Err(e) => {
                tracing::error!(endpoint = %EndpointId(self.endpoint), error = %e, "cannot persist the cursor")
            }
        }
    }

    /// When to wake without any other signal: a retry coming due, or the rate limiter refilling.
    fn next_wake(&self, entry: &EndpointEntry) -> Option<Instant> {
        let now_ms = crate::time::clock_ms();
        let due = self
            .due
            .first()
            .map(|(due, _)| Instant::now() + Duration::from_millis(due.saturating_sub(now_ms)));
        let batch_ready = match (self.open_since, entry.record.batch) {
            (Some(since), Some(b)) => Some(since + Duration::from_millis(b.max_wait_ms)),
            _ => None,
        };
        let record_outcomes = self.unwritten_since.map(|t| t + OUTCOME_LINGER);
        [due, self.rate_wait, batch_ready, record_outcomes].into_iter().flatten().min()
    }

    /// Disables the endpoint and tells the tenant. Its deliveries are kept: they resume when it is
    /// enabled again.
    fn disable(&mut self, entry: &EndpointEntry, reason: &str) {
        let endpoint = self.endpoint;
        let result = self.shared.registry.mutate(|reg, store| -> Result<bool, StoreError> {
            let Some(e) = reg.endpoint(endpoint) else { return Ok(false) };
            if !e.record.enabled {
                return Ok(false);
            }
            let mut rec = e.record.clone();
            rec.enabled = false;
            rec.disabled_reason = Some(reason.to_owned());
            rec.updated_at = crate::time::now_ms();
            store.put_endpoint(&rec)?;
            reg.put_endpoint(rec);
            Ok(true)
        });
        match result {
            Ok(true) => {
                crate::metrics::endpoint_disabled();
                tracing::warn!(endpoint = %EndpointId(endpoint), reason, "endpoint disabled");
                let failing_since = self.feed.stats_snapshot().failing_since;
                self.emit(
                    notify::ENDPOINT_DISABLED,
                    serde_json::json!({
                        "endpoint_id": EndpointId(endpoint),
                        "endpoint_name": entry.record.name,
                        "url": entry.record.url,
                        "reason": reason,
                        "failing_since": failing_since.map(format_ms),
                        "disabled_at": format_ms(crate::time::now_ms()),
                    }),
                );
                super::feed::lock(&self.feed.stats).failure_notified = true;
                self.stats_dirty = true;
                // Re-sends waiting for it cannot go out now.
                for m in self.manual.drain(..) {
                    let _ = m.reply.send(Err("the endpoint was disabled".into()));
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(endpoint = %EndpointId(endpoint), error = %e, "cannot disable the endpoint")
            }
        }
    }
}

fn webhook_text(webhook_id: u64, batch: Option<u64>) -> String {
    match batch {
        Some(b) => crate::ids::BatchId(b).to_string(),
        None => EventId(webhook_id).to_string(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Sends one request and fills in the attempt record with what came back.
/// The request for these events and the attempt record to fill in when it is sent. `batch_id` set: a
/// batch, whose `webhook-id` is the batch's.
#[allow(clippy::too_many_arguments)]
pub fn prepare_attempt(
    entry: &EndpointEntry,
    webhook_id: u64,
    batch_id: Option<u64>,
    events: &[(u64, &EventRecord)],
    user_agent: &http::HeaderValue,
    attempt_number: u32,
    trigger: Trigger,
    now: u64,
) -> (AttemptRecord, OutboundRequest) {
    let webhook_id_text = webhook_text(webhook_id, batch_id);
    let batch = batch_id.is_some();
    let built = request::build(entry, &webhook_id_text, events, batch, user_agent, now);
    // A test send's event is in no log: its body can only be shown if it is kept.
    let keep_body = built.templated || trigger == Trigger::Test;
    let attempt = AttemptRecord {
        endpoint_id: entry.record.id,
        webhook_id,
        batch,
        events: events.iter().map(|(id, _)| *id).collect(),
        url: built.url.clone(),
        method: entry.record.method,
        sent_at: now,
        succeeded: false,
        status_code: None,
        request_headers: request::recorded_headers(&built.headers),
        response_headers: Vec::new(),
        response_body: String::new(),
        response_truncated: false,
        error_class: None,
        error: None,
        duration_ms: 0,
        attempt_number,
        trigger,
        request_body: keep_body.then(|| request::recorded_body(&built.body)),
    };
    let req = OutboundRequest {
        method: entry.record.method.as_http(),
        url: built.url,
        headers: built.headers,
        body: built.body,
        timeout: Duration::from_millis(entry.record.timeout_ms),
        verify_tls: entry.record.verify_tls,
    };
    (attempt, req)
}

/// Sends one prepared request and completes its attempt record with what came back.
pub async fn send(
    client: HttpClient,
    req: OutboundRequest,
    mut attempt: AttemptRecord,
) -> (AttemptRecord, Verdict) {
    let started = Instant::now();
    let outcome = client.send(req).await;
    attempt.duration_ms = started.elapsed().as_millis() as u64;
    let verdict = retry::classify(&outcome, SystemTime::now());
    attempt.succeeded = matches!(verdict, Verdict::Success);
    match &outcome {
        Ok(resp) => {
            attempt.status_code = Some(resp.status.as_u16());
            attempt.response_headers = request::recorded_headers(&resp.headers);
            attempt.response_body = String::from_utf8_lossy(&resp.body).into_owned();
            attempt.response_truncated = resp.truncated;
            if !attempt.succeeded {
                attempt.error_class = Some("http_status".into());
                attempt.error = Some(format!("HTTP {}", resp.status));
            }
        }
        Err(e) => {
            attempt.error_class = Some(e.class().into());
            attempt.error = Some(error_chain(e));
        }
    }
    (attempt, verdict)
}

/// An error with its sources, for the history (`connect: tcp connect error: Connection refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
