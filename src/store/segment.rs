//! Append-only segment files next to the sled database: the event log's bodies ([`Events`],
//! `segments/`) and the attempt history's records ([`Attempts`], `history/`, same format with its own
//! magic). What follows describes the log; the history differs only in durability: its appends are not
//! synced one by one but by [`SegmentLog::sync`] before sled is flushed, and nothing is replayed (a
//! frame sled does not point to is an attempt that will be made again).
//!
//! Why not sled: a log record is written once, read rarely, and deleted whole; in a B-tree leaf it is
//! rewritten on every consolidation and split of its node (profiled: serialising nodes was ~28 % of
//! batch ingest), and sled 0.34 keeps every page it ever created in memory (its issue #1093), so a
//! growing log grew RSS. Here an ingest group is one `write` and, in `fsync` mode, one `fdatasync`;
//! sled keeps only a 25-byte [`Pointer`] per record (the index) and the idempotency keys.
//!
//! # Files
//! `segments/<16 hex digits>.log`, numbered from 1. A segment starts with [`MAGIC`] and holds frames:
//!
//! | bytes      | field                                                                       |
//! |------------|-----------------------------------------------------------------------------|
//! | 0..4       | body length (u32, little-endian); its top bit marks the last frame of a group |
//! | 4..8       | CRC-32 of bytes 0..4 and 8.. to the end of the body                         |
//! | 8..16      | tenant serial (u64 LE)                                                      |
//! | 16..24     | id of the record's first event (u64 LE)                                     |
//! | 24..       | body: format version (u8), event count (u32 LE), then per event its length (u32 LE) and its rmp-serde encoding |
//!
//! In `fsync` mode the segment being written may end in zeros reserved for the groups to come (see
//! [`RESERVE_BYTES`]); a closed segment ends with its last frame.
//!
//! Events are encoded one by one so that reading one event decodes only that one. An ingest group's
//! frames are written with one `write` and count only whole: a group whose last frame is missing or
//! does not check (a crash mid-write, never acknowledged) is dropped entirely, so a request is stored
//! all or nothing.
//!
//! # Durability and recovery
//! The segment is the truth: a frame is written (and in `fsync` mode synced) before its pointer and
//! idempotency keys go to sled, followed by the position the index covers up to. sled is not
//! flushed per group; after a crash [`SegmentLog::scan_from`] replays the frames past that position into
//! the index again. A torn frame at the end of the last segment (a crash mid-write, never acknowledged)
//! is cut off; zeros after the last whole group are the reserve and stay. In `os` mode a `write` that
//! returned is in the kernel's page cache, so a killed process loses nothing it acknowledged.
//!
//! # Deletion
//! A segment other than the one being written is deleted once no index entry points into it: the
//! store counts the pointers per segment (counted at open, kept by appends and retention).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use super::damage::DamagedRecord;
use super::frame::{BODY_VERSION, ENDS_GROUP, FRAME_HEADER, MAX_FRAME_BODY, crc, ends_group, frame_len};
pub use super::frame::{check_frame, decode_body};
use crate::config::Durability;
use crate::model::{AttemptRecord, EventRecord};

mod cut;

/// What one kind of segment log holds, and where.
pub trait Kind {
    /// The items a frame carries (events, attempts), each encoded on its own.
    type Item: Serialize + DeserializeOwned;
    /// The directory in the data dir.
    const DIR: &'static str;
    /// The first bytes of every segment file of this kind: name and frame-format version.
    const MAGIC: &'static [u8; 8];
    /// Whether every append is synced in `fsync` mode (else only by [`SegmentLog::sync`]).
    const SYNC_EACH_APPEND: bool;
    /// A guess of an item's encoded size, to size the write buffer.
    fn estimate(item: &Self::Item) -> usize;
}

/// The event log's bodies: `segments/`, synced per ingest group in `fsync` mode (an event is
/// acknowledged once it is there).
pub struct Events;

