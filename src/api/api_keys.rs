//! `/v1/api-keys`: scoped API keys, and the in-memory key table that [`super::auth`] checks them against.
//!
//! Keys are loaded into a [`KeyTable`] at start. Writes go store-first, then memory, one at a time under a
//! mutex (like the registry), so the table never shows a key the store does not have; requests read the
//! current [`KeyMap`] without locking.
//!
//! Who manages which keys: the admin token manages every key. Another key needs `admin` and may only
//! - see (list, get) keys within its reach: every key when it is global, its own tenant's when bound;
//! - create keys within its reach, with scopes it holds itself (a bound key's new keys are bound to its
//!   tenant: it can never make a global key);
//! - change (rename, revoke, regenerate) keys within its reach whose scopes it holds itself, so that no key
//!   can obtain the secret of a stronger one through regenerate.
//!
//! Other tenants' keys are 404, as any object of another tenant is; a visible but stronger key is 403.
//!
//! `last_used_at` is kept in memory (an atomic per key, second resolution, no write per request) and
//! persisted by the [`UsePersister`] every [`USE_PERSIST_EVERY`] and at shutdown: a crash loses at most
//! that much of it, which is all it is worth.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{self, Principal, Scopes, forbidden, scope_name};
use super::extract::{JsonBody, P, Page, Q, parse_json};
use super::openapi::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, RenameKey, RequestTimeout, Unprocessable,
};
use super::problem::{FieldError, Problem};
use super::views::ListView;
use crate::ids::{decode_u64, encode_u64};
use crate::model::{ApiKeyRecord, KeyTenant, Scope};
use crate::store::{Store, StoreError};
use crate::time::{format_ms, now_ms, parse_rfc3339};

/// Keys that are not revoked (revoked ones stay listed, and do not count).
pub const MAX_KEYS: usize = 10_000;
pub const MAX_NAME_LEN: usize = 256;
pub const MAX_ALLOWED_IPS: usize = 64;
/// How often `last_used_at` is written to the store.
pub const USE_PERSIST_EVERY: Duration = Duration::from_secs(30);
/// `last_used_at` moves in steps of this, so a busy key writes its atomic once a second, not per request.
const USE_RESOLUTION_MS: u64 = 1000;

const ID_PREFIX: &str = "key_";

pub fn key_id_text(id: u64) -> String {
    format!("{ID_PREFIX}{}", encode_u64(id))
}

fn parse_key_id(text: &str) -> Option<u64> {
    text.strip_prefix(ID_PREFIX).and_then(decode_u64)
}

// ---- the in-memory table ----

/// A key as the authenticator uses it.
#[derive(Debug)]
pub struct KeyEntry {
    pub record: ApiKeyRecord,
    /// `record.allowed_ips`, parsed. An entry that no longer parses (a damaged record) is left out, so it
    /// lets nothing in: the list stays restrictive.
    nets: Vec<IpNet>,
    /// Unix ms of the last use, 0 for never. Shared by every version of the entry for one id, so a rename
    /// or a regenerate does not forget it.
    last_used: Arc<AtomicU64>,
}

impl KeyEntry {
    fn new(record: ApiKeyRecord, last_used: Arc<AtomicU64>) -> KeyEntry {
        let nets = record
            .allowed_ips
            .iter()
            .filter_map(|text| {
                auth::parse_cidr(text)
                    .inspect_err(|e| {
                        tracing::error!(key = %key_id_text(record.id), entry = %text, error = %e, "stored allowed_ips entry does not parse")
                    })
                    .ok()
            })
            .collect();
        last_used.fetch_max(record.last_used_at.unwrap_or(0), Ordering::Relaxed);
        KeyEntry { record, nets, last_used }
    }

