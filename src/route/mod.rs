//! Subscription matching: which of a tenant's endpoints an event goes to.
//!
//! An endpoint with event types gets only those types; with channels, only events sharing one of them
//! (an endpoint without channels gets every event of its types, with or without channels).
//!
//! [`Subscription::matches`] states that rule for one endpoint. [`RouteIndex`] answers it for all of a
//! tenant's endpoints at once without looking at the ones that cannot match, so routing costs about the
//! number of endpoints an event reaches, not the number the tenant has. Invariants of the index:
//! - an endpoint sits under every event type it lists, or under "any type" when it lists none; within
//!   that, under every channel it lists, or under "any channel" when it lists none;
//! - every list is sorted by endpoint id and holds an id at most once; empty lists and maps are dropped.
//!
//! An event's candidates are then the "any channel" list plus the lists of the event's channels, under
//! its type and under "any type". Only lists of one type can share an endpoint (one that lists several
//! of the event's channels), so the union is a merge that drops repeats.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::model::EndpointRecord;

/// An event's payload as routing sees it: JSON text, parsed into a value the first time something looks
/// inside it (a payload filter, a schema) and then shared by every such check. Most events are routed
/// on type and channels alone and never parsed.
#[derive(Debug)]
pub struct Payload<'a> {
    text: &'a str,
    value: OnceLock<Option<Value>>,
}

impl<'a> Payload<'a> {
    pub fn new(text: &'a str) -> Payload<'a> {
        Payload { text, value: OnceLock::new() }
    }

    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The parsed payload; `None` if the text is not JSON (ingest has checked that it is).
    pub fn value(&self) -> Option<&Value> {
        self.value.get_or_init(|| serde_json::from_str(self.text).ok()).as_ref()
    }
}

/// The part of an endpoint that decides what it receives, prepared for fast matching.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Sorted; empty means every type.
    event_types: Vec<String>,
    /// Sorted; empty means every channel.
    channels: Vec<String>,
}

impl Subscription {
    pub fn new(ep: &EndpointRecord) -> Subscription {
        Subscription::from_lists(ep.event_types.clone(), ep.channels.clone())
    }

    fn from_lists(mut event_types: Vec<String>, mut channels: Vec<String>) -> Subscription {
        event_types.sort_unstable();
        event_types.dedup();
        channels.sort_unstable();
        channels.dedup();
        Subscription { event_types, channels }
    }

    /// Does an event of this type, on these channels, go to the endpoint?
    pub fn matches(&self, event_type: &str, channels: &[String]) -> bool {
        let type_ok = self.event_types.is_empty()
            || self.event_types.binary_search_by(|t| t.as_str().cmp(event_type)).is_ok();
        let channel_ok =
            self.channels.is_empty() || channels.iter().any(|c| self.channels.binary_search(c).is_ok());
        type_ok && channel_ok
    }
}

/// One tenant's endpoints by what they subscribe to. `T` is what routing hands back for a matching
/// endpoint besides its id (the registry keeps its `Arc<EndpointEntry>` here, so a later per-endpoint
/// check needs no lookup).
#[derive(Debug, Clone)]
pub struct RouteIndex<T> {
    /// Endpoints without event types.
    any_type: Arc<ChannelIndex<T>>,
    /// Endpoints with event types, under each type they list. Keys and parts behind `Arc`s: every config
    /// write copies the tenant's index, and this way the copy shares them all, and an endpoint change
    /// copies only the parts of the types it lists (`Arc::make_mut`).
    by_type: HashMap<Arc<str>, Arc<ChannelIndex<T>>>,
}

/// The endpoints under one event type (or under "any type"), by channel.
#[derive(Debug, Clone)]
struct ChannelIndex<T> {
    /// Endpoints without channels.
    any_channel: Vec<(u64, T)>,
    /// Endpoints with channels, under each channel they list.
    by_channel: HashMap<Arc<str>, Vec<(u64, T)>>,
}

// Derived `Default` would ask for `T: Default`.
impl<T> Default for RouteIndex<T> {
    fn default() -> Self {
        RouteIndex { any_type: Arc::default(), by_type: HashMap::new() }
    }
}

impl<T> Default for ChannelIndex<T> {
    fn default() -> Self {
        ChannelIndex { any_channel: Vec::new(), by_channel: HashMap::new() }
    }
}

impl<T: Clone> RouteIndex<T> {
    /// Adds endpoint `id` with its subscription. The id must not be in the index already.
    pub fn insert(&mut self, id: u64, sub: &Subscription, value: T) {
        if sub.event_types.is_empty() {
            Arc::make_mut(&mut self.any_type).insert(id, &sub.channels, value);
        } else {
            for t in &sub.event_types {
                let ci = Arc::make_mut(self.by_type.entry(t.as_str().into()).or_default());
                ci.insert(id, &sub.channels, value.clone());
            }
        }
    }

