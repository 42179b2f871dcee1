//! Storage: one sled database with three trees and versioned rmp-serde records, and the log's record
//! bodies and the attempt records in append-only segment files ([`segment`]).
//!
//! # Trees and key layout
//! All integers in keys are big-endian so that sled's byte order is numeric order. `T` is a tenant's
//! serial (8 bytes), `E` an endpoint id (8), `V` an event id (8), `W` a webhook id — the event id of a
//! single-event delivery or the batch id of a batch — (8), `A` an attempt id (8), `D` a unix-ms due time (8).
//!
//! | tree     | key                         | value                                   | written by            |
//! |----------|-----------------------------|-----------------------------------------|-----------------------|
//! | `config` | `t` tenant-id (utf-8)       | [`TenantRecord`]                        | API                   |
//! | `config` | `e` E                       | [`EndpointRecord`]                      | API, dispatcher (410) |
//! | `config` | `y` type name (utf-8)       | [`EventTypeRecord`]                     | API                   |
//! | `config` | `m` name                    | meta values (admin token hash, …)       | app                   |
//! | `config` | `k` API key id (8 bytes)    | [`ApiKeyRecord`]                        | API, key-use persister|
//! | `log`    | `L` T V                     | [`segment::Pointer`] to the record of events V, V+1, … (older stores: the [`LogRecord`] itself) | group commit |
//! | `log`    | `I` T idempotency-key       | [`IdempotencyRecord`]                   | group commit          |
//! | `log`    | `M` `indexed`               | segment ++ offset: frames before it are in the index | group commit |
//! | `state`  | `C` E                       | cursor: u64, every event ≤ it is handed off | dispatcher        |
//! | `state`  | `D` E W                     | [`DeliveryRecord`] (not a first-try success) | dispatcher       |
//! | `state`  | `Q` E D W                   | empty: the retry queue, ordered by due time | dispatcher        |
//! | `state`  | `A` T A                     | [`segment::Pointer`] to the run of attempts A, A+1, … (older stores: one [`AttemptRecord`] inline) | dispatcher |
//! | `state`  | `a` E A                     | run length (u32; empty: 1): attempts by endpoint | dispatcher   |
//! | `state`  | `b` E V                     | batch id (older stores; `B` replaces it) | —                    |
//! | `state`  | `B` E V                     | last event ++ batch id: the batch of E whose events are V..=last | dispatcher |
//! | `state`  | `w` T W A                   | last webhook id: the run from attempt A carried webhook ids W..=it (not all of them; ≤ 100 ms of ids apart) | dispatcher |
//! | `state`  | `v` T W A                   | endpoint id: attempts by webhook id (older stores; `w` replaces it) | —       |
//! | `state`  | `x` T A                     | endpoint id: failed attempts            | dispatcher            |
//! | `state`  | `l` T A                     | endpoint id ++ succeeded (u8): attempts recorded > 1 s after they were sent | dispatcher |
//! | `state`  | `S` E                       | [`EndpointStatsRecord`]: counters for the stats API | dispatcher |
//! | `state`  | `U` id                      | [`AuditRecord`]: one authenticated write | API (audit layer)    |
//!
//! # Invariants
//! - An ingest group is one append to the current segment (synced in `fsync` mode) before it is
//!   acknowledged, and each event carries its routes and idempotency key, so an acknowledged event is
//!   always deliverable: nothing else must be written for it to reach its endpoints. Its idempotency
//!   keys, index entries and then the indexed position follow, written in that order rather than as a
//!   sled batch ([`ordered`]: sled recovers a prefix of what was written); after a crash the frames the
//!   index lacks are replayed into it ([`segment`]). A frame cut off half-way is dropped whole.
//! - The payload is stored once, in the log, however many endpoints it matched.
//! - The outcomes of attempts recorded together (index entries, delivery state, retry-queue entries,
//!   cursor) are written to `state` after their records were appended to the history segments: as one
//!   sled batch when delivery state changes, else in an order whose every prefix is consistent (run
//!   pointers, then what refers to them, the cursor last). After a crash the cursor covers only
//!   attempts whose outcomes are there; the others are redone, and an appended frame nothing points to
//!   is garbage. The history segment is synced before sled is flushed ([`Store::sync`]), so what sled
//!   has durably points to durable frames.
//! - Event ids inside a log record are consecutive, so an event is found with one reverse range seek.
//! - At open the log is checked ([`verify`]: every frame's CRC, every index entry against its frame,
//!   the tenants the segments hold) before the replay, which cuts torn tails, touches anything; damage
//!   that would lose or hide acknowledged events refuses the open ([`StoreError::DamagedStore`])
//!   unless repairing ([`repair`], `hookd repair`: `quarantine/` keeps what it takes out). A record
//!   that fails its check later is [`StoreError::Damaged`], which readers skip rather than stall on.
//!
//! # Record format
//! Every value that is a record is `[format version: u8] ++ rmp-serde (compact, array) encoding`.
//! Version 1 is the only one so far. Fields added later carry `#[serde(default)]` and go at the end, so a
//! newer binary reads an older record; a record with a version above [`records::FORMAT_VERSION`] is refused
//! with [`StoreError::UnknownVersion`] rather than misread.

