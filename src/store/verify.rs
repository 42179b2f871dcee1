//! The start-up check of the event log: every segment's frames against their CRCs, the index's
//! agreement with the segments, and the database's knowledge of the tenants the segments hold.
//!
//! Why at start: a flipped byte or a cut file shows only when the record is read, which may be days
//! later, by a dispatcher that can then only skip it. Checked at start, the operator hears which files
//! and events are damaged before hookd takes traffic, and decides (`hookd repair`, or a backup).
//!
//! What it reads: every byte of every log segment once (frames are CRC'd, so the check is one pass at
//! disk speed; measured in docs/DECISIONS.md), and every `L` index entry once (a lookup in the frames
//! found). Bodies are not decoded. The attempt history (`history/`) is not checked here: it holds no
//! acknowledged events, and its damaged records are skipped where they are read.
//!
//! Invariants: nothing is written; a segment's tail that does not read as whole frames is a torn write
//! (never acknowledged: a crash mid-append in the newest segment, a failed write that could not be cut
//! off in an older one) unless an index entry points into or past it; a region between whole frames
//! that does not read is damage whether or not anything points into it (frames not indexed yet may be
//! there).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;

use super::damage::{DamageReport, LostRecord, Region, UnknownTenant};
use super::frame::{self, BODY_VERSION, FILLER_TENANT, FRAME_HEADER};
use super::log::{Entry, indexed_key};
use super::segment::{self, Kind};
use super::{Store, StoreError, keys};

/// A checked frame's header, as the index should name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub tenant: u64,
    pub first_id: u64,
    pub events: u32,
}

impl Head {
    /// A 64-bit digest of every field: an index entry agrees with a frame when their digests do.
    fn fingerprint(&self) -> u64 {
        // SipHash with fixed keys: the same digest for the same head, within the one check.
        let mut h = std::hash::DefaultHasher::new();
        (self.segment, self.offset, self.len, self.tenant, self.first_id, self.events).hash(&mut h);
        h.finish()
    }
}

/// What one segment file holds: its whole frames and the regions that are not.
pub(super) struct Scanned {
    pub heads: Vec<Head>,
    pub regions: Vec<Region>,
    pub len: u64,
}

/// The frame starting at `at`, when it is whole and checks.
fn head_at(bytes: &[u8], segment: u64, at: usize) -> Option<Head> {
    let rest = bytes.get(at..)?;
    let len = frame::frame_len(rest)?;
    let ((tenant, first_id), body) = frame::check_frame(rest.get(..len)?)?;
    let events = u32::from_le_bytes(body.get(1..5)?.try_into().ok()?);
    Some(Head { segment, offset: at as u64, len: u32::try_from(len).ok()?, tenant, first_id, events })
}

/// The next offset after `from` where a whole frame starts. A cheap test of the length and version
/// before the CRC keeps this linear in practice: a random offset rarely passes both.
fn resync(bytes: &[u8], segment: u64, from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_HEADER)).find(|&at| {
        let plausible = bytes
            .get(at..)
            .and_then(frame::frame_len)
            .is_some_and(|n| n > FRAME_HEADER + 4 && at + n <= bytes.len())
            && bytes.get(at + FRAME_HEADER) == Some(&BODY_VERSION);
        plausible && head_at(bytes, segment, at).is_some()
    })
}

/// Reads one segment file and splits it into whole frames and damaged regions. Zeros after the last
/// frame are the reserve of the segment being written, not damage.
pub(super) fn scan_file(path: &Path, segment: u64, magic: &[u8; 8]) -> Result<Scanned, StoreError> {
    let bytes = std::fs::read(path)?;
    let mut heads = Vec::new();
    let mut regions = Vec::new();
    let region = |start: usize, end: usize, tail: bool| Region {
        file: path.to_path_buf(),
        segment,
        start: start as u64,
        end: end as u64,
        tail,
    };
    let mut at = magic.len();
    if bytes.get(..magic.len()) != Some(magic.as_slice()) {
        // A damaged magic hides nothing by itself; the frames after it are still read.
        regions.push(region(0, magic.len().min(bytes.len()), bytes.len() <= magic.len()));
    }
    while at < bytes.len() {
        if let Some(h) = head_at(&bytes, segment, at) {
            at += h.len as usize;
            heads.push(h);
            continue;
        }
        let rest = bytes.get(at..).unwrap_or_default();
        let Some(data_end) = rest.iter().rposition(|b| *b != 0).map(|i| at + i + 1) else { break };
        match resync(&bytes, segment, at + 1) {
            Some(next) => {
                regions.push(region(at, next, false));
                at = next;
            }
            None => {
                regions.push(region(at, data_end, true));
                break;
            }
        }
    }
    Ok(Scanned { heads, regions, len: bytes.len() as u64 })
}

