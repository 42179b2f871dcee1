//! Back-pressure on disk space: whether ingest may write, decided off the hot path.
//!
//! Two limits, both from `[storage]`:
//! - `max_log_bytes`: the database's size on disk as sled reports it (its `db` file plus blob files:
//!   event log, delivery state and attempt history together);
//! - `min_free_bytes`: the space left on the data dir's filesystem for unprivileged writers (`statvfs`'s
//!   `f_bavail`), so that a disk shared with other files is not filled to the last byte.
//!
//! [`watch`] measures both once every [`CHECK_EVERY`] on a blocking thread and leaves the verdict in the
//! [`Gate`]; an ingest request reads a few atomics. While either limit is crossed, ingest answers 503 with
//! `Retry-After` and `/readyz` answers 503 naming the reason; deliveries, retries and the admin API go on,
//! so the queue drains while producers wait. The check can lag by one period, so the database can
//! overshoot `max_log_bytes` by about a period of ingest.
//!
//! Beneath both limits, whatever they are set to, the filesystem itself: [`watch_space`] measures it
//! every [`SPACE_EVERY`] and keeps the store's [`Space`] (ingest's room, the ballast file, the
//! full-disk flag) so that sled never meets a full disk. While the disk is full, ingest *and* admin
//! writes answer 503 (`disk_full`); deliveries go on, writing into the margin and the ballast.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::space::{self, Space};

/// How often the sizes are measured.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the filesystem's free space is measured: one `statvfs`, cheap enough to ask often, so
/// that another process filling the disk is seen (and the ballast released) within this.
pub const SPACE_EVERY: Duration = Duration::from_millis(50);
/// What a producer refused for a full disk is told to wait, in seconds: space may come back any moment.
pub const FULL_RETRY_AFTER_SECS: u64 = 5;
/// What a refused producer is told to wait, in seconds.
pub const RETRY_AFTER_SECS: u64 = 30;

/// The limits, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_log_bytes: u64,
    /// `0`: no free-space check.
    pub min_free_bytes: u64,
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub log_bytes: u64,
    /// `None` when the filesystem could not be asked (then only the cap applies).
    pub free_bytes: Option<u64>,
}

/// Why ingest is refused. Several can hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The database is at or over `storage.max_log_bytes`.
    pub log_full: bool,
    /// The filesystem has less than `storage.min_free_bytes` free.
    pub disk_low: bool,
    /// The filesystem is full, or down to the margin hookd keeps (see [`crate::store::space`]):
    /// admin writes are refused too.
    pub disk_full: bool,
    /// The database failed a write: every write is refused until hookd restarts.
    pub engine_failed: bool,
}

impl Verdict {
    pub fn refused(self) -> bool {
        self.log_full || self.disk_low || self.disk_full || self.engine_failed
    }

    /// Whether admin writes are refused too: only for a full disk or a failed database, not for the
    /// limits (which leave room on purpose).
    pub fn writes_refused(self) -> bool {
        self.disk_full || self.engine_failed
    }

    /// What a refused client is told to wait, in seconds.
    pub fn retry_after(self) -> u64 {
        if self.writes_refused() { FULL_RETRY_AFTER_SECS } else { RETRY_AFTER_SECS }
    }

    /// Why ingest is refused, naming the setting; `None` when it is not.
    pub fn reason(self) -> Option<&'static str> {
        if self.engine_failed {
            return Some(
                "the database failed a write (disk full?) and refuses writes until hookd restarts: \
                 free disk space, then restart hookd",
            );
        }
        if self.disk_full {
            return Some(
                "the disk is full: writes are paused until space is freed on the data dir's filesystem",
            );
        }
        match (self.log_full, self.disk_low) {
            (true, true) => Some(
                "the database is over storage.max_log_bytes and the disk has less than \
                 storage.min_free_bytes free",
            ),
            (true, false) => Some("the database is over its disk cap (storage.max_log_bytes)"),
            (false, true) => Some("the disk has less free space than storage.min_free_bytes"),
            (false, false) => None,
        }
    }
}

/// The pure decision.
pub fn assess(limits: Limits, reading: Reading) -> Verdict {
    Verdict {
        log_full: reading.log_bytes >= limits.max_log_bytes,
        disk_low: limits.min_free_bytes > 0 && reading.free_bytes.is_some_and(|f| f < limits.min_free_bytes),
        ..Verdict::default()
    }
}

/// The last verdict, shared by [`watch`] (the writer) and the API (readers). Starts open: the first
/// check runs at once when the daemon starts.
pub struct Gate {
    log_full: AtomicBool,
    disk_low: AtomicBool,
    log_bytes: AtomicU64,
    free_bytes: AtomicU64,
    /// The store's view of the filesystem, whose flags the committer sets the moment a write fails.
    space: Arc<Space>,
}

impl Default for Gate {
    /// A gate over a space of its own (tests of the API that have no disk to watch).
    fn default() -> Gate {
        Gate::new(Arc::new(Space::new(Path::new("."))))
    }
}

