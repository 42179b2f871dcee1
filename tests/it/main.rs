//! hookd's integration tests: one test binary that runs the real daemon (see [`harness`]) against real
//! HTTP receivers (see [`receiver`]).
//!
//! One module per capability (ingest, delivery, retries, batching, auth, …); `smoke` checks the harness
//! itself and the daemon's process contract.

mod access;
mod activity;
mod admin;
mod audit;
mod backpressure;
mod cli;
mod delivery;
mod durability;
mod harness;
mod history;
mod hostile;
mod ingest;
mod ledger;
mod limits;
mod logs;
mod metrics;
mod notifications;
mod operations;
mod outbound;
mod receiver;
mod retention;
mod secrets;
mod smoke;
mod subscriptions;
