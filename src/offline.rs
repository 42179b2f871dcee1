//! Admin commands that work on the data dir directly, with the daemon stopped: what an operator reaches
//! for before the API is usable (the first API key of a fresh install) or when it is not running
//! (what is in this data dir?). sled locks its directory, so these refuse to run beside a live daemon.

use std::fmt::Write as _;

use crate::api::auth::generate_key;
use crate::config::Config;
use crate::ids::IdGen;
use crate::model::{ApiKeyRecord, AuditRecord, KeyTenant, Scope};
use crate::store::seal::MasterKey;
use crate::store::{Store, StoreError, StoreSettings};

/// `read`, `write`, `delete` or `admin` (for `--scope`).
pub fn parse_scope(text: &str) -> Result<Scope, String> {
    match text {
        "read" => Ok(Scope::Read),
        "write" => Ok(Scope::Write),
        "delete" => Ok(Scope::Delete),
        "admin" => Ok(Scope::Admin),
        other => Err(format!("{other:?} is not a scope: read, write, delete or admin")),
    }
}

/// Opens the configured data dir, with a clear word when a running daemon holds it.
fn open(config: &Config) -> anyhow::Result<Store> {
    let settings = settings(config);
    Store::open(&settings).map_err(|e| open_error(config, e))
}

fn settings(config: &Config) -> StoreSettings {
    StoreSettings {
        data_dir: config.storage.data_dir.clone(),
        durability: config.storage.durability,
        cache_bytes: config.storage.cache_bytes.0.min(64 << 20),
        master_key: MasterKey::from_config(&config.auth.master_key),
    }
}

fn open_error(config: &Config, e: StoreError) -> anyhow::Error {
    match e {
        // The report is the message; kept as the error's source so that the exit code says "damaged".
        e @ StoreError::DamagedStore(_) => anyhow::Error::new(e),
        e => anyhow::anyhow!(
            "cannot open the data dir {} ({e}); stop the running hookd first, or use the HTTP API",
            config.storage.data_dir.display()
        ),
    }
}

/// Repairs the data dir (see `store::repair`); returns the report to print.
pub fn repair(config: &Config) -> anyhow::Result<String> {
    let (store, repaired) = Store::open_repairing(&settings(config)).map_err(|e| open_error(config, e))?;
    store.sync()?;
    Ok(repaired.to_string())
}

/// A new API key, written to the store; returns the lines to print (the key text, once).
pub fn create_api_key(
    config: &Config,
    name: &str,
    scopes: &[Scope],
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    if name.is_empty() || name.chars().count() > 256 || name.chars().any(char::is_control) {
        anyhow::bail!("--name must be 1 to 256 characters without control characters");
    }
    let mut scopes = scopes.to_vec();
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.is_empty() {
        anyhow::bail!("give at least one --scope (read, write, delete, admin)");
    }
    let store = open(config)?;
    let tenant = match tenant {
        None => None,
        Some(id) => {
            let found = store.tenants()?.into_iter().find(|t| t.id == id);
            let t = found.ok_or_else(|| anyhow::anyhow!("no tenant {id:?} in this data dir"))?;
            Some(KeyTenant { id: t.id, serial: t.serial })
        }
    };
    let taken: Vec<String> = store.api_keys()?.into_iter().map(|k| k.prefix).collect();
    let mut new = generate_key();
    while taken.contains(&new.prefix) {
        new = generate_key();
    }
    let ids = IdGen::new(store.max_id_in_use()?);
    let now = crate::time::now_ms();
    let mut rec = ApiKeyRecord {
        id: ids.next(),
        name: name.to_owned(),
        prefix: new.prefix.clone(),
        secret_sha256: new.sha256,
        tenant: tenant.clone(),
        scopes,
        allowed_ips: Vec::new(),
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
        created_at: now,
        updated_at: now,
    };
    while !store.create_api_key(&rec)? {
        rec.id = ids.next();
    }
    let id = crate::api::api_keys::key_id_text(rec.id);
    let audit = AuditRecord {
        at: now,
        actor: "hookd create-api-key (offline)".into(),
        client_ip: None,
        method: "POST".into(),
        route: "/v1/api-keys".into(),
        path: "(offline)".into(),
        tenant: tenant.map(|t| t.id),
        target: Some(id.clone()),
        status: 201,
    };
    store.append_audit(ids.next(), &audit)?;
    store.sync()?;
    let mut out = String::new();
    let _ = writeln!(out, "created API key {id} ({name}); its secret is shown this once:");
    let _ = writeln!(out, "{}", new.text);
    Ok(out)
}

/// What the data dir holds, for a person: counts and sizes.
pub fn inspect(config: &Config) -> anyhow::Result<String> {
    let store = open(config)?;
    let tenants = store.tenants()?;
    let endpoints = store.endpoints()?;
    let keys = store.api_keys()?;
    let now = crate::time::now_ms();
    let live_keys = keys.iter().filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now));
    let mut out = String::new();
    let _ = writeln!(out, "data dir      {}", config.storage.data_dir.display());
    let _ = writeln!(out, "size on disk  {} bytes", store.size_on_disk()?);
    let _ = writeln!(out, "tenants       {}", tenants.len());
    let _ = writeln!(
        out,
        "endpoints     {} ({} enabled)",
        endpoints.len(),
        endpoints.iter().filter(|e| e.enabled).count()
    );
    let _ = writeln!(out, "event types   {}", store.event_types()?.len());
    let _ = writeln!(out, "API keys      {} ({} usable)", keys.len(), live_keys.count());
    let _ = writeln!(out, "newest id     {}", store.max_id_in_use()?);
    // Opening the store checked the log already (a damaged one is refused with its report); the
    // figures say what was checked.
    let (damage, checked) = store.check()?;
    let verdict = if damage.is_empty() { "ok" } else { "DAMAGED (see `hookd repair`)" };
    let _ = writeln!(
        out,
        "log check     {verdict}: {} segment(s), {} bytes, {} frames, {} index entries",
        checked.segments, checked.bytes, checked.frames, checked.index_entries
    );
    for t in &tenants {
        let n = endpoints.iter().filter(|e| e.tenant_serial == t.serial).count();
        let _ = writeln!(out, "  tenant {:<24} {n} endpoint(s)", t.id);
    }
    Ok(out)
}
