//! Real durability on top of sled 0.34.
//!
//! sled 0.34's `flush()` ends in `sync_file_range` on Linux: the data reaches the disk's queue and
//! survives a process kill, but not a power loss or a VM crash (no device cache flush, no metadata).
//! And values larger than ~1/4 of a segment (128 KiB by default) are written to `blobs/<lsn>` files that
//! sled never syncs at all. In `fsync` mode we therefore follow every flush with an `fdatasync` of the
//! `db` file, an `fsync` of every blob file newer than the last one synced, and of the blob directory.
//! In `os` mode nothing is added: a kill -9 loses nothing that was flushed, a power loss may.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;
use crate::config::Durability;

pub struct Syncer {
    mode: Durability,
    db_file: Option<File>,
    blob_dir: PathBuf,
    /// The largest blob file name (an LSN) already synced. A mutex because the committer and shutdown
    /// may both sync; it is never held across an await.
    synced_blobs: Mutex<u64>,
}

impl Syncer {
    pub fn new(data_dir: &Path, mode: Durability) -> Result<Syncer, StoreError> {
        let db_file = match mode {
            Durability::Fsync => Some(File::open(data_dir.join("db"))?),
            Durability::Os => None,
        };
        if mode == Durability::Fsync {
            // The data dir's own entry for `db` must be durable once.
            File::open(data_dir)?.sync_all()?;
        }
        Ok(Syncer { mode, db_file, blob_dir: data_dir.join("blobs"), synced_blobs: Mutex::new(0) })
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        if self.mode == Durability::Os {
            return Ok(());
        }
        if let Some(f) = &self.db_file {
            f.sync_data()?;
        }
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let Ok(entries) = std::fs::read_dir(&self.blob_dir) else {
            return Ok(()); // no blob written yet
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut newest = *synced;
        let mut any = false;
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if lsn > *synced {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_all()?,
                    // Garbage-collected by sled between the listing and the open: nothing to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                newest = newest.max(lsn);
                any = true;
            }
        }
        if any {
            File::open(&self.blob_dir)?.sync_all()?;
            *synced = newest;
        }
        Ok(())
    }
}
