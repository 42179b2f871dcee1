//! Wiring and lifecycle: open the store, build the registry, start the committer, the dispatchers and
//! the HTTP server; on shutdown, stop them in the order that loses nothing.
//!
//! Shutdown order: stop accepting and drain HTTP requests (every acknowledged event is already durable)
//! → stop the committer after the groups in hand → dispatchers finish the attempts in hand and persist
//! their cursors → a final sync. The drain as a whole is bounded by `server.shutdown_grace`; what does not
//! finish in time is redone after the restart (at-least-once), never lost.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::deliver::client::{ClientSettings, HttpClient};
use crate::deliver::{Shared, Supervisor};
use crate::ids::IdGen;
use crate::registry::RegistryHandle;
use crate::store::seal::MasterKey;
use crate::store::{Committer, Store, StoreSettings};

const ADMIN_TOKEN_HASH_META: &str = "admin_token_sha256";

/// Runs hookd until `shutdown` resolves, then shuts down gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = crate::metrics::install().context("installing the metrics recorder")?;
    let store = Store::open(&StoreSettings {
        data_dir: config.storage.data_dir.clone(),
        durability: config.storage.durability,
        cache_bytes: config.storage.cache_bytes.0,
        master_key: MasterKey::from_config(&config.auth.master_key),
    })
    .with_context(|| format!("opening the data dir {}", config.storage.data_dir.display()))?;
    if config.auth.master_key.is_empty() {
        tracing::warn!(
            "auth.master_key is not set: endpoint signing secrets are stored unsealed in the data dir"
        );
    }
    let admin_token_hash = admin_token(&config, &store)?;
    let ids = Arc::new(IdGen::new(store.max_id_in_use()?));
    let registry = RegistryHandle::load(&store)?;
    let keys = api::api_keys::KeyTable::load(&store)?;
    let client = HttpClient::new(ClientSettings {
        connect_timeout: Duration::from_millis(config.delivery.connect_timeout_ms),
        max_response_body_bytes: usize::try_from(config.delivery.max_response_body_bytes.0)
            .unwrap_or(usize::MAX),
        allow_http: config.delivery.allow_http,
        allow_private_destinations: config.delivery.allow_private_destinations,
        // Validated with the config.
        private_allowlist: config.delivery.private_allowlist().unwrap_or_default(),
        user_agent: user_agent(),
    })
    .context("building the HTTP client")?;

    let stop_dispatch = CancellationToken::new();
    let activity = Arc::new(crate::activity::Activity::new(config.server.max_activity_streams as usize));
    let agent = http::HeaderValue::from_str(&user_agent()).unwrap_or(http::HeaderValue::from_static("hookd"));
    let supervisor = Supervisor::new(Shared {
        store: store.clone(),
        registry: registry.clone(),
        client: client.clone(),
        ids: ids.clone(),
        user_agent: agent.clone(),
        committed_upto: std::sync::atomic::AtomicU64::new(store.max_event_id()?),
        routed_upto: Default::default(),
        shutdown: stop_dispatch.clone(),
        notifier: std::sync::OnceLock::new(),
        disable_after_ms: u64::try_from(config.delivery.disable_after.0.as_millis()).unwrap_or(u64::MAX),
        activity: activity.clone(),
    });
    let notifier_slot = supervisor.shared();
    let router = supervisor.router();
    let progress = supervisor.progress();
    let (committer, commit_thread) =
        Committer::spawn(store.clone(), ids.clone(), Box::new(move |c| router.route(c)))
            .context("starting the committer")?;
    let _ = notifier_slot
        .notifier
        .set(crate::deliver::notify::Notifier::new(committer.clone(), registry.clone()));
    let supervisor_task = tokio::spawn(supervisor.run());

    let separate_metrics = config.server.metrics_listen.is_some();
    let state = AppState::new(api::Shared {
        config: config.clone(),
        store: store.clone(),
        registry,
        committer: committer.clone(),
        progress,
        ids,
        metrics: (!separate_metrics).then(|| metrics.clone()),
        admin_token_hash,
        keys: keys.clone(),
        client,
        user_agent: agent,
        capacity: Arc::new(crate::capacity::Gate::new(store.space().clone())),
        ready: AtomicBool::new(true),
        activity: activity.clone(),
    });
    // The ballast and ingest's room before the first request (the store released the ballast to open).
    let ballast_bytes = config.storage.ballast_bytes.0;
    let s = store.clone();
    match tokio::task::spawn_blocking(move || crate::capacity::check_space(&s, ballast_bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot measure the data dir's filesystem"),
        Err(e) => tracing::error!(error = %e, "disk space check task failed"),
    }
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let stop_http = CancellationToken::new();
    let metrics_server = match config.server.metrics_listen {
        Some(maddr) => {
            Some(serve_metrics(maddr, metrics.clone(), server_limits(&config), stop_http.clone()).await?)
        }
        None => None,
    };
    // The one line on stdout that tools (and the test harness) wait for.
    println!("hookd listening on http://{addr}");
    tracing::info!(
        listen = %addr,
        metrics = %metrics_server.as_ref().map_or_else(|| "same listener".to_owned(), |(a, _)| a.to_string()),
        data_dir = %config.storage.data_dir.display(),
        durability = ?config.storage.durability,
        "hookd started"
    );
    let limits = crate::capacity::Limits {
        max_log_bytes: config.storage.max_log_bytes.0,
        min_free_bytes: config.storage.min_free_bytes.0,
    };
    let disk_watch = tokio::spawn(crate::capacity::watch(
        store.clone(),
        limits,
        state.capacity.clone(),
        stop_http.clone(),
    ));
    // Stopped with the dispatchers: their bookkeeping writes until the end.
    let space_watch =
        tokio::spawn(crate::capacity::watch_space(store.clone(), ballast_bytes, stop_dispatch.clone()));
    let state_flusher = tokio::spawn(flush_state(store.clone(), stop_dispatch.clone()));
    let retention = tokio::spawn(purge_old_data(state.clone(), stop_dispatch.clone()));
    let metrics_upkeep = tokio::spawn(metrics_upkeep(metrics.clone(), stop_dispatch.clone()));
    // Stopped with the dispatchers, after the HTTP drain: the last requests' key use is persisted too.
    let key_use = tokio::spawn(
        api::api_keys::UsePersister::new(keys, api::api_keys::USE_PERSIST_EVERY).run(stop_dispatch.clone()),
    );

    let http = tokio::spawn(crate::server::serve(
        listener,
        api::router(state.clone()),
        server_limits(&config),
        stop_http.clone(),
    ));

    shutdown.await;
    let grace = config.server.shutdown_grace.0;
    // One deadline for the whole drain, so that `shutdown_grace` bounds it (plus the final sync), and a
    // service manager's stop timeout just above it is enough.
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(grace = ?grace, "draining");
    state.ready.store(false, Ordering::Release);
    // Activity streams never end by themselves: end them, or the HTTP drain would wait for them.
    activity.close();
    stop_http.cancel();
    match tokio::time::timeout_at(deadline, http).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP requests still open after the grace period; closing them"),
    }
    let _ = disk_watch.await;
    if let Some((_, task)) = metrics_server {
        let _ = task.await;
    }
    committer.stop().await;
    if tokio::task::spawn_blocking(move || commit_thread.join()).await.is_err() {
        tracing::error!("the committer thread panicked");
    }
    stop_dispatch.cancel();
    if tokio::time::timeout_at(deadline, supervisor_task).await.is_err() {
        tracing::warn!("attempts still in flight after the grace period; they will be retried after restart");
    }
    let _ = state_flusher.await;
    let _ = retention.await;
    let _ = metrics_upkeep.await;
    let _ = key_use.await;
    let _ = space_watch.await;
    match store.sync() {
        Ok(()) => {}
        // Every acknowledged event is in the log segments (synced before its 202), and the index is
        // rebuilt from them at the next start: a full disk loses delivery progress (redone, at least
        // once), never an event. Exit 0, so a service manager does not see a crash.
        Err(e) if e.is_full() || store.space().engine_failed() => {
            tracing::error!(
                error = %e,
                "cannot persist the last delivery state: the disk is full; deliveries since the last \
                 successful flush will be redone after the restart"
            );
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!("hookd stopped");
    Ok(())
}

fn user_agent() -> String {
    format!("hookd/{}", env!("CARGO_PKG_VERSION"))
}

/// The admin token's hash: from the config, or from the store, or generated now and printed once.
fn admin_token(config: &Config, store: &Store) -> anyhow::Result<[u8; 32]> {
    if !config.auth.admin_token.is_empty() {
        return Ok(api::auth::hash_token(&config.auth.admin_token));
    }
    if let Some(stored) = store.meta(ADMIN_TOKEN_HASH_META)?
        && let Ok(hash) = <[u8; 32]>::try_from(stored.as_slice())
    {
        return Ok(hash);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("hk_admin_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let hash = api::auth::hash_token(&token);
    store.put_meta(ADMIN_TOKEN_HASH_META, &hash)?;
    store.sync()?;
    // Shown this once; only its hash is kept.
    println!("hookd generated an admin token (shown once, store it now): {token}");
    Ok(hash)
}

/// Serves `/metrics` alone on its own address.
fn server_limits(config: &Config) -> crate::server::Limits {
    crate::server::Limits {
        header_read_timeout: config.server.header_read_timeout.0,
        body_read_timeout: config.server.body_read_timeout.0,
        max_connections: config.server.max_connections as usize,
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    limits: crate::server::Limits,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("binding server.metrics_listen {addr}"))?;
    let bound = listener.local_addr()?;
    println!("hookd metrics on http://{bound}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let task = tokio::spawn(crate::server::serve(listener, app, limits, stop));
    Ok((bound, task))
}

/// How often the metrics recorder drains its histogram samples into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The Prometheus recorder keeps every histogram sample until it is rendered or upkept: without a scrape,
/// that is memory growing with traffic. Upkeep folds them into the buckets.
async fn metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle, stop: CancellationToken) {
    let every = METRICS_UPKEEP_EVERY;
    crate::periodic::every(every, every, &stop, || {
        handle.run_upkeep();
        std::future::ready(())
    })
    .await;
}

/// How often retention runs (the first pass soon after the start).
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Purges what is older than `storage.retention` and no longer needed (see `store::retention`).
async fn purge_old_data(state: AppState, stop: CancellationToken) {
    let retention = u64::try_from(state.config.storage.retention.0.as_millis()).unwrap_or(u64::MAX);
    let first = Duration::from_secs(5).min(RETENTION_EVERY);
    let period = RETENTION_EVERY.min(Duration::from_millis(retention.max(1000)));
    crate::periodic::every(first, period, &stop, || purge_pass(&state, retention)).await;
}

/// One retention pass: purges what is older than `retention` ms.
async fn purge_pass(state: &AppState, retention: u64) {
    // Read the id clock before the registry: an endpoint created after this has a larger id.
    let id_ceiling = state.ids.last().saturating_add(1);
    let endpoints =
        state.registry.snapshot().endpoints().map(|e| (e.record.id, e.record.tenant_serial)).collect();
    let live = crate::store::Live { endpoints, id_ceiling };
    let cutoff = crate::time::now_ms().saturating_sub(retention);
    let store = state.store.clone();
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || store.purge(cutoff, &live)).await {
        Ok(Ok(p)) => {
            crate::metrics::purged(&p);
            if p != crate::store::Purged::default() {
                tracing::info!(
                    events = p.events,
                    attempts = p.attempts,
                    deliveries = p.deliveries,
                    idempotency_keys = p.idempotency_keys,
                    audit_entries = p.audit_entries,
                    orphaned_keys = p.orphaned_keys,
                    segments = p.segments,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "retention purged old data"
                );
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "retention pass failed"),
        Err(e) => tracing::error!(error = %e, "retention task failed"),
    }
}

/// How soon delivery state (attempts, retry queue, cursors) is durable after it is written.
const STATE_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Makes delivery state durable within [`STATE_FLUSH_EVERY`] of being written: at most one sync per
/// period, none when nothing was written. Without it, a crash would forget recent attempts and retry
/// schedules (deliveries would then be redone from the log: nothing lost, but history and retry counts
/// would be).
async fn flush_state(store: Store, stop: CancellationToken) {
    crate::periodic::every(Duration::ZERO, STATE_FLUSH_EVERY, &stop, || async {
        // A failed database refuses every write until the restart, and said so once: no error per period.
        if store.space().engine_failed() {
            return;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sync_if_dirty()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot sync delivery state"),
            Err(e) => tracing::error!(error = %e, "state flusher task failed"),
        }
    })
    .await;
}
