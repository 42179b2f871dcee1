//! Disk space as the store's writers see it, so that sled never meets a full disk.
//!
//! Why: sled 0.34's I/O errors are sticky. A write that fails sets its global error, and every later
//! write returns it until the database is opened again; reopening it in-process would bring it back at
//! its last durable prefix under dispatchers whose cursors and retry windows assumed later writes. So
//! hookd stops the writes that grow the disk before sled has to meet `ENOSPC`:
//!
//! - **room**: the bytes ingest may still append before the next measurement — the free space less a
//!   *margin* kept for what deliveries write (sled's index and state, the attempt history) while
//!   ingest is refused. Every segment append (the log's and the history's) takes what it wrote from
//!   it, and the committer refuses a group larger than what is left as [`StoreError::Full`]: atomic
//!   operations, no syscall on the hot path.
//! - **ballast**: a file of really allocated bytes (`ballast` in the data dir), as CockroachDB keeps.
//!   It is deleted the moment a write meets `ENOSPC` (another process took the disk between two
//!   measurements) or the measured free space falls under half the margin: its space is what sled and
//!   the history write into while deliveries go on. It is also deleted at every start, before sled is
//!   opened, so that a daemon stopped on a full disk starts again.
//! - **full**: set by any of the above; ingest and admin writes answer 503 with `Retry-After`,
//!   `/readyz` 503. Only the watcher ([`crate::capacity`]) clears it, once the disk has the ballast,
//!   the margin and a hysteresis free again (it recreates the ballast first).
//! - **sled's tail**: blocks kept allocated past the end of sled's `db` file
//!   ([`Space::reserve_engine_tail`]), so that sled's next writes need no free space even when another
//!   process took the whole disk since the last measurement.
//! - **engine failed**: sled failed a write despite all this. Nothing in this process can make it write
//!   again: the flag closes ingest and admin writes for good and `/readyz` says to restart.
//!
//! Invariants: the ballast is held only while `full` may be cleared; `room` is 0 while `full` is set
//! by the watcher; the flags are only ever read on the hot path.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreError;

/// The ballast file's name in the data dir.
pub const BALLAST_FILE: &str = "ballast";
/// The ballast (and margin) is at most this fraction of the filesystem: 1/16, so that a small disk
/// still holds data (a 64 MiB one keeps 4 MiB of ballast and 4 MiB of margin).
pub const BALLAST_FRACTION: u64 = 16;
/// The least hysteresis between closing and reopening the gate, so that it does not flap.
const MIN_HYSTERESIS: u64 = 1 << 20;
/// Below half the margin, and at least this, of free space with the ballast gone, deliveries pause:
/// what is left is for the writes already under way (sled's flush of them).
const MIN_FLOOR: u64 = 256 << 10;

/// How often a paused dispatcher looks again whether deliveries may resume: rare enough that
/// thousands of endpoints waiting cost little, soon enough that nobody notices the wait.
pub const PAUSED_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether an I/O error means "no space" (`ENOSPC`, `EDQUOT`).
pub fn is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error())
}

/// What one measurement decides (see [`plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Delete the ballast: the margin is mostly gone.
    pub release: bool,
    /// Recreate the ballast: the disk has room for it, the margin and the hysteresis.
    pub create: bool,
    /// Refuse ingest and admin writes.
    pub full: bool,
    /// What ingest may append until the next measurement.
    pub room: u64,
    /// Start no delivery attempt: even the ballast's space is mostly used, and every attempt writes
    /// bookkeeping (history, delivery state) that sled must not meet a full disk with.
    pub pause: bool,
}

/// The pure decision, from whether the ballast is held (always true for a ballast of 0), whether the
/// gate is closed, the free bytes measured and the ballast's size (which is also the margin).
pub fn plan(held: bool, full: bool, free: u64, ballast: u64) -> Plan {
    let margin = ballast;
    let hysteresis = (margin / 2).max(MIN_HYSTERESIS);
    let floor = (margin / 2).max(MIN_FLOOR);
    let closed = Plan { release: false, create: false, full: true, room: 0, pause: free < floor };
    if !held {
        return if free >= ballast + margin + hysteresis {
            Plan { create: true, full: false, room: free - ballast - margin, ..closed }
        } else {
            closed
        };
    }
    if free < margin / 2 {
        // Deleting the ballast gives its space back: pause only if even that is short.
        return Plan { release: ballast > 0, pause: free + ballast < floor, ..closed };
    }
    let reopen_at = if full { margin + hysteresis } else { margin };
    if free < reopen_at { closed } else { Plan { full: false, room: free - margin, ..closed } }
}