/// Figures of one check, for the log line and the decision record.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckStats {
    pub segments: u64,
    pub bytes: u64,
    pub frames: u64,
    pub index_entries: u64,
    pub elapsed: std::time::Duration,
}

impl Store {
    /// Checks the log again, as [`Store::open`] did (for `hookd inspect`).
    pub fn check(&self) -> Result<(DamageReport, CheckStats), StoreError> {
        self.check_log()
    }

    /// Checks the log's segments and index (see the module docs). Consumes one id of sled's id
    /// generator: its value tells whether the database is older than tenants the segments hold.
    pub(super) fn check_log(&self) -> Result<(DamageReport, CheckStats), StoreError> {
        let started = std::time::Instant::now();
        let dir = self.inner.data_dir.join(segment::Events::DIR);
        let mut report = DamageReport { data_dir: self.inner.data_dir.clone(), ..DamageReport::default() };
        let mut stats = CheckStats::default();
        // A fingerprint per whole frame, not the frame's header: 8 bytes (plus the set's overhead)
        // per frame keeps a log of millions of small frames checkable (see docs/DECISIONS.md).
        let mut frames: HashSet<u64> = HashSet::new();
        let mut lens: BTreeMap<u64, u64> = BTreeMap::new();
        let mut torn: BTreeMap<u64, Region> = BTreeMap::new();
        let tenants: HashMap<u64, String> = self.tenants()?.into_iter().map(|t| (t.serial, t.id)).collect();
        // Tenant serials only grow (sled's id generator, which never goes back, not even after a
        // crash): a serial past it, or any unknown serial in a database that never indexed a frame,
        // means sled came back without data it had.
        let counter = self.inner.db.generate_id()?;
        let never_indexed = self.inner.log.get(indexed_key())?.is_none();
        let mut unknown: BTreeMap<u64, UnknownTenant> = BTreeMap::new();
        let segments = segment::list(&dir)?;
        let newest = segments.last().copied();
        for &n in &segments {
            let scanned = scan_file(&dir.join(segment::file_name(n)), n, segment::MAGIC)?;
            stats.segments += 1;
            stats.bytes += scanned.len;
            lens.insert(n, scanned.len);
            for r in scanned.regions {
                // A segment may end in a torn write that was never acknowledged.
                if r.tail {
                    torn.insert(n, r);
                } else {
                    report.regions.push(r);
                }
            }
            for h in scanned.heads {
                stats.frames += 1;
                frames.insert(h.fingerprint());
                let lost_tenant = h.tenant != FILLER_TENANT && !tenants.contains_key(&h.tenant);
                if lost_tenant && (h.tenant > counter || never_indexed) {
                    let last = h.first_id + u64::from(h.events.max(1)) - 1;
                    let t = unknown.entry(h.tenant).or_insert(UnknownTenant {
                        serial: h.tenant,
                        records: 0,
                        events: 0,
                        first_id: h.first_id,
                        last_id: last,
                    });
                    t.records += 1;
                    t.events += u64::from(h.events);
                    t.first_id = t.first_id.min(h.first_id);
                    t.last_id = t.last_id.max(last);
                }
            }
        }
        for item in self.inner.log.scan_prefix([keys::LOG]) {
            let (k, v) = item?;
            let Entry::At(p) = Entry::of(&v) else { continue };
            stats.index_entries += 1;
            let (tenant, first_id) = (keys::u64_at(&k, 1), keys::trailing_u64(&k));
            let want =
                Head { segment: p.segment, offset: p.offset, len: p.len, tenant, first_id, events: p.events };
            if frames.contains(&want.fingerprint()) {
                continue;
            }
            let end = p.offset + u64::from(p.len);
            let in_region = |r: &Region| r.segment == p.segment && r.start < end && p.offset < r.end;
            let reason = match lens.get(&p.segment) {
                None => "its segment file is missing",
                Some(len) if end > *len => "the file ends before it",
                Some(_) if report.regions.iter().chain(torn.values()).any(in_region) => {
                    "its bytes are damaged"
                }
                Some(_) => "another frame is where it should be",
            };
            if torn.get(&p.segment).is_some_and(|t| in_region(t) || end > t.start) {
                report.regions.extend(torn.remove(&p.segment));
            }
            report.lost.push(LostRecord {
                tenant,
                tenant_id: tenants.get(&tenant).cloned(),
                first_id,
                events: p.events,
                segment: p.segment,
                offset: p.offset,
                reason,
            });
        }
        for t in torn.values().filter(|t| Some(t.segment) != newest) {
            tracing::warn!(
                file = %t.file.display(),
                from = t.start,
                to = t.end,
                "a closed log segment ends in bytes that are no whole frame and that nothing points to: \
                 a write that failed and was never acknowledged; left as it is"
            );
        }
        report.unknown_tenants = unknown.into_values().collect();
        report.lost.sort_by_key(|l| (l.tenant, l.first_id));
        stats.elapsed = started.elapsed();
        Ok((report, stats))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::path::PathBuf;

    use super::*;
    use crate::model::{EventRecord, LogRecord, TenantRecord};
    use crate::store::StoreSettings;

    fn settings(dir: &std::path::Path) -> StoreSettings {
        StoreSettings::for_test(dir)
    }

    fn record(n: usize, pad: usize) -> LogRecord {
        let ev = |i: usize| EventRecord {
            event_type: "a.b".into(),
            channels: vec![],
            payload: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(pad)),
            received_at: 1_234,
            idempotency_key: None,
            routes: vec![1],
        };
        LogRecord { events: (0..n).map(ev).collect() }
    }