    /// May the key be used from `ip`? With an allow-list, an unknown address may not.
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        self.record.allowed_ips.is_empty() || ip.is_some_and(|ip| auth::ip_allowed(&self.nets, ip))
    }

    pub fn mark_used(&self, now: u64) {
        if self.last_used.load(Ordering::Relaxed).saturating_add(USE_RESOLUTION_MS) <= now {
            self.last_used.fetch_max(now, Ordering::Relaxed);
        }
    }

    pub fn last_used_at(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn state(&self, now: u64) -> KeyState {
        if self.record.revoked_at.is_some() {
            KeyState::Revoked
        } else if self.record.expires_at.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// One immutable snapshot of every key.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    by_id: BTreeMap<u64, Arc<KeyEntry>>,
    by_prefix: HashMap<String, u64>,
}

impl KeyMap {
    pub fn get(&self, id: u64) -> Option<&Arc<KeyEntry>> {
        self.by_id.get(&id)
    }

    pub fn by_prefix(&self, prefix: &str) -> Option<&Arc<KeyEntry>> {
        self.by_prefix.get(prefix).and_then(|id| self.by_id.get(id))
    }

    /// In id (= creation) order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.by_id.values()
    }

    /// Keys not revoked: what [`MAX_KEYS`] bounds.
    pub fn live_count(&self) -> usize {
        self.by_id.values().filter(|e| e.record.revoked_at.is_none()).count()
    }

    /// Adds or replaces a key, keeping its use time and dropping its old prefix.
    fn put(&mut self, record: ApiKeyRecord) {
        let last_used = match self.by_id.get(&record.id) {
            Some(old) => {
                if old.record.prefix != record.prefix {
                    self.by_prefix.remove(&old.record.prefix);
                }
                old.last_used.clone()
            }
            None => Arc::default(),
        };
        self.by_prefix.insert(record.prefix.clone(), record.id);
        self.by_id.insert(record.id, Arc::new(KeyEntry::new(record, last_used)));
    }
}

/// The key table; cheap to clone.
#[derive(Clone)]
pub struct KeyTable {
    inner: Arc<TableInner>,
}

struct TableInner {
    current: ArcSwap<KeyMap>,
    /// Serializes writers (API and persister) so that the store and the table change in the same order.
    /// Held only for the synchronous store write and copy; never across an await.
    write: Mutex<()>,
    store: Store,
}

impl KeyTable {
    pub fn load(store: &Store) -> Result<KeyTable, StoreError> {
        let mut map = KeyMap::default();
        for rec in store.api_keys()? {
            map.put(rec);
        }
        Ok(KeyTable {
            inner: Arc::new(TableInner {
                current: ArcSwap::from_pointee(map),
                write: Mutex::new(()),
                store: store.clone(),
            }),
        })
    }

    /// The current table. A guard rather than an `Arc`: every request reads it, and a guard costs no
    /// shared reference-count write. Not to be held across an await.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<KeyMap>> {
        self.inner.current.load()
    }

    /// Runs one change: `f` writes the store and edits a copy of the table; on `Ok` the store is synced
    /// (a revocation must survive a crash) and the copy published, on `Err` the copy is dropped.
    fn mutate<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut KeyMap, &Store) -> Result<R, E>,
    ) -> Result<R, E> {
        let _guard = self.inner.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = KeyMap::clone(&self.inner.current.load());
        let out = f(&mut next, &self.inner.store)?;
        self.inner.store.sync()?;
        self.inner.current.store(Arc::new(next));
        Ok(out)
    }

    /// Writes the use times newer than the stored ones, in one batch; returns how many keys it wrote.
    /// Not synced: losing a few seconds of `last_used_at` to a crash costs nothing.
    pub fn persist_use(&self) -> Result<usize, StoreError> {
        let _guard = self.inner.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.inner.current.load_full();
        let changed: Vec<ApiKeyRecord> = current
            .iter()
            .filter_map(|e| {
                let used = e.last_used_at()?;
                (Some(used) > e.record.last_used_at)
                    .then(|| ApiKeyRecord { last_used_at: Some(used), ..e.record.clone() })
            })
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        self.inner.store.put_api_keys(&changed)?;
        let mut next = KeyMap::clone(&current);
        let n = changed.len();
        for rec in changed {
            next.put(rec);
        }
        self.inner.current.store(Arc::new(next));
        Ok(n)
    }
}

