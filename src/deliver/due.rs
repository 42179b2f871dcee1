//! The in-memory window of one endpoint's retry queue (the store's `Q` E D W keys), earliest first.
//!
//! The store holds every queued retry; memory holds at most `cap` of them. What makes the window safe
//! to act on is its *horizon*: every store entry ordered below the horizon is in memory (or was taken
//! from it and is in flight), and every entry in memory is below the horizon. So the first entry in
//! memory is the queue's true earliest whenever memory is not empty, however many entries the store
//! holds; when memory runs empty and the horizon is finite, the next window is read from the store from
//! the horizon on. An entry inserted at or past the horizon stays in the store only (it is written
//! there anyway): it is read when the horizon reaches it. Trimming memory back to `cap` drops the
//! latest entries and lowers the horizon to the earliest one dropped.
//!
//! Before this, memory kept "the first `cap` entries seen" and re-read the store only once it ran
//! empty: with 5,000 retries pending and the receiver down, the 4,096 in memory kept failing and coming
//! back, memory never ran empty, and the 904 left in the store waited 87 s past their due time (issue 21,
//! fault 6).
//!
//! Pure logic: the store is reached through the window reader the caller passes to [`DueQueue::reload`].

use std::collections::BTreeSet;

/// A retry-queue entry: (due time in ms on the scheduling clock, webhook id), ordered as in the store.
pub type Entry = (u64, u64);

/// The in-memory window of a retry queue.
#[derive(Debug)]
pub struct DueQueue {
    entries: BTreeSet<Entry>,
    cap: usize,
    /// Every store entry below it is known here; `None`: every store entry is (nothing more to read).
    horizon: Option<Entry>,
}

impl DueQueue {
    /// An empty window over a store not read yet: the first [`DueQueue::reload`] reads from the start.
    pub fn new(cap: usize) -> DueQueue {
        DueQueue { entries: BTreeSet::new(), cap: cap.max(1), horizon: Some((0, 0)) }
    }

    /// Notes an entry the store has (or is about to have, in the write under way).
    pub fn insert(&mut self, entry: Entry) {
        if self.horizon.is_some_and(|h| entry >= h) {
            return; // read from the store when the horizon gets there
        }
        self.entries.insert(entry);
        while self.entries.len() > self.cap {
            if let Some(last) = self.entries.pop_last() {
                self.horizon = Some(last);
            }
        }
    }

    /// Forgets an entry (its delivery was settled another way). Returns whether it was here.
    pub fn remove(&mut self, entry: &Entry) -> bool {
        self.entries.remove(entry)
    }

    /// The earliest entry in the queue, unless memory is empty and the store must be read first
    /// ([`DueQueue::needs_reload`]).
    pub fn first(&self) -> Option<Entry> {
        self.entries.first().copied()
    }

    /// Takes the earliest entry (its retry starts; its store key goes with the attempt's outcome).
    pub fn pop_first(&mut self) -> Option<Entry> {
        self.entries.pop_first()
    }

    /// Entries in memory.
    pub fn in_memory(&self) -> usize {
        self.entries.len()
    }

    /// The store may hold entries that memory does not.
    pub fn more_in_store(&self) -> bool {
        self.horizon.is_some()
    }

    /// Memory is empty and the store may hold more: [`DueQueue::first`] would not be the earliest.
    pub fn needs_reload(&self) -> bool {
        self.entries.is_empty() && self.horizon.is_some()
    }

