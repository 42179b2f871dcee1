//! Retention: what is older than `storage.retention` is purged, in the background, once nothing still
//! needs it.
//!
//! - **Events** (log records) older than the window go once every endpoint of their tenant has handed
//!   them off: an event at or after an endpoint's cursor, or carried by a delivery still pending (in the
//!   retry queue), holds its record — and, since a record is purged whole and cursors only move forward,
//!   everything after it. A disabled endpoint's cursor does not move, so its deliveries are kept for it.
//!   Deliveries that failed for good do not hold anything: past the window they can no longer be
//!   re-sent.
//! - **Idempotency keys** older than the window (the API promises replays within it).
//! - **Attempts** older than the window, with their index entries.
//! - **Delivery records** that are finished (succeeded or failed) and older than the window, batch
//!   ranges older than it, and the audit trail's entries older than it.
//! - **Deleted endpoints' state** (cursor, deliveries, retry queue, statistics, indexes) and deleted
//!   tenants' data (unreachable since the deletion: a re-created tenant has a new serial) go by the same
//!   clock: everything of theirs is purged as it ages out, the state of a deleted endpoint at once.
//!
//! A pass reads and deletes in chunks of [`CHUNK`] keys, each its own sled batch, so it never holds
//! more than a chunk in memory and never blocks writers for long. Every deletion is independent (an
//! index entry whose record is gone is skipped by readers), so a crash mid-pass leaves nothing broken;
//! the next pass continues.

use std::collections::HashMap;

use super::history::id_floor;
use super::log::Entry;
use super::records;
use super::{Store, StoreError, keys};
use crate::model::{DeliveryRecord, DeliveryState};

/// Keys deleted per sled batch.
pub const CHUNK: usize = 5_000;

/// What a purge pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub log_records: u64,
    pub events: u64,
    pub idempotency_keys: u64,
    pub attempts: u64,
    pub deliveries: u64,
    pub audit_entries: u64,
    /// Keys of deleted endpoints (their cursor, queue, deliveries, statistics, indexes).
    pub orphaned_keys: u64,
    /// Segment files deleted, of the log and of the history (no record in them is needed any more).
    pub segments: u64,
}

/// What the purge needs to know of the live configuration.
pub struct Live {
    /// Every existing endpoint and its tenant serial.
    pub endpoints: HashMap<u64, u64>,
    /// Ids at or above this were not yet allocated when `endpoints` was read: such an endpoint may be
    /// missing from it because it is new, so its state is never treated as orphaned.
    pub id_ceiling: u64,
}

/// Deletes keys in chunks.
struct Deleter<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    pending: usize,
}

impl<'a> Deleter<'a> {
    fn new(tree: &'a sled::Tree) -> Deleter<'a> {
        Deleter { tree, batch: sled::Batch::default(), pending: 0 }
    }

    fn remove(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.batch.remove(key);
        self.pending += 1;
        if self.pending >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending > 0 {
            self.tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.pending = 0;
        }
        Ok(())
    }
}

impl Store {
    /// One retention pass: purges what is older than `cutoff_ms` and no longer needed.
    pub fn purge(&self, cutoff_ms: u64, live: &Live) -> Result<Purged, StoreError> {
        let cutoff_id = id_floor(cutoff_ms);
        let mut purged = Purged::default();
        // Endpoints first: what a live endpoint still needs decides what of the log may go.
        let mut needed: HashMap<u64, u64> = HashMap::new(); // tenant serial -> oldest event still needed
        for (&endpoint, &tenant) in &live.endpoints {
            let oldest = self.oldest_needed(endpoint)?;
            let slot = needed.entry(tenant).or_insert(u64::MAX);
            *slot = (*slot).min(oldest);
        }
        self.purge_endpoint_state(cutoff_id, live, &mut purged)?;
        for tenant in self.serials_with(&self.inner.log, keys::LOG)? {
            let limit = needed.get(&tenant).copied().unwrap_or(u64::MAX).min(cutoff_id);
            self.purge_log(tenant, limit, &mut purged)?;
        }
        purged.segments = self.inner.segments.collect()? as u64;
        for tenant in self.serials_with(&self.inner.log, keys::IDEMPOTENCY)? {
            self.purge_idempotency(tenant, cutoff_ms, &mut purged)?;
        }
        for tenant in self.serials_with(&self.inner.state, keys::ATTEMPT)? {
            self.purge_attempts(tenant, cutoff_id, &mut purged)?;
        }
        purged.segments += self.inner.history.collect()? as u64;
        let mut audit = Deleter::new(&self.inner.state);
        for item in self.inner.state.range(keys::one(keys::AUDIT, 0)..keys::one(keys::AUDIT, cutoff_id)) {
            let (k, _) = item?;
            audit.remove(&k)?;
            purged.audit_entries += 1;
        }
        audit.flush()?;
        self.mark_state_dirty();
        Ok(purged)
    }