/// Persists `last_used_at` every `period` and once more when stopped.
pub struct UsePersister {
    keys: KeyTable,
    period: Duration,
}

impl UsePersister {
    pub fn new(keys: KeyTable, period: Duration) -> UsePersister {
        UsePersister { keys, period }
    }

    pub async fn run(self, stop: CancellationToken) {
        crate::periodic::every(self.period, self.period, &stop, || {
            self.step();
            std::future::ready(())
        })
        .await;
        self.step();
    }

    pub fn step(&self) {
        if let Err(e) = self.keys.persist_use() {
            tracing::error!(error = %e, "cannot persist API keys' last_used_at");
        }
    }
}

// ---- views ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

/// A key as shown: never its secret or digest, except `key`, set only in the answer that creates it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// `key_…`.
    pub id: String,
    /// The key text (`hk_…`): only in the answers of create and regenerate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub name: String,
    /// The key text's first characters (`hk_<prefix>`), to tell which key is which.
    pub prefix: String,
    pub tenant: Option<String>,
    pub scopes: Vec<Scope>,
    pub allowed_ips: Vec<String>,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub state: KeyState,
    pub revoked_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl KeyView {
    fn new(e: &KeyEntry, now: u64) -> KeyView {
        let r = &e.record;
        KeyView {
            id: key_id_text(r.id),
            key: None,
            name: r.name.clone(),
            prefix: format!("{}{}", auth::KEY_START, r.prefix),
            tenant: r.tenant.as_ref().map(|t| t.id.clone()),
            scopes: r.scopes.clone(),
            allowed_ips: r.allowed_ips.clone(),
            expires_at: r.expires_at.map(format_ms),
            last_used_at: e.last_used_at().map(format_ms),
            state: e.state(now),
            revoked_at: r.revoked_at.map(format_ms),
            created_at: format_ms(r.created_at),
            updated_at: format_ms(r.updated_at),
        }
    }
}

// ---- who may touch which key ----

/// Is `rec` within `p`'s reach? Global principals reach every key, bound ones their tenant's.
fn reaches(p: &Principal, rec: &ApiKeyRecord) -> bool {
    match &p.tenant {
        None => true,
        Some(own) => rec.tenant.as_ref().is_some_and(|t| t.serial == own.serial),
    }
}

/// The key `id` if `p` may see it; 404 otherwise, whether it is missing or out of reach.
fn find<'a>(map: &'a KeyMap, p: &Principal, id: &str) -> Result<&'a Arc<KeyEntry>, Problem> {
    parse_key_id(id)
        .and_then(|id| map.get(id))
        .filter(|e| reaches(p, &e.record))
        .ok_or_else(|| Problem::not_found("API key"))
}

/// `p` may change a key it reaches only when it holds every scope the key has.
fn check_manage(p: &Principal, rec: &ApiKeyRecord) -> Result<(), Problem> {
    let missing = p.scopes.missing(Scopes::of(&rec.scopes));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(forbidden(format!(
            "this key has scopes the caller lacks ({}); only a key holding all of them may change it",
            names(&missing)
        )))
    }
}

fn names(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| scope_name(*s)).collect::<Vec<_>>().join(", ")
}

// ---- input ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// The tenant the key is bound to; absent: a global (operator) key.
    #[serde(default)]
    pub tenant: Option<String>,
    pub scopes: Vec<Scope>,
    /// RFC 3339.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// CIDRs or addresses the key may be used from; absent or empty: any.
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
}

fn check_name(name: &str, errors: &mut Vec<FieldError>) {
    let len = name.chars().count();
    if len == 0 || len > MAX_NAME_LEN {
        errors.push(FieldError::new("name", format!("must be 1 to {MAX_NAME_LEN} characters")));
    } else if name.chars().any(char::is_control) {
        errors.push(FieldError::new("name", "must not contain control characters"));
    }
}

