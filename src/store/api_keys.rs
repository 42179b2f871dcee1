//! API key records, in the `config` tree under `k` ++ key id.
//!
//! The API reads keys from the in-memory table (`api::api_keys::KeyTable`), which is loaded from here at
//! start; every write here is followed by the same change to that table.

use super::{Store, StoreError, keys, records};
use crate::model::ApiKeyRecord;

impl Store {
    /// Every API key, revoked ones included, in id order.
    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner
            .config
            .scan_prefix([keys::API_KEY])
            .map(|item| {
                let (k, v) = item?;
                records::decode(&k, &v)
            })
            .collect()
    }

    /// Stores a new key; `false` (and nothing written) when its id is taken, so that a clock that went
    /// back can never overwrite another key.
    pub fn create_api_key(&self, rec: &ApiKeyRecord) -> Result<bool, StoreError> {
        let key = keys::one(keys::API_KEY, rec.id);
        let swapped =
            self.inner.config.compare_and_swap(key, None as Option<&[u8]>, Some(records::encode(rec)?))?;
        Ok(swapped.is_ok())
    }

    pub fn put_api_key(&self, rec: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.config.insert(keys::one(keys::API_KEY, rec.id), records::encode(rec)?)?;
        Ok(())
    }

    /// Writes several keys in one atomic batch (the periodic `last_used_at` update).
    pub fn put_api_keys<'a>(
        &self,
        recs: impl IntoIterator<Item = &'a ApiKeyRecord>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for rec in recs {
            batch.insert(&keys::one(keys::API_KEY, rec.id), records::encode(rec)?);
        }
        Ok(self.inner.config.apply_batch(batch)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyTenant, Scope};
    use crate::store::StoreSettings;

    fn open(dir: &std::path::Path) -> Store {
        let settings = StoreSettings {
            data_dir: dir.to_path_buf(),
            durability: crate::config::Durability::Os,
            cache_bytes: 1 << 20,
            master_key: None,
        };
        Store::open(&settings).unwrap()
    }

    fn key(id: u64) -> ApiKeyRecord {
        ApiKeyRecord {
            id,
            name: format!("key {id}"),
            prefix: format!("p{id}"),
            secret_sha256: [id as u8; 32],
            tenant: Some(KeyTenant { id: "acme".into(), serial: 3 }),
            scopes: vec![Scope::Read, Scope::Admin],
            allowed_ips: vec!["10.0.0.0/8".into()],
            expires_at: Some(9),
            last_used_at: None,
            revoked_at: None,
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn keys_round_trip_and_a_taken_id_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(store.create_api_key(&key(2)).unwrap());
        assert!(store.create_api_key(&key(1)).unwrap());
        let mut other = key(2);
        other.name = "intruder".into();
        assert!(!store.create_api_key(&other).unwrap());
        assert_eq!(store.api_keys().unwrap(), vec![key(1), key(2)]);

        let mut used = key(1);
        used.last_used_at = Some(5);
        let mut revoked = key(2);
        revoked.revoked_at = Some(6);
        store.put_api_keys([&used, &revoked]).unwrap();
        assert_eq!(store.api_keys().unwrap(), vec![used, revoked]);
    }
}