mod api_keys;
mod audit;
mod catalog;
mod commit;
pub mod damage;
mod durability;
mod frame;
mod history;
mod keys;
mod log;
mod ordered;
pub mod records;
mod refuse;
mod repair;
mod retention;
pub mod seal;
pub mod segment;
pub mod space;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use audit::AuditFilter;
pub use catalog::CatalogError;
pub use commit::{Accepted, CommitError, CommittedRecord, Committer, PreparedEvent};
pub use history::id_floor as history_id_floor;
pub use history::{
    AttemptCursor, AttemptFilter, AttemptOutcomeWrite, AttemptPage, AttemptSort, DeliveryChange, HistoryError,
};
pub use log::EventFilter;
pub use records::IdempotencyRecord;
pub use repair::Repaired;
pub use retention::{Live, Purged};
pub use verify::CheckStats;

use crate::config::Durability;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error")]
    Sled(#[from] sled::Error),
    #[error("storage I/O error")]
    Io(#[source] std::io::Error),
    /// The filesystem refused a write for want of space (ENOSPC, EDQUOT), or ingest's share of the
    /// free space ([`space`]) ran out: nothing of the write was kept. Back-pressure, not damage.
    #[error("the disk is full")]
    Full(#[source] std::io::Error),
    #[error("undecodable record under key {key:?}")]
    Decode {
        key: Vec<u8>,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("record under key {key:?} has format version {version}, newer than this binary reads")]
    UnknownVersion { key: Vec<u8>, version: u8 },
    #[error("record encoding error")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("the group committer has stopped")]
    CommitterGone,
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// One record failed its check when read back (run time): skip it, never stall on it.
    #[error("{0}")]
    Damaged(Box<damage::DamagedRecord>),
    /// The start-up check found damage that would lose or hide acknowledged events.
    #[error("{0}")]
    DamagedStore(Box<damage::DamageReport>),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        if space::is_full(&e) { StoreError::Full(e) } else { StoreError::Io(e) }
    }
}

impl StoreError {
    /// Whether the write failed for want of disk space: ours, or sled's (whose I/O errors keep
    /// their kind).
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Full(_) => true,
            StoreError::Sled(sled::Error::Io(e)) => space::is_full(e),
            _ => false,
        }
    }
}

/// A page of a list, newest first: `(id, record)` pairs and the cursor of the next page.
pub type PageOf<T> = (Vec<(u64, T)>, Option<u64>);

/// Settings the store is opened with.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub cache_bytes: u64,
    /// Seals endpoint secrets at rest (see [`seal`]); `None`: stored as they are.
    pub master_key: Option<seal::MasterKey>,
}

#[cfg(test)]
impl StoreSettings {
    /// A store in `dir` as the unit tests open it: `fsync`, an 8 MiB cache, no master key.
    pub(crate) fn for_test(dir: &Path) -> StoreSettings {
        StoreSettings {
            data_dir: dir.to_path_buf(),
            durability: Durability::Fsync,
            cache_bytes: 8 << 20,
            master_key: None,
        }
    }
}

