//! The fault suite: the faults real disks, clocks and clients bring, run against the real `hookd` binary
//! (see [`harness`]) with real receivers (see [`receiver`]).
//!
//! Each test makes one fault happen for real — kill -9 under load, a full filesystem, damaged segment
//! and index files, a receiver down past thousands of pending retries, stalled request bodies, a clock
//! step — and checks hookd's promise: nothing acknowledged is lost, no delivery is repeated more than its
//! attempts, and every answer is sane (`503` with `Retry-After` where the daemon cannot take work, never
//! a `500` for a write that was or was not done). Each test reports its figures through [`report`]:
//! acknowledged, delivered, lost, duplicated, and how long recovery took. `.ci/run` prints the report.
//!
//! Tests that need root (mounting a small filesystem) say so and are skipped elsewhere; CI runs as root.

mod clock;
mod damage;
mod full_disk;
#[path = "../it/harness.rs"]
mod harness;
mod kill;
#[path = "../it/ledger.rs"]
mod ledger;
mod load;
#[path = "../it/receiver.rs"]
mod receiver;
mod report;
mod retry_backlog;
mod stalled_body;
