//! Repair of a damaged data dir (`hookd repair`): quarantine the damaged bytes, make the segments read
//! again, drop the index entries nothing can be read for, and rebuild the index from the segments.
//!
//! Invariants:
//! - Nothing is deleted: every damaged region is copied to `quarantine/<unix ms>/` (and synced) before
//!   its bytes in the segment are replaced, and the report of what was lost is written there too.
//! - Offsets the index relies on never move: damaged bytes between whole frames are overwritten by a
//!   filler frame of the same size ([`frame::filler`]); only a damaged tail is cut off.
//! - The segments are the truth: when the database lost tenants (sled came back with less than it
//!   had), the index is rebuilt by replaying every segment, and each lost tenant gets a placeholder
//!   record (`recovered-<serial>`) so that its events can be reached; what lived only in the database
//!   (tenant names, endpoints, API keys, delivery state) cannot be rebuilt and is reported as such.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::damage::DamageReport;
use super::frame;
use super::log::indexed_key;
use super::records::{self, IdempotencyRecord};
use super::{Store, StoreError, keys};
use crate::model::TenantRecord;

/// What a repair did.
#[derive(Debug, Clone)]
pub struct Repaired {
    /// What the check found before the repair.
    pub report: DamageReport,
    /// Where the damaged bytes and the report went (`None`: there was nothing to repair).
    pub quarantine: Option<PathBuf>,
    /// Placeholder tenants made for serials the database had lost.
    pub recovered_tenants: Vec<String>,
}

impl std::fmt::Display for Repaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(q) = &self.quarantine else { return writeln!(f, "no damage found; nothing repaired") };
        write!(f, "{}", self.report)?;
        writeln!(f, "repaired:")?;
        writeln!(
            f,
            "- kept in {}: sled's files as the repair found them, and each damaged region",
            q.display()
        )?;
        if !self.report.regions.is_empty() {
            writeln!(f, "- the damaged regions were replaced by filler frames (a damaged tail was cut off)")?;
        }
        if !self.report.lost.is_empty() {
            writeln!(
                f,
                "- {} event(s) could not be read back and were removed from the index: they are lost (listed above)",
                self.report.lost_events()
            )?;
        }
        if !self.recovered_tenants.is_empty() {
            writeln!(
                f,
                "- the index was rebuilt from the segments; tenants {} were made as placeholders for the lost ones",
                self.recovered_tenants.join(", ")
            )?;
            writeln!(
                f,
                "- NOT rebuilt (it lived only in the database): tenant ids and names, endpoints, event types, API keys, \
                 delivery state and history; re-create endpoints and keys, then re-send what must reach them"
            )?;
        }
        Ok(())
    }
}

/// Where a repair keeps what it takes out: `quarantine/<unix ms>/` in the data dir.
pub(super) fn quarantine_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("quarantine").join(crate::time::now_ms().to_string())
}

/// Copies sled's files (the data dir's top-level files: `db`, `conf`, snapshots) into
/// `quarantine/sled/` before sled opens them for a repair: sled's own recovery rewrites what it could
/// not read, and what it dropped may be all there is of the configuration.
pub(super) fn keep_sled_files(data_dir: &Path, quarantine: &Path) -> Result<(), StoreError> {
    let to = quarantine.join("sled");
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            File::open(to.join(entry.file_name()))?.sync_all()?;
        }
    }
    Ok(())
}

impl Store {
    /// Repairs what `report` found (see the module docs), keeping what it takes out in `quarantine`
    /// (which holds sled's files already). Runs before the index is replayed at open.
    pub(super) fn repair(&self, report: DamageReport, quarantine: PathBuf) -> Result<Repaired, StoreError> {
        if report.is_empty() {
            // Nothing damaged: the copy of sled's files is not needed.
            std::fs::remove_dir_all(&quarantine)?;
            return Ok(Repaired { report, quarantine: None, recovered_tenants: Vec::new() });
        }
        for r in &report.regions {
            let file = OpenOptions::new().read(true).write(true).open(&r.file)?;
            let mut bytes = vec![0u8; usize::try_from(r.end - r.start).unwrap_or(0)];
            file.read_exact_at(&mut bytes, r.start)?;
            let name = r.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let copy = quarantine.join(format!("{name}.{}-{}.bin", r.start, r.end));
            std::fs::write(&copy, &bytes)?;
            File::open(&copy)?.sync_all()?;
            match (r.tail, frame::filler(bytes.len())) {
                (false, Some(filler)) => file.write_all_at(&filler, r.start)?,
                // A damaged tail, or a region too small to hold a frame (it cannot be between two
                // whole frames): cut. Nothing whole followed it.
                _ => file.set_len(r.start)?,
            }
            file.sync_all()?;
        }
        let mut batch = sled::Batch::default();
        for l in &report.lost {
            batch.remove(&keys::two(keys::LOG, l.tenant, l.first_id));
        }
        self.forget_idempotency_of_lost(&report, &mut batch)?;
        let mut recovered_tenants = Vec::new();
        if !report.unknown_tenants.is_empty() {
            // Replay every segment into the index: `M indexed` gone means "from the start".
            batch.remove(indexed_key());
            let now = crate::time::now_ms();
            for t in &report.unknown_tenants {
                let rec = TenantRecord {
                    serial: t.serial,
                    id: format!("recovered-{}", t.serial),
                    name: "recovered by hookd repair".into(),
                    created_at: now,
                    updated_at: now,
                    disable_after_ms: None,
                };
                self.put_tenant(&rec)?;
                recovered_tenants.push(rec.id);
            }
            // New tenants must not get a serial the segments already use.
            let max = report.unknown_tenants.iter().map(|t| t.serial).max().unwrap_or(0);
            while self.inner.db.generate_id()? < max {}
        }
        self.inner.log.apply_batch(batch)?;
        self.inner.db.flush()?;
        let repaired = Repaired { report, quarantine: Some(quarantine.clone()), recovered_tenants };
        std::fs::write(quarantine.join("REPORT.txt"), repaired.to_string())?;
        tracing::warn!(quarantine = %quarantine.display(), "repaired damaged files:\n{repaired}");
        Ok(repaired)
    }
}

impl Store {
    /// Removes the idempotency keys of lost events: a producer that sends a lost event again with the
    /// same key must get it stored anew, not the id of an event that no longer exists.
    fn forget_idempotency_of_lost(
        &self,
        report: &DamageReport,
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let mut tenants: Vec<u64> = report.lost.iter().map(|l| l.tenant).collect();
        tenants.dedup();
        for tenant in tenants {
            let lost: Vec<(u64, u64)> = report
                .lost
                .iter()
                .filter(|l| l.tenant == tenant)
                .map(|l| (l.first_id, l.first_id + u64::from(l.events)))
                .collect();
            for item in self.inner.log.scan_prefix(keys::tenant_prefix(keys::IDEMPOTENCY, tenant)) {
                let (k, v) = item?;
                let rec: IdempotencyRecord = records::decode(&k, &v)?;
                if lost.iter().any(|(lo, end)| (*lo..*end).contains(&rec.event_id)) {
                    batch.remove(k);
                }
            }
        }
        Ok(())
    }
}
