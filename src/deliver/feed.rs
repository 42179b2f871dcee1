//! The per-endpoint feed: a bounded in-memory queue the router pushes committed events into, with a
//! fall-back to the log when the endpoint is behind.
//!
//! The log is the source of truth; the queue is only a shortcut that saves re-reading what was just
//! written. Protocol (all under the feed's small mutex, never held across an await):
//! - The router pushes while the feed is *live*. When the queue is full it records the first event it
//!   could not push (`lag_from`) and from then on only notes the last one it dropped (`last_dropped`).
//! - The worker drains the queue (all older than `lag_from`), then reads the log from `lag_from`
//!   itself. Having read up to `scanned_to`, it calls [`Feed::catch_up_done`]: if nothing was dropped
//!   after `scanned_to` the feed is live again; otherwise it reads on from there.
//! - Because the router routes a record only after it is in the log, an event dropped here is always
//!   found by the worker's next read. A feed starts lagging (after a restart: from the persisted cursor),
//!   so the same path handles start-up, restarts and slow endpoints.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use tokio::sync::{Notify, oneshot};

use crate::model::{AttemptRecord, EndpointStatsRecord, LogRecord};

/// How many events a feed holds in memory before it falls back to the log.
pub const FEED_CAPACITY: usize = 4096;
/// Commands waiting for one dispatcher; past it, [`Feed::submit`] refuses more.
pub const MAX_COMMANDS: usize = 1024;

/// What a person asks of an endpoint's dispatcher (it owns the endpoint's delivery state, so changes to
/// it go through the dispatcher rather than around it).
#[derive(Debug)]
pub enum Command {
    /// Send this delivery again now (`trigger: manual`), and answer with the attempt.
    Resend { webhook_id: u64, batch_id: Option<u64>, events: Vec<u64>, reply: oneshot::Sender<ManualOutcome> },
    /// Put every failed delivery with a webhook id in `lo..=hi` back in the queue; answer how many.
    Recover { lo: u64, hi: u64, reply: oneshot::Sender<Result<usize, String>> },
}

/// The attempt a re-send made, or why it made none.
pub type ManualOutcome = Result<(u64, AttemptRecord), String>;

/// What waits for a first attempt at the dispatcher, as last published by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Events held in memory without a first attempt yet (or with one in flight).
    pub first_attempts: u64,
    /// The oldest such event id (or, when lagging, the id the log read resumes at).
    pub oldest_event: Option<u64>,
    /// Behind the log: more events may wait than the ones counted.
    pub lagging: bool,
    /// Retries the dispatcher holds (due or in flight); the store may hold more (`retries_more`).
    pub retries: u64,
    pub retries_more: bool,
    /// The webhook id of the retry due first.
    pub first_retry: Option<u64>,
}

/// One event of a committed record, shared with every endpoint it goes to (no payload copy).
#[derive(Debug, Clone)]
pub struct EventRef {
    pub id: u64,
    pub record: Arc<LogRecord>,
    pub index: usize,
}

impl EventRef {
    pub fn event(&self) -> &crate::model::EventRecord {
        &self.record.events[self.index]
    }
}

#[derive(Debug)]
struct State {
    queue: VecDeque<EventRef>,
    /// Some: the worker must read the log from this id on before the queue is trusted again.
    lag_from: Option<u64>,
    last_dropped: u64,
}

#[derive(Debug)]
pub struct Feed {
    state: Mutex<State>,
    notify: Notify,
    /// Every event routed here with an id up to this was handed off (published by the worker, read by
    /// the event-detail API).
    pub cursor: AtomicU64,
    commands: Mutex<VecDeque<Command>>,
    waiting: Mutex<Waiting>,
    /// The endpoint's statistics, updated by its dispatcher, read by the stats API.
    pub stats: Mutex<EndpointStatsRecord>,
}

