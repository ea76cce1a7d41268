//! The local set: this process's bounded two-phase set of event ids, which absorbs PubNub
//! retries.
//! Pure: time is passed in as milliseconds, so tests need no sleeps; the only lock is the
//! per-shard `std::sync::Mutex` of [`ShardedSet`], never held across an `.await`.
//!
//! An id is *pending* from arrival until its event is accepted under the ack mode, then
//! *committed* until `window` has passed; a failed accept *releases* it so the sender's retry
//! goes through. Memory is bounded by `max_entries`: the oldest committed ids are evicted first,
//! so under pressure the effective window shrinks instead of memory growing.
//!
//! Memory per committed entry: one 16-byte hash-map slot (u64 key, u64 expiry) plus one control
//! byte, at a load factor between 7/16 and 7/8, and one 16-byte slot in the expiry queue:
//! about 52 bytes per entry at 1,000,000 entries (≈ 50 MiB), never above 64 on average.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use super::Seen;

/// 64-bit digest of an event id. A false duplicate needs a 64-bit collision among the ids of one
/// window: about 1 in 10^13 per event at 1,000,000 remembered ids.
pub type Key = u64;

/// Keys are already uniform hashes; hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdentityBuild = BuildHasherDefault<IdentityHasher>;

/// The single-threaded two-phase set.
pub struct LocalSet {
    window_ms: u64,
    max_entries: usize,
    /// Committed key → expiry (ms).
    committed: HashMap<Key, u64, IdentityBuild>,
    /// Committed keys in commit order, which is expiry order since the window is fixed.
    expiry: VecDeque<(Key, u64)>,
    pending: HashSet<Key, IdentityBuild>,
    evicted: u64,
}

impl LocalSet {
    pub fn new(window: Duration, max_entries: usize) -> LocalSet {
        LocalSet {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            max_entries: max_entries.max(1),
            committed: HashMap::default(),
            expiry: VecDeque::new(),
            pending: HashSet::default(),
            evicted: 0,
        }
    }

    /// Looks `key` up at time `now_ms`; a new key becomes pending.
    pub fn begin(&mut self, key: Key, now_ms: u64) -> Seen {
        self.expire(now_ms);
        if self.committed.contains_key(&key) {
            Seen::Duplicate
        } else if !self.pending.insert(key) {
            Seen::Pending
        } else {
            Seen::New
        }
    }

    /// The event of a pending `key` was accepted: remember it for the window.
    pub fn commit(&mut self, key: Key, now_ms: u64) {
        if !self.pending.remove(&key) {
            return;
        }
        self.expire(now_ms);
        while self.committed.len() >= self.max_entries {
            self.evict_oldest();
        }
        let expires = now_ms.saturating_add(self.window_ms);
        if self.committed.insert(key, expires).is_none() {
            self.expiry.push_back((key, expires));
        }
    }

    /// Remembers `key` as committed without a pending phase (rebuilding from the spool).
    pub fn restore(&mut self, key: Key, committed_at_ms: u64, now_ms: u64) {
        if committed_at_ms.saturating_add(self.window_ms) <= now_ms {
            return;
        }
        self.pending.insert(key);
        self.commit(key, committed_at_ms);
    }

    /// The accept of a pending `key` failed: forget it so the retry is treated as new.
    pub fn release(&mut self, key: Key) {
        self.pending.remove(&key);
    }

    /// Committed ids remembered now.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Ids dropped before their window ended because `max_entries` was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// How far back this set remembers at `now_ms`: the whole window while it has room; once
    /// full, the age of the oldest id (evicting older ones shrank the window).
    pub fn effective_window_ms(&mut self, now_ms: u64) -> u64 {
        self.expire(now_ms);
        if self.committed.len() < self.max_entries {
            return self.window_ms;
        }
        self.expiry.front().map_or(self.window_ms, |&(_, expires)| {
            let committed_at = expires.saturating_sub(self.window_ms);
            now_ms.saturating_sub(committed_at).min(self.window_ms)
        })
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(key, expires)) = self.expiry.front() {
            if expires > now_ms {
                break;
            }
            self.expiry.pop_front();
            self.committed.remove(&key);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((key, _)) = self.expiry.pop_front() {
            self.committed.remove(&key);
            self.evicted += 1;
        }
    }
}

const SHARDS: usize = 16;

/// [`LocalSet`] split into independently locked shards, shared by all connections.
pub struct ShardedSet {
    shards: Vec<Mutex<LocalSet>>,
    hasher: RandomState,
}