    /// The oldest event an endpoint still needs: the one after its cursor, or an event of a delivery
    /// waiting in its retry queue.
    fn oldest_needed(&self, endpoint: u64) -> Result<u64, StoreError> {
        let mut oldest = match self.cursor(endpoint)? {
            Some(c) => c.saturating_add(1),
            // No cursor yet: it has handed off nothing, but only events after its creation reach it,
            // and those are at least as new as anything its tenant's log holds from then on. Keep all.
            None => 0,
        };
        for item in self.inner.state.scan_prefix(keys::one(keys::QUEUE, endpoint)).keys() {
            let k = item?;
            let webhook = keys::trailing_u64(&k);
            if let Some(d) = self.delivery(endpoint, webhook)?
                && let Some(first) = d.events.iter().min()
            {
                oldest = oldest.min(*first);
            }
        }
        Ok(oldest)
    }

    /// The serials (or endpoint ids) that have keys under `prefix`, found by seeking, not scanning.
    pub(super) fn serials_with(&self, tree: &sled::Tree, prefix: u8) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let Some(item) =
                tree.range(keys::one(prefix, from)..keys::one(prefix.saturating_add(1), 0)).next()
            else {
                break;
            };
            let (k, _) = item?;
            if k.first() != Some(&prefix) || k.len() < 9 {
                break;
            }
            let serial = keys::u64_at(&k, 1);
            out.push(serial);
            match serial.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(out)
    }

    /// Log records of a tenant whose every event is older than `limit` (an id).
    fn purge_log(&self, tenant: u64, limit: u64, purged: &mut Purged) -> Result<(), StoreError> {
        let mut del = Deleter::new(&self.inner.log);
        let mut released = Vec::new();
        for item in self.inner.log.range(keys::two(keys::LOG, tenant, 0)..keys::two(keys::LOG, tenant, limit))
        {
            let (k, v) = item?;
            let first = keys::trailing_u64(&k);
            let n = Store::entry_events(&k, &v)?;
            if first.saturating_add(n) > limit {
                break; // its last events are still needed (or recent), and so is everything after
            }
            del.remove(&k)?;
            if let Entry::At(p) = Entry::of(&v) {
                released.push(p.segment);
            }
            purged.log_records += 1;
            purged.events += n;
        }
        del.flush()?;
        // Only now that the index no longer points into them may their segments go.
        self.inner.segments.release(released);
        Ok(())
    }

    fn purge_idempotency(&self, tenant: u64, cutoff_ms: u64, purged: &mut Purged) -> Result<(), StoreError> {
        let mut del = Deleter::new(&self.inner.log);
        for item in self.inner.log.scan_prefix(keys::one(keys::IDEMPOTENCY, tenant)) {
            let (k, v) = item?;
            let rec: records::IdempotencyRecord = records::decode(&k, &v)?;
            if rec.received_at < cutoff_ms {
                del.remove(&k)?;
                purged.idempotency_keys += 1;
            }
        }
        del.flush()
    }