    /// Creates tenant `acme` with a serial from the id generator, as the API does; returns the serial.
    fn acme(store: &Store) -> u64 {
        let serial = store.generate_serial().unwrap_or_else(|e| panic!("{e}"));
        let t = TenantRecord {
            serial,
            id: "acme".into(),
            name: "acme".into(),
            created_at: 0,
            updated_at: 0,
            disable_after_ms: None,
        };
        store.put_tenant(&t).unwrap_or_else(|e| panic!("{e}"));
        serial
    }

    /// A store with a tenant and three records of 10 events (ids 100.., 200.., 300..); returns
    /// the segment file, the records' pointers and the tenant's serial.
    fn three_records(dir: &Path) -> (PathBuf, Vec<segment::Pointer>, u64) {
        let store = Store::open(&settings(dir)).unwrap_or_else(|e| panic!("{e}"));
        let serial = acme(&store);
        for first in [100, 200, 300] {
            store.append_for_test(serial, first, &record(10, 50));
        }
        // Idempotency keys of an event of the first record and of the second, as ingest writes them.
        for (key, event_id) in [("kept", 105), ("of-205", 205)] {
            let rec = crate::store::IdempotencyRecord { event_id, received_at: 1_234 };
            let value = crate::store::records::encode(&rec).unwrap_or_default();
            let k = keys::tenant_named(keys::IDEMPOTENCY, serial, key);
            store.inner.log.insert(k, value).unwrap_or_else(|e| panic!("{e}"));
        }
        store.sync().unwrap_or_else(|e| panic!("{e}"));
        let pointers = store
            .inner
            .log
            .scan_prefix([keys::LOG])
            .values()
            .filter_map(|v| v.ok().and_then(|v| segment::Pointer::decode(&v)))
            .collect();
        (dir.join("segments").join(segment::file_name(1)), pointers, serial)
    }