impl Gate {
    pub fn new(space: Arc<Space>) -> Gate {
        Gate {
            log_full: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            log_bytes: AtomicU64::new(0),
            free_bytes: AtomicU64::new(0),
            space,
        }
    }

    /// The current verdict: four loads, cheap on the hot path.
    pub fn verdict(&self) -> Verdict {
        Verdict {
            log_full: self.log_full.load(Ordering::Acquire),
            disk_low: self.disk_low.load(Ordering::Acquire),
            disk_full: self.space.is_full(),
            engine_failed: self.space.engine_failed(),
        }
    }

    /// The last measurement (`free_bytes` is `u64::MAX` when unknown).
    pub fn reading(&self) -> (u64, u64) {
        (self.log_bytes.load(Ordering::Relaxed), self.free_bytes.load(Ordering::Relaxed))
    }

    /// Records a measurement and its verdict; returns the previous verdict.
    pub fn set(&self, reading: Reading, verdict: Verdict) -> Verdict {
        self.log_bytes.store(reading.log_bytes, Ordering::Relaxed);
        self.free_bytes.store(reading.free_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        Verdict {
            log_full: self.log_full.swap(verdict.log_full, Ordering::AcqRel),
            disk_low: self.disk_low.swap(verdict.disk_low, Ordering::AcqRel),
            ..Verdict::default()
        }
    }
}

/// Bytes of `path`'s filesystem available to unprivileged writers (`f_bavail × f_frsize`): root's reserve
/// is not counted, because hookd does not run as root.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn measure(store: &Store) -> Result<Reading, crate::store::StoreError> {
    let log_bytes = store.size_on_disk()?;
    let free_bytes = match free_bytes(store.data_dir()) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the data dir's free space");
            None
        }
    };
    Ok(Reading { log_bytes, free_bytes })
}

/// Every [`CHECK_EVERY`] until `stop`: measure, decide, publish in `gate`, log the changes.
pub async fn watch(store: Store, limits: Limits, gate: Arc<Gate>, stop: CancellationToken) {
    crate::periodic::every(Duration::ZERO, CHECK_EVERY, &stop, || check(&store, limits, &gate)).await;
}

/// One check: measure, decide, publish in `gate`, log the changes.
async fn check(store: &Store, limits: Limits, gate: &Gate) {
    let s = store.clone();
    let reading = match tokio::task::spawn_blocking(move || measure(&s)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the database's size on disk");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "disk check task failed");
            return;
        }
    };
    metrics::gauge!(crate::metrics::LOG_BYTES).set(reading.log_bytes as f64);
    let verdict = assess(limits, reading);
    let before = gate.set(reading, verdict);
    log_changes(limits, reading, before, verdict);
}

/// Every [`SPACE_EVERY`] until `stop`: measure the filesystem and keep the store's [`Space`] (see
/// [`check_space`]). `ballast_bytes` is `storage.ballast_bytes`.
pub async fn watch_space(store: Store, ballast_bytes: u64, stop: CancellationToken) {
    // A failure repeats every period: logged when it starts, not 20 times a second.
    let failing = Arc::new(AtomicBool::new(false));
    crate::periodic::every(Duration::ZERO, SPACE_EVERY, &stop, || {
        let (s, failing) = (store.clone(), failing.clone());
        async move {
            let failed = match tokio::task::spawn_blocking(move || check_space(&s, ballast_bytes)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            match failed {
                Some(e) if !failing.swap(true, Ordering::Relaxed) => {
                    tracing::error!(error = %e, "cannot measure the data dir's filesystem: full-disk protection is blind")
                }
                None if failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!("the data dir's filesystem is measured again")
                }
                _ => {}
            }
        }
    })
    .await;
}

/// One measurement of the data dir's filesystem, applied to the store's [`Space`]: release the
/// ballast when the margin is mostly gone, recreate it when there is room again, and set ingest's
/// room and the full-disk flag (see [`space::plan`]). Logs what changed. Blocking: a `statvfs`, and
/// an allocation of the ballast when it is recreated.
pub fn check_space(store: &Store, ballast_bytes: u64) -> std::io::Result<()> {
    let space = store.space();
    let (free, total) = space::filesystem(store.data_dir())?;
    let ballast = space::ballast_size(ballast_bytes, total);
    let (was_full, held) = (space.is_full(), space.ballast_held() || ballast == 0);
    let plan = space::plan(held, was_full, free, ballast);
    if let Err(e) = space.apply(plan, ballast) {
        // No ballast: stay closed, try again at the next measurement.
        tracing::warn!(error = %e, ballast, free, "cannot allocate the disk ballast; writes stay paused");
        space.apply(space::Plan { create: false, full: true, room: 0, ..plan }, ballast)?;
        return Ok(());
    }
    space.reserve_engine_tail(ballast / 2);
    if plan.release {
        tracing::warn!(
            free,
            ballast,
            "free disk space is nearly gone: released the ballast for deliveries' bookkeeping"
        );
    }
    match (was_full, plan.full) {
        (false, true) => {
            tracing::warn!(free, margin = ballast, "the disk is full: ingest and admin writes answer 503");
            crate::metrics::disk_full(true);
        }
        (true, false) => {
            tracing::info!(free, ballast, "the disk has room again: ingest and admin writes resume");
            crate::metrics::disk_full(false);
        }
        _ => {}
    }
    Ok(())
}

