//! What this process knows of the channels it changed last: per summary key, the revision its
//! own commit wrote (every owed write applied by this process, so the member revisions are
//! known), the summary, and the member keys it wrote or read at that revision. The writer's
//! next change of the channel is computed from it without a read, and its commit needs no read
//! of member revisions: the summary's compare-and-set on that revision refuses when anyone
//! committed since (revisions never return to an old value), and member keys change only by
//! owed writes, so while the summary is at that revision every remembered member is current.
//!
//! `complete`: every member key of the channel is remembered, so a uuid not in `members` has
//! no message at all. True for a channel this process created from nothing (the summary key
//! had no message: no member key can exist), kept through its own later commits.
//!
//! Forgotten on a conflict, a failed or partly foreign payment of owed writes, a removal, any
//! store error (a bucket lost and created again counts revisions from 1 again), and when over
//! [`CACHE_BYTES`] (whole channels, arbitrary ones, until a quarter is free; a channel over
//! [`CHANNEL_BYTES`] is not remembered).

use std::collections::HashMap;

use bytes::Bytes;

use super::io::{Kind, Record};

/// The most bytes remembered, counted as [`MEMBER_OVERHEAD`] and [`CHANNEL_OVERHEAD`] plus
/// the uuids, keys and values.
pub(super) const CACHE_BYTES: usize = 48 * 1024 * 1024;
/// One channel may take this much of [`CACHE_BYTES`] (a hot channel of 100,000 members fits).
const CHANNEL_BYTES: usize = CACHE_BYTES / 4 * 3;
/// Per remembered member beyond its uuid and value: the map's slot at its usual load and the
/// two allocations' rounding.
const MEMBER_OVERHEAD: usize = 96;
/// Per remembered channel beyond its key and summary: the entry, its map and slot.
const CHANNEL_OVERHEAD: usize = 256;

/// A member key's last message, compactly (`rev` 0: no message).
#[derive(Debug, Clone)]
struct Slot {
    rev: u64,
    kind: Kind,
    value: Box<[u8]>,
}

/// One channel as of one summary revision.
#[derive(Debug, Clone)]
pub(super) struct Known {
    /// The summary key's revision; every write it owes is applied.
    pub rev: u64,
    /// The caller's summary bytes at `rev`.
    pub summary: Vec<u8>,
    /// Every member key is in `members` (absent ones have no message).
    pub complete: bool,
    /// Member keys by raw uuid.
    members: HashMap<Box<str>, Slot>,
    /// What this entry counts against [`CACHE_BYTES`], without the key.
    cost: usize,
}

impl Known {
    pub fn new(rev: u64, summary: Vec<u8>, complete: bool) -> Known {
        let cost = CHANNEL_OVERHEAD + summary.len();
        Known {
            rev,
            summary,
            complete,
            members: HashMap::new(),
            cost,
        }
    }

    /// The member key of `uuid` as of `rev`: `Some(None)` for a key with no message, `None`
    /// when not known.
    pub fn member(&self, uuid: &str) -> Option<Option<Record>> {
        match self.members.get(uuid) {
            Some(slot) if slot.rev == 0 => Some(None),
            Some(slot) => Some(Some(Record {
                rev: slot.rev,
                kind: slot.kind,
                value: Bytes::copy_from_slice(&slot.value),
            })),
            None if self.complete => Some(None),
            None => None,
        }
    }

    /// The revision of `uuid`'s key and whether it is a delete marker (`Some(None)`: no
    /// message; `None`: not known).
    pub fn revision(&self, uuid: &str) -> Option<Option<(u64, bool)>> {
        match self.members.get(uuid) {
            Some(slot) if slot.rev == 0 => Some(None),
            Some(slot) => Some(Some((slot.rev, slot.kind == Kind::Deleted))),
            None if self.complete => Some(None),
            None => None,
        }
    }

    /// Records member `uuid`'s key as `record` (`None`: no message).
    pub fn set(&mut self, uuid: String, record: Option<Record>) {
        let slot = match record {
            Some(record) => Slot {
                rev: record.rev,
                kind: record.kind,
                value: record.value.to_vec().into_boxed_slice(),
            },
            None => Slot {
                rev: 0,
                kind: Kind::Deleted,
                value: Box::default(),
            },
        };
        let added = MEMBER_OVERHEAD + uuid.len() + slot.value.len();
        match self.members.get_mut(uuid.as_str()) {
            Some(old) => {
                self.cost = self.cost + slot.value.len() - old.value.len();
                *old = slot;
            }
            None => {
                self.cost += added;
                self.members.insert(uuid.into_boxed_str(), slot);
            }
        }
    }

    /// A new summary revision: `rev` with `summary`, members kept.
    pub fn advance(&mut self, rev: u64, summary: Vec<u8>) {
        self.cost = self.cost + summary.len() - self.summary.len();
        self.rev = rev;
        self.summary = summary;
    }
}

/// The remembered channels, by summary key.
#[derive(Debug, Default)]
pub(super) struct Cache {
    channels: HashMap<String, Known>,
    bytes: usize,
}

impl Cache {
    /// What is remembered of `key`.
    pub fn get(&self, key: &str) -> Option<&Known> {
        self.channels.get(key)
    }

