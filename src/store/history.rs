//! Delivery state and attempt history: cursors, delivery records, the retry queue, attempts and their
//! indexes, batch ranges, and per-endpoint statistics.
//!
//! # Attempt records
//! The attempts of one endpoint that finish together are recorded together: their ids are consecutive
//! (the dispatcher takes a block of ids when it records them, so an id is the time an attempt was
//! recorded), their records are one frame in the history segments ([`super::segment::Attempts`]), and
//! sled holds one `A` T first-id entry (a pointer to the frame), one `a` E first-id entry (the count)
//! and usually one `w` entry (the range of webhook ids it carried) for the run, plus an `x` entry per
//! failed attempt. A run holds at most [`MAX_RUN`]
//! attempts, so the run an id is in starts at most `MAX_RUN - 1` ids before it. Stores written before
//! runs existed hold one record per `A` key inline; both are read.
//!
//! # History queries
//! Attempt ids come from the id clock (`unix_µs << 12`), so a time window is a key range (widened by
//! [`MAX_RECORDING_DELAY`] at its end, as an attempt is recorded after it was sent). A query is
//! answered from the narrowest source that covers it, never by reading every attempt:
//! - an event: its webhook ids (the event id, and the batch ids that carried it) through the `w` index
//!   (the runs whose webhook range covers it; older stores: the per-attempt `v` index);
//! - `status=failed`: the `x` index of failed attempts (the endpoint is in its value);
//! - an endpoint: the `a` index;
//! - otherwise the tenant's attempts themselves.
//!
//! A time-ordered page stops at `limit` matches or after [`MAX_SCANNED_PER_PAGE`] entries (then it returns
//! a cursor to continue). Sorting by status code or duration needs every match of the window in hand: it
//! reads at most [`MAX_SORT_WINDOW`] matches and otherwise asks for a narrower window.

use std::cmp::Reverse;

use super::damage::or_skip;
use super::log::Entry;
use super::ordered::Ordered;
use super::records;
use super::segment::Append;
use super::{Store, StoreError, keys};
use crate::model::{AttemptRecord, DeliveryRecord, DeliveryState, EndpointStatsRecord};

/// How an attempt's outcome changes the delivery it belongs to.
#[derive(Debug, Clone)]
pub enum DeliveryChange {
    /// No delivery state to write: a first attempt that succeeded (the cursor passing the event records
    /// it), a test send (which belongs to no delivery), or a manual re-send that changed nothing.
    Unchanged,
    /// Store the delivery's new state; move its retry-queue entry from `old_due` to `new_due`.
    Put { webhook_id: u64, record: DeliveryRecord, old_due: Option<u64>, new_due: Option<u64> },
}

/// At most this many attempts are one run (one frame, one `A` and one `a` entry).
pub const MAX_RUN: usize = 64;
/// An attempt is recorded at most this long after it was sent (the longest delivery timeout is 2
/// minutes): the `l` index covers a time window's end this far.
pub const MAX_RECORDING_DELAY_MS: u64 = 10 * 60 * 1000;
/// An attempt recorded more than this after it was sent is "late": it gets an `l` index entry, and a
/// time window's end is widened only by this much in the other sources.
pub const LATE_MS: u64 = 1_000;

/// A `w` entry covers webhook ids of one run that lie within this span of each other (100 ms of the id
/// clock); a lookup scans the entries that start this far before the webhook id.
const WEBHOOK_SPAN: u64 = 100_000 << 12;

/// The webhook-id ranges of a run's `w` entries: its distinct webhook ids, ascending, cut where a
/// range would span more than [`WEBHOOK_SPAN`]. A run of a draining endpoint (consecutive events) is
/// one range; retention computes the same ranges again to delete them.
fn webhook_ranges(webhooks: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut ids: Vec<u64> = webhooks.collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for w in ids {
        match out.last_mut() {
            Some((lo, hi)) if w - *lo <= WEBHOOK_SPAN => *hi = w,
            _ => out.push((w, w)),
        }
    }
    out
}

/// Whether an attempt recorded under `id` was recorded more than [`LATE_MS`] after it was sent.
fn is_late(id: u64, a: &AttemptRecord) -> bool {
    (id >> 12) / 1000 > a.sent_at.saturating_add(LATE_MS)
}

/// Everything one attempt changes (see [`Store::write_attempt_outcomes`] for how it is written).
#[derive(Debug)]
pub struct AttemptOutcomeWrite<'a> {
    pub tenant: u64,
    pub endpoint: u64,
    pub attempt_id: u64,
    pub attempt: &'a AttemptRecord,
    pub delivery: &'a DeliveryChange,
    /// The endpoint's new cursor, when it moved.
    pub cursor: Option<u64>,
}

/// The order of an attempt list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptSort {
    /// Newest first (the default).
    #[default]
    SentAtDesc,
    SentAtAsc,
    StatusCode {
        descending: bool,
    },
    DurationMs {
        descending: bool,
    },
}

impl AttemptSort {
    pub fn parse(s: &str) -> Option<AttemptSort> {
        Some(match s {
            "-sent_at" => AttemptSort::SentAtDesc,
            "sent_at" => AttemptSort::SentAtAsc,
            "status_code" => AttemptSort::StatusCode { descending: false },
            "-status_code" => AttemptSort::StatusCode { descending: true },
            "duration_ms" => AttemptSort::DurationMs { descending: false },
            "-duration_ms" => AttemptSort::DurationMs { descending: true },
            _ => return None,
        })
    }

    /// Sorts by a value of the attempt (status code, duration), not by time.
    pub fn by_value(self) -> bool {
        !matches!(self, AttemptSort::SentAtDesc | AttemptSort::SentAtAsc)
    }

    /// The sort key of an attempt for the value sorts (`None` for the time sorts). A transport error has
    /// no status code and sorts before every code.
    pub fn value_of(self, a: &AttemptRecord) -> Option<u64> {
        match self {
            AttemptSort::SentAtDesc | AttemptSort::SentAtAsc => None,
            AttemptSort::StatusCode { .. } => Some(a.status_code.map_or(0, u64::from)),
            AttemptSort::DurationMs { .. } => Some(a.duration_ms),
        }
    }
}

/// Where the next page starts: after this entry in the list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCursor {
    /// The sort value of the last entry returned (value sorts only).
    pub value: Option<u64>,
    pub id: u64,
}

/// Filters of the attempt list.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub endpoint: Option<u64>,
    /// Attempts of one event: the webhook ids that carried it (its own id for single-event deliveries, the
    /// ids of the batches it was in), each with the endpoint it is restricted to (`None`: any).
    pub webhooks: Option<Vec<(u64, Option<u64>)>>,
    pub succeeded: Option<bool>,
    /// Unix ms, inclusive.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Case-insensitive text in the URL, the error, the response body or a response header value.
    pub text: Option<String>,
    pub sort: AttemptSort,
}

impl AttemptFilter {
    fn keeps(&self, a: &AttemptRecord) -> bool {
        self.succeeded.is_none_or(|s| s == a.succeeded)
            && self.endpoint.is_none_or(|e| e == a.endpoint_id)
            && self.since_ms.is_none_or(|s| a.sent_at >= s)
            && self.until_ms.is_none_or(|u| a.sent_at <= u)
            && self.text.as_deref().is_none_or(|t| text_matches(a, t))
    }

    /// The attempt-id range of the time window: ids are `unix_µs << 12` of when the attempt was
    /// recorded, which is after it was sent and at most [`MAX_RECORDING_DELAY_MS`] later.
    fn id_range(&self) -> (u64, u64) {
        (self.since_ms.map_or(0, id_floor), self.recorded_by(MAX_RECORDING_DELAY_MS))
    }