fn log_changes(limits: Limits, reading: Reading, before: Verdict, now: Verdict) {
    let (size, cap) = (reading.log_bytes, limits.max_log_bytes);
    match (before.log_full, now.log_full) {
        (false, true) => {
            tracing::warn!(size, cap, "the log reached storage.max_log_bytes: ingest answers 503")
        }
        (true, false) => {
            tracing::info!(size, cap, "the log is below storage.max_log_bytes again: ingest resumes");
        }
        _ => {}
    }
    let (free, min) = (reading.free_bytes.unwrap_or(u64::MAX), limits.min_free_bytes);
    match (before.disk_low, now.disk_low) {
        (false, true) => {
            tracing::warn!(free, min, "free disk space is below storage.min_free_bytes: ingest answers 503");
        }
        (true, false) => tracing::info!(free, min, "free disk space is above storage.min_free_bytes again"),
        _ => {}
    }
    if before.refused() && !now.refused() {
        tracing::info!("ingest resumes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_log_bytes: 1000, min_free_bytes: 100 };

    fn at(log_bytes: u64, free_bytes: Option<u64>) -> Verdict {
        assess(LIMITS, Reading { log_bytes, free_bytes })
    }

    #[test]
    fn ingest_is_refused_at_the_cap_and_below_the_free_space_floor() {
        assert_eq!(at(999, Some(100)), Verdict::default());
        assert_eq!(at(1000, Some(100)), Verdict { log_full: true, ..Verdict::default() });
        assert_eq!(at(10, Some(99)), Verdict { disk_low: true, ..Verdict::default() });
        assert_eq!(at(2000, Some(0)), Verdict { log_full: true, disk_low: true, ..Verdict::default() });
        assert!(at(2000, Some(0)).reason().is_some_and(|r| r.contains("max_log_bytes")));
        assert_eq!(
            at(10, Some(10)).reason(),
            Some("the disk has less free space than storage.min_free_bytes")
        );
        assert_eq!(at(10, Some(1000)).reason(), None);
    }

    #[test]
    fn an_unknown_free_space_or_a_zero_floor_checks_the_cap_alone() {
        assert_eq!(at(10, None), Verdict::default());
        assert_eq!(at(1000, None), Verdict { log_full: true, ..Verdict::default() });
        let no_floor = Limits { min_free_bytes: 0, ..LIMITS };
        assert_eq!(assess(no_floor, Reading { log_bytes: 1, free_bytes: Some(0) }), Verdict::default());
    }

    #[test]
    fn the_gate_reports_the_previous_verdict_and_keeps_the_reading() {
        let gate = Gate::default();
        assert!(!gate.verdict().refused(), "open until measured");
        let full = Verdict { log_full: true, ..Verdict::default() };
        let before = gate.set(Reading { log_bytes: 5, free_bytes: None }, full);
        assert_eq!((before, gate.verdict(), gate.reading()), (Verdict::default(), full, (5, u64::MAX)));
        assert_eq!(gate.set(Reading { log_bytes: 1, free_bytes: Some(7) }, Verdict::default()), full);
        assert_eq!(gate.reading(), (1, 7));
    }

    #[test]
    fn a_full_disk_refuses_admin_writes_too_and_a_failed_database_says_to_restart() {
        let caps = Verdict { log_full: true, ..Verdict::default() };
        assert!(!caps.writes_refused(), "the caps leave room on purpose: admin writes go on");
        assert_eq!(caps.retry_after(), RETRY_AFTER_SECS);
        let full = Verdict { disk_full: true, ..caps };
        assert!(full.refused() && full.writes_refused());
        assert_eq!(full.retry_after(), FULL_RETRY_AFTER_SECS);
        assert!(full.reason().is_some_and(|r| r.contains("the disk is full")), "{:?}", full.reason());
        let failed = Verdict { engine_failed: true, ..full };
        assert!(failed.reason().is_some_and(|r| r.contains("restart")), "{:?}", failed.reason());
    }

    #[test]
    fn the_gate_reads_the_stores_full_disk_flag_as_soon_as_a_write_sets_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let space = Arc::new(Space::new(dir.path()));
        let gate = Gate::new(space.clone());
        assert!(!gate.verdict().refused());
        space.met_full();
        assert!(gate.verdict().disk_full && gate.verdict().writes_refused());
        assert!(space.deliveries_paused(), "until the watcher has measured what the ballast gave back");
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_readable() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(free_bytes(dir.path()).is_ok());
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