/// The ballast's size for a filesystem of `total` bytes: as configured, at most 1/16 of it.
pub fn ballast_size(configured: u64, total: u64) -> u64 {
    configured.min(total / BALLAST_FRACTION)
}

struct Ballast {
    path: PathBuf,
    held: bool,
}

/// See the module docs. Shared by the store's writers, the capacity watcher and the API.
pub struct Space {
    room: AtomicU64,
    full: AtomicBool,
    engine_failed: AtomicBool,
    /// Deliveries start no attempt (see [`Plan::pause`]).
    paused: AtomicBool,
    /// Taken by the watcher and by error paths only, never on the hot path.
    ballast: Mutex<Ballast>,
    /// sled's `db` file, opened for writing, to keep blocks allocated past its end (see
    /// [`Space::reserve_engine_tail`]). Set once the database is open.
    engine_file: std::sync::OnceLock<std::fs::File>,
}

impl Space {
    /// Open and unmeasured: unlimited room until the watcher's first measurement.
    pub fn new(data_dir: &Path) -> Space {
        Space {
            room: AtomicU64::new(u64::MAX),
            full: AtomicBool::new(false),
            engine_failed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            ballast: Mutex::new(Ballast { path: data_dir.join(BALLAST_FILE), held: false }),
            engine_file: std::sync::OnceLock::new(),
        }
    }