    /// The largest id an attempt sent by `until` and recorded at most `delay_ms` later can have.
    fn recorded_by(&self, delay_ms: u64) -> u64 {
        self.until_ms
            .map_or(u64::MAX, |u| id_floor(u.saturating_add(delay_ms).saturating_add(1)).saturating_sub(1))
    }
}

/// The smallest id the id clock gives at unix ms `ms`.
pub fn id_floor(ms: u64) -> u64 {
    ms.saturating_mul(1000).checked_shl(12).filter(|v| v >> 12 == ms.saturating_mul(1000)).unwrap_or(u64::MAX)
}

/// `needle` is lower-case.
fn text_matches(a: &AttemptRecord, needle: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(needle);
    has(&a.url)
        || a.error.as_deref().is_some_and(has)
        || has(&a.response_body)
        || a.response_headers.iter().any(|(_, v)| has(v))
        || a.status_code.is_some_and(|c| c.to_string() == needle)
}

/// At most this many entries are examined for one time-ordered page (see `log::MAX_SCANNED_PER_PAGE`).
pub const MAX_SCANNED_PER_PAGE: usize = 100_000;
/// A list sorted by status code or duration reads at most this many matches of its window.
pub const MAX_SORT_WINDOW: usize = 50_000;

/// A page of attempts and where the next one starts.
pub type AttemptPage = (Vec<(u64, AttemptRecord)>, Option<AttemptCursor>);

/// Why a history query was refused.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "more than {MAX_SORT_WINDOW} attempts match; narrow the window (since, until) or filter further to sort by this field"
    )]
    WindowTooLarge,
}

/// Where the entries of a history query come from (see the module docs).
enum Source {
    Webhooks(Vec<(u64, Option<u64>)>),
    Failed,
    Endpoint(u64),
    Tenant,
}

type Entries<'a> = Box<dyn Iterator<Item = Result<(u64, AttemptRecord), StoreError>> + 'a>;

impl Store {
    pub fn write_attempt_outcome(&self, w: &AttemptOutcomeWrite<'_>) -> Result<(), StoreError> {
        self.write_attempt_outcomes(std::slice::from_ref(w))
    }

    /// Several outcomes (of one endpoint's attempts that finished together): their records appended to
    /// the history segments, then their index entries, delivery state and cursors. Attempts of one
    /// tenant and endpoint with consecutive ids form runs (see the module docs); sled's cost is per key,
    /// so a dispatcher that records many attempts at once pays little per attempt.
    ///
    /// The sled writes are one atomic batch when any delivery state changes (a failure, a retry: a
    /// delivery record and its retry-queue entries go together). Otherwise — first-try successes, the
    /// common case — they are written one by one ([`Ordered`], which saves sled a log write per call):
    /// the runs' pointers first, then the entries that refer to them, the cursors last, so that a crash
    /// recovers either the cursor with everything before it or an older cursor (the attempts are made
    /// again).
    ///
    /// A crash between the append and the sled writes leaves a frame nothing points to (the attempts are
    /// made again); the frame is synced before sled is flushed ([`Store::sync`]).
    pub fn write_attempt_outcomes(&self, writes: &[AttemptOutcomeWrite<'_>]) -> Result<(), StoreError> {
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            match runs.last_mut() {
                Some(run)
                    if run.len() < MAX_RUN
                        && writes[run.end - 1].tenant == w.tenant
                        && writes[run.end - 1].endpoint == w.endpoint
                        && writes[run.end - 1].attempt_id.checked_add(1) == Some(w.attempt_id) =>
                {
                    run.end = i + 1
                }
                _ => runs.push(i..i + 1),
            }
        }
        let items: Vec<&AttemptRecord> = writes.iter().map(|w| w.attempt).collect();
        let appends: Vec<Append<'_, &AttemptRecord>> = runs
            .iter()
            .map(|r| Append {
                tenant: writes[r.start].tenant,
                first_id: writes[r.start].attempt_id,
                items: &items[r.clone()],
            })
            .collect();
        let history = &self.inner.history;
        let (pointers, _) = history.append(&appends)?;
        // Counted before the index points into them, so that retention cannot delete a segment this
        // write is about to point into; given back if the write fails.
        history.add_refs(pointers.iter().map(|p| p.segment));
        // Ordered (see [`Ordered`]): each run's pointer first, then what refers to it, the cursors
        // last. Only a write that changes delivery state (a failure, a retry) pays for a sled batch:
        // a delivery record and its retry-queue entries must not be recovered one without the other.
        let mut index = Ordered::default();
        let indexed = (|| {
            for (run, p) in runs.iter().zip(&pointers) {
                let first = &writes[run.start];
                index.insert(keys::two(keys::ATTEMPT, first.tenant, first.attempt_id), p.encode());
            }
            for run in &runs {
                let first = &writes[run.start];
                let count = (run.len() as u32).to_be_bytes();
                index.insert(keys::two(keys::ATTEMPT_BY_ENDPOINT, first.endpoint, first.attempt_id), count);
                for (lo, hi) in webhook_ranges(writes[run.clone()].iter().map(|w| w.attempt.webhook_id)) {
                    let key = keys::three(keys::WEBHOOK_RUN, first.tenant, lo, first.attempt_id);
                    index.insert(key, hi.to_be_bytes());
                }
            }
            for w in writes {
                add_outcome(&mut index, w)?;
            }
            for w in writes {
                if let Some(c) = w.cursor {
                    index.insert(keys::one(keys::CURSOR, w.endpoint), c.to_be_bytes());
                }
            }
            if writes.iter().any(|w| matches!(w.delivery, DeliveryChange::Put { .. })) {
                index.apply_atomically(&self.inner.state)
            } else {
                index.apply(&self.inner.state)
            }
        })();
        if let Err(e) = indexed {
            history.release(pointers.iter().map(|p| p.segment));
            return Err(e);
        }
        self.mark_state_dirty();
        Ok(())
    }