impl Feed {
    /// A feed that starts by reading the log after `cursor`, at least up to `log_head` (the largest event
    /// id in the log when the feed was made: events stored before the feed existed were never pushed, so
    /// the read must cover them before the feed can go live).
    pub fn lagging_after(cursor: u64, log_head: u64) -> Feed {
        Feed {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                lag_from: Some(cursor.saturating_add(1)),
                last_dropped: log_head,
            }),
            notify: Notify::new(),
            cursor: AtomicU64::new(cursor),
            commands: Mutex::new(VecDeque::new()),
            waiting: Mutex::new(Waiting::default()),
            stats: Mutex::new(EndpointStatsRecord::default()),
        }
    }

    /// Queues a command for the dispatcher and wakes it; gives it back when too many wait.
    pub fn submit(&self, command: Command) -> Result<(), Command> {
        {
            let mut q = lock(&self.commands);
            if q.len() >= MAX_COMMANDS {
                return Err(command);
            }
            q.push_back(command);
        }
        self.notify.notify_one();
        Ok(())
    }

    pub fn take_commands(&self) -> VecDeque<Command> {
        std::mem::take(&mut *lock(&self.commands))
    }

    pub fn set_waiting(&self, w: Waiting) {
        *lock(&self.waiting) = w;
    }

    pub fn waiting(&self) -> Waiting {
        *lock(&self.waiting)
    }

    pub fn stats_snapshot(&self) -> EndpointStatsRecord {
        lock(&self.stats).clone()
    }

    /// How many events the queue holds, and the first one's id.
    pub fn queued(&self) -> (usize, Option<u64>) {
        let s = self.lock();
        (s.queue.len(), s.queue.front().map(|e| e.id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Router side: hand over one committed event.
    pub fn push(&self, ev: EventRef) {
        {
            let mut s = self.lock();
            if s.lag_from.is_some() {
                s.last_dropped = s.last_dropped.max(ev.id);
            } else if s.queue.len() >= FEED_CAPACITY {
                s.lag_from = Some(ev.id);
                s.last_dropped = ev.id;
            } else {
                s.queue.push_back(ev);
            }
        }
        self.notify.notify_one();
    }

    /// Worker side: the next queued event.
    pub fn pop(&self) -> Option<EventRef> {
        self.lock().queue.pop_front()
    }

    /// Worker side: where to read the log from, once the queue is drained.
    pub fn lag_from(&self) -> Option<u64> {
        let s = self.lock();
        if s.queue.is_empty() { s.lag_from } else { None }
    }

    /// Worker side: the log was read up to `scanned_to`. Returns true when the feed is live again.
    pub fn catch_up_done(&self, scanned_to: u64) -> bool {
        let mut s = self.lock();
        if s.last_dropped <= scanned_to {
            s.lag_from = None;
            true
        } else {
            s.lag_from = Some(scanned_to.saturating_add(1));
            false
        }
    }

    /// Worker side: is anything queued or waiting in the log?
    pub fn has_work(&self) -> bool {
        let s = self.lock();
        !s.queue.is_empty() || s.lag_from.is_some()
    }

    /// Resolves after the next push (or immediately if one happened since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section here is
/// a few assignments).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64) -> EventRef {
        EventRef { id, record: Arc::new(LogRecord { events: Vec::new() }), index: 0 }
    }

    #[test]
    fn a_new_feed_reads_the_log_first() {
        let f = Feed::lagging_after(10, 0);
        assert_eq!(f.lag_from(), Some(11));
        f.push(ev(12));
        assert_eq!(f.pop().map(|e| e.id), None, "pushed while lagging: left to the log read");
        assert!(!f.catch_up_done(11), "12 was dropped after the read reached 11");
        assert_eq!(f.lag_from(), Some(12));
        assert!(f.catch_up_done(12));
        f.push(ev(13));
        assert_eq!(f.pop().map(|e| e.id), Some(13));
    }

    #[test]
    fn a_new_feed_stays_lagging_until_the_read_covers_what_was_stored_before_it() {
        let f = Feed::lagging_after(10, 50);
        assert!(!f.catch_up_done(40));
        assert_eq!(f.lag_from(), Some(41));
        assert!(f.catch_up_done(50));
    }

    #[test]
    fn a_full_queue_falls_back_to_the_log_from_the_first_dropped_event() {
        let f = Feed::lagging_after(0, 0);
        assert!(f.catch_up_done(0));
        for id in 1..=(FEED_CAPACITY as u64 + 5) {
            f.push(ev(id));
        }
        assert_eq!(f.lag_from(), None, "the queue must drain before the log is read");
        let mut last = 0;
        while let Some(e) = f.pop() {
            assert_eq!(e.id, last + 1, "queued events come out in order");
            last = e.id;
        }
        assert_eq!(last, FEED_CAPACITY as u64);
        assert_eq!(f.lag_from(), Some(FEED_CAPACITY as u64 + 1));
        assert!(f.catch_up_done(FEED_CAPACITY as u64 + 5));
        assert!(!f.has_work());
    }
}