    /// Opens sled's `db` file in `data_dir` for [`Space::reserve_engine_tail`].
    pub fn watch_engine_file(&self, data_dir: &Path) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(data_dir.join("db"))?;
        let _ = self.engine_file.set(file);
        Ok(())
    }

    /// Keeps `bytes` of blocks allocated past the end of sled's `db` file (`fallocate` with
    /// `KEEP_SIZE`: the file's length, all sled sees, does not change). sled grows its file by writing
    /// past its end; writes into blocks already allocated need no free space, so another process that
    /// takes the whole disk between two measurements does not make sled's next flush fail before the
    /// ballast is released. Measured on a 64 MiB tmpfs: without it, sled met `ENOSPC` within 50 ms of
    /// a filler taking the disk in 2 runs of 6. Topped up at every measurement, since sled's writes
    /// use it up and sled cuts its file when it frees the last segment. Best effort: a full disk or a
    /// filesystem without `fallocate` leaves what there is.
    pub fn reserve_engine_tail(&self, bytes: u64) {
        let Some(file) = self.engine_file.get() else { return };
        if bytes == 0 {
            return;
        }
        let reserved = file.metadata().and_then(|m| {
            rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, m.len(), bytes)
                .map_err(std::io::Error::from)
        });
        if let Err(e) = reserved {
            tracing::debug!(error = %e, bytes, "cannot keep blocks allocated past the database file's end");
        }
    }

    /// Whether ingest's room holds `bytes` more; when it does not, the gate closes. One load: the
    /// segment append takes what it really wrote ([`Space::consume`]).
    pub fn has_room(&self, bytes: u64) -> bool {
        let room = self.room.load(Ordering::Acquire) >= bytes;
        if !room && !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                bytes,
                "the disk's room for ingest is used up: ingest and admin writes answer 503"
            );
        }
        room
    }

    /// `bytes` were added to the disk (a segment append of the log or of the history): taken from
    /// ingest's room, down to 0, so that what deliveries write between two measurements counts too.
    pub fn consume(&self, bytes: u64) {
        let _ =
            self.room.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(bytes)));
    }

    /// Ingest and admin writes must be refused: the disk is full (or its margin reached).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// sled failed a write: nothing more can be written until hookd restarts.
    pub fn engine_failed(&self) -> bool {
        self.engine_failed.load(Ordering::Acquire)
    }

    /// Deliveries must start no attempt for now: the disk is full past the ballast, or sled failed.
    pub fn deliveries_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire) || self.engine_failed()
    }

    /// Whether the ballast file is held.
    pub fn ballast_held(&self) -> bool {
        self.lock().held
    }

    /// Notes a failed write of hookd's own files: a full disk closes the gate and frees the ballast.
    pub fn noted(&self, e: &StoreError) {
        if e.is_full() {
            self.met_full();
        }
    }

    /// Notes a failed sled write (returned as is): sled refuses every write from now on.
    pub fn noted_engine(&self, e: StoreError) -> StoreError {
        self.noted(&e);
        if matches!(e, StoreError::Sled(sled::Error::Io(_))) {
            self.refuse_until_restart(&e);
        }
        e
    }

    /// Closes ingest and admin writes for the rest of this process: sled failed a write (it refuses
    /// every later one), or a refused group could not be cut from the log.
    pub fn refuse_until_restart(&self, why: &dyn std::fmt::Display) {
        if !self.engine_failed.swap(true, Ordering::AcqRel) {
            crate::metrics::storage_engine_failed();
            tracing::error!(
                error = %why,
                "the store failed a write it cannot take back or retry: ingest and admin writes answer 503 \
                 until hookd restarts; free disk space, then restart hookd (acknowledged events are safe \
                 in the log segments)"
            );
        }
    }

    /// A write met `ENOSPC`: close the gate and give the ballast's space to what must still write.
    pub fn met_full(&self) {
        self.room.store(0, Ordering::Release);
        // Until the watcher has measured what the ballast gave back.
        self.paused.store(true, Ordering::Release);
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!("a write met a full disk: ingest and admin writes answer 503");
        }
        self.release_ballast();
    }

    /// Deletes the ballast file if there is one. Returns whether one was deleted.
    pub fn release_ballast(&self) -> bool {
        let deleted = self.delete_ballast();
        if deleted {
            tracing::warn!("released the disk ballast: its space is for deliveries' bookkeeping");
        }
        deleted
    }

    /// Deletes the ballast left by the previous run, before sled is opened: on a full disk its space
    /// is what opening needs. The watcher's first measurement, before the first request, recreates it.
    pub fn release_ballast_at_start(&self) {
        if self.delete_ballast() {
            tracing::debug!("deleted the disk ballast of the previous run; recreated once measured");
        }
    }

    fn delete_ballast(&self) -> bool {
        let mut b = self.lock();
        b.held = false;
        match std::fs::remove_file(&b.path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::error!(error = %e, path = %b.path.display(), "cannot delete the disk ballast");
                false
            }
        }
    }

    /// Creates the ballast file with `size` really allocated bytes. A failure leaves no file behind.
    pub fn create_ballast(&self, size: u64) -> std::io::Result<()> {
        let mut b = self.lock();
        match allocate(&b.path, size) {
            Ok(()) => {
                b.held = true;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&b.path);
                Err(e)
            }
        }
    }

    /// Applies a measurement's [`plan`]: the ballast first, then the room, then the gate.
    pub fn apply(&self, plan: Plan, ballast: u64) -> std::io::Result<()> {
        if plan.release {
            self.release_ballast();
        }
        // Once sled failed, its space is for nothing but the shutdown: no ballast to release again.
        let create = plan.create && !self.engine_failed();
        if create && ballast > 0 {
            self.create_ballast(ballast)?;
        } else if create {
            self.lock().held = true;
        }
        self.room.store(plan.room, Ordering::Release);
        self.full.store(plan.full, Ordering::Release);
        if self.paused.swap(plan.pause, Ordering::AcqRel) != plan.pause && !self.engine_failed() {
            if plan.pause {
                tracing::warn!("the disk is full past its ballast: deliveries pause until space is freed");
            } else {
                tracing::info!("deliveries resume");
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ballast> {
        self.ballast.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes a file of `size` allocated bytes: `fallocate` where the filesystem has it, zeros elsewhere
/// (a sparse file would hold no space).
fn allocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            let zeros = vec![0u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])?;
                left -= n as u64;
            }
        }
        Err(e) => return Err(e.into()),
    }
    file.sync_all()
}

