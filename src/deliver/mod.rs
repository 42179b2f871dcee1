//! Delivery: per-endpoint dispatch, request building and signing, the outbound HTTP client and the
//! retry policy. One file per stage: `feed` (what to send) → `dispatcher` (when, how many at once) →
//! `request` + `sign` (what goes on the wire) → `client` (sending it) → `retry` (what the answer means).
pub mod client;
mod damaged;
pub mod dispatcher;
pub mod due;
pub mod feed;
pub mod notify;
pub mod request;
pub mod retry;
pub mod sign;
pub mod stats;
pub mod supervisor;

pub use supervisor::{Progress, Router, Shared, Supervisor};
