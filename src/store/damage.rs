//! What damage to the stored files looks like to the rest of hookd: one record that fails its check at
//! run time ([`DamagedRecord`]), and what the start-up check found across the data dir ([`DamageReport`]).
//!
//! Invariants: a [`DamagedRecord`] always names the record's owner (tenant serial, first id) and its
//! event count, taken from the index entry that pointed to it, so a reader can skip exactly those ids
//! and go on; a [`DamageReport`] is empty exactly when nothing acknowledged is lost or hidden.

use std::fmt;
use std::path::PathBuf;

use crate::ids::EventId;

/// A record whose frame fails its check when read back: its bytes changed, the file ends inside it, or
/// the frame there is another record's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    /// The segment directory (`segments`, `history`).
    pub dir: &'static str,
    pub segment: u64,
    pub offset: u64,
    /// Whose record the index says it is: tenant serial and the id of its first item.
    pub tenant: u64,
    pub first_id: u64,
    /// How many items (events, attempts) it holds, from the index.
    pub count: u32,
    pub reason: &'static str,
}

impl DamagedRecord {
    /// The ids the record held.
    pub fn ids(&self) -> std::ops::RangeInclusive<u64> {
        self.first_id..=self.first_id + u64::from(self.count.max(1)) - 1
    }
}

impl fmt::Display for DamagedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the record at {}/{:016x}.log offset {} (tenant serial {}, ids {}..={}, {} item(s)) cannot be read: {}",
            self.dir,
            self.segment,
            self.offset,
            self.tenant,
            self.first_id,
            self.ids().end(),
            self.count,
            self.reason
        )
    }
}

/// A read inside a list that goes on past a damaged record: `Ok(None)` for one (logged, naming it and
/// the list), any other outcome as it is.
pub(super) fn or_skip<T>(
    read: Result<Option<T>, super::StoreError>,
    list: &'static str,
) -> Result<Option<T>, super::StoreError> {
    match read {
        Err(super::StoreError::Damaged(d)) => {
            tracing::error!(damage = %d, list, "a damaged record is left out of a list");
            Ok(None)
        }
        read => read,
    }
}

/// Bytes of a segment file that do not read as frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub file: PathBuf,
    pub segment: u64,
    pub start: u64,
    pub end: u64,
    /// The file ends inside a frame (no whole frame follows).
    pub tail: bool,
}

/// Events the index names that cannot be read back: in a damaged region, past the file's end, or
/// where another frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRecord {
    pub tenant: u64,
    /// The tenant's id, when the database still knows it.
    pub tenant_id: Option<String>,
    pub first_id: u64,
    pub events: u32,
    pub segment: u64,
    pub offset: u64,
    pub reason: &'static str,
}

/// Events in the segments of a tenant serial the database does not know: the database lost them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTenant {
    pub serial: u64,
    pub records: u64,
    pub events: u64,
    pub first_id: u64,
    pub last_id: u64,
}

/// What the start-up check found. Empty: nothing acknowledged is lost or hidden.
#[derive(Debug, Clone, Default)]
pub struct DamageReport {
    pub data_dir: PathBuf,
    pub regions: Vec<Region>,
    pub lost: Vec<LostRecord>,
    pub unknown_tenants: Vec<UnknownTenant>,
}

impl DamageReport {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty() && self.lost.is_empty() && self.unknown_tenants.is_empty()
    }

    /// Events the lost records held.
    pub fn lost_events(&self) -> u64 {
        self.lost.iter().map(|l| u64::from(l.events)).sum()
    }
}

/// At most this many lines per kind of damage: the counts are always given in full.
const LINES: usize = 20;

impl fmt::Display for DamageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "damaged files in the data dir {}:", self.data_dir.display())?;
        if !self.regions.is_empty() {
            writeln!(f, "- {} damaged region(s) of log segments:", self.regions.len())?;
            for r in self.regions.iter().take(LINES) {
                let what = if r.tail { "the file ends inside a frame" } else { "bytes that do not check" };
                writeln!(
                    f,
                    "  {} bytes {}..{} ({} bytes): {what}",
                    r.file.display(),
                    r.start,
                    r.end,
                    r.end - r.start
                )?;
            }
        }
        if !self.lost.is_empty() {
            writeln!(
                f,
                "- {} acknowledged event(s) in {} record(s) cannot be read back:",
                self.lost_events(),
                self.lost.len()
            )?;
            for l in self.lost.iter().take(LINES) {
                let tenant =
                    l.tenant_id.as_deref().map_or_else(|| format!("serial {}", l.tenant), str::to_owned);
                let last = l.first_id + u64::from(l.events.max(1)) - 1;
                writeln!(
                    f,
                    "  tenant {tenant}: {} event(s) {}..={} at segment {:016x}.log offset {}: {}",
                    l.events,
                    EventId(l.first_id),
                    EventId(last),
                    l.segment,
                    l.offset,
                    l.reason
                )?;
            }
        }
        if !self.unknown_tenants.is_empty() {
            writeln!(
                f,
                "- the database (sled's `db` file) lost data: the segments hold events of {} tenant(s) it does not know:",
                self.unknown_tenants.len()
            )?;
            for t in self.unknown_tenants.iter().take(LINES) {
                writeln!(
                    f,
                    "  tenant serial {}: {} event(s) in {} record(s), {}..={}",
                    t.serial,
                    t.events,
                    t.records,
                    EventId(t.first_id),
                    EventId(t.last_id)
                )?;
            }
        }
        Ok(())
    }
}