    /// The endpoint's persisted cursor: every event up to it was handed off.
    pub fn cursor(&self, endpoint: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.state.get(keys::one(keys::CURSOR, endpoint))?.map(|v| keys::u64_at(&v, 0)))
    }

    pub fn put_cursor(&self, endpoint: u64, cursor: u64) -> Result<(), StoreError> {
        self.inner.state.insert(keys::one(keys::CURSOR, endpoint), &cursor.to_be_bytes())?;
        self.mark_state_dirty();
        Ok(())
    }

    /// The state of a delivery that did not succeed at its first attempt.
    pub fn delivery(&self, endpoint: u64, webhook_id: u64) -> Result<Option<DeliveryRecord>, StoreError> {
        let k = keys::two(keys::DELIVERY, endpoint, webhook_id);
        self.inner.state.get(k)?.map(|v| records::decode(&k, &v)).transpose()
    }

    /// The batch that carried `event` to `endpoint`, once one was sent.
    pub fn batch_of(&self, endpoint: u64, event: u64) -> Result<Option<u64>, StoreError> {
        let lo = keys::two(keys::BATCH_RANGE, endpoint, 0);
        let hi = keys::two(keys::BATCH_RANGE, endpoint, event);
        if let Some(item) = self.inner.state.range(lo..=hi).next_back() {
            let (_, v) = item?;
            if keys::u64_at(&v, 0) >= event {
                return Ok(Some(keys::u64_at(&v, 8)));
            }
        }
        // Stores written before batch ranges kept a pointer per event of a failed batch.
        Ok(self.inner.state.get(keys::two(keys::BATCH_OF, endpoint, event))?.map(|v| keys::u64_at(&v, 0)))
    }

    /// The first entries of an endpoint's retry queue, earliest first, as `(due ms, webhook id)`.
    pub fn due(&self, endpoint: u64, limit: usize) -> Result<Vec<(u64, u64)>, StoreError> {
        self.due_from(endpoint, (0, 0), limit)
    }

    /// The entries of an endpoint's retry queue at or after `from` (a `(due ms, webhook id)` pair, in the
    /// queue's order), earliest first, at most `limit`: the dispatcher's next window of the queue.
    pub fn due_from(
        &self,
        endpoint: u64,
        from: (u64, u64),
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let prefix = keys::one(keys::QUEUE, endpoint);
        self.inner
            .state
            .range(keys::three(keys::QUEUE, endpoint, from.0, from.1)..)
            .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .take(limit)
            .map(|item| {
                let (k, _) = item?;
                Ok((keys::u64_at(&k, 9), keys::u64_at(&k, 17)))
            })
            .collect()
    }

    /// Removes one retry-queue entry (a stale one, whose delivery was finished another way).
    pub fn drop_due(&self, endpoint: u64, due: u64, webhook_id: u64) -> Result<(), StoreError> {
        self.inner.state.remove(keys::three(keys::QUEUE, endpoint, due, webhook_id))?;
        self.mark_state_dirty();
        Ok(())
    }

    /// How many deliveries wait in an endpoint's retry queue, counting at most `cap`.
    pub fn due_count(&self, endpoint: u64, cap: usize) -> usize {
        self.inner.state.scan_prefix(keys::one(keys::QUEUE, endpoint)).keys().take(cap).count()
    }

    /// An endpoint's failed deliveries with webhook ids in `lo..=hi`, oldest first, at most `limit`.
    pub fn failed_deliveries(
        &self,
        endpoint: u64,
        lo: u64,
        hi: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryRecord)>, StoreError> {
        let mut out = Vec::new();
        let range = keys::two(keys::DELIVERY, endpoint, lo)..=keys::two(keys::DELIVERY, endpoint, hi);
        for item in self.inner.state.range(range) {
            let (k, v) = item?;
            let record: DeliveryRecord = records::decode(&k, &v)?;
            if record.state == DeliveryState::Failed {
                out.push((keys::trailing_u64(&k), record));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Stores deliveries put back in the retry queue (pending, due at `due`), in one atomic batch.
    pub fn requeue(
        &self,
        endpoint: u64,
        due: u64,
        items: &[(u64, DeliveryRecord)],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (webhook_id, record) in items {
            batch.insert(&keys::two(keys::DELIVERY, endpoint, *webhook_id), records::encode(record)?);
            batch.insert(&keys::three(keys::QUEUE, endpoint, due, *webhook_id), &[]);
        }
        self.inner.state.apply_batch(batch)?;
        self.mark_state_dirty();
        Ok(())
    }

    /// The attempts of a webhook id (an event's, or a batch's): `(attempt id, endpoint)`, by id. Runs
    /// are found through their `w` entries (those starting up to [`WEBHOOK_SPAN`] before it), older
    /// stores' attempts through the per-attempt `v` index.
    pub fn webhook_attempts(&self, tenant: u64, webhook_id: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let state = &self.inner.state;
        let mut out = Vec::new();
        for item in state.scan_prefix(keys::two(keys::ATTEMPT_BY_WEBHOOK, tenant, webhook_id)) {
            let (k, v) = item?;
            out.push((keys::trailing_u64(&k), keys::u64_at(&v, 0)));
        }
        let from = keys::three(keys::WEBHOOK_RUN, tenant, webhook_id.saturating_sub(WEBHOOK_SPAN), 0);
        let to = keys::three(keys::WEBHOOK_RUN, tenant, webhook_id, u64::MAX);
        for item in state.range(from..=to) {
            let (k, v) = item?;
            if keys::u64_at(&v, 0) < webhook_id {
                continue; // the range ends before it
            }
            let key = keys::two(keys::ATTEMPT, tenant, keys::trailing_u64(&k));
            let Some(value) = state.get(key)? else { continue }; // purged meanwhile
            for (id, a) in self.run(&key, &value)? {
                if a.webhook_id == webhook_id {
                    out.push((id, a.endpoint_id));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The events a batch carried (from its first attempt).
    pub fn batch_events(&self, tenant: u64, batch_id: u64) -> Result<Option<Vec<u64>>, StoreError> {
        for (id, _) in self.webhook_attempts(tenant, batch_id)? {
            if let Some(a) = self.attempt(tenant, id)? {
                return Ok(Some(a.events));
            }
        }
        Ok(None)
    }

    /// How many attempts of this webhook id the endpoint has had, and the latest one.
    pub fn attempts_of(
        &self,
        tenant: u64,
        webhook_id: u64,
        endpoint: u64,
    ) -> Result<(usize, Option<u64>), StoreError> {
        let mine: Vec<u64> = self
            .webhook_attempts(tenant, webhook_id)?
            .into_iter()
            .filter(|(_, e)| *e == endpoint)
            .map(|(id, _)| id)
            .collect();
        Ok((mine.len(), mine.last().copied()))
    }

    /// How many attempts of this webhook id the endpoint has had.
    pub fn attempt_count(&self, tenant: u64, webhook_id: u64, endpoint: u64) -> Result<usize, StoreError> {
        Ok(self.attempts_of(tenant, webhook_id, endpoint)?.0)
    }

    pub fn endpoint_stats(&self, endpoint: u64) -> Result<Option<EndpointStatsRecord>, StoreError> {
        let k = keys::one(keys::ENDPOINT_STATS, endpoint);
        self.inner.state.get(k)?.map(|v| records::decode(&k, &v)).transpose()
    }

    pub fn put_endpoint_stats(&self, endpoint: u64, stats: &EndpointStatsRecord) -> Result<(), StoreError> {
        self.inner.state.insert(keys::one(keys::ENDPOINT_STATS, endpoint), records::encode(stats)?)?;
        self.mark_state_dirty();
        Ok(())
    }

    /// One attempt, by id: found in the run that starts at or before it.
    pub fn attempt(&self, tenant: u64, id: u64) -> Result<Option<AttemptRecord>, StoreError> {
        let lo = keys::two(keys::ATTEMPT, tenant, id.saturating_sub(MAX_RUN as u64 - 1));
        let hi = keys::two(keys::ATTEMPT, tenant, id);
        let Some(item) = self.inner.state.range(lo..=hi).next_back() else { return Ok(None) };
        let (k, v) = item?;
        let index = id - keys::trailing_u64(&k); // first <= id by the range
        match Entry::of(&v) {
            Entry::At(p) if index < u64::from(p.events) => {
                self.inner.history.read_one(&p, (tenant, keys::trailing_u64(&k)), index as usize)
            }
            Entry::At(_) => Ok(None),
            Entry::Inline(bytes) if index == 0 => records::decode(&k, bytes).map(Some),
            Entry::Inline(_) => Ok(None),
        }
    }

    /// The attempts of the run an `A` entry holds, with their ids (empty when its segment is gone).
    pub(super) fn run(&self, key: &[u8], value: &[u8]) -> Result<Vec<(u64, AttemptRecord)>, StoreError> {
        let first = keys::trailing_u64(key);
        let records = match Entry::of(value) {
            // A damaged run is left out of lists (one attempt read by id answers that it is damaged).
            Entry::At(p) => or_skip(self.inner.history.read(&p, (keys::u64_at(key, 1), first)), "attempts")?
                .unwrap_or_default(),
            Entry::Inline(bytes) => vec![records::decode(key, bytes)?],
        };
        Ok((first..).zip(records).collect())
    }

    /// How many attempts the run an `A` entry holds, without reading it.
    pub(super) fn run_len(value: &[u8]) -> u64 {
        match Entry::of(value) {
            Entry::At(p) => u64::from(p.events),
            Entry::Inline(_) => 1,
        }
    }

    /// The attempts with ids in `lo..=hi` of the run under an `A` entry, in the given order.
    fn run_in(
        &self,
        item: sled::Result<(sled::IVec, sled::IVec)>,
        lo: u64,
        hi: u64,
        ascending: bool,
    ) -> Vec<Result<(u64, AttemptRecord), StoreError>> {
        let run = item.map_err(StoreError::from).and_then(|(k, v)| self.run(&k, &v));
        match run {
            Ok(mut run) => {
                run.retain(|(id, _)| (lo..=hi).contains(id));
                if !ascending {
                    run.reverse();
                }
                run.into_iter().map(Ok).collect()
            }
            Err(e) => vec![Err(e)],
        }
    }

    /// A page of a tenant's attempts in `filter.sort`'s order, after `after` when given.
    pub fn list_attempts(
        &self,
        tenant: u64,
        filter: &AttemptFilter,
        after: Option<AttemptCursor>,
        limit: usize,
    ) -> Result<AttemptPage, HistoryError> {
        self.list_attempts_counted(tenant, filter, after, limit).map(|(page, _)| page)
    }

    /// [`Store::list_attempts`], and how many attempt records it read to answer.
    pub fn list_attempts_counted(
        &self,
        tenant: u64,
        filter: &AttemptFilter,
        after: Option<AttemptCursor>,
        limit: usize,
    ) -> Result<(AttemptPage, usize), HistoryError> {
        let (mut lo, mut hi) = filter.id_range();
        match filter.sort {
            AttemptSort::SentAtDesc | AttemptSort::SentAtAsc => {
                let ascending = filter.sort == AttemptSort::SentAtAsc;
                if let Some(c) = after {
                    if ascending {
                        lo = lo.max(c.id.saturating_add(1));
                    } else {
                        hi = hi.min(c.id.saturating_sub(1));
                    }
                }
                let mut out = Vec::with_capacity(limit.min(256));
                if lo > hi {
                    return Ok(((out, None), 0));
                }
                let mut scanned = 0usize;
                for item in self.entries(tenant, filter, lo, hi, ascending)? {
                    let (id, rec) = item?;
                    scanned += 1;
                    if filter.keeps(&rec) {
                        out.push((id, rec));
                    }
                    if out.len() == limit || scanned >= MAX_SCANNED_PER_PAGE {
                        return Ok(((out, Some(AttemptCursor { value: None, id })), scanned));
                    }
                }
                Ok(((out, None), scanned))
            }
            sort => {
                let descending = matches!(
                    sort,
                    AttemptSort::StatusCode { descending: true }
                        | AttemptSort::DurationMs { descending: true }
                );
                // Only (value, id) pairs are kept while reading the window; the page's records are read
                // again at the end.
                let mut keys: Vec<(u64, u64)> = Vec::new();
                let mut scanned = 0usize;
                if lo <= hi {
                    for item in self.entries(tenant, filter, lo, hi, true)? {
                        let (id, rec) = item?;
                        scanned += 1;
                        if filter.keeps(&rec) {
                            if keys.len() == MAX_SORT_WINDOW {
                                return Err(HistoryError::WindowTooLarge);
                            }
                            keys.push((sort.value_of(&rec).unwrap_or(0), id));
                        }
                    }
                }
                if descending {
                    keys.sort_unstable_by_key(|k| Reverse(*k));
                } else {
                    keys.sort_unstable();
                }
                let start = match after {
                    None => 0,
                    Some(c) => {
                        let c = (c.value.unwrap_or(0), c.id);
                        keys.partition_point(|k| if descending { *k >= c } else { *k <= c })
                    }
                };
                let page: Vec<(u64, u64)> = keys.iter().skip(start).take(limit).copied().collect();
                let more = start + page.len() < keys.len();
                let mut out = Vec::with_capacity(page.len());
                for (_, id) in &page {
                    if let Some(rec) = self.attempt(tenant, *id)? {
                        out.push((*id, rec));
                    }
                }
                let next =
                    page.last().filter(|_| more).map(|(v, id)| AttemptCursor { value: Some(*v), id: *id });
                scanned += out.len();
                Ok(((out, next), scanned))
            }
        }
    }

    /// The attempts of the query's source in the id window, in id order.
    fn entries<'a>(
        &'a self,
        tenant: u64,
        filter: &AttemptFilter,
        lo: u64,
        hi: u64,
        ascending: bool,
    ) -> Result<Entries<'a>, StoreError> {
        // The sources cover ids up to `main_hi`; above it, up to `hi`, only late attempts can be in the
        // window, and the `l` index has them.
        let main_hi = hi.min(filter.recorded_by(LATE_MS));
        let late: Entries<'a> = if main_hi < hi && filter.webhooks.is_none() {
            let failed_only = filter.succeeded == Some(false);
            let (from, to) = (main_hi + 1, hi);
            self.indexed(keys::LATE_ATTEMPT, tenant, (from, to), ascending, filter.endpoint, move |v| {
                !failed_only || v.get(8) == Some(&0)
            })
        } else {
            Box::new(std::iter::empty())
        };
        let main = self.main_entries(
            tenant,
            filter,
            lo,
            if filter.webhooks.is_some() { hi } else { main_hi },
            ascending,
        )?;
        Ok(if ascending { Box::new(main.chain(late)) } else { Box::new(late.chain(main)) })
    }

    /// The attempts a per-attempt index (`prefix` T A → endpoint id ++ …) lists in an id window: those
    /// of `endpoint` (any when `None`) whose index value `keep` accepts.
    fn indexed<'a>(
        &'a self,
        prefix: u8,
        tenant: u64,
        (lo, hi): (u64, u64),
        ascending: bool,
        endpoint: Option<u64>,
        keep: impl Fn(&[u8]) -> bool + 'a,
    ) -> Entries<'a> {
        let range = keys::two(prefix, tenant, lo)..=keys::two(prefix, tenant, hi);
        Box::new(ordered(self.inner.state.range(range), ascending).filter_map(move |item| {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            if endpoint.is_some_and(|e| e != keys::u64_at(&v, 0)) || !keep(&v) {
                return None;
            }
            let id = keys::trailing_u64(&k);
            self.attempt(tenant, id).transpose().map(|r| r.map(|a| (id, a)))
        }))
    }

    /// [`Store::entries`] from the narrowest source, up to `hi`.
    fn main_entries<'a>(
        &'a self,
        tenant: u64,
        filter: &AttemptFilter,
        lo: u64,
        hi: u64,
        ascending: bool,
    ) -> Result<Entries<'a>, StoreError> {
        let source = match (&filter.webhooks, filter.succeeded, filter.endpoint) {
            (Some(w), _, _) => Source::Webhooks(w.clone()),
            (None, Some(false), _) => Source::Failed,
            (None, _, Some(e)) => Source::Endpoint(e),
            (None, _, None) => Source::Tenant,
        };
        let state = &self.inner.state;
        Ok(match source {
            Source::Webhooks(webhooks) => {
                let mut ids = Vec::new();
                for (w, only) in webhooks {
                    for (id, endpoint) in self.webhook_attempts(tenant, w)? {
                        if only.is_none_or(|e| e == endpoint) && (lo..=hi).contains(&id) {
                            ids.push(id);
                        }
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                if !ascending {
                    ids.reverse();
                }
                Box::new(
                    ids.into_iter().filter_map(move |id| {
                        self.attempt(tenant, id).transpose().map(|r| r.map(|a| (id, a)))
                    }),
                )
            }
            Source::Failed => {
                self.indexed(keys::FAILED_ATTEMPT, tenant, (lo, hi), ascending, filter.endpoint, |_| true)
            }
            // Runs: the first one that can hold `lo` starts up to MAX_RUN - 1 ids before it.
            Source::Endpoint(endpoint) => {
                let from = lo.saturating_sub(MAX_RUN as u64 - 1);
                let range = keys::two(keys::ATTEMPT_BY_ENDPOINT, endpoint, from)
                    ..=keys::two(keys::ATTEMPT_BY_ENDPOINT, endpoint, hi);
                Box::new(ordered(state.range(range), ascending).flat_map(move |item| {
                    let run = item.and_then(|(k, _)| {
                        let key = keys::two(keys::ATTEMPT, tenant, keys::trailing_u64(&k));
                        Ok(state.get(key)?.map(|v| (sled::IVec::from(&key[..]), v)))
                    });
                    match run.transpose() {
                        Some(item) => self.run_in(item, lo, hi, ascending),
                        None => Vec::new(), // purged meanwhile
                    }
                }))
            }
            Source::Tenant => {
                let from = lo.saturating_sub(MAX_RUN as u64 - 1);
                let range = keys::two(keys::ATTEMPT, tenant, from)..=keys::two(keys::ATTEMPT, tenant, hi);
                Box::new(
                    ordered(state.range(range), ascending)
                        .flat_map(move |item| self.run_in(item, lo, hi, ascending)),
                )
            }
        })
    }

    /// At open: counts the `A` index's pointers per history segment, and deletes the segments nothing
    /// points into (frames of attempts whose index write a crash prevented, purged runs).
    pub(super) fn count_history_refs(&self) -> Result<(), StoreError> {
        for item in self.inner.state.scan_prefix([keys::ATTEMPT]).values() {
            if let Entry::At(p) = Entry::of(&item?) {
                self.inner.history.add_refs([p.segment]);
            }
        }
        self.inner.history.collect()?;
        Ok(())
    }

    /// Builds the `v` and `x` indexes for attempts stored before they existed (once per store).
    pub(crate) fn index_history(&self) -> Result<(), StoreError> {
        const DONE: &str = "history_index_v2";
        if self.meta(DONE)?.is_some() {
            return Ok(());
        }
        let mut batch = Ordered::default();
        let mut n = 0usize;
        for item in self.inner.state.scan_prefix([keys::ATTEMPT]) {
            let (k, v) = item?;
            let tenant = keys::u64_at(&k, 1);
            let id = keys::trailing_u64(&k);
            // Runs in segments were written with their indexes, by a binary that had them.
            let Entry::Inline(bytes) = Entry::of(&v) else { continue };
            let a: AttemptRecord = records::decode(&k, bytes)?;
            add_indexes(&mut batch, tenant, id, &a);
            add_legacy_webhook_index(&mut batch, tenant, id, &a);
            n += 1;
            if n % 10_000 == 0 {
                std::mem::take(&mut batch).apply_atomically(&self.inner.state)?;
            }
        }
        batch.apply_atomically(&self.inner.state)?;
        self.put_meta(DONE, b"1")?;
        if n > 0 {
            tracing::info!(attempts = n, "indexed the attempt history");
        }
        Ok(())
    }
}

/// The per-attempt webhook index of stores written before runs (runs have `w` entries instead).
fn add_legacy_webhook_index(batch: &mut Ordered, tenant: u64, attempt_id: u64, a: &AttemptRecord) {
    let endpoint = a.endpoint_id.to_be_bytes();
    batch.insert(keys::three(keys::ATTEMPT_BY_WEBHOOK, tenant, a.webhook_id, attempt_id), endpoint);
}

/// The per-attempt index entries: failed attempts, late attempts.
fn add_indexes(batch: &mut Ordered, tenant: u64, attempt_id: u64, a: &AttemptRecord) {
    let endpoint = a.endpoint_id.to_be_bytes();
    if !a.succeeded {
        batch.insert(keys::two(keys::FAILED_ATTEMPT, tenant, attempt_id), endpoint);
    }
    if is_late(attempt_id, a) {
        let mut v = [0u8; 9];
        v[..8].copy_from_slice(&endpoint);
        v[8] = u8::from(a.succeeded);
        batch.insert(keys::two(keys::LATE_ATTEMPT, tenant, attempt_id), v);
    }
}

/// The index entries of a run under an `A` entry, for retention: its `a` and `w` entries and its
/// attempts' `x` and `l` ones (an older store's inline attempt: its `a`, `v`, `x`).
pub(super) fn run_index_keys(tenant: u64, run: &[(u64, AttemptRecord)], inline: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some((first, head)) = run.first() else { return out };
    out.push(keys::two(keys::ATTEMPT_BY_ENDPOINT, head.endpoint_id, *first).to_vec());
    if inline {
        out.push(keys::three(keys::ATTEMPT_BY_WEBHOOK, tenant, head.webhook_id, *first).to_vec());
    } else {
        for (lo, _) in webhook_ranges(run.iter().map(|(_, a)| a.webhook_id)) {
            out.push(keys::three(keys::WEBHOOK_RUN, tenant, lo, *first).to_vec());
        }
    }
    for (id, a) in run {
        out.extend(index_keys(tenant, *id, a));
    }
    out
}

/// The index entries [`add_indexes`] wrote for an attempt.
fn index_keys(tenant: u64, attempt_id: u64, a: &AttemptRecord) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if !a.succeeded {
        out.push(keys::two(keys::FAILED_ATTEMPT, tenant, attempt_id).to_vec());
    }
    if is_late(attempt_id, a) {
        out.push(keys::two(keys::LATE_ATTEMPT, tenant, attempt_id).to_vec());
    }
    out
}

