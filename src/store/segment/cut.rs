//! Taking an append back: the write side's undo, for a group refused after its frames reached the
//! segment (its index writes failed, or the write itself met a full disk).
//!
//! Invariant: after a cut, the segment being written ends where the refused group began, on disk too
//! (synced in `fsync` mode), so the next group is written there and no replay after a restart finds
//! the refused frames. Cutting a file needs no free space; should it fail anyway the writer is marked
//! broken and the next append starts a new segment.

use super::{Durability, Kind, SegmentLog, StoreError, Writer, corrupt, lock};

impl<K: Kind> SegmentLog<K> {
    /// Takes back the last append, whose group is not to be acknowledged after all (its index writes
    /// failed): the segment is cut at `to`, the position of its first frame, and synced, so that
    /// neither this process nor a replay after a restart stores what the producer was refused.
    /// Cutting a file needs no free space. Fails when the cut did not happen (the writer then moves to
    /// a new segment, and the frames stay where a restart's replay finds them).
    pub fn rollback(&self, to: (u64, u64)) -> Result<(), StoreError> {
        let mut w = lock(&self.writer);
        if w.segment != to.0 || to.1 > w.len || to.1 < K::MAGIC.len() as u64 {
            return Err(corrupt(format!(
                "{} log cannot roll back to {}:{}: writing {}:{}",
                K::DIR,
                to.0,
                to.1,
                w.segment,
                w.len
            )));
        }
        if self.cut(&mut w, to.1) {
            Ok(())
        } else {
            Err(corrupt(format!("{} log could not be cut back to {}:{}", K::DIR, to.0, to.1)))
        }
    }

    /// Cuts the segment being written at `at` (dropping its reserve too) and syncs the cut in `fsync`
    /// mode. On failure the writer is marked broken: the next append starts a new segment.
    pub(super) fn cut(&self, w: &mut Writer, at: u64) -> bool {
        let cut = w
            .file
            .set_len(at)
            .and_then(|()| if self.mode == Durability::Fsync { w.file.sync_data() } else { Ok(()) });
        match cut {
            Ok(()) => {
                w.len = at;
                w.reserved = at;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, segment = w.segment, offset = at, "cannot cut a {} segment back", K::DIR);
                w.broken = true;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Append, Events};
    use super::*;
    use crate::model::EventRecord;

    fn events(n: u64) -> Vec<EventRecord> {
        (0..n)
            .map(|i| EventRecord {
                event_type: "t".into(),
                channels: Vec::new(),
                payload: format!("{{\"i\":{i}}}"),
                received_at: 7,
                idempotency_key: None,
                routes: vec![1],
            })
            .collect()
    }

    #[test]
    fn a_rolled_back_group_is_gone_from_the_file_and_from_a_replay() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (kept, end) = {
            let log =
                SegmentLog::<Events>::open(dir.path(), Durability::Fsync).unwrap_or_else(|e| panic!("{e}"));
            let rec = events(2);
            let (kept, _) = log
                .append(&[Append { tenant: 1, first_id: 1, items: &rec }])
                .unwrap_or_else(|e| panic!("{e}"));
            let refused = events(3);
            let (ptrs, _) = log
                .append(&[Append { tenant: 1, first_id: 3, items: &refused }])
                .unwrap_or_else(|e| panic!("{e}"));
            log.rollback((ptrs[0].segment, ptrs[0].offset)).unwrap_or_else(|e| panic!("{e}"));
            assert!(log.rollback((ptrs[0].segment, ptrs[0].offset + 1)).is_err(), "past the end: refused");
            // The next group takes the refused one's place.
            let next = events(1);
            let (again, end) = log
                .append(&[Append { tenant: 1, first_id: 6, items: &next }])
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(again[0].offset, ptrs[0].offset);
            (kept[0], end)
        };
        // A restart replays what the index lacks: the kept group and the next one, never the refused.
        let log = SegmentLog::<Events>::open(dir.path(), Durability::Fsync).unwrap_or_else(|e| panic!("{e}"));
        let mut replayed = Vec::new();
        log.scan_from((1, 0), |f| {
            replayed.push(f.first_id);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replayed, vec![1, 6], "{kept:?} {end:?}");
    }
}