/// The storage handle: cheap to clone, shared by the API, the committer and the dispatchers.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    config: sled::Tree,
    log: sled::Tree,
    state: sled::Tree,
    /// The bodies of the log's records; `log` holds pointers into them.
    segments: segment::SegmentLog<segment::Events>,
    /// The attempt history's records; `state` holds pointers into them.
    history: segment::SegmentLog<segment::Attempts>,
    durability: durability::Syncer,
    data_dir: PathBuf,
    /// Set by delivery-state writes, cleared by [`Store::sync_if_dirty`]: attempt outcomes are made
    /// durable within one flusher period without a sync per attempt.
    state_dirty: std::sync::atomic::AtomicBool,
    master_key: Option<seal::MasterKey>,
    /// Ingest's room on the disk, the full-disk flag, sled's health and the ballast ([`space`]).
    space: Arc<space::Space>,
}

impl Store {
    /// Opens (creating if needed) the database in `settings.data_dir`, after checking the log (see
    /// [`verify`]): damage that would lose or hide acknowledged events is [`StoreError::DamagedStore`].
    pub fn open(settings: &StoreSettings) -> Result<Store, StoreError> {
        Store::open_checked(settings, false).map(|(store, _)| store)
    }

    /// Opens the database like [`Store::open`], repairing what the check finds (see [`repair`]).
    pub fn open_repairing(settings: &StoreSettings) -> Result<(Store, Repaired), StoreError> {
        let (store, repaired) = Store::open_checked(settings, true)?;
        let repaired = repaired.ok_or_else(|| StoreError::Io(std::io::ErrorKind::Other.into()))?;
        Ok((store, repaired))
    }

    fn open_checked(settings: &StoreSettings, repair: bool) -> Result<(Store, Option<Repaired>), StoreError> {
        std::fs::create_dir_all(&settings.data_dir)?;
        // The ballast goes first: on a full disk it is the room sled and recovery (and a repair's copy
        // of sled's files) need to open.
        let space = Arc::new(space::Space::new(&settings.data_dir));
        space.release_ballast_at_start();
        let quarantine = repair.then(|| repair::quarantine_dir(&settings.data_dir));
        if let Some(q) = &quarantine {
            repair::keep_sled_files(&settings.data_dir, q)?;
        }
        let db = sled::Config::new()
            .path(&settings.data_dir)
            .cache_capacity(settings.cache_bytes)
            // Group commit flushes explicitly; the background flusher only bounds what `os` mode can lose.
            .flush_every_ms(Some(500))
            .mode(sled::Mode::HighThroughput)
            .open()
            .inspect_err(|_| {
                // Locked by a running daemon, most likely: the repair did not happen, so neither
                // does its copy of sled's files.
                if let Some(q) = &quarantine {
                    let _ = std::fs::remove_dir_all(q);
                }
            })?;
        let config = db.open_tree("config")?;
        let log = db.open_tree("log")?;
        let state = db.open_tree("state")?;
        if let Err(e) = space.watch_engine_file(&settings.data_dir) {
            tracing::warn!(error = %e, "cannot open the database file to keep room after its end");
        }
        let durability = durability::Syncer::new(&settings.data_dir, settings.durability)?;
        let segments = segment::SegmentLog::open(&settings.data_dir, settings.durability)?;
        let history = segment::SegmentLog::open(&settings.data_dir, settings.durability)?;
        segments.count_in(space.clone());
        history.count_in(space.clone());
        let store = Store {
            inner: Arc::new(Inner {
                db,
                config,
                log,
                state,
                segments,
                history,
                durability,
                data_dir: settings.data_dir.clone(),
                state_dirty: Default::default(),
                master_key: settings.master_key.clone(),
                space,
            }),
        };
        // Before the replay: it cuts a torn tail, and must not take damage for one.
        let (report, checked) = store.check_log()?;
        tracing::info!(
            segments = checked.segments,
            bytes = checked.bytes,
            frames = checked.frames,
            index_entries = checked.index_entries,
            ms = checked.elapsed.as_millis() as u64,
            "log checked"
        );
        let repaired = match (report.is_empty(), quarantine) {
            (_, Some(q)) => Some(store.repair(report, q)?),
            (true, None) => None,
            (false, None) => return Err(StoreError::DamagedStore(Box::new(report))),
        };
        store.recover_log()?;
        store.count_history_refs()?;
        store.seal_plaintext_secrets()?;
        store.index_history()?;
        store.sync()?;
        Ok((store, repaired))
    }