/// Validated `allowed_ips`, in canonical form.
fn check_ips(entries: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if entries.len() > MAX_ALLOWED_IPS {
        errors.push(FieldError::new("allowed_ips", format!("at most {MAX_ALLOWED_IPS} entries")));
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for (i, text) in entries.iter().enumerate() {
        match auth::parse_cidr(text) {
            Ok(net) if !out.contains(&net.to_string()) => out.push(net.to_string()),
            Ok(_) => {}
            Err(message) => errors.push(FieldError::new(format!("allowed_ips[{i}]"), message)),
        }
    }
    out
}

// ---- handlers ----

/// `POST /v1/api-keys`: 201 with the key text, shown this once.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateKey, responses(
    (status = 201, description = "Created; `key` is shown this once.", body = KeyView),
    (status = 400, response = BadRequest), (status = 409, response = Conflict),
    (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<KeyView>), Problem> {
    let mut scopes = body.scopes;
    scopes.sort_unstable();
    scopes.dedup();
    let missing = principal.scopes.missing(Scopes::of(&scopes));
    if !missing.is_empty() {
        return Err(forbidden(format!("cannot grant scopes the caller lacks: {}", names(&missing))));
    }
    // A bound key's keys are bound to its own tenant; asking for another is refused before its existence
    // is looked up, so the answer tells nothing about other tenants.
    let tenant_id = match (&principal.tenant, body.tenant) {
        (None, asked) => asked,
        (Some(own), None) => Some(own.id.clone()),
        (Some(own), Some(asked)) if asked == own.id => Some(asked),
        (Some(own), Some(_)) => {
            return Err(forbidden(format!("a key bound to tenant {} can only create keys of {0}", own.id)));
        }
    };

    let now = now_ms();
    let mut errors = Vec::new();
    check_name(&body.name, &mut errors);
    if scopes.is_empty() {
        errors.push(FieldError::new("scopes", "at least one of read, write, delete, admin"));
    }
    let expires_at = match body.expires_at.as_deref().map(|t| (t, parse_rfc3339(t))) {
        None => None,
        Some((_, Some(t))) if t > now => Some(t),
        Some((_, Some(_))) => {
            errors.push(FieldError::new("expires_at", "must be in the future"));
            None
        }
        Some((_, None)) => {
            errors.push(FieldError::new("expires_at", "must be an RFC 3339 time, e.g. 2026-11-22T18:13:22Z"));
            None
        }
    };
    let allowed_ips = check_ips(body.allowed_ips.as_deref().unwrap_or_default(), &mut errors);
    let tenant = tenant_id.and_then(|id| {
        let found =
            state.registry.snapshot().tenant(&id).map(|t| KeyTenant { id: t.id.clone(), serial: t.serial });
        if found.is_none() {
            errors.push(FieldError::new("tenant", format!("no tenant {id:?}")));
        }
        found
    });
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }

    let mut new = auth::generate_key();
    let entry = state.keys.mutate(|map, store| -> Result<Arc<KeyEntry>, Problem> {
        if map.live_count() >= MAX_KEYS {
            return Err(Problem::conflict(format!("{MAX_KEYS} API keys exist; revoke unused ones first")));
        }
        // 60-bit prefixes practically never collide, but a collision must not make a key unfindable.
        while map.by_prefix(&new.prefix).is_some() {
            new = auth::generate_key();
        }
        let mut rec = ApiKeyRecord {
            id: 0,
            name: body.name,
            prefix: new.prefix.clone(),
            secret_sha256: new.sha256,
            tenant,
            scopes,
            allowed_ips,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            created_at: now,
            updated_at: now,
        };
        for _ in 0..8 {
            rec.id = state.ids.next();
            if store.create_api_key(&rec)? {
                map.put(rec.clone());
                return map.get(rec.id).cloned().ok_or_else(|| Problem::conflict("the key vanished; retry"));
            }
        }
        Err(Problem::conflict("no free key id; retry"))
    })?;
    tracing::info!(key = %key_id_text(entry.record.id), by = %principal.who(), "API key created");
    let mut view = KeyView::new(&entry, now);
    view.key = Some(new.text);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `?…` of the key list; unknown parameters are refused (see [`Page`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    /// Only the keys bound to this tenant.
    pub tenant: Option<String>,
    /// 1 to 250; 50 when absent.
    pub limit: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// `GET /v1/api-keys?tenant=`: in creation order, revoked ones included.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", params(ListFilter), responses(
    (status = 200, description = "In creation order, revoked keys included.", body = ListView<KeyView>),
    (status = 400, response = BadRequest), (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Q(mut filter): Q<ListFilter>,
) -> Result<Json<ListView<KeyView>>, Problem> {
    let page = Page { limit: filter.limit.take(), cursor: filter.cursor.take() };
    let limit = page.limit()?;
    let after = match page.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            parse_key_id(c).ok_or_else(|| Problem::invalid_field("cursor", "not a cursor of this list"))?,
        ),
    };
    let now = now_ms();
    let map = state.keys.snapshot();
    let mut data: Vec<KeyView> = map
        .iter()
        .filter(|e| after.is_none_or(|a| e.record.id > a))
        .filter(|e| reaches(&principal, &e.record))
        .filter(|e| {
            filter.tenant.as_deref().is_none_or(|t| e.record.tenant.as_ref().is_some_and(|k| k.id == t))
        })
        .take(limit + 1)
        .map(|e| KeyView::new(e, now))
        .collect();
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|k| k.id.clone())
    } else {
        None
    };
    Ok(Json(ListView { data, next_cursor }))
}

