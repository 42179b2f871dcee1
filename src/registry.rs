//! The in-memory registry: tenants, endpoints (with their prepared subscription and signing keys) and the
//! event catalog, as one immutable snapshot behind an `ArcSwap`.
//!
//! Readers — ingest routing, dispatchers, GET handlers — take the current snapshot without locking.
//! Writers go through [`RegistryHandle::mutate`]: under one mutex (writes are rare) they write the store
//! and a copy of the snapshot; the copy is published only when the store write succeeded, so the
//! registry never shows a change the store does not have. Every publish bumps a version on a `watch`
//! channel, which is how changes reach the dispatchers at once, without a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::deliver::sign::Secret;
use crate::model::{EndpointRecord, EventTypeRecord, TenantRecord};
use crate::route::Subscription;
use crate::store::{Store, StoreError};

/// An endpoint as the pipeline uses it.
#[derive(Debug)]
pub struct EndpointEntry {
    pub record: EndpointRecord,
    pub subscription: Subscription,
    /// The current secret first, then retired ones still in their grace period.
    pub secrets: Vec<(Secret, Option<u64>)>,
}

impl EndpointEntry {
    pub fn new(record: EndpointRecord) -> EndpointEntry {
        let mut secrets = Vec::with_capacity(1 + record.retired_secrets.len());
        let current = std::iter::once((&record.secret, None));
        let retired = record.retired_secrets.iter().map(|r| (&r.secret, Some(r.expires_at)));
        for (text, expires) in current.chain(retired) {
            match Secret::parse(text) {
                Ok(s) => secrets.push((s, expires)),
                // Secrets are validated before they are stored; one that does not parse means a damaged
                // record. Say so loudly: its deliveries will fail verification at the receiver.
                Err(e) => tracing::error!(
                    endpoint = %crate::ids::EndpointId(record.id),
                    error = %e,
                    "stored signing secret does not parse"
                ),
            }
        }
        EndpointEntry { subscription: Subscription::new(&record), record, secrets }
    }

    /// The secrets that sign a request sent at `now_ms`.
    pub fn signing_secrets(&self, now_ms: u64) -> Vec<&Secret> {
        self.secrets.iter().filter(|(_, exp)| exp.is_none_or(|e| e > now_ms)).map(|(s, _)| s).collect()
    }
}

/// One immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub version: u64,
    tenants: BTreeMap<String, Arc<TenantRecord>>,
    serials: HashMap<u64, String>,
    endpoints: HashMap<u64, Arc<EndpointEntry>>,
    /// Endpoint ids per tenant serial, ascending (= creation order).
    by_tenant: HashMap<u64, Vec<u64>>,
    event_types: BTreeMap<String, Arc<EventTypeRecord>>,
}

impl Registry {
    pub fn tenant(&self, id: &str) -> Option<&Arc<TenantRecord>> {
        self.tenants.get(id)
    }

    pub fn tenant_by_serial(&self, serial: u64) -> Option<&Arc<TenantRecord>> {
        self.serials.get(&serial).and_then(|id| self.tenants.get(id))
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<TenantRecord>> {
        self.tenants.values()
    }

    pub fn endpoint(&self, id: u64) -> Option<&Arc<EndpointEntry>> {
        self.endpoints.get(&id)
    }

    /// An endpoint, only if it belongs to the tenant (other tenants' ids look like missing ones).
    pub fn tenant_endpoint(&self, tenant: u64, id: u64) -> Option<&Arc<EndpointEntry>> {
        self.endpoints.get(&id).filter(|e| e.record.tenant_serial == tenant)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointEntry>> {
        self.endpoints.values()
    }

    pub fn tenant_endpoints(&self, tenant: u64) -> impl Iterator<Item = &Arc<EndpointEntry>> {
        self.by_tenant.get(&tenant).into_iter().flatten().filter_map(|id| self.endpoints.get(id))
    }

    pub fn event_type(&self, name: &str) -> Option<&Arc<EventTypeRecord>> {
        self.event_types.get(name)
    }

    pub fn event_types(&self) -> impl Iterator<Item = &Arc<EventTypeRecord>> {
        self.event_types.values()
    }

    /// The endpoints of `tenant` an event of this type and these channels goes to.
    pub fn route(&self, tenant: u64, event_type: &str, channels: &[String]) -> Vec<u64> {
        self.tenant_endpoints(tenant)
            .filter(|e| e.subscription.matches(event_type, channels))
            .map(|e| e.record.id)
            .collect()
    }

    pub fn put_tenant(&mut self, t: TenantRecord) {
        self.serials.insert(t.serial, t.id.clone());
        self.tenants.insert(t.id.clone(), Arc::new(t));
    }

    /// Removes a tenant and its endpoints; returns the endpoint ids removed.
    pub fn remove_tenant(&mut self, id: &str) -> Vec<u64> {
        let Some(t) = self.tenants.remove(id) else { return Vec::new() };
        self.serials.remove(&t.serial);
        let eps = self.by_tenant.remove(&t.serial).unwrap_or_default();
        for ep in &eps {
            self.endpoints.remove(ep);
        }
        eps
    }

    pub fn put_endpoint(&mut self, e: EndpointRecord) {
        let list = self.by_tenant.entry(e.tenant_serial).or_default();
        if let Err(pos) = list.binary_search(&e.id) {
            list.insert(pos, e.id);
        }
        self.endpoints.insert(e.id, Arc::new(EndpointEntry::new(e)));
    }

    pub fn remove_endpoint(&mut self, id: u64) {
        if let Some(e) = self.endpoints.remove(&id)
            && let Some(list) = self.by_tenant.get_mut(&e.record.tenant_serial)
        {
            list.retain(|x| *x != id);
        }
    }

    pub fn put_event_type(&mut self, t: EventTypeRecord) {
        self.event_types.insert(t.name.clone(), Arc::new(t));
    }

    pub fn remove_event_type(&mut self, name: &str) {
        self.event_types.remove(name);
    }
}

/// Shared handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct RegistryHandle {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Registry>,
    /// Serializes writers so that the store and the snapshot change in the same order. Held only for
    /// the synchronous store write and copy; never across an await.
    write: Mutex<()>,
    changes: watch::Sender<u64>,
    store: Store,
}

impl RegistryHandle {
    /// Builds the registry from the store.
    pub fn load(store: &Store) -> Result<RegistryHandle, StoreError> {
        let mut reg = Registry::default();
        for t in store.tenants()? {
            reg.put_tenant(t);
        }
        for e in store.endpoints()? {
            reg.put_endpoint(e);
        }
        for t in store.event_types()? {
            reg.put_event_type(t);
        }
        let (changes, _) = watch::channel(0);
        Ok(RegistryHandle {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(reg),
                write: Mutex::new(()),
                changes,
                store: store.clone(),
            }),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Registry> {
        self.inner.current.load_full()
    }

    /// A receiver that sees the version change on every publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Runs one change: `f` writes the store and edits a copy of the snapshot; on `Ok` the store is
    /// synced and the copy published, on `Err` the copy is dropped.
    pub fn mutate<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Registry, &Store) -> Result<R, E>,
    ) -> Result<R, E> {
        let _guard = self.inner.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = Registry::clone(&self.inner.current.load());
        let out = f(&mut next, &self.inner.store)?;
        self.inner.store.sync()?;
        next.version += 1;
        let version = next.version;
        self.inner.current.store(Arc::new(next));
        self.inner.changes.send_replace(version);
        Ok(out)
    }
}