impl Kind for Events {
    type Item = EventRecord;
    const DIR: &'static str = "segments";
    const MAGIC: &'static [u8; 8] = MAGIC;
    const SYNC_EACH_APPEND: bool = true;
    fn estimate(e: &EventRecord) -> usize {
        e.payload.len() + e.event_type.len() + 48
    }
}

/// The attempt history's records: `history/`. An attempt is recorded, not acknowledged, so an append
/// is synced with the next state flush ([`SegmentLog::sync`]), before sled's.
pub struct Attempts;

impl Kind for Attempts {
    type Item = AttemptRecord;
    const DIR: &'static str = "history";
    const MAGIC: &'static [u8; 8] = b"hookdhs1";
    const SYNC_EACH_APPEND: bool = false;
    fn estimate(a: &AttemptRecord) -> usize {
        a.url.len()
            + a.response_body.len()
            + a.request_body.as_ref().map_or(0, String::len)
            + 8 * a.events.len()
            + 160
    }
}

/// The first bytes of every segment file of the event log: name and frame-format version.
pub const MAGIC: &[u8; 8] = b"hookdlg1";
/// A segment is closed once it holds this much, or has been open for [`SEGMENT_MAX_AGE`] (so that
/// retention can delete a quiet log's old bodies too).
const SEGMENT_BYTES: u64 = 64 << 20;
const SEGMENT_MAX_AGE: Duration = Duration::from_secs(3600);
/// In `fsync` mode a group that grows the segment file also writes this many zero bytes after it, so
/// that the groups after it overwrite bytes the file already has. `fdatasync` then flushes only the
/// data: a group that grows the file also has to write its inode (size, new blocks: on this machine's
/// ext4, which runs without a journal, a synchronous write of the inode's block; with a journal, a
/// journal commit), which measured here made a small group's sync take 1.7 times as long (p50 240 →
/// 145 µs for 4 KiB).
const RESERVE_BYTES: u64 = 1 << 20;
/// A group larger than this grows the file without reserving. Reserving writes every byte twice
/// (zeros, then data) to save one inode write per group, which pays for small groups only: the
/// daemon's single-event ingest groups measured 0.5–4.3 KiB (p10–p90); one batch-ingest request
/// (100 × 500 B) is a 64 KiB frame, and reserving for those doubled batch ingest's disk writes.
const RESERVE_MAX_GROUP: usize = 16 << 10;

/// Where a log record's frame is: what the index stores under `L` T V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub segment: u64,
    pub offset: u64,
    /// Frame length, header included.
    pub len: u32,
    pub events: u32,
}

impl Pointer {
    /// The tag that tells a pointer from a record stored inline by older versions (which start with
    /// the record format version, 1).
    pub const TAG: u8 = b'P';
    pub const ENCODED_LEN: usize = 25;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = Self::TAG;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out[21..25].copy_from_slice(&self.events.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Pointer> {
        if bytes.len() != Self::ENCODED_LEN || bytes[0] != Self::TAG {
            return None;
        }
        let u64_at = |i: usize| bytes.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
        let u32_at = |i: usize| bytes.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes);
        Some(Pointer { segment: u64_at(1)?, offset: u64_at(9)?, len: u32_at(17)?, events: u32_at(21)? })
    }
}

/// A frame read back while scanning.
pub struct Frame<T> {
    pub tenant: u64,
    pub first_id: u64,
    pub pointer: Pointer,
    pub items: Vec<T>,
}

/// A record to append: items with consecutive ids from `first_id`.
pub struct Append<'a, T> {
    pub tenant: u64,
    pub first_id: u64,
    pub items: &'a [T],
}

struct Writer {
    segment: u64,
    file: File,
    /// Where the data ends: the next frame goes here.
    len: u64,
    /// The file's length: `len` plus zeros reserved after it.
    reserved: u64,
    /// Whether `len` is known: an existing segment may end in reserved zeros, so its data's end is
    /// found by [`SegmentLog::scan_from`] (recovery) before anything is appended.
    settled: bool,
    opened: Instant,
    /// A failed write could not be cut off: write no more here.
    broken: bool,
}

