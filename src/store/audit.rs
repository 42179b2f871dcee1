//! The audit trail: one record per authenticated write to the API (see `api::audit`), newest first.
//!
//! Appends are rare (configuration changes, not event ingest), so the trail is one key range in the
//! `state` tree, listed by a bounded reverse scan like the event log.

use super::{PageOf, Store, StoreError, keys, records};
use crate::model::AuditRecord;

/// At most this many records are examined for one page; a page cut short carries a cursor.
const MAX_SCANNED_PER_PAGE: usize = 100_000;

/// What a listing keeps.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub actor: Option<String>,
    /// Unix ms, inclusive.
    pub since_ms: Option<u64>,
    /// Unix ms, exclusive.
    pub until_ms: Option<u64>,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        self.tenant.as_ref().is_none_or(|t| r.tenant.as_ref() == Some(t))
            && self.actor.as_ref().is_none_or(|a| &r.actor == a)
            && self.until_ms.is_none_or(|u| r.at < u)
    }
}

impl Store {
    /// Appends a record under `id` (a fresh id: ids sort by time) and makes it durable.
    pub fn append_audit(&self, id: u64, record: &AuditRecord) -> Result<(), StoreError> {
        self.inner.state.insert(keys::one(keys::AUDIT, id), records::encode(record)?)?;
        self.sync()
    }

    /// A page of the trail, newest first, strictly older than `before` when given.
    pub fn list_audit(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<PageOf<AuditRecord>, StoreError> {
        // Ids never run behind the clock, so nothing at or after `since` has a smaller id than this.
        let floor = filter.since_ms.map_or(0, |s| s.saturating_mul(1000) << 12);
        let lo = keys::one(keys::AUDIT, floor);
        let hi = keys::one(keys::AUDIT, before.unwrap_or(u64::MAX));
        let mut out = Vec::with_capacity(limit.min(256));
        for (scanned, item) in self.inner.state.range(lo..hi).rev().enumerate() {
            let (k, v) = item?;
            let id = keys::trailing_u64(&k);
            let record: AuditRecord = records::decode(&k, &v)?;
            if filter.since_ms.is_none_or(|s| record.at >= s) && filter.matches(&record) {
                out.push((id, record));
                if out.len() == limit {
                    return Ok((out, Some(id)));
                }
            }
            if scanned + 1 >= MAX_SCANNED_PER_PAGE {
                return Ok((out, Some(id)));
            }
        }
        Ok((out, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::store::StoreSettings;

    fn record(at: u64, tenant: Option<&str>, actor: &str) -> AuditRecord {
        AuditRecord {
            at,
            actor: actor.into(),
            client_ip: Some("127.0.0.1".into()),
            method: "POST".into(),
            route: "/v1/tenants/{tenant}/endpoints".into(),
            path: "/v1/tenants/acme/endpoints".into(),
            tenant: tenant.map(str::to_owned),
            target: None,
            status: 201,
        }
    }

    #[test]
    fn the_trail_lists_newest_first_with_filters_and_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreSettings {
            data_dir: dir.path().to_path_buf(),
            durability: Durability::Os,
            cache_bytes: 8 << 20,
            master_key: None,
        })
        .unwrap();
        for i in 0..10u64 {
            let tenant = if i % 2 == 0 { Some("a") } else { Some("b") };
            let actor = if i < 5 { "admin token" } else { "key_x" };
            store.append_audit(((1000 + i) * 1000) << 12, &record(1000 + i, tenant, actor)).unwrap();
        }
        let ats = |page: &PageOf<AuditRecord>| page.0.iter().map(|(_, r)| r.at).collect::<Vec<_>>();
        let all = store.list_audit(&AuditFilter::default(), None, 4).unwrap();
        assert_eq!(ats(&all), [1009, 1008, 1007, 1006]);
        let next = store.list_audit(&AuditFilter::default(), all.1, 4).unwrap();
        assert_eq!(ats(&next), [1005, 1004, 1003, 1002]);
        let f = AuditFilter { tenant: Some("a".into()), actor: Some("key_x".into()), ..Default::default() };
        assert_eq!(ats(&store.list_audit(&f, None, 50).unwrap()), [1008, 1006]);
        let f = AuditFilter { since_ms: Some(1003), until_ms: Some(1005), ..Default::default() };
        let page = store.list_audit(&f, None, 50).unwrap();
        assert_eq!((ats(&page), page.1), (vec![1004, 1003], None));
    }
}