    fn refused(dir: &Path) -> DamageReport {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match Store::open(&settings(dir)) {
                Err(StoreError::DamagedStore(r)) => return *r,
                Ok(_) => panic!("opened a damaged store"),
                // sled's lock on the data dir is released a moment after the drop.
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_flipped_byte_refuses_the_open_naming_the_record_and_repair_keeps_the_others() {
        // In the length field (the frames after it are found again), in the body.
        for at in [1, 40] {
            flipped_at(at);
        }
    }

    fn flipped_at(at: u64) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (path, pointers, t) = three_records(dir.path());
        let middle = pointers[1];
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        file.write_all_at(b"#", middle.offset + at).unwrap_or_else(|e| panic!("{e}"));
        drop(file);

        let report = refused(dir.path());
        let region = (middle.offset, middle.offset + u64::from(middle.len));
        assert_eq!(report.regions.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(), [region]);
        let lost: Vec<_> =
            report.lost.iter().map(|l| (l.tenant_id.as_deref(), l.first_id, l.events)).collect();
        assert_eq!(lost, [(Some("acme"), 200, 10)]);
        assert!(report.to_string().contains("0000000000000001.log bytes"), "{report}");

        let (store, repaired) =
            Store::open_repairing(&settings(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let kept = repaired.quarantine.clone().unwrap_or_default();
        let copy = kept.join(format!("0000000000000001.log.{}-{}.bin", region.0, region.1));
        assert_eq!(std::fs::metadata(copy).map(|m| m.len()).ok(), Some(u64::from(middle.len)), "quarantined");
        assert!(kept.join("sled").join("db").is_file(), "sled's files are kept as found");
        assert!(store.event(t, 105).is_ok_and(|e| e.is_some()));
        assert!(store.event(t, 205).is_ok_and(|e| e.is_none()), "the damaged record is gone from the index");
        assert!(store.event(t, 309).is_ok_and(|e| e.is_some()), "what follows the damage is read");
        let key = |k: &str| store.idempotency(t, k).ok().flatten().map(|r| r.event_id);
        assert_eq!((key("kept"), key("of-205")), (Some(105), None), "a lost event's key can be used again");
        drop(store);
        let store = Store::reopen_for_test(&settings(dir.path()));
        let (page, _) =
            store.list_events(t, &crate::store::EventFilter::default(), None, 100).unwrap_or_default();
        assert_eq!(page.len(), 20, "the repaired store opens and lists what is left");
    }

    #[test]
    fn a_cut_inside_an_indexed_record_is_damage_a_torn_unindexed_tail_is_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (path, pointers, t) = three_records(dir.path());
        let last = pointers[2];
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        file.set_len(last.offset + 30).unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        let report = refused(dir.path());
        assert_eq!(
            report.lost.iter().map(|l| (l.first_id, l.reason)).collect::<Vec<_>>(),
            [(300, "the file ends before it")]
        );
        let (store, _) = Store::open_repairing(&settings(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::metadata(&path).map(|m| m.len()).ok(),
            Some(last.offset),
            "the damaged tail is cut"
        );
        drop(store);
        // A torn write nothing points to (a crash mid-append, never acknowledged) is no damage.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        file.write_all_at(&[7u8; 40], last.offset).unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        let store = Store::reopen_for_test(&settings(dir.path()));
        assert!(store.event(t, 205).is_ok_and(|e| e.is_some()));
        // Nor in a closed segment: a failed write that could not be cut off (the next group went to
        // a new segment).
        store.inner.segments.rotate_now().unwrap_or_else(|e| panic!("{e}"));
        store.append_for_test(t, 400, &record(1, 10));
        drop(store);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        let len = file.metadata().map(|m| m.len()).unwrap_or_default();
        file.write_all_at(&[7u8; 40], len).unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        let store = Store::reopen_for_test(&settings(dir.path()));
        assert!(store.event(t, 400).is_ok_and(|e| e.is_some()));
    }

    #[test]
    fn a_frame_is_checked_against_the_tenant_and_id_it_is_read_for_not_only_its_crc() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_, pointers, t) = three_records(dir.path());
        let store = Store::reopen_for_test(&settings(dir.path()));
        // The entry of the record at 200 points at the (whole, checking) frame of the one at 300.
        let key = keys::two(keys::LOG, t, 200);
        store.inner.log.insert(key, &pointers[2].encode()).unwrap_or_else(|e| panic!("{e}"));
        match store.event(t, 205) {
            Err(StoreError::Damaged(d)) => {
                assert_eq!((d.tenant, d.first_id, d.reason), (t, 200, "it is another record's frame"));
            }
            other => panic!("read another record's event: {other:?}"),
        }
        let (page, _) =
            store.list_events(t, &crate::store::EventFilter::default(), None, 100).unwrap_or_default();
        assert_eq!(page.len(), 20, "the list leaves it out and goes on");
        drop(store);
        let report = refused(dir.path());
        let lost: Vec<_> = report.lost.iter().map(|l| (l.first_id, l.reason)).collect();
        assert_eq!(lost, [(200, "another frame is where it should be")]);
    }

    /// The cost of the check (docs/DECISIONS.md): `cargo test --release --lib check_cost -- --ignored
    /// --nocapture`. Prints figures; asserts nothing about time.
    #[test]
    #[ignore]
    fn check_cost() {
        for (records, per_record) in [(1_000, 100), (100_000, 1)] {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let store = Store::open(&settings(dir.path())).unwrap_or_else(|e| panic!("{e}"));
            let serial = acme(&store);
            let rec = record(per_record, 400);
            for r in 0..records {
                store.append_for_test(serial, 1_000 + (r * per_record) as u64, &rec);
            }
            store.sync().unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..3 {
                let (report, s) = store.check_log().unwrap_or_else(|e| panic!("{e}"));
                assert!(report.is_empty());
                let mb = s.bytes as f64 / 1e6;
                eprintln!(
                    "{} events in {} frames: {mb:.1} MB, {} index entries, checked in {:?} ({:.0} MB/s)",
                    records * per_record,
                    s.frames,
                    s.index_entries,
                    s.elapsed,
                    mb / s.elapsed.as_secs_f64()
                );
            }
        }
    }
}