/// The free bytes (for unprivileged writers) and total size of `path`'s filesystem.
pub fn filesystem(path: &Path) -> std::io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path)?;
    Ok((stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_blocks.saturating_mul(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ingest_gets_the_free_space_less_the_margin_and_closes_below_it() {
        assert_eq!(
            plan(true, false, 10 * MIB, 4 * MIB),
            Plan { release: false, create: false, full: false, room: 6 * MIB, pause: false }
        );
        let closed = plan(true, false, 3 * MIB, 4 * MIB);
        assert_eq!(closed, Plan { release: false, create: false, full: true, room: 0, pause: false });
    }

    #[test]
    fn a_closed_gate_reopens_only_past_the_hysteresis() {
        assert!(plan(true, true, 5 * MIB, 4 * MIB).full, "just above the margin: still closed");
        assert_eq!(
            plan(true, true, 6 * MIB, 4 * MIB),
            Plan { release: false, create: false, full: false, room: 2 * MIB, pause: false }
        );
    }

    #[test]
    fn the_ballast_is_released_when_the_margin_is_mostly_gone_and_recreated_when_there_is_room() {
        assert_eq!(
            plan(true, true, MIB, 4 * MIB),
            Plan { release: true, create: false, full: true, room: 0, pause: false }
        );
        assert_eq!(
            plan(false, true, 9 * MIB, 4 * MIB),
            Plan { release: false, create: false, full: true, room: 0, pause: false }
        );
        assert_eq!(
            plan(false, true, 10 * MIB, 4 * MIB),
            Plan { release: false, create: true, full: false, room: 2 * MIB, pause: false }
        );
    }

    #[test]
    fn deliveries_pause_only_once_the_released_ballast_is_mostly_used_too() {
        assert!(!plan(false, true, 3 * MIB, 4 * MIB).pause, "the ballast's space is there");
        assert!(plan(false, true, MIB, 4 * MIB).pause);
        assert!(!plan(true, true, 0, 4 * MIB).pause, "releasing the ballast gives 4 MiB");
    }

    #[test]
    fn without_a_ballast_only_the_hysteresis_keeps_the_gate_from_flapping() {
        assert_eq!(
            plan(true, false, 10, 0),
            Plan { release: false, create: false, full: false, room: 10, pause: true }
        );
        assert!(plan(true, true, MIB - 1, 0).full);
        assert!(!plan(true, true, MIB, 0).full);
    }

    #[test]
    fn the_ballast_is_a_sixteenth_of_a_small_disk_at_most() {
        assert_eq!(ballast_size(1 << 30, 64 * MIB), 4 * MIB);
        assert_eq!(ballast_size(MIB, 64 * MIB), MIB);
    }

    #[test]
    fn room_runs_out_and_closes_the_gate_and_a_full_disk_frees_the_ballast() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let space = Space::new(dir.path());
        space.apply(plan(false, false, u64::MAX / 2, MIB), MIB).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join(BALLAST_FILE);
        let meta = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= MIB, "the ballast holds real space: {} blocks", meta.blocks());
        space.room.store(100, Ordering::Release);
        assert!(space.has_room(60));
        space.consume(60);
        assert!(!space.has_room(60), "only 40 bytes left");
        assert!(space.is_full());
        space.consume(60);
        assert_eq!(space.room.load(Ordering::Acquire), 0);
        space.noted(&StoreError::from(std::io::Error::from_raw_os_error(
            rustix::io::Errno::NOSPC.raw_os_error(),
        )));
        assert!(!file.exists() && !space.ballast_held(), "released on ENOSPC");
    }

    #[test]
    fn enospc_and_edquot_are_full_and_other_errors_are_not() {
        let os = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        assert!(is_full(&os(rustix::io::Errno::NOSPC)));
        assert!(is_full(&os(rustix::io::Errno::DQUOT)));
        assert!(!is_full(&os(rustix::io::Errno::IO)));
        assert!(StoreError::from(os(rustix::io::Errno::NOSPC)).is_full());
        let sled_full = sled::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "x"));
        assert!(StoreError::Sled(sled_full).is_full());
    }
}
