//! Config objects: tenants, endpoints, the event catalog, and a few meta values.
//!
//! These change rarely and are read through the in-memory [`crate::registry`], which is rebuilt from
//! here at start; every write here is followed by the same change to the registry.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::records;
use super::{Store, StoreError, keys, seal};
use crate::model::{EndpointRecord, EventTypeRecord, TenantRecord};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("already exists")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for CatalogError {
    fn from(e: sled::Error) -> Self {
        CatalogError::Store(e.into())
    }
}

impl Store {
    fn load_all<T: DeserializeOwned>(&self, prefix: u8) -> Result<Vec<T>, StoreError> {
        self.inner
            .config
            .scan_prefix([prefix])
            .map(|item| {
                let (k, v) = item?;
                records::decode(&k, &v)
            })
            .collect()
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.inner.config.insert(key, records::encode(value)?)?;
        Ok(())
    }

    /// Creates a tenant; `Conflict` when the id is taken.
    pub fn create_tenant(&self, rec: &TenantRecord) -> Result<(), CatalogError> {
        let key = keys::named(keys::TENANT, &rec.id);
        match self.inner.config.compare_and_swap(key, None as Option<&[u8]>, Some(records::encode(rec)?))? {
            Ok(()) => Ok(()),
            Err(_) => Err(CatalogError::Conflict),
        }
    }

    pub fn put_tenant(&self, rec: &TenantRecord) -> Result<(), StoreError> {
        self.put(&keys::named(keys::TENANT, &rec.id), rec)
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.load_all(keys::TENANT)
    }

    pub fn tenant_serials(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.tenants()?.into_iter().map(|t| t.serial).collect())
    }

    /// Removes a tenant and its endpoints in one atomic batch. Its events and history stay behind under
    /// its serial, unreachable (a re-created tenant gets a new serial) until retention purges them.
    pub fn delete_tenant(&self, id: &str, endpoints: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove(keys::named(keys::TENANT, id));
        for ep in endpoints {
            batch.remove(&keys::one(keys::ENDPOINT, *ep));
        }
        Ok(self.inner.config.apply_batch(batch)?)
    }

    /// Stores an endpoint, its signing secrets sealed when a master key is configured (see [`seal`]).
    pub fn put_endpoint(&self, rec: &EndpointRecord) -> Result<(), StoreError> {
        let key = self.inner.master_key.as_ref();
        let mut stored = rec.clone();
        stored.secret = seal::seal(key, rec.id, &rec.secret);
        for r in &mut stored.retired_secrets {
            r.secret = seal::seal(key, rec.id, &r.secret);
        }
        self.put(&keys::one(keys::ENDPOINT, rec.id), &stored)
    }

    /// Seals every endpoint secret still stored in plaintext (written before a master key was set).
    pub(super) fn seal_plaintext_secrets(&self) -> Result<(), StoreError> {
        if self.inner.master_key.is_none() {
            return Ok(());
        }
        // As stored: `put_endpoint` seals what is plaintext and leaves what is sealed as it is.
        for rec in self.load_all::<EndpointRecord>(keys::ENDPOINT)? {
            let plain = |text: &str| !seal::is_sealed(text);
            if plain(&rec.secret) || rec.retired_secrets.iter().any(|r| plain(&r.secret)) {
                self.put_endpoint(&rec)?;
            }
        }
        Ok(())
    }

    pub fn delete_endpoint(&self, id: u64) -> Result<(), StoreError> {
        self.inner.config.remove(keys::one(keys::ENDPOINT, id))?;
        Ok(())
    }

    /// Every endpoint, secrets opened.
    pub fn endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        let key = self.inner.master_key.as_ref();
        let mut all: Vec<EndpointRecord> = self.load_all(keys::ENDPOINT)?;
        for rec in &mut all {
            rec.secret = seal::open(key, rec.id, &rec.secret)?;
            for r in &mut rec.retired_secrets {
                r.secret = seal::open(key, rec.id, &r.secret)?;
            }
        }
        Ok(all)
    }

    pub fn put_event_type(&self, rec: &EventTypeRecord) -> Result<(), StoreError> {
        self.put(&keys::named(keys::EVENT_TYPE, &rec.name), rec)
    }

    pub fn delete_event_type(&self, name: &str) -> Result<(), StoreError> {
        self.inner.config.remove(keys::named(keys::EVENT_TYPE, name))?;
        Ok(())
    }

    pub fn event_types(&self) -> Result<Vec<EventTypeRecord>, StoreError> {
        self.load_all(keys::EVENT_TYPE)
    }

    /// A meta value (raw bytes).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.config.get(keys::named(keys::META, name))?.map(|v| v.to_vec()))
    }

    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.config.insert(keys::named(keys::META, name), value)?;
        Ok(())
    }
}