/// The segment files of one kind in one data dir.
pub struct SegmentLog<K: Kind> {
    dir: PathBuf,
    mode: Durability,
    writer: Mutex<Writer>,
    /// Read handles, opened on first use.
    readers: RwLock<HashMap<u64, Arc<File>>>,
    /// Index entries pointing into each segment.
    refs: Mutex<BTreeMap<u64, u64>>,
    /// Where appends report the bytes they add to the disk (see `space`); set once by the store.
    space: OnceLock<Arc<super::space::Space>>,
    kind: PhantomData<K>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn corrupt(what: String) -> StoreError {
    StoreError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, what))
}

pub(super) fn file_name(segment: u64) -> String {
    format!("{segment:016x}.log")
}

impl<K: Kind> SegmentLog<K> {
    /// Opens the segment directory, creating it and the first segment if needed. Writing continues in
    /// the newest segment.
    pub fn open(data_dir: &Path, mode: Durability) -> Result<SegmentLog<K>, StoreError> {
        let dir = data_dir.join(K::DIR);
        std::fs::create_dir_all(&dir)?;
        let newest = list(&dir)?.last().copied();
        let writer = match newest {
            Some(segment) => {
                let file = OpenOptions::new().read(true).write(true).open(dir.join(file_name(segment)))?;
                let mut len = file.metadata()?.len();
                if len < K::MAGIC.len() as u64 {
                    // Created but its header never made it: start it again.
                    file.set_len(0)?;
                    file.write_all_at(K::MAGIC, 0)?;
                    len = K::MAGIC.len() as u64;
                }
                Writer {
                    segment,
                    len,
                    reserved: len,
                    settled: !K::SYNC_EACH_APPEND,
                    file,
                    opened: Instant::now(),
                    broken: false,
                }
            }
            None => create(&dir, 1, mode, K::MAGIC)?,
        };
        if mode == Durability::Fsync {
            File::open(data_dir)?.sync_all()?;
        }
        Ok(SegmentLog {
            dir,
            mode,
            writer: Mutex::new(writer),
            readers: RwLock::new(HashMap::new()),
            refs: Mutex::new(BTreeMap::new()),
            space: OnceLock::new(),
            kind: PhantomData,
        })
    }