    /// Makes everything written to sled so far durable as configured: the history segment first (sled
    /// must not point into frames a power loss could take), then sled's flush, then (in `fsync` mode)
    /// a real `fdatasync` of its data file and any new blob files. The log's segments need nothing
    /// here: every append is already as durable as the mode asks.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.inner.history.sync().inspect_err(|e| self.inner.space.noted(e))?;
        self.inner.db.flush().map_err(|e| self.inner.space.noted_engine(e.into()))?;
        self.inner.durability.sync().inspect_err(|e| self.inner.space.noted(e))
    }

    /// Disk space as the writers see it: shared with the capacity watcher and the API.
    pub fn space(&self) -> &Arc<space::Space> {
        &self.inner.space
    }

    /// Syncs when delivery state was written since the last call. Returns whether it synced.
    pub fn sync_if_dirty(&self) -> Result<bool, StoreError> {
        if !self.inner.state_dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return Ok(false);
        }
        self.sync()?;
        Ok(true)
    }

    fn mark_state_dirty(&self) {
        self.inner.state_dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The largest id any stored record uses, to seed the id clock after a restart.
    pub fn max_id_in_use(&self) -> Result<u64, StoreError> {
        let mut max = 0u64;
        // Keys are prefix ++ tenant ++ first id: the last key of each tenant's range holds its largest
        // ids, the last of its run (events of a record, attempts of a run). Deleted tenants' records
        // count too, until retention purges them.
        for tenant in self.serials_with(&self.inner.log, keys::LOG)? {
            if let Some(item) = self.inner.log.scan_prefix(keys::tenant_prefix(keys::LOG, tenant)).next_back()
            {
                let (k, v) = item?;
                max = max.max(keys::trailing_u64(&k) + Store::entry_events(&k, &v)?.saturating_sub(1));
            }
        }
        for tenant in self.serials_with(&self.inner.state, keys::ATTEMPT)? {
            let attempts = keys::tenant_prefix(keys::ATTEMPT, tenant);
            if let Some(item) = self.inner.state.scan_prefix(attempts).next_back() {
                let (k, v) = item?;
                max = max.max(keys::trailing_u64(&k) + Store::run_len(&v).saturating_sub(1));
            }
        }
        for item in self.inner.config.scan_prefix([keys::ENDPOINT]) {
            let (k, _) = item?;
            max = max.max(keys::trailing_u64(&k));
        }
        // Keys are `U` ++ id: the last one holds the largest.
        if let Some(item) = self.inner.state.scan_prefix([keys::AUDIT]).next_back() {
            let (k, _) = item?;
            max = max.max(keys::trailing_u64(&k));
        }
        Ok(max)
    }

    /// The largest event id in the log (0 when empty): where the log's head was at start.
    pub fn max_event_id(&self) -> Result<u64, StoreError> {
        let mut max = 0u64;
        for tenant in self.tenant_serials()? {
            let Some(item) = self.inner.log.scan_prefix(keys::tenant_prefix(keys::LOG, tenant)).next_back()
            else {
                continue;
            };
            let (k, v) = item?;
            let last = keys::trailing_u64(&k) + Store::entry_events(&k, &v)?.saturating_sub(1);
            max = max.max(last);
        }
        Ok(max)
    }

    /// Bytes the database uses on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?
            + self.inner.segments.size_on_disk()?
            + self.inner.history.size_on_disk()?)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Opens the store again in this process. sled releases its lock on the data dir only once its
    /// background threads let go of the dropped database, which takes a moment on a busy machine.
    #[cfg(test)]
    pub(crate) fn reopen_for_test(settings: &StoreSettings) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match Store::open(settings) {
                Ok(store) => return store,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopen: {e:?}"),
            }
        }
    }

    /// A unique, monotonically increasing number (persisted by sled), for tenant serials.
    pub(crate) fn generate_serial(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.generate_id()? + 1)
    }
}