    /// Runs of attempts that started before the cutoff (a run's ids are taken at one instant), with
    /// their index entries; then the history segments nothing points into any more.
    fn purge_attempts(&self, tenant: u64, cutoff_id: u64, purged: &mut Purged) -> Result<(), StoreError> {
        let mut del = Deleter::new(&self.inner.state);
        let mut released = Vec::new();
        let range = keys::two(keys::ATTEMPT, tenant, 0)..keys::two(keys::ATTEMPT, tenant, cutoff_id);
        for item in self.inner.state.range(range) {
            let (k, v) = item?;
            // An unreadable run still goes; index entries left behind are skipped by readers.
            match self.run(&k, &v) {
                Ok(run) => {
                    let inline = matches!(Entry::of(&v), Entry::Inline(_));
                    for key in super::history::run_index_keys(tenant, &run, inline) {
                        del.remove(&key)?;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: an unreadable attempt run goes without its index entries")
                }
            }
            del.remove(&k)?;
            if let Entry::At(p) = Entry::of(&v) {
                released.push(p.segment);
            }
            purged.attempts += Store::run_len(&v);
        }
        del.flush()?;
        self.inner.history.release(released);
        Ok(())
    }

    /// Per-endpoint state: finished deliveries and batch ranges older than the window; everything of a
    /// deleted endpoint.
    fn purge_endpoint_state(
        &self,
        cutoff_id: u64,
        live: &Live,
        purged: &mut Purged,
    ) -> Result<(), StoreError> {
        let state = &self.inner.state;
        let mut del = Deleter::new(state);
        let orphan = |e: u64| e < live.id_ceiling && !live.endpoints.contains_key(&e);
        for prefix in [keys::CURSOR, keys::ENDPOINT_STATS, keys::QUEUE, keys::BATCH_OF] {
            for endpoint in self.serials_with(state, prefix)? {
                if orphan(endpoint) {
                    for item in state.scan_prefix(keys::one(prefix, endpoint)).keys() {
                        del.remove(&item?)?;
                        purged.orphaned_keys += 1;
                    }
                }
            }
        }
        for endpoint in self.serials_with(state, keys::DELIVERY)? {
            let gone = orphan(endpoint);
            let hi = if gone { u64::MAX } else { cutoff_id };
            for item in
                state.range(keys::two(keys::DELIVERY, endpoint, 0)..keys::two(keys::DELIVERY, endpoint, hi))
            {
                let (k, v) = item?;
                let finished = match records::decode::<DeliveryRecord>(&k, &v) {
                    Ok(d) => d.state != DeliveryState::Pending,
                    Err(_) => true,
                };
                if gone || finished {
                    del.remove(&k)?;
                    purged.deliveries += 1;
                }
            }
        }
        for endpoint in self.serials_with(state, keys::BATCH_RANGE)? {
            let hi = if orphan(endpoint) { u64::MAX } else { cutoff_id };
            let range = keys::two(keys::BATCH_RANGE, endpoint, 0)..keys::two(keys::BATCH_RANGE, endpoint, hi);
            for item in state.range(range).keys() {
                del.remove(&item?)?;
            }
        }
        // A live endpoint's attempt index entries go with their attempts; a deleted one's at once.
        for endpoint in self.serials_with(state, keys::ATTEMPT_BY_ENDPOINT)? {
            if orphan(endpoint) {
                for item in state.scan_prefix(keys::one(keys::ATTEMPT_BY_ENDPOINT, endpoint)).keys() {
                    del.remove(&item?)?;
                    purged.orphaned_keys += 1;
                }
            }
        }
        del.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::model::{EventRecord, LogRecord};
    use crate::store::StoreSettings;

    const TENANT: u64 = 3;
    const LIVE: u64 = 1_000;
    const DELETED: u64 = 2_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let settings = StoreSettings {
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Os,
            cache_bytes: 8 << 20,
            master_key: None,
        };
        let store = Store::open(&settings).unwrap_or_else(|e| panic!("{e}"));
        (dir, store)
    }

    fn log_record(store: &Store, first: u64, n: usize) {
        let ev = EventRecord {
            event_type: "a.b".into(),
            channels: vec![],
            payload: "{}".into(),
            received_at: 0,
            idempotency_key: None,
            routes: vec![LIVE],
        };
        let record = LogRecord { events: vec![ev; n] };
        if first == 10 {
            // As stores written before segments hold it: the record inline.
            let bytes = records::encode(&record).unwrap_or_else(|e| panic!("{e}"));
            store
                .inner
                .log
                .insert(keys::two(keys::LOG, TENANT, first), bytes)
                .unwrap_or_else(|e| panic!("{e}"));
        } else {
            store.append_for_test(TENANT, first, &record);
        }
    }

    fn delivery(store: &Store, endpoint: u64, webhook: u64, state: DeliveryState, due: Option<u64>) {
        let d = DeliveryRecord {
            events: vec![webhook],
            batch_id: None,
            state,
            attempts: 1,
            next_attempt_at: due,
            last_attempt_id: None,
            created_at: 0,
            updated_at: 0,
            manual: false,
        };
        let bytes = records::encode(&d).unwrap_or_else(|e| panic!("{e}"));
        let state_tree = &store.inner.state;
        state_tree
            .insert(keys::two(keys::DELIVERY, endpoint, webhook), bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        match due {
            Some(due) => state_tree.insert(keys::three(keys::QUEUE, endpoint, due, webhook), &[]),
            None => state_tree.remove(keys::three(keys::QUEUE, endpoint, 5, webhook)),
        }
        .unwrap_or_else(|e| panic!("{e}"));
    }

    fn firsts(store: &Store) -> Vec<u64> {
        store
            .inner
            .log
            .scan_prefix(keys::one(keys::LOG, TENANT))
            .keys()
            .map(|k| keys::trailing_u64(&k.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_log_goes_only_up_to_what_cursors_and_pending_deliveries_still_need() {
        let (_dir, store) = store();
        for (first, n) in [(10, 3), (20, 1), (30, 2), (60, 1)] {
            log_record(&store, first, n);
        }
        store.put_cursor(LIVE, 50).unwrap_or_else(|e| panic!("{e}"));
        delivery(&store, LIVE, 20, DeliveryState::Pending, Some(5));
        // A deleted endpoint's state, and a stale one of a too-new id (created during the pass).
        store.put_cursor(DELETED, 7).unwrap_or_else(|e| panic!("{e}"));
        delivery(&store, DELETED, 12, DeliveryState::Pending, Some(9));
        store.put_cursor(9_000, 7).unwrap_or_else(|e| panic!("{e}"));
        let live = Live { endpoints: HashMap::from([(LIVE, TENANT)]), id_ceiling: 5_000 };
        let everything_old = u64::MAX / 4096 / 1000;

        let p = store.purge(everything_old, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            firsts(&store),
            [20, 30, 60],
            "the pending delivery of event 20 holds it and what follows"
        );
        assert_eq!((p.log_records, p.events), (1, 3));
        assert_eq!(store.cursor(DELETED).unwrap_or_default(), None, "a deleted endpoint's state goes");
        assert!(store.delivery(DELETED, 12).unwrap_or_default().is_none());
        assert_eq!(store.due(DELETED, 10).unwrap_or_default(), vec![]);
        assert_eq!(store.cursor(9_000).unwrap_or_default(), Some(7), "an id past the ceiling may be new");

        // The delivery fails for good: it no longer holds anything; the cursor still holds event 60.
        delivery(&store, LIVE, 20, DeliveryState::Failed, None);
        store.purge(everything_old, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(firsts(&store), [60]);
        assert!(store.delivery(LIVE, 20).unwrap_or_default().is_none(), "a finished delivery ages out");
        // Nothing is older than a cutoff in the past.
        log_record(&store, 70, 1);
        let p = store.purge(0, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((firsts(&store), p.events), (vec![60, 70], 0));
    }

    #[test]
    fn a_segment_goes_once_retention_purged_every_record_in_it() {
        let (dir, store) = store();
        log_record(&store, 100, 2);
        store.inner.segments.rotate_now().unwrap_or_else(|e| panic!("{e}"));
        log_record(&store, 200, 1);
        let files = || std::fs::read_dir(dir.path().join("segments")).map_or(0, |d| d.count());
        assert_eq!(files(), 2);
        store.put_cursor(LIVE, 150).unwrap_or_else(|e| panic!("{e}"));
        let live = Live { endpoints: HashMap::from([(LIVE, TENANT)]), id_ceiling: 5_000 };
        let everything_old = u64::MAX / 4096 / 1000;

        let p = store.purge(everything_old, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.events, p.segments), (2, 1));
        assert_eq!(files(), 1, "the first segment's file is deleted");
        assert_eq!(store.event(TENANT, 101).unwrap_or_default(), None);
        assert!(store.event(TENANT, 200).unwrap_or_default().is_some(), "the newer segment stays");
        // The segment being written is never deleted, even with nothing in it needed any more.
        store.put_cursor(LIVE, 500).unwrap_or_else(|e| panic!("{e}"));
        let p = store.purge(everything_old, &live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.events, p.segments, files()), (1, 0, 1));
    }
}