    /// Reads the next window from the store: `read(from, limit)` returns at most `limit` store entries
    /// at or after `from`, in order. Entries `keep` refuses (retries in flight, whose store keys stay
    /// until their outcome is written) are skipped but still move the horizon.
    pub fn reload<E>(
        &mut self,
        read: impl FnOnce(Entry, usize) -> Result<Vec<Entry>, E>,
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<(), E> {
        let room = self.cap.saturating_sub(self.entries.len());
        let Some(from) = self.horizon.filter(|_| room > 0) else { return Ok(()) };
        let window = read(from, room)?;
        self.horizon =
            if window.len() < room { None } else { window.last().and_then(|last| successor(*last)) };
        // Read at or after the old horizon: each is above everything in memory, so nothing is trimmed.
        self.entries.extend(window.into_iter().filter(|e| keep(e)));
        Ok(())
    }

    /// Drops what memory holds and reads the queue again from the start at the next reload: after a
    /// store write failed, memory may hold entries the store lost, and miss ones it kept.
    pub fn forget(&mut self) {
        self.entries.clear();
        self.horizon = Some((0, 0));
    }
}

/// The next key after `e` in the store's order (`None` past the last possible one).
fn successor((due, webhook): Entry) -> Option<Entry> {
    match webhook.checked_add(1) {
        Some(w) => Some((due, w)),
        None => due.checked_add(1).map(|d| (d, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads a window of `store` the way the store does.
    fn window(store: &BTreeSet<Entry>, from: Entry, limit: usize) -> Vec<Entry> {
        store.range(from..).take(limit).copied().collect()
    }

    /// The dispatcher's step: reload when needed, then take the earliest entry.
    fn next(q: &mut DueQueue, store: &BTreeSet<Entry>) -> Option<Entry> {
        if q.needs_reload() {
            q.reload(|from, n| Ok::<_, ()>(window(store, from, n)), |_| true).ok();
        }
        q.pop_first()
    }

    #[test]
    fn entries_trimmed_past_the_cap_come_back_before_later_inserts() {
        let mut store = BTreeSet::new();
        let mut q = DueQueue::new(3);
        // The dispatcher's first pass reads the (empty) queue: from then on memory knows it all.
        q.reload(|from, n| Ok::<_, ()>(window(&store, from, n)), |_| true).ok();
        assert!(!q.more_in_store());
        for e in [(10, 1), (11, 2), (12, 3), (13, 4), (14, 5)] {
            store.insert(e);
            q.insert(e);
        }
        assert_eq!(q.in_memory(), 3);
        // Popping and re-queueing later (a failed retry) must not starve (13, 4) and (14, 5).
        let mut order = Vec::new();
        for _ in 0..5 {
            let e = next(&mut q, &store).expect("an entry");
            store.remove(&e);
            order.push(e);
            let again = (e.0 + 100, e.1);
            store.insert(again);
            q.insert(again);
        }
        assert_eq!(order, vec![(10, 1), (11, 2), (12, 3), (13, 4), (14, 5)]);
    }

    #[test]
    fn in_flight_entries_are_skipped_by_a_reload_but_move_the_horizon() {
        let store: BTreeSet<Entry> = [(1, 1), (2, 2), (3, 3)].into();
        let mut q = DueQueue::new(2);
        q.reload(|f, n| Ok::<_, ()>(window(&store, f, n)), |e| *e != (1, 1)).ok();
        assert_eq!(q.first(), Some((2, 2)));
        assert!(q.more_in_store());
        q.pop_first();
        q.reload(|f, n| Ok::<_, ()>(window(&store, f, n)), |_| true).ok();
        assert_eq!(q.pop_first(), Some((3, 3)));
        q.reload(|f, n| Ok::<_, ()>(window(&store, f, n)), |_| true).ok();
        assert!(!q.more_in_store() && q.first().is_none());
    }

    #[test]
    fn the_last_possible_key_has_no_successor() {
        assert_eq!(successor((5, u64::MAX)), Some((6, 0)));
        assert_eq!(successor((u64::MAX, u64::MAX)), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Pop,
        Remove(u8),
        Reload,
        Forget,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u8>()).prop_map(|(d, w)| Op::Insert(d, w)),
            3 => Just(Op::Pop),
            1 => any::<u8>().prop_map(Op::Remove),
            1 => Just(Op::Reload),
            1 => Just(Op::Forget),
        ]
    }

    proptest! {
        /// Any sequence of inserts, pops, removals, reloads and forgets yields the entries in the model's order:
        /// whatever the cap, the first entry taken is always the store's earliest.
        #[test]
        fn the_window_yields_what_a_btreeset_model_yields(cap in 1usize..6, ops in prop::collection::vec(op(), 0..200)) {
            let mut store: BTreeSet<Entry> = BTreeSet::new();
            let mut q = DueQueue::new(cap);
            for op in ops {
                match op {
                    Op::Insert(d, w) => {
                        let e = (u64::from(d), u64::from(w));
                        store.insert(e);
                        q.insert(e);
                    }
                    Op::Pop => {
                        let got = next(&mut q, &store);
                        let want = store.pop_first();
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(i) => {
                        // Settle the i-th entry of the store another way (a re-send that succeeded).
                        if let Some(e) = store.iter().nth(usize::from(i) % store.len().max(1)).copied() {
                            store.remove(&e);
                            q.remove(&e);
                        }
                    }
                    // A reload whether needed or not (memory may hold entries, or be full).
                    Op::Reload => q.reload(|from, n| Ok::<_, ()>(window(&store, from, n)), |_| true).unwrap_or(()),
                    Op::Forget => q.forget(),
                }
                prop_assert!(q.in_memory() <= cap);
                if !q.needs_reload() {
                    prop_assert_eq!(q.first(), store.first().copied());
                }
            }
            // Draining yields the rest of the model in order.
            while let Some(want) = store.first().copied() {
                prop_assert_eq!(next(&mut q, &store), Some(want));
                store.remove(&want);
            }
            prop_assert_eq!(next(&mut q, &store), None);
        }
    }
}
