//! Delivery state and attempt history: cursors, delivery records, the retry queue, attempts and their
//! indexes, batch ranges, and per-endpoint statistics.
//!
//! # History queries
//! Attempt ids come from the id clock (`unix_µs << 12`), so a time window is a key range. A query is
//! answered from the narrowest source that covers it, never by reading every attempt:
//! - an event: its webhook ids (the event id, and the batch ids that carried it) through the `v` index —
//!   a handful of keys;
//! - `status=failed`: the `x` index of failed attempts (the endpoint is in its value);
//! - an endpoint: the `a` index;
//! - otherwise the tenant's attempts themselves.
//!
//! A time-ordered page stops at `limit` matches or after [`MAX_SCANNED_PER_PAGE`] entries (then it returns
//! a cursor to continue). Sorting by status code or duration needs every match of the window in hand: it
//! reads at most [`MAX_SORT_WINDOW`] matches and otherwise asks for a narrower window.

use std::cmp::Reverse;

use super::records;
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

/// Everything one attempt changes, written as one atomic sled batch.
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

    /// The attempt-id range of the time window: ids are `unix_µs << 12`.
    fn id_range(&self) -> (u64, u64) {
        let lo = self.since_ms.map_or(0, id_floor);
        let hi = self.until_ms.map_or(u64::MAX, |u| id_floor(u.saturating_add(1)).saturating_sub(1));
        (lo, hi)
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

    /// Several outcomes (of one endpoint's attempts that finished together) as one atomic sled batch:
    /// sled's cost is per write, so a dispatcher that finishes many attempts at once pays once.
    pub fn write_attempt_outcomes(&self, writes: &[AttemptOutcomeWrite<'_>]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes {
            add_outcome(&mut batch, w)?;
        }
        self.inner.state.apply_batch(batch)?;
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

    /// The next entries of an endpoint's retry queue, earliest first, as `(due ms, webhook id)`.
    pub fn due(&self, endpoint: u64, limit: usize) -> Result<Vec<(u64, u64)>, StoreError> {
        self.inner
            .state
            .scan_prefix(keys::one(keys::QUEUE, endpoint))
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

    /// The events a batch carried (from its first attempt).
    pub fn batch_events(&self, tenant: u64, batch_id: u64) -> Result<Option<Vec<u64>>, StoreError> {
        for item in self.inner.state.scan_prefix(keys::two(keys::ATTEMPT_BY_WEBHOOK, tenant, batch_id)) {
            let (k, _) = item?;
            if let Some(a) = self.attempt(tenant, keys::trailing_u64(&k))? {
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
        let mut n = 0;
        let mut last = None;
        for item in self.inner.state.scan_prefix(keys::two(keys::ATTEMPT_BY_WEBHOOK, tenant, webhook_id)) {
            let (k, v) = item?;
            if keys::u64_at(&v, 0) == endpoint {
                n += 1;
                last = Some(keys::trailing_u64(&k));
            }
        }
        Ok((n, last))
    }

    /// How many attempts of this webhook id the endpoint has had.
    pub fn attempt_count(&self, tenant: u64, webhook_id: u64, endpoint: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.inner.state.scan_prefix(keys::two(keys::ATTEMPT_BY_WEBHOOK, tenant, webhook_id)) {
            let (_, v) = item?;
            n += usize::from(keys::u64_at(&v, 0) == endpoint);
        }
        Ok(n)
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

    pub fn attempt(&self, tenant: u64, id: u64) -> Result<Option<AttemptRecord>, StoreError> {
        let k = keys::two(keys::ATTEMPT, tenant, id);
        self.inner.state.get(k)?.map(|v| records::decode(&k, &v)).transpose()
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
        let source = match (&filter.webhooks, filter.succeeded, filter.endpoint) {
            (Some(w), _, _) => Source::Webhooks(w.clone()),
            (None, Some(false), _) => Source::Failed,
            (None, _, Some(e)) => Source::Endpoint(e),
            (None, _, None) => Source::Tenant,
        };
        let state = &self.inner.state;
        fn ordered<'a, I>(
            it: I,
            ascending: bool,
        ) -> Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a>
        where
            I: DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a,
        {
            if ascending { Box::new(it) } else { Box::new(it.rev()) }
        }
        Ok(match source {
            Source::Webhooks(webhooks) => {
                let mut ids = Vec::new();
                for (w, only) in webhooks {
                    for item in state.scan_prefix(keys::two(keys::ATTEMPT_BY_WEBHOOK, tenant, w)) {
                        let (k, v) = item?;
                        let id = keys::trailing_u64(&k);
                        if only.is_none_or(|e| e == keys::u64_at(&v, 0)) && (lo..=hi).contains(&id) {
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
                let endpoint = filter.endpoint;
                let range =
                    keys::two(keys::FAILED_ATTEMPT, tenant, lo)..=keys::two(keys::FAILED_ATTEMPT, tenant, hi);
                Box::new(ordered(state.range(range), ascending).filter_map(move |item| {
                    let (k, v) = match item {
                        Ok(kv) => kv,
                        Err(e) => return Some(Err(e.into())),
                    };
                    if endpoint.is_some_and(|e| e != keys::u64_at(&v, 0)) {
                        return None;
                    }
                    let id = keys::trailing_u64(&k);
                    self.attempt(tenant, id).transpose().map(|r| r.map(|a| (id, a)))
                }))
            }
            Source::Endpoint(endpoint) => {
                let range = keys::two(keys::ATTEMPT_BY_ENDPOINT, endpoint, lo)
                    ..=keys::two(keys::ATTEMPT_BY_ENDPOINT, endpoint, hi);
                Box::new(ordered(state.range(range), ascending).filter_map(move |item| {
                    let (k, _) = match item {
                        Ok(kv) => kv,
                        Err(e) => return Some(Err(e.into())),
                    };
                    let id = keys::trailing_u64(&k);
                    self.attempt(tenant, id).transpose().map(|r| r.map(|a| (id, a)))
                }))
            }
            Source::Tenant => {
                let range = keys::two(keys::ATTEMPT, tenant, lo)..=keys::two(keys::ATTEMPT, tenant, hi);
                Box::new(ordered(state.range(range), ascending).map(|item| {
                    let (k, v) = item?;
                    Ok((keys::trailing_u64(&k), records::decode(&k, &v)?))
                }))
            }
        })
    }

    /// Builds the `v` and `x` indexes for attempts stored before they existed (once per store).
    pub(crate) fn index_history(&self) -> Result<(), StoreError> {
        const DONE: &str = "history_index_v2";
        if self.meta(DONE)?.is_some() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for item in self.inner.state.scan_prefix([keys::ATTEMPT]) {
            let (k, v) = item?;
            let tenant = keys::u64_at(&k, 1);
            let id = keys::trailing_u64(&k);
            let a: AttemptRecord = records::decode(&k, &v)?;
            add_indexes(&mut batch, tenant, id, &a);
            n += 1;
            if n % 10_000 == 0 {
                self.inner.state.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.inner.state.apply_batch(batch)?;
        self.put_meta(DONE, b"1")?;
        if n > 0 {
            tracing::info!(attempts = n, "indexed the attempt history");
        }
        Ok(())
    }
}

fn add_indexes(batch: &mut sled::Batch, tenant: u64, attempt_id: u64, a: &AttemptRecord) {
    let endpoint = a.endpoint_id.to_be_bytes();
    batch.insert(&keys::three(keys::ATTEMPT_BY_WEBHOOK, tenant, a.webhook_id, attempt_id), &endpoint);
    if !a.succeeded {
        batch.insert(&keys::two(keys::FAILED_ATTEMPT, tenant, attempt_id), &endpoint);
    }
}

/// Adds what one attempt changes to a sled batch.
fn add_outcome(batch: &mut sled::Batch, w: &AttemptOutcomeWrite<'_>) -> Result<(), StoreError> {
    batch.insert(&keys::two(keys::ATTEMPT, w.tenant, w.attempt_id), records::encode(w.attempt)?);
    batch.insert(&keys::two(keys::ATTEMPT_BY_ENDPOINT, w.endpoint, w.attempt_id), &[]);
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
        batch.insert(&keys::two(keys::BATCH_RANGE, w.endpoint, *first), &v);
    }
    if let DeliveryChange::Put { webhook_id, record, old_due, new_due } = &w.delivery {
        batch.insert(&keys::two(keys::DELIVERY, w.endpoint, *webhook_id), records::encode(record)?);
        if let Some(due) = old_due {
            batch.remove(&keys::three(keys::QUEUE, w.endpoint, *due, *webhook_id));
        }
        if let Some(due) = new_due {
            batch.insert(&keys::three(keys::QUEUE, w.endpoint, *due, *webhook_id), &[]);
        }
    }
    if let Some(c) = w.cursor {
        batch.insert(&keys::one(keys::CURSOR, w.endpoint), &c.to_be_bytes());
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
        // A time window is a key range: 100 ms of history, 100 attempts read.
        let f =
            AttemptFilter { since_ms: Some(T0 + 30_000), until_ms: Some(T0 + 30_099), ..Default::default() };
        let (ids, examined) = page(&store, &f, 250);
        assert_eq!((ids.len(), examined), (100, 100));
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
        assert_eq!(examined, 1000 + 20);
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
}
