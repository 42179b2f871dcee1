//! The in-memory registry: tenants, endpoints (with their prepared subscription and signing keys) and the
//! event catalog, as one immutable snapshot behind an `ArcSwap`.
//!
//! Readers — ingest routing, dispatchers, GET handlers — take the current snapshot without locking.
//! Writers go through [`RegistryHandle::mutate`]: under one mutex (writes are rare) they write the store
//! and a copy of the snapshot; the copy is published only when the store write succeeded, so the
//! registry never shows a change the store does not have. Every publish bumps a version on a `watch`
//! channel, which is how changes reach the dispatchers at once, without a restart.
//!
//! Each tenant's endpoints sit behind their own `Arc`, with the [`RouteIndex`] that routes its events:
//! copying the snapshot for a write shares them all, and a write copies only the tenant it changes
//! (`Arc::make_mut`). Loading, which owns its snapshot alone, updates in place.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::deliver::sign::Secret;
use crate::filter::Filter;
use crate::model::{EndpointRecord, EventTypeRecord, TenantRecord};
use crate::route::{Payload, RouteIndex, Subscription};
use crate::schema::PayloadSchema;
use crate::store::{Store, StoreError};
use crate::template::{PayloadTemplate, UrlTemplate};

/// An endpoint as the pipeline uses it.
#[derive(Debug)]
pub struct EndpointEntry {
    pub record: EndpointRecord,
    pub subscription: Subscription,
    /// The payload filter, compiled; `Err` when the stored text no longer parses (see [`Self::accepts`]).
    pub filter: Option<Result<Filter, ()>>,
    /// The URL, compiled, when it has placeholders.
    pub url_template: Option<UrlTemplate>,
    pub payload_template: Option<PayloadTemplate>,
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
        let filter = record.filter.as_deref().map(|text| {
            Filter::parse(text).map_err(|e| {
                tracing::error!(
                    endpoint = %crate::ids::EndpointId(record.id),
                    error = %e,
                    "stored payload filter does not parse; the endpoint receives nothing until it is fixed"
                )
            })
        });
        // Templates were validated when they were written. One that no longer parses is reported; the
        // URL is then sent as written (and fails as a bad URL), the body in the standard shape.
        let report = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(endpoint = %crate::ids::EndpointId(record.id), error = %e, "stored {what} does not parse");
        };
        let url_template = match UrlTemplate::parse(&record.url) {
            Ok(t) => t.has_placeholders().then_some(t),
            Err(e) => {
                report("URL template", &e);
                None
            }
        };
        let payload_template = record.payload_template.as_deref().and_then(|text| {
            PayloadTemplate::parse(text).inspect_err(|e| report("payload template", e)).ok()
        });
        EndpointEntry {
            subscription: Subscription::new(&record),
            filter,
            url_template,
            payload_template,
            record,
            secrets,
        }
    }

    /// Does the payload pass the endpoint's filter (type and channels being already matched)? A filter
    /// that no longer parses passes nothing: filters can keep data from a receiver, so failing closed is
    /// the safe side.
    pub fn accepts(&self, payload: &Payload) -> bool {
        match &self.filter {
            None => true,
            Some(Ok(f)) => payload.value().is_some_and(|v| f.matches(v)),
            Some(Err(())) => false,
        }
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
    /// By tenant serial; a tenant without endpoints has no entry.
    by_tenant: HashMap<u64, Arc<TenantEndpoints>>,
    event_types: BTreeMap<String, Arc<EventTypeRecord>>,
    /// The compiled schemas of the event types that have one.
    schemas: HashMap<String, Arc<PayloadSchema>>,
}

/// One tenant's endpoints.
#[derive(Debug, Clone, Default)]
struct TenantEndpoints {
    /// Ascending (= creation order). Ids rather than entries because every write to the tenant copies
    /// this, and a `memcpy` is cheapest; listing a tenant's endpoints is not on the hot path.
    ids: Vec<u64>,
    /// Narrows an event to the endpoints whose subscription it matches, without visiting the others.
    /// Holds the same entries as `Registry::endpoints`.
    routes: RouteIndex<Arc<EndpointEntry>>,
}

impl TenantEndpoints {
    fn insert(&mut self, entry: Arc<EndpointEntry>) {
        let id = entry.record.id;
        if let Err(pos) = self.ids.binary_search(&id) {
            self.ids.insert(pos, id);
        }
        self.routes.insert(id, &entry.subscription, entry.clone());
    }