impl ShardedSet {
    pub fn new(window: Duration, max_entries: usize) -> ShardedSet {
        let per_shard = max_entries.div_ceil(SHARDS);
        ShardedSet {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LocalSet::new(window, per_shard)))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The key of an event id: keyed SipHash, so ids cannot be crafted to collide.
    pub fn key(&self, id: &str) -> Key {
        self.hasher.hash_one(id)
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, LocalSet> {
        // A poisoned shard only means a panic elsewhere while holding it; the set is still
        // consistent (every method leaves it so between statements), so keep using it.
        let shard = &self.shards[(key >> 60) as usize % SHARDS];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn begin(&self, key: Key, now_ms: u64) -> Seen {
        self.shard(key).begin(key, now_ms)
    }

    pub fn commit(&self, key: Key, now_ms: u64) {
        self.shard(key).commit(key, now_ms);
    }

    pub fn release(&self, key: Key) {
        self.shard(key).release(key);
    }

    pub fn restore(&self, key: Key, committed_at_ms: u64, now_ms: u64) {
        self.shard(key).restore(key, committed_at_ms, now_ms);
    }

    /// The shortest effective window of any shard (see [`LocalSet::effective_window_ms`]).
    pub fn effective_window_ms(&self, now_ms: u64) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .effective_window_ms(now_ms)
            })
            .min()
            .unwrap_or(0)
    }

    /// Committed ids remembered now, over all shards.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn set() -> LocalSet {
        LocalSet::new(Duration::from_secs(20 * 60), 1000)
    }

    #[test]
    fn new_then_pending_then_committed_duplicate() {
        let mut d = set();
        assert_eq!(d.begin(1, 0), Seen::New);
        assert_eq!(d.begin(1, 1), Seen::Pending);
        d.commit(1, 2);
        assert_eq!(d.begin(1, 3), Seen::Duplicate);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn release_lets_the_retry_through() {
        let mut d = set();
        assert_eq!(d.begin(7, 0), Seen::New);
        d.release(7);
        assert_eq!(d.begin(7, 5_000), Seen::New);
        d.commit(7, 5_001);
        assert_eq!(d.begin(7, 10_000), Seen::Duplicate);
    }

    #[test]
    fn commit_or_release_of_unknown_key_is_ignored() {
        let mut d = set();
        d.commit(9, 0);
        assert_eq!(d.begin(9, 1), Seen::New);
        d.release(10);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn committed_expires_after_window() {
        let mut d = set();
        d.begin(1, 0);
        d.commit(1, 0);
        assert_eq!(d.begin(1, 20 * MIN - 1), Seen::Duplicate);
        assert_eq!(d.begin(1, 20 * MIN), Seen::New);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn window_counts_from_commit_not_begin() {
        let mut d = set();
        d.begin(1, 0);
        d.commit(1, 4_000);
        assert_eq!(d.begin(1, 20 * MIN + 3_999), Seen::Duplicate);
    }

    #[test]
    fn max_entries_evicts_oldest_and_shrinks_window() {
        let mut d = LocalSet::new(Duration::from_secs(3600), 3);
        for k in 0..5 {
            assert_eq!(d.begin(k, k), Seen::New);
            d.commit(k, k);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.evicted(), 2);
        assert_eq!(d.begin(0, 10), Seen::New, "oldest evicted");
        d.release(0);
        assert_eq!(d.begin(1, 10), Seen::New);
        d.release(1);
        assert_eq!(d.begin(4, 10), Seen::Duplicate, "newest kept");
        // Memory stays bounded however many ids pass through.
        for k in 100..10_100 {
            d.begin(k, 20);
            d.commit(k, 20);
        }
        assert_eq!(d.len(), 3);
        assert!(d.expiry.len() <= 3);
        assert!(d.pending.is_empty());
    }

    #[test]
    fn effective_window_shrinks_only_when_full() {
        let mut d = LocalSet::new(Duration::from_secs(600), 3);
        assert_eq!(d.effective_window_ms(0), 600_000);
        for (k, at) in [(1, 1_000), (2, 2_000)] {
            d.begin(k, at);
            d.commit(k, at);
        }
        assert_eq!(
            d.effective_window_ms(5_000),
            600_000,
            "room left: the whole window"
        );
        for (k, at) in [(3, 3_000), (4, 4_000)] {
            d.begin(k, at);
            d.commit(k, at);
        }
        // Full: id 1 was evicted, the oldest remembered was committed at 2 s.
        assert_eq!(d.effective_window_ms(10_000), 8_000);
    }

    #[test]
    fn restore_skips_expired_and_keeps_recent() {
        let mut d = set();
        d.restore(1, 0, 30 * MIN);
        d.restore(2, 25 * MIN, 30 * MIN);
        assert_eq!(d.begin(1, 30 * MIN), Seen::New);
        assert_eq!(d.begin(2, 30 * MIN), Seen::Duplicate);
        assert_eq!(d.begin(2, 45 * MIN), Seen::New);
    }

    #[test]
    fn shared_keys_are_stable_per_process_and_spread_over_shards() {
        let s = ShardedSet::new(Duration::from_secs(60), 1600);
        assert_eq!(s.key("abc"), s.key("abc"));
        assert_ne!(s.key("abc"), s.key("abd"));
        for i in 0..1600 {
            let k = s.key(&format!("id-{i}"));
            assert_eq!(s.begin(k, 0), Seen::New);
            s.commit(k, 0);
        }
        // Per-shard bound of 100: the total can only reach 1600 if keys spread over all shards.
        let len = s.len();
        assert!(len > 1000 && len <= 1600, "{len}");
    }
}