    /// Appends records as frames in one write (synced in `fsync` mode). Returns their pointers and
    /// the position everything up to which is now written: `(segment, end offset)`.
    pub fn append<I>(&self, records: &[Append<'_, I>]) -> Result<(Vec<Pointer>, (u64, u64)), StoreError>
    where
        I: Borrow<K::Item> + Serialize,
    {
        let mut w = lock(&self.writer);
        if !w.settled {
            return Err(corrupt(format!("{} log appended to before its end was found", K::DIR)));
        }
        if w.broken
            || w.len >= SEGMENT_BYTES
            || (w.len > K::MAGIC.len() as u64 && w.opened.elapsed() >= SEGMENT_MAX_AGE)
        {
            self.rotate(&mut w)?;
        }
        let estimate = |r: &Append<'_, I>| {
            FRAME_HEADER + 5 + r.items.iter().map(|i| K::estimate(i.borrow())).sum::<usize>()
        };
        let mut buf = Vec::with_capacity(records.iter().map(estimate).sum());
        let mut pointers = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let start = buf.len();
            encode_frame(&mut buf, r.tenant, r.first_id, r.items, i + 1 == records.len())?;
            let len = u32::try_from(buf.len() - start).map_err(|_| corrupt("record too large".into()))?;
            pointers.push(Pointer {
                segment: w.segment,
                offset: w.len + start as u64,
                len,
                events: r.items.len() as u32,
            });
        }
        let syncs = self.mode == Durability::Fsync && K::SYNC_EACH_APPEND;
        let end = w.len + buf.len() as u64;
        // Grown past the reserve: reserve more, unless the group is large or the segment is full.
        let reserve_to = if syncs && end > w.reserved && buf.len() <= RESERVE_MAX_GROUP {
            (end + RESERVE_BYTES).min(SEGMENT_BYTES).max(end)
        } else {
            end
        };
        let written = w
            .file
            .write_all_at(&buf, w.len)
            .and_then(|()| match usize::try_from(reserve_to - end) {
                Ok(0) => Ok(()),
                Ok(n) => w.file.write_all_at(&vec![0u8; n], end),
                Err(_) => Err(std::io::ErrorKind::InvalidInput.into()),
            })
            .and_then(|()| if syncs { w.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Nothing of this group is acknowledged: cut what reached the file (a full disk leaves a
            // partial frame) so the next group starts where the pointers say.
            let at = w.len;
            self.cut(&mut w, at);
            return Err(e.into());
        }
        if let Some(space) = self.space.get() {
            space.consume(reserve_to.max(w.reserved) - w.reserved.max(w.len));
        }
        w.len = end;
        w.reserved = w.reserved.max(reserve_to);
        Ok((pointers, (w.segment, w.len)))
    }

    /// Reports what every append adds to the disk to `space`, from now on.
    pub fn count_in(&self, space: Arc<super::space::Space>) {
        let _ = self.space.set(space);
    }

    /// Makes every append so far durable (`fsync` mode; appends of a kind that syncs each one need
    /// nothing).
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.mode == Durability::Fsync && !K::SYNC_EACH_APPEND {
            // On a second handle, so that appends go on while the disk syncs. A rotation meanwhile
            // synced the file it closed.
            let file = lock(&self.writer).file.try_clone()?;
            file.sync_data()?;
        }
        Ok(())
    }

    /// Closes the segment being written, as filling it would.
    #[cfg(test)]
    pub fn rotate_now(&self) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        self.rotate(&mut w)
    }

    fn rotate(&self, w: &mut Writer) -> Result<(), StoreError> {
        if w.reserved > w.len && !w.broken {
            // A closed segment ends with its data: only the segment being written has a reserve.
            w.file.set_len(w.len)?;
            w.reserved = w.len;
        }
        if self.mode == Durability::Fsync {
            w.file.sync_data()?;
        }
        *w = create(&self.dir, w.segment + 1, self.mode, K::MAGIC)?;
        Ok(())
    }