    fn remove(&mut self, entry: &EndpointEntry) {
        let id = entry.record.id;
        self.routes.remove(id, &entry.subscription);
        if let Ok(pos) = self.ids.binary_search(&id) {
            self.ids.remove(pos);
        }
    }
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
        let ids = self.by_tenant.get(&tenant).into_iter().flat_map(|t| t.ids.iter());
        ids.filter_map(|id| self.endpoints.get(id))
    }

    pub fn event_type(&self, name: &str) -> Option<&Arc<EventTypeRecord>> {
        self.event_types.get(name)
    }

    pub fn event_types(&self) -> impl Iterator<Item = &Arc<EventTypeRecord>> {
        self.event_types.values()
    }

    /// The schema payloads of this type must satisfy, if the catalog gives one.
    pub fn schema(&self, event_type: &str) -> Option<&Arc<PayloadSchema>> {
        self.schemas.get(event_type)
    }

    /// The endpoints of `tenant` an event of this type, on these channels, with this payload goes to,
    /// ascending.
    pub fn route(&self, tenant: u64, event_type: &str, channels: &[String], payload: &Payload) -> Vec<u64> {
        let Some(t) = self.by_tenant.get(&tenant) else { return Vec::new() };
        let matches = t.routes.matching(event_type, channels);
        let mut out = Vec::with_capacity(matches.size_hint().1.unwrap_or(0));
        // The index has matched type and channels, and yields each such endpoint once, with its entry;
        // what is left is the payload filter of the few that have one. (`for_each`, not `collect`: it
        // merges run by run.)
        matches.for_each(|(id, entry)| {
            if entry.accepts(payload) {
                out.push(*id);
            }
        });
        out
    }

    pub fn put_tenant(&mut self, t: TenantRecord) {
        self.serials.insert(t.serial, t.id.clone());
        self.tenants.insert(t.id.clone(), Arc::new(t));
    }

    /// Removes a tenant and its endpoints; returns the endpoint ids removed.
    pub fn remove_tenant(&mut self, id: &str) -> Vec<u64> {
        let Some(t) = self.tenants.remove(id) else { return Vec::new() };
        self.serials.remove(&t.serial);
        let Some(eps) = self.by_tenant.remove(&t.serial) else { return Vec::new() };
        for id in &eps.ids {
            self.endpoints.remove(id);
        }
        eps.ids.clone()
    }

    /// Adds or replaces an endpoint.
    pub fn put_endpoint(&mut self, e: EndpointRecord) {
        let entry = Arc::new(EndpointEntry::new(e));
        if let Some(old) = self.endpoints.insert(entry.record.id, entry.clone()) {
            self.unindex(&old);
        }
        Arc::make_mut(self.by_tenant.entry(entry.record.tenant_serial).or_default()).insert(entry);
    }

    pub fn remove_endpoint(&mut self, id: u64) {
        if let Some(old) = self.endpoints.remove(&id) {
            self.unindex(&old);
        }
    }

    /// Takes an endpoint out of its tenant's list and index.
    fn unindex(&mut self, old: &EndpointEntry) {
        let serial = old.record.tenant_serial;
        let Some(t) = self.by_tenant.get_mut(&serial) else { return };
        let t = Arc::make_mut(t);
        t.remove(old);
        if t.ids.is_empty() {
            self.by_tenant.remove(&serial);
        }
    }

    /// Adds or replaces a catalog entry; `schema` is its schema, compiled (`None` when it has none).
    pub fn put_event_type(&mut self, t: EventTypeRecord, schema: Option<PayloadSchema>) {
        match schema {
            Some(s) => self.schemas.insert(t.name.clone(), Arc::new(s)),
            None => self.schemas.remove(&t.name),
        };
        self.event_types.insert(t.name.clone(), Arc::new(t));
    }

    pub fn remove_event_type(&mut self, name: &str) {
        self.event_types.remove(name);
        self.schemas.remove(name);
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
            // Schemas were compiled when they were written; one that no longer compiles (a damaged
            // record) leaves its type unchecked rather than refusing every event of it.
            let schema = t.schema.as_deref().and_then(|text| {
                PayloadSchema::compile_text(text)
                    .inspect_err(|e| {
                        tracing::error!(event_type = %t.name, error = %e, "stored schema does not compile")
                    })
                    .ok()
            });
            reg.put_event_type(t, schema);
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const TYPES: &[&str] = &["a.created", "a.updated", "b.created", "c"];
    const CHANNELS: &[&str] = &["x", "y", "z"];

    fn endpoint(
        id: u64,
        tenant_serial: u64,
        event_types: Vec<String>,
        channels: Vec<String>,
    ) -> EndpointRecord {
        let secret = Secret::generate().to_whsec();
        EndpointRecord::with_defaults(
            id,
            tenant_serial,
            "https://example.com/hook".into(),
            secret,
            event_types,
            channels,
        )
    }

    fn tenant(serial: u64) -> TenantRecord {
        TenantRecord {
            serial,
            id: format!("t{serial}"),
            name: String::new(),
            created_at: 0,
            updated_at: 0,
            disable_after_ms: None,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        PutEndpoint { id: u64, tenant: u64, types: Vec<String>, channels: Vec<String> },
        RemoveEndpoint(u64),
        PutTenant(u64),
        RemoveTenant(u64),
    }

    /// Names from `pool`, repeats allowed, plus one no endpoint lists.
    fn names(pool: &'static [&'static str], unknown: &'static str) -> impl Strategy<Value = Vec<String>> {
        let name = prop_oneof![8 => proptest::sample::select(pool), 1 => Just(unknown)];
        proptest::collection::vec(name.prop_map(str::to_owned), 0..4)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u64..24, 1u64..4, names(TYPES, "a"), names(CHANNELS, "w"))
                .prop_map(|(id, tenant, types, channels)| Op::PutEndpoint { id, tenant, types, channels }),
            2 => (1u64..24).prop_map(Op::RemoveEndpoint),
            1 => (1u64..4).prop_map(Op::PutTenant),
            1 => (1u64..4).prop_map(Op::RemoveTenant),
        ]
    }

    /// (tenant, event type, channels); channels unsorted and possibly repeated.
    fn event() -> impl Strategy<Value = (u64, String, Vec<String>)> {
        let ty = prop_oneof![4 => proptest::sample::select(TYPES), 1 => Just("a")].prop_map(str::to_owned);
        (0u64..5, ty, names(CHANNELS, "w"))
    }

    /// The registry's content, kept the obvious way.
    #[derive(Debug, Clone, Default)]
    struct Model {
        tenants: BTreeSet<u64>,
        endpoints: BTreeMap<u64, EndpointRecord>,
    }

    impl Model {
        fn apply(&mut self, reg: &mut Registry, op: Op) {
            match op {
                Op::PutEndpoint { id, tenant, types, channels } => {
                    let e = endpoint(id, tenant, types, channels);
                    self.endpoints.insert(id, e.clone());
                    reg.put_endpoint(e);
                }
                Op::RemoveEndpoint(id) => {
                    self.endpoints.remove(&id);
                    reg.remove_endpoint(id);
                }
                Op::PutTenant(serial) => {
                    self.tenants.insert(serial);
                    reg.put_tenant(tenant(serial));
                }
                Op::RemoveTenant(serial) => {
                    let mut want: Vec<u64> = Vec::new();
                    if self.tenants.remove(&serial) {
                        want = self
                            .endpoints
                            .values()
                            .filter(|e| e.tenant_serial == serial)
                            .map(|e| e.id)
                            .collect();
                        self.endpoints.retain(|_, e| e.tenant_serial != serial);
                    }
                    assert_eq!(reg.remove_tenant(&format!("t{serial}")), want);
                }
            }
        }

        /// Routing by testing every endpoint's subscription.
        fn route(&self, tenant: u64, event_type: &str, channels: &[String]) -> Vec<u64> {
            let of_tenant = self.endpoints.values().filter(|e| e.tenant_serial == tenant);
            of_tenant.filter(|e| Subscription::new(e).matches(event_type, channels)).map(|e| e.id).collect()
        }

        fn check(&self, reg: &Registry, events: &[(u64, String, Vec<String>)]) -> Result<(), TestCaseError> {
            for (tenant, event_type, channels) in events {
                prop_assert_eq!(
                    reg.route(*tenant, event_type, channels, &Payload::new("{}")),
                    self.route(*tenant, event_type, channels)
                );
            }
            for serial in 0..5 {
                let got: Vec<u64> = reg.tenant_endpoints(serial).map(|e| e.record.id).collect();
                let want: Vec<u64> =
                    self.endpoints.values().filter(|e| e.tenant_serial == serial).map(|e| e.id).collect();
                prop_assert_eq!(got, want);
            }
            let mut ids: Vec<u64> = reg.endpoints().map(|e| e.record.id).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, self.endpoints.keys().copied().collect::<Vec<_>>());
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn indexed_routing_equals_testing_every_endpoint(
            ops in proptest::collection::vec(op(), 0..40),
            events in proptest::collection::vec(event(), 1..8),
        ) {
            let mut reg = Registry::default();
            let mut model = Model::default();
            for serial in 1..4 {
                model.apply(&mut reg, Op::PutTenant(serial));
            }
            for op in ops {
                // Writes edit a copy, as `RegistryHandle::mutate` does; the snapshot before must not change.
                let (before, before_model) = (reg.clone(), model.clone());
                model.apply(&mut reg, op);
                model.check(&reg, &events)?;
                before_model.check(&before, &events)?;
            }
        }
    }

    #[test]
    fn route_lists_a_tenants_matching_endpoints_in_id_order() {
        let mut reg = Registry::default();
        let ch = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        reg.put_endpoint(endpoint(5, 1, ch(&["a.created"]), ch(&["x", "y"])));
        reg.put_endpoint(endpoint(2, 1, vec![], vec![]));
        reg.put_endpoint(endpoint(9, 1, ch(&["a.created"]), vec![]));
        reg.put_endpoint(endpoint(3, 2, vec![], vec![]));
        assert_eq!(reg.route(1, "a.created", &ch(&["x", "y"]), &Payload::new("{}")), [2, 5, 9]);
        assert_eq!(reg.route(1, "b.created", &ch(&["x"]), &Payload::new("{}")), [2]);
        // Moving endpoint 2 to tenant 2 takes it out of tenant 1's routes.
        reg.put_endpoint(endpoint(2, 2, ch(&["b.created"]), vec![]));
        assert_eq!(reg.route(1, "b.created", &ch(&["x"]), &Payload::new("{}")), Vec::<u64>::new());
        assert_eq!(reg.route(2, "b.created", &[], &Payload::new("{}")), [2, 3]);
    }
}
