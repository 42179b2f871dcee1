//! hookd — a webhook delivery daemon.
//!
//! Platforms POST their events to hookd; hookd appends each one to a durable log and acknowledges it only
//! once it is on disk, then delivers it — signed, retried with backoff — to every endpoint of the tenant
//! whose subscription matches, and records every attempt.
//!
//! ```text
//!  producer ──POST /events──▶ api::events ──▶ ingest (validate, route) ──▶ store::commit (group commit, fsync)
//!                                                                              │ 202 once durable
//!                                                                              ▼
//!                                            deliver::feed (per-endpoint in-memory queue, log catch-up)
//!                                                                              ▼
//!            deliver::dispatcher (one task per endpoint) → deliver::request (body, headers, sign)
//!                      → deliver::client (hyper + rustls, SSRF guard, timeouts) → deliver::retry (classify, backoff)
//!                                                                              ▼
//!                                      store::history (attempts) ──▶ api::attempts, api::events
//! ```
//!
//! Module map:
//! - [`config`]: typed TOML config, `HOOKD_<SECTION>__<KEY>` overrides, human sizes and durations.
//! - [`app`]: wires the store, registry, committer, dispatchers and HTTP server; owns shutdown order.
//! - [`capacity`]: back-pressure on disk space (database cap, free-space floor) for ingest and `/readyz`.
//! - [`api`]: the HTTP contract (axum): routes, auth, problem+json errors.
//! - [`ingest`]: validation of incoming events and their routing to endpoints at ingest time.
//! - [`registry`]: the in-memory snapshot of tenants, endpoints and event types that routing and
//!   dispatch read without locks; rebuilt and swapped on every config change.
//! - [`route`]: subscription matching (event types, channels).
//! - [`store`]: sled trees, key layout, versioned records, group commit, queue and history; the log's
//!   start-up check and `hookd repair` (`store::verify`, `store::repair`).
//! - [`deliver`]: per-endpoint dispatch, signing, HTTP client, retry policy.
//! - [`activity`]: the live activity hub (ingests and attempt outcomes, per tenant) behind the SSE stream.
//! - [`ids`], [`model`], [`time`]: identifiers, domain types and timestamps shared by all of the above.
#![forbid(unsafe_code)]
// Nothing that depends on input or I/O may panic: outside tests, errors are handled, not unwrapped.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod activity;
pub mod api;
pub mod app;
pub mod capacity;
pub mod config;
pub mod deliver;
pub mod filter;
pub mod ids;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod periodic;
pub mod registry;
pub mod route;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod time;