    fn reader(&self, segment: u64) -> Result<Option<Arc<File>>, StoreError> {
        if let Some(f) = self.readers.read().unwrap_or_else(|p| p.into_inner()).get(&segment) {
            return Ok(Some(f.clone()));
        }
        let file = match File::open(self.dir.join(file_name(segment))) {
            Ok(f) => Arc::new(f),
            // Deleted by retention after its index entry was read: the record is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut readers = self.readers.write().unwrap_or_else(|p| p.into_inner());
        Ok(Some(readers.entry(segment).or_insert(file).clone()))
    }

    /// Reads the frame a pointer names, checks it (CRC, and that it is the record of `owner`: tenant
    /// and first id, not only an offset), and decodes its items (or only item `only`); `None` when its
    /// segment was deleted. A frame that fails a check is [`StoreError::Damaged`].
    fn items(
        &self,
        p: &Pointer,
        owner: (u64, u64),
        only: Option<usize>,
    ) -> Result<Option<Vec<K::Item>>, StoreError> {
        let Some(file) = self.reader(p.segment)? else { return Ok(None) };
        let mut frame = vec![0u8; p.len as usize];
        let damaged = |reason: &'static str| {
            StoreError::Damaged(Box::new(DamagedRecord {
                dir: K::DIR,
                segment: p.segment,
                offset: p.offset,
                tenant: owner.0,
                first_id: owner.1,
                count: p.events,
                reason,
            }))
        };
        match file.read_exact_at(&mut frame, p.offset) {
            Ok(()) => {}
            // The file ends before the frame does: it was cut short after the frame was acknowledged.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(damaged("the file ends inside it"));
            }
            Err(e) => return Err(e.into()),
        }
        let (found, body) = check_frame(&frame).ok_or_else(|| damaged("its checksum does not match"))?;
        if found != owner {
            return Err(damaged("it is another record's frame"));
        }
        match decode_body(body, only) {
            Ok(items) => Ok(Some(items)),
            // The CRC held, so these are bytes written wrong, not bytes damaged since: still, the
            // record cannot be read, and a reader must be able to go on past it.
            Err(StoreError::Decode { .. }) => Err(damaged("its body does not decode")),
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(damaged("its body does not decode"))
            }
            Err(e) => Err(e),
        }
    }

    /// Every item of the record a pointer names, the record of `owner` (tenant, first id).
    pub fn read(&self, p: &Pointer, owner: (u64, u64)) -> Result<Option<Vec<K::Item>>, StoreError> {
        self.items(p, owner, None)
    }

    /// Item `index` of the record a pointer names, decoding only that one.
    pub fn read_one(
        &self,
        p: &Pointer,
        owner: (u64, u64),
        index: usize,
    ) -> Result<Option<K::Item>, StoreError> {
        Ok(self.items(p, owner, Some(index))?.and_then(|mut v| v.pop()))
    }

    /// Every frame at or after `(segment, offset)` (a group boundary), oldest first, for rebuilding the
    /// index after a crash. A group that is not whole — torn, corrupt, or missing its last frame — ends
    /// its segment; in the last segment the file is cut where that group began.
    pub fn scan_from(
        &self,
        from: (u64, u64),
        mut each: impl FnMut(Frame<K::Item>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let segments = list(&self.dir)?;
        let last = segments.last().copied();
        for segment in segments.into_iter().filter(|s| *s >= from.0) {
            // Read from where the scan starts: on a clean start that is the end of the newest segment.
            let base = if segment == from.0 { from.1 } else { 0 }.max(K::MAGIC.len() as u64);
            let mut file = File::open(self.dir.join(file_name(segment)))?;
            // An index ahead of the file (possible in `os` mode after a power loss) reads nothing.
            let base = base.min(file.metadata()?.len());
            file.seek(SeekFrom::Start(base))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let base = base as usize;
            let mut at = 0usize;
            let mut group = Vec::new();
            let mut group_start = at;
            while at < bytes.len() {
                let frame = bytes.get(at..).and_then(frame_len).and_then(|n| bytes.get(at..at + n));
                let Some((frame, (tenant, first_id), body)) =
                    frame.and_then(|f| check_frame(f).map(|(tf, body)| (f, tf, body)))
                else {
                    break;
                };
                let items = decode_body(body, None)?;
                let pointer = Pointer {
                    segment,
                    offset: (base + at) as u64,
                    len: frame.len() as u32,
                    events: items.len() as u32,
                };
                at += frame.len();
                group.push(Frame { tenant, first_id, pointer, items });
                if ends_group(frame) {
                    // A filler frame (repair wrote it over damaged bytes) holds nothing to replay.
                    for f in group.drain(..).filter(|f| f.tenant != super::frame::FILLER_TENANT) {
                        each(f)?;
                    }
                    group_start = at;
                }
            }
            let writing = {
                let w = lock(&self.writer);
                Some(segment) == last && w.segment == segment
            };
            // Zeros after the last whole group are a reserve (see `RESERVE_BYTES`), not damage.
            let reserve = bytes.get(group_start..).is_some_and(|rest| rest.iter().all(|b| *b == 0));
            if writing {
                let cut = (base + group_start) as u64;
                let mut w = lock(&self.writer);
                if !reserve {
                    // A crash mid-write: that group was never acknowledged.
                    tracing::warn!(segment, offset = cut, "log segment ends in a torn group; cutting it off");
                    w.file.set_len(cut)?;
                    if self.mode == Durability::Fsync {
                        w.file.sync_data()?;
                    }
                    w.reserved = cut;
                }
                w.len = cut;
            } else if !reserve {
                // Only the segment being written can end in a torn group: this is damage.
                tracing::error!(
                    segment,
                    offset = base + group_start,
                    "log segment is corrupt here: the records after this point are not replayed"
                );
            }
        }
        // Past the newest segment (or none was read): its end is the file's.
        lock(&self.writer).settled = true;
        Ok(())
    }

    /// Counts index entries into segments (the store calls it for every pointer it holds).
    pub fn add_refs(&self, pointers: impl IntoIterator<Item = u64>) {
        let mut refs = lock(&self.refs);
        for segment in pointers {
            *refs.entry(segment).or_default() += 1;
        }
    }

    /// Index entries into these segments were deleted.
    pub fn release(&self, segments: impl IntoIterator<Item = u64>) {
        let mut refs = lock(&self.refs);
        for segment in segments {
            if let Some(n) = refs.get_mut(&segment) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Deletes every segment, except the one being written, that no index entry points into.
    /// Returns the number of files deleted.
    pub fn collect(&self) -> Result<usize, StoreError> {
        let active = lock(&self.writer).segment;
        let refs = lock(&self.refs);
        let mut deleted = 0;
        for segment in list(&self.dir)? {
            if segment < active && refs.get(&segment).copied().unwrap_or(0) == 0 {
                match std::fs::remove_file(self.dir.join(file_name(segment))) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                self.readers.write().unwrap_or_else(|p| p.into_inner()).remove(&segment);
            }
        }
        drop(refs);
        Ok(deleted)
    }

    /// Bytes the segment files take.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for segment in list(&self.dir)? {
            match std::fs::metadata(self.dir.join(file_name(segment))) {
                Ok(m) => total += m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(total)
    }
}

/// The numbers of the segment files in `dir`, ascending.
pub(super) fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".log")) else { continue };
        if hex.len() == 16
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn create(dir: &Path, segment: u64, mode: Durability, magic: &[u8; 8]) -> Result<Writer, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(file_name(segment)))?;
    file.set_len(0)?;
    file.write_all_at(magic, 0)?;
    if mode == Durability::Fsync {
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
    }
    let len = magic.len() as u64;
    Ok(Writer { segment, file, len, reserved: len, settled: true, opened: Instant::now(), broken: false })
}