fn ordered<'a, I>(
    it: I,
    ascending: bool,
) -> Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a>
where
    I: DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a,
{
    if ascending { Box::new(it) } else { Box::new(it.rev()) }
}

/// Adds what one attempt changes, beside its run's entries and its endpoint's cursor.
fn add_outcome(batch: &mut Ordered, w: &AttemptOutcomeWrite<'_>) -> Result<(), StoreError> {
    add_indexes(batch, w.tenant, w.attempt_id, w.attempt);
    // A batch's first attempt records the run of events it carries, so that an event finds its batch.
    if w.attempt.batch
        && w.attempt.attempt_number == 1
        && w.attempt.trigger == crate::model::Trigger::Scheduled
        && let (Some(first), Some(last)) = (w.attempt.events.first(), w.attempt.events.last())
    {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&last.to_be_bytes());
        v[8..].copy_from_slice(&w.attempt.webhook_id.to_be_bytes());
        batch.insert(keys::two(keys::BATCH_RANGE, w.endpoint, *first), v);
    }
    if let DeliveryChange::Put { webhook_id, record, old_due, new_due } = &w.delivery {
        batch.insert(keys::two(keys::DELIVERY, w.endpoint, *webhook_id), records::encode(record)?);
        if let Some(due) = old_due {
            batch.remove(keys::three(keys::QUEUE, w.endpoint, *due, *webhook_id));
        }
        if let Some(due) = new_due {
            batch.insert(keys::three(keys::QUEUE, w.endpoint, *due, *webhook_id), []);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::model::{HttpMethod, Trigger};
    use crate::store::StoreSettings;

    const TENANT: u64 = 7;
    const GOOD: u64 = 100;
    const RARE: u64 = 200;
    /// 2026-11-23T00:00:00Z.
    const T0: u64 = 1_795_392_000_000;

    fn attempt(i: u64) -> (u64, AttemptRecord) {
        let sent_at = T0 + i; // one attempt per ms
        let id = id_floor(sent_at);
        let failed = i % 97 == 0;
        let record = AttemptRecord {
            endpoint_id: if i % 10 == 0 { RARE } else { GOOD },
            webhook_id: id - 1, // its event, ingested just before
            batch: false,
            events: vec![id - 1],
            url: format!("https://example.com/{}", if i % 1000 == 7 { "needle" } else { "hay" }),
            method: HttpMethod::Post,
            sent_at,
            succeeded: !failed,
            status_code: Some(if failed { 500 } else { 200 + (i % 3) as u16 }),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            response_body: String::new(),
            response_truncated: false,
            error_class: None,
            error: None,
            duration_ms: i % 251,
            attempt_number: 1,
            trigger: Trigger::Scheduled,
            request_body: None,
        };
        (id, record)
    }

    #[test]
    fn a_window_of_the_retry_queue_starts_at_its_key_and_stays_within_the_endpoint() {
        let (_dir, store, _) = history(0);
        for (endpoint, due, webhook) in
            [(5, 10, 1), (5, 20, 2), (5, 20, 3), (5, 30, 4), (6, 1, 9), (4, 99, 8)]
        {
            store
                .inner
                .state
                .insert(keys::three(keys::QUEUE, endpoint, due, webhook), &[])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let read = |from, limit| store.due_from(5, from, limit).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read((20, 3), 10), vec![(20, 3), (30, 4)]);
        assert_eq!(read((20, 0), 1), vec![(20, 2)]);
        assert_eq!(read((31, 0), 10), vec![]);
        assert_eq!(store.due(5, 10).unwrap_or_default().len(), 4);
    }

    /// A history of `n` attempts of two endpoints, one in ten at `RARE`, one in 97 failed.
    fn history(n: u64) -> (tempfile::TempDir, Store, Vec<(u64, AttemptRecord)>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&StoreSettings {
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Os,
            cache_bytes: 64 << 20,
            master_key: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let all: Vec<(u64, AttemptRecord)> = (0..n).map(attempt).collect();
        for chunk in all.chunks(2000) {
            let writes: Vec<AttemptOutcomeWrite<'_>> = chunk
                .iter()
                .map(|(id, a)| AttemptOutcomeWrite {
                    tenant: TENANT,
                    endpoint: a.endpoint_id,
                    attempt_id: *id,
                    attempt: a,
                    delivery: &DeliveryChange::Unchanged,
                    cursor: None,
                })
                .collect();
            store.write_attempt_outcomes(&writes).unwrap_or_else(|e| panic!("{e}"));
        }
        (dir, store, all)
    }

    fn page(store: &Store, f: &AttemptFilter, limit: usize) -> (Vec<u64>, usize) {
        let ((items, _), examined) =
            store.list_attempts_counted(TENANT, f, None, limit).unwrap_or_else(|e| panic!("{e}"));
        (items.into_iter().map(|(id, _)| id).collect(), examined)
    }

    /// The same query answered by reading everything, newest first.
    fn brute(all: &[(u64, AttemptRecord)], keep: impl Fn(&AttemptRecord) -> bool, limit: usize) -> Vec<u64> {
        all.iter().rev().filter(|(_, a)| keep(a)).take(limit).map(|(id, _)| *id).collect()
    }

    #[test]
    fn filtered_pages_of_a_large_history_read_only_what_they_return() {
        const N: u64 = 60_000;
        let (_dir, store, all) = history(N);

        // Failed attempts come from their own index: 50 read for 50 shown, out of 60,000.
        let f = AttemptFilter { succeeded: Some(false), ..Default::default() };
        let (ids, examined) = page(&store, &f, 50);
        assert_eq!(ids, brute(&all, |a| !a.succeeded, 50));
        assert_eq!(examined, 50);
        // Failed at one endpoint: its failures only are read (the endpoint is in the index).
        let f = AttemptFilter { succeeded: Some(false), endpoint: Some(RARE), ..Default::default() };
        let (ids, examined) = page(&store, &f, 1000);
        let expected = brute(&all, |a| !a.succeeded && a.endpoint_id == RARE, 1000);
        assert_eq!((ids.len(), examined), (expected.len(), expected.len()));
        assert_eq!(ids, expected);
        // One endpoint among busier ones.
        let f = AttemptFilter { endpoint: Some(RARE), ..Default::default() };
        let (ids, examined) = page(&store, &f, 100);
        assert_eq!((ids, examined), (brute(&all, |a| a.endpoint_id == RARE, 100), 100));
        // One event: its attempts, nothing else.
        let (target, rec) = &all[12_345];
        let f = AttemptFilter { webhooks: Some(vec![(rec.webhook_id, None)]), ..Default::default() };
        assert_eq!(page(&store, &f, 50), (vec![*target], 1));
        // A time window is a key range: 100 ms of history, and the LATE_MS after it (an attempt is
        // recorded after it was sent), 1,100 attempts read.
        let f =
            AttemptFilter { since_ms: Some(T0 + 30_000), until_ms: Some(T0 + 30_099), ..Default::default() };
        let (ids, examined) = page(&store, &f, 250);
        assert_eq!((ids.len(), examined), (100, 100 + LATE_MS as usize));
        assert_eq!(ids, brute(&all, |a| (T0 + 30_000..=T0 + 30_099).contains(&a.sent_at), 250));
        // Sorted by duration over a window of 1,000: the window and the page are read, no more.
        let f = AttemptFilter {
            since_ms: Some(T0 + 10_000),
            until_ms: Some(T0 + 10_999),
            sort: AttemptSort::DurationMs { descending: true },
            ..Default::default()
        };
        let ((items, next), examined) =
            store.list_attempts_counted(TENANT, &f, None, 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(examined, 1000 + LATE_MS as usize + 20);
        assert!(items.windows(2).all(|w| w[0].1.duration_ms >= w[1].1.duration_ms));
        assert_eq!(items[0].1.duration_ms, 250);
        let ((rest, _), _) =
            store.list_attempts_counted(TENANT, &f, next, 2000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(items.len() + rest.len(), 1000);
        assert!(
            rest.iter().all(
                |(id, a)| a.duration_ms <= items[19].1.duration_ms && !items.iter().any(|(i, _)| i == id)
            )
        );
        // Sorting all 60,000 would need more than the window allows: refused with advice, not read.
        let f = AttemptFilter { sort: AttemptSort::StatusCode { descending: false }, ..Default::default() };
        assert!(matches!(store.list_attempts(TENANT, &f, None, 5), Err(HistoryError::WindowTooLarge)));
    }

    #[test]
    fn text_search_and_unbounded_sorts_are_bounded() {
        let (_dir, store, all) = history(3_000);
        let f = AttemptFilter { text: Some("needle".into()), ..Default::default() };
        let (ids, _) = page(&store, &f, 50);
        assert_eq!(ids, brute(&all, |a| a.url.contains("needle"), 50));
        // Sorting needs the whole window in hand; too large a window is refused, not read.
        let f = AttemptFilter { sort: AttemptSort::StatusCode { descending: false }, ..Default::default() };
        let ((items, _), _) =
            store.list_attempts_counted(TENANT, &f, None, 5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(items[0].1.status_code, Some(200));
        const { assert!(MAX_SORT_WINDOW > 3_000, "this history fits the window") };
    }

    fn outcome<'a>(id: u64, a: &'a AttemptRecord) -> AttemptOutcomeWrite<'a> {
        AttemptOutcomeWrite {
            tenant: TENANT,
            endpoint: a.endpoint_id,
            attempt_id: id,
            attempt: a,
            delivery: &DeliveryChange::Unchanged,
            cursor: None,
        }
    }

    /// Attempts as the dispatcher records them: consecutive ids taken when they finished, `delay_ms`
    /// after they were sent.
    fn recorded(first: u64, n: u64, delay_ms: u64, endpoint: u64) -> Vec<(u64, AttemptRecord)> {
        (0..n)
            .map(|i| {
                let (_, mut a) = attempt(i);
                a.endpoint_id = endpoint;
                a.webhook_id = 1_000_000 + first + i;
                a.sent_at = (first >> 12) / 1000 - delay_ms;
                a.succeeded = i % 3 != 0;
                (first + i, a)
            })
            .collect()
    }

    #[test]
    fn runs_of_consecutive_ids_are_one_record_and_read_back_one_by_one() {
        let (_dir, store, _) = history(0);
        let base = id_floor(T0);
        // Two runs of one endpoint (a full one and the rest), then one of another endpoint.
        let mut all = recorded(base, MAX_RUN as u64 + 6, 5, GOOD);
        all.extend(recorded(base + MAX_RUN as u64 + 6, 3, 5, RARE));
        let writes: Vec<_> = all.iter().map(|(id, a)| outcome(*id, a)).collect();
        store.write_attempt_outcomes(&writes).unwrap_or_else(|e| panic!("{e}"));
        let runs: Vec<(u64, u64)> = store
            .inner
            .state
            .scan_prefix([keys::ATTEMPT])
            .map(|r| r.map(|(k, v)| (keys::trailing_u64(&k) - base, Store::run_len(&v))).unwrap_or_default())
            .collect();
        assert_eq!(runs, [(0, MAX_RUN as u64), (MAX_RUN as u64, 6), (MAX_RUN as u64 + 6, 3)]);
        for (id, a) in &all {
            assert_eq!(store.attempt(TENANT, *id).unwrap_or_default().as_ref(), Some(a));
        }
        let past = base + all.len() as u64;
        assert_eq!(store.attempt(TENANT, past).unwrap_or_default(), None, "past the last run");
        assert_eq!(store.attempt(TENANT, base - 1).unwrap_or_default(), None, "before the first");
        assert_eq!(store.max_id_in_use().unwrap_or(0), past - 1);

        // Every source, both orders, pages that end inside a run: the same as reading everything.
        let filters = [
            AttemptFilter::default(),
            AttemptFilter { endpoint: Some(GOOD), ..Default::default() },
            AttemptFilter { succeeded: Some(false), ..Default::default() },
            AttemptFilter { webhooks: Some(vec![(all[70].1.webhook_id, None)]), ..Default::default() },
        ];
        for f in filters {
            for sort in [AttemptSort::SentAtDesc, AttemptSort::SentAtAsc] {
                let f = AttemptFilter { sort, ..f.clone() };
                let mut got = Vec::new();
                let mut after = None;
                loop {
                    let (items, next) =
                        store.list_attempts(TENANT, &f, after, 7).unwrap_or_else(|e| panic!("{e}"));
                    got.extend(items.into_iter().map(|(id, _)| id));
                    match next {
                        Some(c) => after = Some(c),
                        None => break,
                    }
                }
                let mut expected: Vec<u64> = all
                    .iter()
                    .filter(|(_, a)| f.keeps(a))
                    .filter(|(_, a)| f.webhooks.as_ref().is_none_or(|w| w[0].0 == a.webhook_id))
                    .map(|(id, _)| *id)
                    .collect();
                if sort == AttemptSort::SentAtDesc {
                    expected.reverse();
                }
                assert_eq!(got, expected, "{f:?}");
            }
        }
        // A window that starts inside a run.
        let from = all[10].1.sent_at;
        let f = AttemptFilter { since_ms: Some(from), ..Default::default() };
        assert_eq!(page(&store, &f, 1000).0.len(), all.len(), "every attempt was sent at the same ms");
    }

    #[test]
    fn attempts_recorded_long_after_they_were_sent_stay_in_their_window() {
        let (_dir, store, _) = history(0);
        // Sent at T0 + 1 s; one answered at once, one after a 90 s timeout.
        let quick = recorded(id_floor(T0 + 1_002), 1, 2, GOOD);
        let slow = recorded(id_floor(T0 + 91_000), 1, 90_000, RARE);
        assert_eq!((quick[0].1.sent_at, slow[0].1.sent_at), (T0 + 1_000, T0 + 1_000));
        for (id, a) in quick.iter().chain(&slow) {
            store.write_attempt_outcome(&outcome(*id, a)).unwrap_or_else(|e| panic!("{e}"));
        }
        let window = |since: u64, until: u64, endpoint: Option<u64>, sort: AttemptSort| AttemptFilter {
            since_ms: Some(since),
            until_ms: Some(until),
            endpoint,
            sort,
            ..Default::default()
        };
        for sort in
            [AttemptSort::SentAtDesc, AttemptSort::SentAtAsc, AttemptSort::DurationMs { descending: true }]
        {
            let (ids, _) = page(&store, &window(T0, T0 + 1_000, None, sort), 10);
            let mut expected = vec![quick[0].0, slow[0].0];
            if sort != AttemptSort::SentAtAsc {
                expected.reverse();
            }
            if let AttemptSort::DurationMs { .. } = sort {
                expected.sort_by_key(|id| {
                    Reverse(if *id == slow[0].0 { slow[0].1.duration_ms } else { quick[0].1.duration_ms })
                });
            }
            assert_eq!(ids, expected, "{sort:?}");
        }
        let (ids, _) = page(&store, &window(T0, T0 + 1_000, Some(RARE), AttemptSort::SentAtDesc), 10);
        assert_eq!(ids, [slow[0].0], "the late index knows the endpoint");
        // Sent after the window: both are read (one within LATE_MS of its end, one from the late index),
        // neither is shown.
        let (ids, examined) = page(&store, &window(T0, T0 + 999, None, AttemptSort::SentAtDesc), 10);
        assert_eq!((ids, examined), (vec![], 2));
        let (_, examined) = page(&store, &window(T0, T0 + 1, Some(GOOD), AttemptSort::SentAtDesc), 10);
        assert_eq!(
            examined, 0,
            "the late attempt is another endpoint's; the quick one was recorded too late"
        );
        let (ids, _) = page(&store, &window(T0 + 1_001, T0 + 200_000, None, AttemptSort::SentAtDesc), 10);
        assert_eq!(ids, Vec::<u64>::new(), "recorded in the window, but sent before it");
    }

    #[test]
    fn purged_runs_take_their_index_entries_and_history_segments_with_them() {
        let (_dir, store, _) = history(0);
        let old = recorded(id_floor(T0), 10, 5_000, GOOD);
        for w in old.iter().map(|(id, a)| outcome(*id, a)).collect::<Vec<_>>().chunks(10) {
            store.write_attempt_outcomes(w).unwrap_or_else(|e| panic!("{e}"));
        }
        store.inner.history.rotate_now().unwrap_or_else(|e| panic!("{e}"));
        let new = recorded(id_floor(T0 + 60_000), 4, 5, GOOD);
        let writes: Vec<_> = new.iter().map(|(id, a)| outcome(*id, a)).collect();
        store.write_attempt_outcomes(&writes).unwrap_or_else(|e| panic!("{e}"));
        let dir = store.data_dir().join("history");
        let files = || std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files(), 2);

        let live = super::super::Live { endpoints: [(GOOD, TENANT)].into(), id_ceiling: u64::MAX };
        let purged = store.purge(T0 + 30_000, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((purged.attempts, purged.segments), (10, 1));
        assert_eq!(files(), 1, "the old segment is deleted");
        let left: Vec<u8> = ["A", "a", "w", "x", "l", "v"]
            .iter()
            .map(|p| store.inner.state.scan_prefix(p.as_bytes()).count() as u8)
            .collect();
        // The new run: one A, one a, one w (its webhook ids are close together), two x (attempts 0
        // and 3 failed), no late one (the old run's late entries went with it), and no v.
        assert_eq!(left, [1, 1, 1, 2, 0, 0]);
        for (id, a) in &new {
            assert_eq!(store.attempt(TENANT, *id).unwrap_or_default().as_ref(), Some(a));
        }
        assert_eq!(store.attempt(TENANT, old[3].0).unwrap_or_default(), None);
    }

    #[test]
    fn an_older_stores_inline_attempts_read_beside_runs_and_everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let settings = StoreSettings {
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Fsync,
            cache_bytes: 8 << 20,
            master_key: None,
        };
        // Written by a binary before runs: ids taken when sent, 10 ms apart, each record inline.
        let legacy: Vec<(u64, AttemptRecord)> = (0..3)
            .map(|i| {
                let (_, mut a) = attempt(i);
                a.sent_at = T0 + 10 * i;
                a.webhook_id = 500 + i;
                (id_floor(a.sent_at), a)
            })
            .collect();
        let runs = recorded(id_floor(T0 + 1_000), 5, 5, GOOD);
        {
            let store = Store::open(&settings).unwrap_or_else(|e| panic!("{e}"));
            let mut batch = Ordered::default();
            for (id, a) in &legacy {
                let record = records::encode(a).unwrap_or_else(|e| panic!("{e}"));
                batch.insert(keys::two(keys::ATTEMPT, TENANT, *id), record);
                batch.insert(keys::two(keys::ATTEMPT_BY_ENDPOINT, a.endpoint_id, *id), []);
                add_indexes(&mut batch, TENANT, *id, a);
                add_legacy_webhook_index(&mut batch, TENANT, *id, a);
            }
            batch.apply(&store.inner.state).unwrap_or_else(|e| panic!("{e}"));
            let writes: Vec<_> = runs.iter().map(|(id, a)| outcome(*id, a)).collect();
            store.write_attempt_outcomes(&writes).unwrap_or_else(|e| panic!("{e}"));
            store.sync().unwrap_or_else(|e| panic!("{e}"));
        }
        let store = Store::reopen_for_test(&settings);
        let all: Vec<&(u64, AttemptRecord)> = legacy.iter().chain(&runs).collect();
        for (id, a) in &all {
            assert_eq!(store.attempt(TENANT, *id).unwrap_or_default().as_ref(), Some(a), "{id}");
        }
        let newest_first: Vec<u64> = all.iter().rev().map(|(id, _)| *id).collect();
        assert_eq!(page(&store, &AttemptFilter::default(), 100).0, newest_first);
        let good: Vec<u64> =
            all.iter().rev().filter(|(_, a)| a.endpoint_id == GOOD).map(|(id, _)| *id).collect();
        let f = AttemptFilter { endpoint: Some(GOOD), ..Default::default() };
        assert_eq!(page(&store, &f, 100).0, good);
        let f = AttemptFilter { webhooks: Some(vec![(501, None)]), ..Default::default() };
        assert_eq!(page(&store, &f, 100).0, [legacy[1].0]);
        // The run's segment is counted at open, so a purge that keeps the run keeps its file.
        let live = super::super::Live { endpoints: [(GOOD, TENANT)].into(), id_ceiling: u64::MAX };
        store.inner.history.rotate_now().unwrap_or_else(|e| panic!("{e}"));
        let purged = store.purge(T0 + 500, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((purged.attempts, purged.segments), (3, 0));
        for (id, a) in &runs {
            assert_eq!(store.attempt(TENANT, *id).unwrap_or_default().as_ref(), Some(a));
        }
        let purged = store.purge(T0 + 2_000, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((purged.attempts, purged.segments), (5, 1));
        for prefix in [b"A", b"a", b"v", b"w", b"x", b"l"] {
            assert_eq!(store.inner.state.scan_prefix(prefix).count(), 0, "{:?}", prefix);
        }
    }

    #[test]
    fn a_webhook_finds_its_attempts_in_every_run_that_carried_it() {
        let (_dir, store, _) = history(0);
        let w0 = id_floor(T0);
        let far = w0 + 2 * WEBHOOK_SPAN;
        let mut next = id_floor(T0 + 5_000);
        let mut write = |endpoint: u64, webhooks: &[u64]| -> Vec<u64> {
            let attempts: Vec<(u64, AttemptRecord)> = webhooks
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let (_, mut a) = attempt(1);
                    a.endpoint_id = endpoint;
                    a.webhook_id = *w;
                    a.events = vec![*w, *w + 1];
                    (next + i as u64, a)
                })
                .collect();
            next += webhooks.len() as u64;
            let writes: Vec<_> = attempts.iter().map(|(id, a)| outcome(*id, a)).collect();
            store.write_attempt_outcomes(&writes).unwrap_or_else(|e| panic!("{e}"));
            attempts.iter().map(|(id, _)| *id).collect()
        };
        let first = write(GOOD, &[w0, w0 + 1, far]); // two ranges: w0..=w0+1 and far
        let other = write(RARE, &[w0 + 1]);
        let retry = write(GOOD, &[far, w0]);
        assert_eq!(store.inner.state.scan_prefix(b"w").count(), 2 + 1 + 2);

        let found = |w: u64| store.webhook_attempts(TENANT, w).unwrap_or_default();
        assert_eq!(found(w0), [(first[0], GOOD), (retry[1], GOOD)]);
        assert_eq!(found(w0 + 1), [(first[1], GOOD), (other[0], RARE)]);
        assert_eq!(found(far), [(first[2], GOOD), (retry[0], GOOD)]);
        assert_eq!(found(w0 + 2), [], "inside a range's span, but no attempt carried it");
        assert_eq!(found(w0 - 1), []);
        assert_eq!(store.attempts_of(TENANT, far, GOOD).unwrap_or_default(), (2, Some(retry[0])));
        assert_eq!(store.attempts_of(TENANT, w0 + 1, RARE).unwrap_or_default(), (1, Some(other[0])));
        assert_eq!(store.attempt_count(TENANT, w0 + 1, GOOD).unwrap_or(9), 1);
        assert_eq!(store.batch_events(TENANT, far).unwrap_or_default(), Some(vec![far, far + 1]));
        let f = AttemptFilter { webhooks: Some(vec![(w0, None), (far, Some(GOOD))]), ..Default::default() };
        assert_eq!(page(&store, &f, 10).0, [retry[1], retry[0], first[2], first[0]]);

        let live =
            super::super::Live { endpoints: [(GOOD, TENANT), (RARE, TENANT)].into(), id_ceiling: u64::MAX };
        let purged = store.purge(T0 + 60_000, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(purged.attempts, 6);
        for prefix in [b"A", b"a", b"w", b"x", b"l"] {
            assert_eq!(store.inner.state.scan_prefix(prefix).count(), 0, "{:?}", prefix);
        }
        assert_eq!(found(w0), []);
    }
}
