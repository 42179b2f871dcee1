//! Reading the event log: one event by id, a tenant's events newest first, and catch-up scans.

use super::damage::or_skip;
use super::records::{self, IdempotencyRecord};
use super::segment::Pointer;
use super::{Store, StoreError, keys};
use crate::model::{EventRecord, LogRecord};

/// What the index holds under `L` T V: where the record is in the segments, or — in stores written
/// before segments existed — the record itself (it starts with the record format version, never with
/// [`Pointer::TAG`]).
pub(super) enum Entry<'a> {
    At(Pointer),
    Inline(&'a [u8]),
}

impl Entry<'_> {
    pub(super) fn of(value: &[u8]) -> Entry<'_> {
        match Pointer::decode(value) {
            Some(p) => Entry::At(p),
            None => Entry::Inline(value),
        }
    }
}

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
        let idx = (id - keys::trailing_u64(&k)) as usize; // first <= id by the range
        match Entry::of(&v) {
            Entry::At(p) if idx >= p.events as usize => Ok(None), // past the record: not an event id
            Entry::At(p) => self.inner.segments.read_one(&p, (tenant, keys::trailing_u64(&k)), idx),
            Entry::Inline(bytes) => {
                let mut record: LogRecord = records::decode(&k, bytes)?;
                Ok((idx < record.events.len()).then(|| record.events.swap_remove(idx)))
            }
        }
    }

    /// The record an index entry names (`None` when its segment is gone: purged meanwhile).
    pub(super) fn load(&self, key: &[u8], value: &[u8]) -> Result<Option<LogRecord>, StoreError> {
        match Entry::of(value) {
            Entry::At(p) => {
                let owner = (keys::u64_at(key, 1), keys::trailing_u64(key));
                Ok(self.inner.segments.read(&p, owner)?.map(|events| LogRecord { events }))
            }
            Entry::Inline(bytes) => records::decode(key, bytes).map(Some),
        }
    }

    /// How many events the record an index entry names holds, without reading it.
    pub(super) fn entry_events(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        match Entry::of(value) {
            Entry::At(p) => Ok(u64::from(p.events)),
            Entry::Inline(bytes) => Ok(records::decode::<LogRecord>(key, bytes)?.events.len() as u64),
        }
    }

    /// The records of a tenant from the one holding `from_id` on, oldest first, as `(first id, record)`.
    pub fn records_from(
        &self,
        tenant: u64,
        from_id: u64,
    ) -> impl Iterator<Item = Result<(u64, LogRecord), StoreError>> + use<> {
        let store = self.clone();
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
        self.inner.log.range(keys::two(keys::LOG, tenant, start)..=hi).filter_map(move |item| {
            let loaded = item.map_err(StoreError::from).and_then(|(k, v)| store.load(&k, &v).map(|r| (k, r)));
            match loaded {
                Ok((k, Some(record))) => Some(Ok((keys::trailing_u64(&k), record))),
                Ok((_, None)) => None, // purged while being read
                Err(e) => Some(Err(e)),
            }
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
            // A damaged record is left out (one of its events read by id answers that it is damaged).
            let Some(record) = or_skip(self.load(&k, &v), "events")? else { continue };
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

/// Where the index is known to cover the segments up to: `M indexed` in the log tree.
pub(super) fn indexed_key() -> Vec<u8> {
    keys::named(keys::LOG_META, "indexed")
}

pub(super) fn encode_position((segment, offset): (u64, u64)) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&segment.to_be_bytes());
    out[8..].copy_from_slice(&offset.to_be_bytes());
    out
}

/// Index writes of a recovery go in batches of this many frames.
const RECOVERY_BATCH: usize = 1_000;

impl Store {
    /// At open: replays into the index the frames it lacks (written before a crash; sled is not
    /// flushed per ingest group), counts the index's pointers per segment, and deletes segments
    /// nothing points into any more.
    pub(super) fn recover_log(&self) -> Result<(), StoreError> {
        let log = &self.inner.log;
        let from = log.get(indexed_key())?.map_or((0, 0), |v| (keys::u64_at(&v, 0), keys::u64_at(&v, 8)));
        let mut batch = sled::Batch::default();
        let (mut pending, mut replayed, mut position) = (0usize, 0u64, from);
        self.inner.segments.scan_from(from, |f| {
            batch.insert(&keys::two(keys::LOG, f.tenant, f.first_id), &f.pointer.encode());
            for (i, ev) in f.items.iter().enumerate() {
                if let Some(key) = &ev.idempotency_key {
                    let rec =
                        IdempotencyRecord { event_id: f.first_id + i as u64, received_at: ev.received_at };
                    batch
                        .insert(keys::tenant_named(keys::IDEMPOTENCY, f.tenant, key), records::encode(&rec)?);
                }
            }
            position = (f.pointer.segment, f.pointer.offset + u64::from(f.pointer.len));
            pending += 1;
            replayed += 1;
            if pending >= RECOVERY_BATCH {
                batch.insert(indexed_key(), &encode_position(position));
                log.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
            Ok(())
        })?;
        if pending > 0 {
            batch.insert(indexed_key(), &encode_position(position));
            log.apply_batch(batch)?;
        }
        if replayed > 0 {
            tracing::info!(records = replayed, "log index: replayed records written before the last stop");
            self.inner.db.flush()?;
        }
        for item in log.scan_prefix([keys::LOG]).values() {
            if let Entry::At(p) = Entry::of(&item?) {
                self.inner.segments.add_refs([p.segment]);
            }
        }
        self.inner.segments.collect()?;
        Ok(())
    }
}

#[cfg(test)]
impl Store {
    /// Appends one record and indexes it, as the group committer does.
    pub(super) fn append_for_test(&self, tenant: u64, first_id: u64, record: &LogRecord) {
        let append = super::segment::Append { tenant, first_id, items: &record.events };
        let (pointers, _) = self.inner.segments.append(&[append]).unwrap_or_else(|e| panic!("{e}"));
        self.inner
            .log
            .insert(keys::two(keys::LOG, tenant, first_id), &pointers[0].encode())
            .unwrap_or_else(|e| panic!("{e}"));
        self.inner.segments.add_refs([pointers[0].segment]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreSettings;
    use crate::store::segment::Append;

    fn settings(dir: &std::path::Path) -> StoreSettings {
        StoreSettings::for_test(dir)
    }

    fn event(key: Option<&str>) -> EventRecord {
        EventRecord {
            event_type: "a.b".into(),
            channels: vec![],
            payload: "{}".into(),
            received_at: 1_234,
            idempotency_key: key.map(str::to_string),
            routes: vec![1],
        }
    }

    #[test]
    fn frames_the_index_lacks_after_a_crash_are_replayed_into_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let indexed = LogRecord { events: vec![event(None), event(Some("k1"))] };
        let lost = LogRecord { events: vec![event(Some("k2")), event(None), event(None)] };
        {
            let store = Store::open(&settings(dir.path())).unwrap_or_else(|e| panic!("{e}"));
            // A tenant the database knows: the start-up check refuses events of unknown tenants.
            let tenant = crate::model::TenantRecord {
                serial: 7,
                id: "t".into(),
                name: "t".into(),
                created_at: 0,
                updated_at: 0,
                disable_after_ms: None,
            };
            store.put_tenant(&tenant).unwrap_or_else(|e| panic!("{e}"));
            store.append_for_test(7, 100, &indexed);
            // Written and synced, but the crash came before its index entries reached sled.
            let append = [Append { tenant: 7, first_id: 200, items: &lost.events }];
            store.inner.segments.append(&append).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(store.event(7, 201).unwrap_or_default(), None);
        }
        let store = Store::reopen_for_test(&settings(dir.path()));
        assert_eq!(store.event(7, 101).unwrap_or_default(), Some(event(Some("k1"))));
        assert_eq!(store.event(7, 202).unwrap_or_default(), Some(event(None)));
        assert_eq!(store.event(7, 203).unwrap_or_default(), None);
        let key = store.idempotency(7, "k2").unwrap_or_default().map(|r| (r.event_id, r.received_at));
        assert_eq!(key, Some((200, 1_234)), "idempotency keys come back with their events");
        let firsts: Vec<u64> = store.records_from(7, 0).map(|r| r.map_or(0, |(first, _)| first)).collect();
        assert_eq!(firsts, [100, 200]);
        let (page, _) = store.list_events(7, &EventFilter::default(), None, 10).unwrap_or_default();
        assert_eq!(page.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [202, 201, 200, 101, 100]);
    }
}
