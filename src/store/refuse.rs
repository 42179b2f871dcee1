//! How an ingest group is refused without leaving anything behind: up front when the disk has no
//! room for it ([`admit`]), and, when a step fails after its frames reached the log segment, by undoing
//! the index writes before it and cutting the frames out again before it is answered
//! ([`index_or_roll_back`]).
//!
//! Why: an answer other than 202 must mean "not stored". The frames are the truth — the start-up
//! recovery replays frames the index lacks — so a group answered 503 whose frames stayed would be
//! delivered after the next restart under ids the producer never saw (issue 21, fault 2).
//! Invariant: when [`index_or_roll_back`] returns an error, neither the index nor the segment holds the
//! group, or the store refuses writes until a restart and the error log names the frames left behind.

use super::StoreError;
use super::ordered::Ordered;

/// A group refused for want of disk space.
fn no_room(why: &str) -> StoreError {
    StoreError::Full(std::io::Error::new(std::io::ErrorKind::StorageFull, why.to_owned()))
}

/// Whether a group of about `bytes` may be written: not once sled has failed, nor past ingest's room.
/// Atomic loads, no syscall: this is the ingest hot path.
pub(super) fn admit(space: &super::space::Space, bytes: u64) -> Result<(), StoreError> {
    if space.engine_failed() {
        return Err(no_room("the database refuses writes until hookd restarts"));
    }
    if !space.has_room(bytes) {
        return Err(no_room("ingest's share of the free disk space is used up"));
    }
    Ok(())
}

/// A group's failure as each of its requests gets it: a full disk stays a full disk (the API answers
/// it 503 + `Retry-After`), anything else is an I/O error.
pub(super) fn shared(e: &StoreError) -> StoreError {
    if e.is_full() {
        return StoreError::Full(std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string()));
    }
    StoreError::Io(std::io::Error::other(e.to_string()))
}

/// Writes a group's index entries; if that fails, takes the group's frames (from `first`) back out of
/// the segment, so that the refusal the producer gets is true after a restart too.
///
/// If even the cut fails (the writer then moves to a new segment), the frames stay and a replay at the
/// next start would index them: the gate is closed for the rest of this process (the engine is marked
/// failed) and the error log names the segment and offset. Recorded in DECISIONS.md: the producer was
/// told 503, so a replay may deliver events it will send again (at least once, never lost).
pub(super) fn index_or_roll_back(
    segments: &super::segment::SegmentLog<super::segment::Events>,
    space: &super::space::Space,
    keys: Ordered,
    index: &impl super::ordered::Target,
    first: Option<&super::segment::Pointer>,
) -> Result<(), StoreError> {
    let Err(e) = keys.apply(index) else { return Ok(()) };
    let e = space.noted_engine(e);
    if let Some(p) = first
        && let Err(cut) = segments.rollback((p.segment, p.offset))
    {
        tracing::error!(
            error = %cut,
            segment = p.segment,
            offset = p.offset,
            "a refused group's frames could not be cut from the log: a restart may replay them"
        );
        space.refuse_until_restart(&cut);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventRecord;
    use crate::store::segment::Append;
    use crate::store::{Store, StoreSettings, keys};

    /// An index that refuses every write, as sled does once it met a full disk.
    struct Refusing;

    impl super::super::ordered::Target for Refusing {
        fn put(&self, _: sled::IVec, _: sled::IVec) -> sled::Result<Option<sled::IVec>> {
            Err(sled::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "injected")))
        }
        fn delete(&self, key: sled::IVec) -> sled::Result<Option<sled::IVec>> {
            self.put(key.clone(), key)
        }
    }

    /// Fault 2 of issue 21: a group whose index write failed was answered 500 but its frame stayed,
    /// and the next start replayed it as an event the producer never got an id for.
    #[test]
    fn a_group_whose_index_write_fails_is_cut_from_the_log_and_never_replayed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let settings = StoreSettings::for_test(dir.path());
        let store = Store::open(&settings).unwrap_or_else(|e| panic!("{e}"));
        let rec = vec![EventRecord {
            event_type: "a".into(),
            channels: Vec::new(),
            payload: "{}".into(),
            received_at: 1,
            idempotency_key: None,
            routes: vec![1],
        }];
        let segments = &store.inner.segments;
        let (pointers, _) = segments
            .append(&[Append { tenant: 1, first_id: 10, items: &rec }])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut keys = Ordered::default();
        keys.insert(keys::two(keys::LOG, 1, 10), pointers[0].encode());
        let e = index_or_roll_back(segments, &store.inner.space, keys, &Refusing, pointers.first())
            .err()
            .unwrap_or_else(|| panic!("the index write was to fail"));
        assert!(e.is_full(), "a full disk, answered 503: {e:?}");
        assert!(store.space().is_full() && store.space().engine_failed());
        drop(store);
        let store = Store::reopen_for_test(&settings);
        assert_eq!(store.inner.log.get(keys::two(keys::LOG, 1, 10)).unwrap_or_default(), None, "replayed");
        assert_eq!(store.max_event_id().unwrap_or_else(|e| panic!("{e}")), 0);
    }
}