#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "The key's id (`key_…`).")), responses(
    (status = 200, description = "The key, without its secret.", body = KeyView), (status = 404, response = NotFound),
))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    P(id): P<String>,
) -> Result<Json<KeyView>, Problem> {
    let map = state.keys.snapshot();
    find(&map, &principal, &id).map(|e| Json(KeyView::new(e, now_ms())))
}

/// `PATCH`: JSON Merge Patch of `name`; everything else about a key is fixed (create a new one instead).
#[utoipa::path(patch, path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "The key's id (`key_…`).")), request_body = RenameKey,
    responses(
        (status = 200, description = "Renamed.", body = KeyView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    P(id): P<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<KeyView>, Problem> {
    let mut errors = Vec::new();
    let mut name = None;
    for (field, value) in body {
        match (field.as_str(), value) {
            ("name", Value::String(n)) => {
                check_name(&n, &mut errors);
                name = Some(n);
            }
            ("name", Value::Null) => errors.push(FieldError::new("name", "cannot be removed")),
            ("name", _) => errors.push(FieldError::new("name", "must be a string")),
            _ => errors.push(FieldError::new(field, "cannot be changed; only `name` can")),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let now = now_ms();
    let entry = state.keys.mutate(|map, store| -> Result<Arc<KeyEntry>, Problem> {
        let current = find(map, &principal, &id)?;
        check_manage(&principal, &current.record)?;
        let Some(name) = name else { return Ok(current.clone()) };
        let rec = ApiKeyRecord { name, updated_at: now, ..current.record.clone() };
        store.put_api_key(&rec)?;
        let id = rec.id;
        map.put(rec);
        map.get(id).cloned().ok_or_else(|| Problem::not_found("API key"))
    })?;
    Ok(Json(KeyView::new(&entry, now)))
}

/// `DELETE`: revokes the key at once. The record stays (state `revoked`); revoking again is a no-op.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "The key's id (`key_…`).")), responses(
    (status = 204, description = "Revoked."), (status = 404, response = NotFound),
))]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    P(id): P<String>,
) -> Result<StatusCode, Problem> {
    let now = now_ms();
    state.keys.mutate(|map, store| -> Result<(), Problem> {
        let current = find(map, &principal, &id)?;
        check_manage(&principal, &current.record)?;
        if current.record.revoked_at.is_some() {
            return Ok(());
        }
        let rec = ApiKeyRecord { revoked_at: Some(now), updated_at: now, ..current.record.clone() };
        store.put_api_key(&rec)?;
        map.put(rec);
        Ok(())
    })?;
    tracing::info!(key = %id, by = %principal.who(), "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/regenerate`: a new key text (new prefix and secret) for the same key id and settings; the old
/// text stops working at once. Revoked and expired keys stay dead (409): create a new key instead.
#[utoipa::path(post, path = "/v1/api-keys/{id}/regenerate", tag = "api-keys", params(("id" = String, Path, description = "The key's id (`key_…`).")),
    request_body(content = Option<Object>, description = "Nothing, or `{}`."),
    responses(
        (status = 200, description = "The new key text in `key`, shown this once.", body = KeyView),
        (status = 400, response = BadRequest), (status = 404, response = NotFound),
        (status = 409, response = Conflict), (status = 422, response = Unprocessable),
))]
pub async fn regenerate(
    State(state): State<AppState>,
    principal: Principal,
    P(id): P<String>,
    body: Bytes,
) -> Result<Json<KeyView>, Problem> {
    // No fields; an empty body or `{}`.
    if !body.iter().all(u8::is_ascii_whitespace) {
        let fields: Map<String, Value> = parse_json(&body)?;
        let errors: Vec<FieldError> =
            fields.keys().map(|f| FieldError::new(f.clone(), "regenerate takes no fields")).collect();
        if !errors.is_empty() {
            return Err(Problem::invalid(errors));
        }
    }
    let now = now_ms();
    let mut new = auth::generate_key();
    let entry = state.keys.mutate(|map, store| -> Result<Arc<KeyEntry>, Problem> {
        let current = find(map, &principal, &id)?;
        check_manage(&principal, &current.record)?;
        match current.state(now) {
            KeyState::Active => {}
            KeyState::Revoked => return Err(Problem::conflict("the key is revoked; create a new key")),
            KeyState::Expired => return Err(Problem::conflict("the key has expired; create a new key")),
        }
        while map.by_prefix(&new.prefix).is_some() {
            new = auth::generate_key();
        }
        let rec = ApiKeyRecord {
            prefix: new.prefix.clone(),
            secret_sha256: new.sha256,
            updated_at: now,
            ..current.record.clone()
        };
        store.put_api_key(&rec)?;
        let id = rec.id;
        map.put(rec);
        map.get(id).cloned().ok_or_else(|| Problem::not_found("API key"))
    })?;
    tracing::info!(key = %id, by = %principal.who(), "API key regenerated");
    let mut view = KeyView::new(&entry, now);
    view.key = Some(new.text);
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreSettings;

    fn open(dir: &std::path::Path) -> Store {
        Store::open(&StoreSettings {
            data_dir: dir.to_path_buf(),
            durability: crate::config::Durability::Os,
            cache_bytes: 1 << 20,
            master_key: None,
        })
        .unwrap()
    }

    fn record(id: u64, prefix: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id,
            name: "k".into(),
            prefix: prefix.into(),
            secret_sha256: [0; 32],
            tenant: None,
            scopes: vec![Scope::Read],
            allowed_ips: Vec::new(),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn add(table: &KeyTable, rec: ApiKeyRecord) {
        table
            .mutate(|map, store| -> Result<(), StoreError> {
                assert!(store.create_api_key(&rec)?);
                map.put(rec);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn key_ids_round_trip() {
        let text = key_id_text(0x0123_4567_89ab_cdef);
        assert!(text.starts_with("key_"));
        assert_eq!(parse_key_id(&text), Some(0x0123_4567_89ab_cdef));
        assert_eq!(parse_key_id("ep_0000000000001"), None);
        assert_eq!(parse_key_id("key_"), None);
    }

    #[test]
    fn a_new_prefix_replaces_the_old_one_and_the_use_time_survives() {
        let mut map = KeyMap::default();
        map.put(record(1, "aaa"));
        map.get(1).unwrap().mark_used(5_000);
        map.put(ApiKeyRecord { prefix: "bbb".into(), ..record(1, "aaa") });
        assert!(map.by_prefix("aaa").is_none());
        assert_eq!(map.by_prefix("bbb").map(|e| e.record.id), Some(1));
        assert_eq!(map.get(1).unwrap().last_used_at(), Some(5_000));
    }

    #[test]
    fn use_is_recorded_at_second_resolution() {
        let mut map = KeyMap::default();
        map.put(record(1, "aaa"));
        let e = map.get(1).unwrap();
        assert_eq!(e.last_used_at(), None);
        e.mark_used(10_000);
        e.mark_used(10_500);
        assert_eq!(e.last_used_at(), Some(10_000));
        e.mark_used(11_000);
        assert_eq!(e.last_used_at(), Some(11_000));
    }

    #[test]
    fn allow_lists_refuse_unknown_and_outside_addresses() {
        let mut rec = record(1, "a");
        let open_key = KeyEntry::new(rec.clone(), Arc::default());
        assert!(open_key.allows(None) && open_key.allows(Some("192.0.2.1".parse().unwrap())));
        rec.allowed_ips = vec!["10.0.0.0/8".into(), "not a net".into()];
        let listed = KeyEntry::new(rec.clone(), Arc::default());
        assert!(listed.allows(Some("10.9.9.9".parse().unwrap())));
        assert!(!listed.allows(Some("127.0.0.1".parse().unwrap())));
        assert!(!listed.allows(None));
        rec.allowed_ips = vec!["damaged".into()];
        assert!(!KeyEntry::new(rec, Arc::default()).allows(Some("10.0.0.1".parse().unwrap())));
    }

    #[test]
    fn states_follow_revocation_and_expiry() {
        let mut rec = record(1, "a");
        rec.expires_at = Some(100);
        assert_eq!(KeyEntry::new(rec.clone(), Arc::default()).state(99), KeyState::Active);
        assert_eq!(KeyEntry::new(rec.clone(), Arc::default()).state(100), KeyState::Expired);
        rec.revoked_at = Some(50);
        assert_eq!(KeyEntry::new(rec, Arc::default()).state(10), KeyState::Revoked);
    }

    #[test]
    fn use_times_are_persisted_in_one_step_and_only_when_newer() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let table = KeyTable::load(&store).unwrap();
        add(&table, record(1, "aaa"));
        add(&table, record(2, "bbb"));
        let persister = UsePersister::new(table.clone(), Duration::from_secs(3600));
        assert_eq!(table.persist_use().unwrap(), 0, "nothing used yet");
        table.snapshot().get(2).unwrap().mark_used(7_000);
        persister.step();
        assert_eq!(table.persist_use().unwrap(), 0, "the step wrote it already");
        let stored: Vec<Option<u64>> = store.api_keys().unwrap().iter().map(|r| r.last_used_at).collect();
        assert_eq!(stored, [None, Some(7_000)]);
        // A restart reads it back.
        let reloaded = KeyTable::load(&store).unwrap();
        assert_eq!(reloaded.snapshot().get(2).unwrap().last_used_at(), Some(7_000));
    }

    #[tokio::test]
    async fn the_persister_writes_periodically_and_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let table = KeyTable::load(&store).unwrap();
        add(&table, record(1, "aaa"));
        let stop = CancellationToken::new();
        let period = Duration::from_millis(50);
        let task = tokio::spawn(UsePersister::new(table.clone(), period).run(stop.clone()));
        let stored = || store.api_keys().unwrap()[0].last_used_at;
        table.snapshot().get(1).unwrap().mark_used(5_000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stored().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(period / 5).await;
        }
        assert_eq!(stored(), Some(5_000), "persisted within a period or so");
        table.snapshot().get(1).unwrap().mark_used(9_000);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(stored(), Some(9_000), "persisted at stop");
    }
}