    /// Removes endpoint `id`, which was inserted with `sub`.
    pub fn remove(&mut self, id: u64, sub: &Subscription) {
        if sub.event_types.is_empty() {
            Arc::make_mut(&mut self.any_type).remove(id, &sub.channels);
        } else {
            for t in &sub.event_types {
                if let Some(ci) = self.by_type.get_mut(t.as_str()) {
                    let ci = Arc::make_mut(ci);
                    ci.remove(id, &sub.channels);
                    if ci.is_empty() {
                        self.by_type.remove(t.as_str());
                    }
                }
            }
        }
    }
}

impl<T> RouteIndex<T> {
    /// The endpoints an event of this type, on these channels, goes to: each once, by ascending id.
    pub fn matching<'a>(&'a self, event_type: &str, channels: &[String]) -> Matches<'a, T> {
        let typed = self.by_type.get(event_type).map(|ci| &**ci);
        let lists = [Some(&*self.any_type), typed].into_iter().flatten().flat_map(|ci| {
            let listed = channels.iter().filter_map(|c| ci.by_channel.get(c.as_str()));
            std::iter::once(&ci.any_channel).chain(listed).map(Vec::as_slice)
        });
        Matches::union(lists.filter(|l| !l.is_empty()))
    }
}

impl<T: Clone> ChannelIndex<T> {
    fn insert(&mut self, id: u64, channels: &[String], value: T) {
        if channels.is_empty() {
            insert_sorted(&mut self.any_channel, id, value);
        } else {
            for c in channels {
                insert_sorted(self.by_channel.entry(c.as_str().into()).or_default(), id, value.clone());
            }
        }
    }