    /// Takes `key`'s entry out when it is at revision `rev`.
    pub fn take_at(&mut self, key: &str, rev: u64) -> Option<Known> {
        if self.channels.get(key)?.rev != rev {
            return None;
        }
        let known = self.channels.remove(key)?;
        self.bytes -= known.cost + key.len();
        Some(known)
    }

    /// Remembers `known` for `key` (replacing what was), unless it alone takes over
    /// [`CHANNEL_BYTES`].
    pub fn put(&mut self, key: &str, known: Known) {
        self.forget(key);
        let cost = known.cost + key.len();
        if cost > CHANNEL_BYTES {
            return;
        }
        if self.bytes + cost > CACHE_BYTES {
            self.evict((CACHE_BYTES / 4).max(cost));
        }
        self.bytes += cost;
        self.channels.insert(key.to_owned(), known);
    }

    /// Adds members read at `rev` to `key`'s entry, if it is still at `rev`.
    pub fn add(&mut self, key: &str, rev: u64, read: Vec<(String, Option<Record>)>) {
        let Some(mut known) = self.take_at(key, rev) else {
            return;
        };
        for (uuid, record) in read {
            known.set(uuid, record);
        }
        self.put(key, known);
    }

    pub fn forget(&mut self, key: &str) {
        if let Some(known) = self.channels.remove(key) {
            self.bytes -= known.cost + key.len();
        }
    }

    pub fn clear(&mut self) {
        self.channels.clear();
        self.bytes = 0;
    }

    /// Forgets whole channels until `free` bytes are free.
    fn evict(&mut self, free: usize) {
        let target = CACHE_BYTES.saturating_sub(free);
        let mut victims = Vec::new();
        let mut bytes = self.bytes;
        for (key, known) in &self.channels {
            if bytes <= target {
                break;
            }
            bytes -= known.cost + key.len();
            victims.push(key.clone());
        }
        for key in victims {
            self.forget(&key);
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rev: u64, len: usize) -> Option<Record> {
        Some(Record {
            rev,
            kind: Kind::Present,
            value: Bytes::from(vec![b'x'; len]),
        })
    }

    #[test]
    fn a_complete_channel_knows_every_uuid_a_partial_one_only_its_own() {
        let mut complete = Known::new(7, b"{}".to_vec(), true);
        complete.set("a".into(), record(5, 3));
        assert_eq!(complete.member("a").flatten().map(|r| r.rev), Some(5));
        assert_eq!(complete.revision("a"), Some(Some((5, false))));
        assert!(matches!(complete.member("zz"), Some(None)));
        assert_eq!(complete.revision("zz"), Some(None));
        let mut partial = Known::new(7, b"{}".to_vec(), false);
        partial.set("a".into(), None);
        partial.set(
            "d".into(),
            Some(Record {
                rev: 3,
                kind: Kind::Deleted,
                value: Bytes::new(),
            }),
        );
        assert!(matches!(partial.member("a"), Some(None)));
        assert_eq!(partial.revision("d"), Some(Some((3, true))));
        assert!(partial.member("zz").is_none());
        assert!(partial.revision("zz").is_none());
    }

    #[test]
    fn an_entry_is_taken_only_at_its_revision() {
        let mut cache = Cache::default();
        cache.put("ch", Known::new(7, b"{}".to_vec(), true));
        assert!(cache.take_at("ch", 6).is_none());
        assert!(cache.get("ch").is_some(), "a wrong revision leaves it");
        assert_eq!(cache.take_at("ch", 7).map(|k| k.rev), Some(7));
        assert!(cache.get("ch").is_none());
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_count_follows_every_change_and_stays_within_the_budget() {
        let mut cache = Cache::default();
        let mut known = Known::new(1, b"{}".to_vec(), false);
        known.set("a".into(), record(2, 100));
        known.set("a".into(), record(3, 10));
        known.set("b".into(), None);
        known.advance(4, b"{\"n\":1}".to_vec());
        let expected =
            CHANNEL_OVERHEAD + 2 + 7 + (MEMBER_OVERHEAD + 1 + 10) + (MEMBER_OVERHEAD + 1);
        cache.put("ch", known);
        assert_eq!(cache.bytes(), expected);
        cache.add("ch", 4, vec![("c".into(), record(1, 20))]);
        assert_eq!(cache.bytes(), expected + MEMBER_OVERHEAD + 1 + 20);
        cache.add("ch", 3, vec![("d".into(), None)]);
        assert_eq!(
            cache.bytes(),
            expected + MEMBER_OVERHEAD + 1 + 20,
            "not at that revision"
        );
        cache.forget("ch");
        assert_eq!(cache.bytes(), 0);

        // Channels of about 1 MiB each: the budget holds, the newest stays.
        for i in 0..100u64 {
            let mut known = Known::new(i + 1, Vec::new(), false);
            known.set(format!("u{i}"), record(i + 1, 1024 * 1024));
            cache.put(&format!("ch{i}"), known);
            assert!(cache.bytes() <= CACHE_BYTES);
            assert!(cache.get(&format!("ch{i}")).is_some());
        }
        // One channel over its share of the budget is not remembered at all.
        let mut huge = Known::new(1, Vec::new(), false);
        huge.set("u".into(), record(1, CHANNEL_BYTES));
        cache.put("huge", huge);
        assert!(cache.get("huge").is_none());
        cache.clear();
        assert_eq!(cache.bytes(), 0);
    }
}