fn encode_frame<T: Serialize>(
    buf: &mut Vec<u8>,
    tenant: u64,
    first_id: u64,
    items: &[T],
    ends_group: bool,
) -> Result<(), StoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    buf.push(BODY_VERSION);
    buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        let at = buf.len();
        buf.extend_from_slice(&[0u8; 4]);
        rmp_serde::encode::write(buf, item)?;
        let n = (buf.len() - at - 4) as u32;
        buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    let body_len = u32::try_from(buf.len() - start - FRAME_HEADER)
        .ok()
        .filter(|n| (*n as usize) <= MAX_FRAME_BODY)
        .ok_or_else(|| corrupt("record too large".into()))?;
    let field = if ends_group { body_len | ENDS_GROUP } else { body_len };
    buf[start..start + 4].copy_from_slice(&field.to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&tenant.to_le_bytes());
    buf[start + 16..start + 24].copy_from_slice(&first_id.to_le_bytes());
    let crc = crc(&buf[start..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn event(i: usize) -> EventRecord {
        EventRecord {
            event_type: format!("t.{i}"),
            channels: vec!["c".into()],
            payload: format!("{{\"i\":{i}}}"),
            received_at: 7,
            idempotency_key: (i % 2 == 0).then(|| format!("k{i}")),
            routes: vec![1, 2],
        }
    }

    fn record(n: usize) -> Vec<EventRecord> {
        (0..n).map(event).collect()
    }

    fn frames(log: &SegmentLog<Events>, from: (u64, u64)) -> Vec<(u64, u64, Pointer, usize)> {
        let mut out = Vec::new();
        log.scan_from(from, |f| {
            out.push((f.tenant, f.first_id, f.pointer, f.items.len()));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn appended_records_read_back_whole_and_one_event_at_a_time() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = SegmentLog::<Events>::open(dir.path(), Durability::Fsync).unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (record(3), record(1));
        let (ptrs, end) = log
            .append(&[
                Append { tenant: 5, first_id: 100, items: &a },
                Append { tenant: 6, first_id: 103, items: &b },
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ptrs[0].offset, MAGIC.len() as u64);
        assert_eq!(ptrs[1].offset, ptrs[0].offset + u64::from(ptrs[0].len));
        assert_eq!(end, (1, ptrs[1].offset + u64::from(ptrs[1].len)));
        assert_eq!(log.read(&ptrs[0], (5, 100)).unwrap_or_default(), Some(a.clone()));
        assert_eq!(log.read_one(&ptrs[0], (5, 100), 2).unwrap_or_default(), Some(event(2)));
        assert_eq!(log.read_one(&ptrs[0], (5, 100), 3).unwrap_or_default(), None);
        assert_eq!(Pointer::decode(&ptrs[1].encode()), Some(ptrs[1]));
        assert_eq!(Pointer::decode(&[1, 2, 3]), None);

        let scanned = frames(&log, (1, 0));
        assert_eq!(scanned, vec![(5, 100, ptrs[0], 3), (6, 103, ptrs[1], 1)]);
        assert_eq!(frames(&log, (1, ptrs[1].offset)).len(), 1, "a scan starts where it is told");
        assert_eq!(frames(&log, end), vec![]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_writing_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("segments").join(file_name(1));
        let good = {
            let log =
                SegmentLog::<Events>::open(dir.path(), Durability::Os).unwrap_or_else(|e| panic!("{e}"));
            let rec = record(2);
            let (ptrs, _) = log
                .append(&[Append { tenant: 1, first_id: 1, items: &rec }])
                .unwrap_or_else(|e| panic!("{e}"));
            ptrs[0]
        };
        // A crash in the middle of the next group: its first frame reached the file whole, its last
        // one half. The whole group goes (a request is stored all or nothing).
        let mut half = Vec::new();
        encode_frame(&mut half, 1, 3, &record(4), false).unwrap_or_else(|e| panic!("{e}"));
        let first_frame = half.len();
        encode_frame(&mut half, 2, 7, &record(2), true).unwrap_or_else(|e| panic!("{e}"));
        half.truncate(first_frame + (half.len() - first_frame) / 2);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&half).unwrap_or_else(|e| panic!("{e}"));
        drop(f);

        let log = SegmentLog::<Events>::open(dir.path(), Durability::Os).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frames(&log, (0, 0)).len(), 1, "only the whole frame is replayed");
        let end = good.offset + u64::from(good.len);
        assert_eq!(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0), end, "the torn frame is cut");
        let rec = record(1);
        let (ptrs, _) =
            log.append(&[Append { tenant: 1, first_id: 9, items: &rec }]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ptrs[0].offset, end);
        assert_eq!(frames(&log, (0, 0)).len(), 2);

        // A flipped bit in a body is caught by the CRC, on read and on scan.
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        let at = (good.offset + 30) as usize;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let log = SegmentLog::<Events>::open(dir.path(), Durability::Os).unwrap_or_else(|e| panic!("{e}"));
        assert!(log.read(&good, (1, 1)).is_err());
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn small_synced_groups_reserve_zeros_that_recovery_tells_from_a_torn_group() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("segments").join(file_name(1));
        let (rec, big) = (record(2), record(4_000));
        let (first, end) = {
            let log =
                SegmentLog::<Events>::open(dir.path(), Durability::Fsync).unwrap_or_else(|e| panic!("{e}"));
            let (ptrs, (_, end)) = log
                .append(&[Append { tenant: 1, first_id: 1, items: &rec }])
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(file_len(&path), end + RESERVE_BYTES, "a small group reserves zeros after it");
            let (_, (_, end)) = log
                .append(&[Append { tenant: 1, first_id: 3, items: &rec }])
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                file_len(&path),
                ptrs[0].offset + u64::from(ptrs[0].len) + RESERVE_BYTES,
                "and fills them"
            );
            (ptrs[0], end)
        };

        // After a restart the data's end is found by recovery, and nothing is appended before it.
        let log = SegmentLog::<Events>::open(dir.path(), Durability::Fsync).unwrap_or_else(|e| panic!("{e}"));
        assert!(log.append(&[Append { tenant: 1, first_id: 5, items: &rec }]).is_err());
        assert_eq!(frames(&log, (1, first.offset)).len(), 2);
        assert_eq!(
            file_len(&path),
            first.offset + u64::from(first.len) + RESERVE_BYTES,
            "the reserve is kept"
        );
        let (ptrs, _) =
            log.append(&[Append { tenant: 1, first_id: 5, items: &rec }]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ptrs[0].offset, end, "writing goes on where the data ended");

        // A torn group inside the reserve is cut off with it.
        let mut torn = Vec::new();
        encode_frame(&mut torn, 1, 7, &rec, true).unwrap_or_else(|e| panic!("{e}"));
        torn.truncate(torn.len() - 3);
        let end = ptrs[0].offset + u64::from(ptrs[0].len);
        drop(log);
        let f = OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        f.write_all_at(&torn, end).unwrap_or_else(|e| panic!("{e}"));
        drop(f);
        let log = SegmentLog::<Events>::open(dir.path(), Durability::Fsync).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frames(&log, (1, 0)).len(), 3, "the torn group is not replayed");
        assert_eq!(file_len(&path), end, "the torn group and the reserve are cut off");

        // A large group grows the file by itself only; a closed segment ends with its data.
        let (ptrs, (_, end)) =
            log.append(&[Append { tenant: 1, first_id: 7, items: &big }]).unwrap_or_else(|e| panic!("{e}"));
        assert!(ptrs[0].len as usize > RESERVE_MAX_GROUP);
        assert_eq!(file_len(&path), end);
        let (_, (_, end)) = log
            .append(&[Append { tenant: 1, first_id: 4_007, items: &rec }])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file_len(&path), end + RESERVE_BYTES);
        log.rotate_now().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file_len(&path), end, "a closed segment keeps no reserve");
        assert_eq!(frames(&log, (1, 0)).len(), 5, "every group of the closed segment is replayed");
    }

    #[test]
    fn segments_rotate_and_unreferenced_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = SegmentLog::<Events>::open(dir.path(), Durability::Os).unwrap_or_else(|e| panic!("{e}"));
        let rec = record(1);
        let (first, _) =
            log.append(&[Append { tenant: 1, first_id: 1, items: &rec }]).unwrap_or_else(|e| panic!("{e}"));
        log.add_refs([first[0].segment]);
        {
            let mut w = lock(&log.writer);
            log.rotate(&mut w).unwrap_or_else(|e| panic!("{e}"));
        }
        let (second, _) =
            log.append(&[Append { tenant: 1, first_id: 2, items: &rec }]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((first[0].segment, second[0].segment), (1, 2));
        assert_eq!(log.collect().unwrap_or(9), 0, "segment 1 is still pointed into");
        log.release([1]);
        assert_eq!(log.collect().unwrap_or(9), 1);
        assert_eq!(
            log.read(&first[0], (1, 1)).unwrap_or_default(),
            None,
            "a deleted segment's records are gone"
        );
        assert_eq!(log.collect().unwrap_or(9), 0, "the segment being written is never deleted");
        assert!(log.read(&second[0], (1, 2)).unwrap_or_default().is_some());
    }
}