    fn remove(&mut self, id: u64, channels: &[String]) {
        if channels.is_empty() {
            remove_sorted(&mut self.any_channel, id);
        } else {
            for c in channels {
                if let Some(list) = self.by_channel.get_mut(c.as_str()) {
                    remove_sorted(list, id);
                    if list.is_empty() {
                        self.by_channel.remove(c.as_str());
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.any_channel.is_empty() && self.by_channel.is_empty()
    }
}

/// Ids arrive mostly in ascending order (creation order), so this is usually a push.
fn insert_sorted<T>(list: &mut Vec<(u64, T)>, id: u64, value: T) {
    match list.binary_search_by_key(&id, |(k, _)| *k) {
        Ok(pos) => list[pos].1 = value,
        Err(pos) => list.insert(pos, (id, value)),
    }
}

fn remove_sorted<T>(list: &mut Vec<(u64, T)>, id: u64) {
    if let Ok(pos) = list.binary_search_by_key(&id, |(k, _)| *k) {
        list.remove(pos);
    }
}

/// How many lists [`Matches`] merges as it goes; an event usually brings one or two (its type's and the
/// "any type" endpoints), more only when it has several channels that endpoints list.
const MERGE_WAYS: usize = 4;

/// The union of an event's candidate lists, each sorted by id; see [`RouteIndex::matching`].
///
/// Merged lazily in runs: the list with the smallest head hands out everything below the smallest head of
/// the others, then drops its copy of that head if it has one (the other list hands it out), so an id
/// in several lists comes out once.
#[derive(Debug)]
pub struct Matches<'a, T> {
    /// Being handed out: ids below the head of every list in `heads`.
    run: std::slice::Iter<'a, (u64, T)>,
    /// `heads[..live]` are the rest of the lists, non-empty.
    heads: [&'a [(u64, T)]; MERGE_WAYS],
    live: usize,
    /// When there are more than `MERGE_WAYS` lists, all of them, sorted together instead (rare).
    sorted: std::vec::IntoIter<&'a (u64, T)>,
}

impl<'a, T> Matches<'a, T> {
    fn union(mut lists: impl Iterator<Item = &'a [(u64, T)]>) -> Matches<'a, T> {
        let mut m =
            Matches { run: [].iter(), heads: [&[]; MERGE_WAYS], live: 0, sorted: Vec::new().into_iter() };
        while let Some(list) = lists.next() {
            if m.live == MERGE_WAYS {
                let mut all: Vec<&(u64, T)> =
                    m.heads.into_iter().chain([list]).chain(lists).flatten().collect();
                all.sort_unstable_by_key(|(id, _)| *id);
                all.dedup_by_key(|(id, _)| *id);
                m.live = 0;
                m.sorted = all.into_iter();
                break;
            }
            m.heads[m.live] = list;
            m.live += 1;
        }
        m
    }

    /// Moves the next run into `run`; it may be empty when the smallest head is in several lists.
    fn next_run(&mut self) {
        let heads = &mut self.heads[..self.live];
        if let [only] = heads {
            self.run = only.iter();
            self.live = 0;
            return;
        }
        let mut min = 0;
        for i in 1..heads.len() {
            if heads[i][0].0 < heads[min][0].0 {
                min = i;
            }
        }
        let others = heads.iter().enumerate().filter(|&(i, _)| i != min);
        let bound = others.map(|(_, l)| l[0].0).min().unwrap_or(u64::MAX);
        let list = heads[min];
        let (run, rest) = list.split_at(list.partition_point(|(id, _)| *id < bound));
        self.run = run.iter();
        let rest = if rest.first().is_some_and(|(id, _)| *id == bound) { &rest[1..] } else { rest };
        heads[min] = rest;
        if rest.is_empty() {
            self.live -= 1;
            self.heads.swap(min, self.live);
        }
    }
}

impl<'a, T> Iterator for Matches<'a, T> {
    type Item = &'a (u64, T);

    fn next(&mut self) -> Option<&'a (u64, T)> {
        loop {
            if let Some(c) = self.run.next() {
                return Some(c);
            }
            if self.live == 0 {
                return self.sorted.next();
            }
            self.next_run();
        }
    }

    /// Hands out whole runs, which `for_each` and `map(..).fold(..)` compile to tight loops over slices.
    fn fold<B, F: FnMut(B, Self::Item) -> B>(mut self, init: B, mut f: F) -> B {
        let mut acc = init;
        loop {
            acc = std::mem::take(&mut self.run).fold(acc, &mut f);
            if self.live == 0 {
                return self.sorted.fold(acc, f);
            }
            self.next_run();
        }
    }

    /// At least the longest list, at most all of them.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let lists = &self.heads[..self.live];
        let done = self.run.len() + self.sorted.len();
        let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
        (done + longest, Some(done + lists.iter().map(|l| l.len()).sum::<usize>()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn sub(types: &[&str], channels: &[&str]) -> Subscription {
        Subscription::from_lists(ch(types), ch(channels))
    }

    fn ch(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn routed(index: &RouteIndex<()>, event_type: &str, channels: &[&str]) -> Vec<u64> {
        index.matching(event_type, &ch(channels)).map(|(id, _)| *id).collect()
    }

    #[test]
    fn an_empty_subscription_gets_everything() {
        assert!(sub(&[], &[]).matches("a.b", &[]));
        assert!(sub(&[], &[]).matches("a.b", &ch(&["client_1"])));
    }

    #[test]
    fn event_types_restrict_by_exact_name() {
        let s = sub(&["ticket.created"], &[]);
        assert!(s.matches("ticket.created", &[]));
        assert!(!s.matches("ticket.updated", &[]));
        assert!(!s.matches("ticket", &[]));
    }

    #[test]
    fn channels_need_one_shared_channel() {
        let s = sub(&[], &["client_1", "agent_2"]);
        assert!(s.matches("x", &ch(&["agent_2"])));
        assert!(s.matches("x", &ch(&["other", "client_1"])));
        assert!(!s.matches("x", &ch(&["client_3"])));
        assert!(!s.matches("x", &[]), "an event without channels does not reach a channel-bound endpoint");
    }

    #[test]
    fn the_index_routes_an_endpoint_with_two_shared_channels_once() {
        let mut index = RouteIndex::default();
        index.insert(3, &sub(&["t"], &["a", "b"]), ());
        index.insert(1, &sub(&[], &[]), ());
        index.insert(2, &sub(&["t", "u"], &["b"]), ());
        assert_eq!(routed(&index, "t", &["a", "b"]), [1, 2, 3]);
        assert_eq!(routed(&index, "u", &["a", "b"]), [1, 2]);
        assert_eq!(routed(&index, "t", &[]), [1]);
        index.remove(3, &sub(&["t"], &["a", "b"]));
        assert_eq!(routed(&index, "t", &["a", "b"]), [1, 2]);
    }

    #[test]
    fn removing_every_endpoint_leaves_an_empty_index() {
        let mut index = RouteIndex::default();
        let subs = [sub(&["t"], &["a", "b"]), sub(&[], &["a"]), sub(&["t", "u"], &[])];
        for (id, s) in subs.iter().enumerate() {
            index.insert(id as u64, s, ());
        }
        for (id, s) in subs.iter().enumerate() {
            index.remove(id as u64, s);
        }
        assert!(index.by_type.is_empty() && index.any_type.is_empty());
    }

    proptest! {
        #[test]
        fn union_is_the_sorted_set_of_all_lists_whether_iterated_or_folded(
            lists in proptest::collection::vec(proptest::collection::btree_set(0u64..64, 0..20), 0..8)
        ) {
            let lists: Vec<Vec<(u64, ())>> =
                lists.iter().map(|s| s.iter().map(|id| (*id, ())).collect()).collect();
            let union = || Matches::union(lists.iter().map(Vec::as_slice).filter(|l| !l.is_empty()));
            let want: Vec<u64> = lists.iter().flatten().map(|(id, _)| *id).collect::<BTreeSet<_>>().into_iter().collect();
            let (low, high) = union().size_hint();
            prop_assert!(low <= want.len() && Some(want.len()) <= high, "size_hint {:?}", (low, high));
            // A `for` loop calls `next`; `fold` has its own path.
            let mut iterated = Vec::new();
            for (id, _) in union() {
                iterated.push(*id);
            }
            prop_assert_eq!(&iterated, &want);
            let folded = union().fold(Vec::new(), |mut v, (id, _)| {
                v.push(*id);
                v
            });
            prop_assert_eq!(&folded, &want);
        }
    }
}
