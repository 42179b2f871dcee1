//! Delivery state and attempt history: cursors, delivery records, the retry queue, attempts.

use super::records;
use super::{Store, StoreError, keys};
use crate::model::{AttemptRecord, DeliveryRecord};

/// How an attempt's outcome changes the delivery it belongs to.
#[derive(Debug, Clone)]
pub enum DeliveryChange {
    /// No delivery state to write: a first attempt that succeeded (the cursor passing the event records
    /// it), or a test send (which belongs to no delivery).
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

/// Filters of the attempt list.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub endpoint: Option<u64>,
    pub event: Option<u64>,
    pub succeeded: Option<bool>,
}

/// At most this many attempts are examined for one page (see `log::MAX_SCANNED_PER_PAGE`).
const MAX_SCANNED_PER_PAGE: usize = 100_000;

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

    /// The batch holding `event` for `endpoint`, if that batch ever failed (see `write_attempt_outcome`).
    pub fn batch_of(&self, endpoint: u64, event: u64) -> Result<Option<u64>, StoreError> {
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

    /// How many deliveries wait in an endpoint's retry queue.
    pub fn due_count(&self, endpoint: u64) -> usize {
        self.inner.state.scan_prefix(keys::one(keys::QUEUE, endpoint)).count()
    }

    pub fn attempt(&self, tenant: u64, id: u64) -> Result<Option<AttemptRecord>, StoreError> {
        let k = keys::two(keys::ATTEMPT, tenant, id);
        self.inner.state.get(k)?.map(|v| records::decode(&k, &v)).transpose()
    }

    /// A page of a tenant's attempts, newest first, strictly older than `before` when given.
    pub fn list_attempts(
        &self,
        tenant: u64,
        filter: &AttemptFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<super::PageOf<AttemptRecord>, StoreError> {
        let before = before.unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(limit.min(256));
        let mut scanned = 0usize;
        let mut consider = |id: u64, rec: AttemptRecord, out: &mut Vec<(u64, AttemptRecord)>| {
            scanned += 1;
            let keep = filter.succeeded.is_none_or(|s| s == rec.succeeded)
                && filter.endpoint.is_none_or(|e| e == rec.endpoint_id)
                && filter.event.is_none_or(|e| rec.events.contains(&e));
            if keep {
                out.push((id, rec));
            }
            out.len() == limit || scanned >= MAX_SCANNED_PER_PAGE
        };
        if let Some(endpoint) = filter.endpoint {
            // The per-endpoint index keeps this fast however many other endpoints the tenant has.
            let lo = keys::two(keys::ATTEMPT_BY_ENDPOINT, endpoint, 0);
            let hi = keys::two(keys::ATTEMPT_BY_ENDPOINT, endpoint, before);
            for item in self.inner.state.range(lo..hi).rev() {
                let (k, _) = item?;
                let id = keys::trailing_u64(&k);
                let Some(rec) = self.attempt(tenant, id)? else { continue };
                if consider(id, rec, &mut out) {
                    return Ok((out, Some(id)));
                }
            }
        } else {
            let lo = keys::two(keys::ATTEMPT, tenant, 0);
            let hi = keys::two(keys::ATTEMPT, tenant, before);
            for item in self.inner.state.range(lo..hi).rev() {
                let (k, v) = item?;
                let id = keys::trailing_u64(&k);
                if consider(id, records::decode(&k, &v)?, &mut out) {
                    return Ok((out, Some(id)));
                }
            }
        }
        Ok((out, None))
    }
}

/// Adds what one attempt changes to a sled batch.
fn add_outcome(batch: &mut sled::Batch, w: &AttemptOutcomeWrite<'_>) -> Result<(), StoreError> {
    batch.insert(&keys::two(keys::ATTEMPT, w.tenant, w.attempt_id), records::encode(w.attempt)?);
    batch.insert(&keys::two(keys::ATTEMPT_BY_ENDPOINT, w.endpoint, w.attempt_id), &[]);
    if let DeliveryChange::Put { webhook_id, record, old_due, new_due } = &w.delivery {
        batch.insert(&keys::two(keys::DELIVERY, w.endpoint, *webhook_id), records::encode(record)?);
        // A batch's state is under its batch id; the first time it is stored (its first failure),
        // each event gets a pointer to it so that the event's own detail can find it.
        if let (Some(batch_id), None) = (record.batch_id, old_due)
            && record.attempts == 1
        {
            for ev in &record.events {
                batch.insert(&keys::two(keys::BATCH_OF, w.endpoint, *ev), &batch_id.to_be_bytes());
            }
        }
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
