//! Reading the event log: one event by id, a tenant's events newest first, and catch-up scans.

use super::records::{self, IdempotencyRecord};
use super::{Store, StoreError, keys};
use crate::model::{EventRecord, LogRecord};

/// Filters of the event list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub channel: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl EventFilter {
    fn matches(&self, ev: &EventRecord) -> bool {
        self.event_type.as_ref().is_none_or(|t| *t == ev.event_type)
            && self.channel.as_ref().is_none_or(|c| ev.channels.contains(c))
            && self.since_ms.is_none_or(|s| ev.received_at >= s)
            && self.until_ms.is_none_or(|u| ev.received_at <= u)
    }
}

/// At most this many events are examined for one page, so a filter that matches little cannot make one
/// request scan a whole log; the caller gets a cursor to go on from.
const MAX_SCANNED_PER_PAGE: usize = 100_000;

impl Store {
    /// One event, by id.
    pub fn event(&self, tenant: u64, id: u64) -> Result<Option<EventRecord>, StoreError> {
        let lo = keys::two(keys::LOG, tenant, 0);
        let hi = keys::two(keys::LOG, tenant, id);
        let Some(item) = self.inner.log.range(lo..=hi).next_back() else { return Ok(None) };
        let (k, v) = item?;
        let first = keys::trailing_u64(&k);
        let mut record: LogRecord = records::decode(&k, &v)?;
        let idx = (id - first) as usize; // first <= id by the range
        if idx < record.events.len() { Ok(Some(record.events.swap_remove(idx))) } else { Ok(None) }
    }

    /// The records of a tenant from the one holding `from_id` on, oldest first, as `(first id, record)`.
    pub fn records_from(
        &self,
        tenant: u64,
        from_id: u64,
    ) -> impl Iterator<Item = Result<(u64, LogRecord), StoreError>> + use<> {
        let lo = keys::two(keys::LOG, tenant, 0);
        // Start at the record that contains `from_id`, which may begin before it.
        let start = self
            .inner
            .log
            .range(lo..=keys::two(keys::LOG, tenant, from_id))
            .next_back()
            .and_then(Result::ok)
            .map_or(from_id, |(k, _)| keys::trailing_u64(&k));
        let hi = keys::two(keys::LOG, tenant, u64::MAX);
        self.inner.log.range(keys::two(keys::LOG, tenant, start)..=hi).map(|item| {
            let (k, v) = item?;
            Ok((keys::trailing_u64(&k), records::decode(&k, &v)?))
        })
    }

    /// A page of a tenant's events, newest first, strictly older than `before` when given.
    /// Returns the events and the cursor for the next page.
    pub fn list_events(
        &self,
        tenant: u64,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<super::PageOf<EventRecord>, StoreError> {
        // An event received at or after `since` has an id of at least since's clock value (ids never
        // run behind the clock), so the scan can stop there.
        let floor = filter.since_ms.map_or(0, |s| s.saturating_mul(1000) << 12);
        let lo = keys::two(keys::LOG, tenant, 0);
        let hi = keys::two(keys::LOG, tenant, before.unwrap_or(u64::MAX));
        let mut out = Vec::with_capacity(limit.min(256));
        let mut scanned = 0usize;
        for item in self.inner.log.range(lo..hi).rev() {
            let (k, v) = item?;
            let first = keys::trailing_u64(&k);
            let record: LogRecord = records::decode(&k, &v)?;
            for (i, ev) in record.events.into_iter().enumerate().rev() {
                let id = first + i as u64;
                if before.is_some_and(|b| id >= b) {
                    continue;
                }
                if id < floor {
                    return Ok((out, None));
                }
                scanned += 1;
                if filter.matches(&ev) {
                    out.push((id, ev));
                    if out.len() == limit {
                        return Ok((out, Some(id)));
                    }
                }
                if scanned >= MAX_SCANNED_PER_PAGE {
                    return Ok((out, Some(id)));
                }
            }
        }
        Ok((out, None))
    }

    /// The event an idempotency key was first used for.
    pub fn idempotency(&self, tenant: u64, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let k = keys::tenant_named(keys::IDEMPOTENCY, tenant, key);
        self.inner.log.get(&k)?.map(|v| records::decode(&k, &v)).transpose()
    }
}
