//! Event ids between arrival and outcome. Wraps the pure two-phase [`ShardedSet`] with what
//! the async side needs: a wake-up for retries waiting on a pending id, and owner handles
//! ([`Held`]) that commit or release every claimed id exactly once — by their owner, or on
//! drop when the owner is gone (a panic), never by a timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::Seen;
use super::local::{Key, ShardedSet};
use super::store::SharedStore;

/// How often a retry asks the shared store again about an id another replica holds.
const SHARED_POLL: Duration = Duration::from_millis(50);

/// The dedup set shared by the ingress and the publisher: this process's set, and, with
/// `dedup.shared`, the store every replica shares behind it.
pub struct Claims {
    dedup: ShardedSet,
    /// Woken whenever a pending id is committed or released.
    settled: Notify,
    /// Tasks waiting on `settled`; when 0, settling skips the notify.
    waiting: AtomicUsize,
    store: Option<Arc<SharedStore>>,
}

/// An event id as the dedup sets know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id {
    key: Key,
    /// The shared store's key, when there is a store.
    shared: Option<String>,
}

impl Id {
    /// The local key (one id twice in a batch has the same one).
    pub fn key(&self) -> Key {
        self.key
    }
}

impl Claims {
    pub fn new(window: Duration, max_entries: usize, store: Option<Arc<SharedStore>>) -> Claims {
        Claims {
            dedup: ShardedSet::new(window, max_entries),
            settled: Notify::new(),
            waiting: AtomicUsize::new(0),
            store,
        }
    }

    /// The dedup identity of an event id.
    pub fn id(&self, id: &str) -> Id {
        Id {
            key: self.dedup.key(id),
            shared: self.store.as_ref().map(|_| SharedStore::key(id)),
        }
    }

    /// The local key of an event id (rebuilding the set from the spool).
    pub fn key(&self, id: &str) -> Key {
        self.dedup.key(id)
    }

    /// Looks every id up (they must be distinct); new ones become pending and are added to
    /// `held`. An id that another request holds pending (here, or on another replica through
    /// the shared store) is waited on until `wait` passes for its outcome: committed →
    /// duplicate, released → new. With a shared store, ids new here are claimed there in one
    /// round trip; when the store is down or slow they are decided here alone.
    ///
    /// Cancel safe: ids claimed so far are in `held`, which releases them when dropped.
    ///
    /// # Errors
    /// `Err(still_pending)` when some ids were still pending after `wait`; `held` keeps what
    /// it claimed (the caller drops it to release them).
    pub async fn claim(
        self: &Arc<Self>,
        ids: &[Id],
        now_ms: impl Fn() -> u64,
        wait: Duration,
        held: &mut Held,
    ) -> Result<Vec<Seen>, usize> {
        let mut found: Vec<Option<Seen>> = vec![None; ids.len()];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut pending = 0;
            let mut fresh = Vec::new();
            let now = now_ms();
            for (i, id) in ids.iter().enumerate() {
                if found[i].is_some() {
                    continue;
                }
                match self.dedup.begin(id.key, now) {
                    Seen::New => fresh.push(i),
                    Seen::Duplicate => found[i] = Some(Seen::Duplicate),
                    Seen::Pending => pending += 1,
                }
            }
            let mut shared_busy = 0;
            let shared = match (&self.store, fresh.is_empty()) {
                (Some(store), false) => {
                    let keys: Vec<&str> = fresh
                        .iter()
                        .filter_map(|&i| ids[i].shared.as_deref())
                        .collect();
                    store.claim(&keys).await
                }
                _ => None,
            };
            for (n, &i) in fresh.iter().enumerate() {
                match shared.as_ref().map(|s| s[n]) {
                    // Decided here alone: no store, or the store is down.
                    None | Some(Seen::New) => {
                        held.ids.push(ids[i].clone());
                        found[i] = Some(Seen::New);
                    }
                    Some(Seen::Duplicate) => {
                        self.stored_elsewhere(&ids[i], now);
                        found[i] = Some(Seen::Duplicate);
                    }
                    Some(Seen::Pending) => {
                        self.busy_elsewhere(&ids[i]);
                        shared_busy += 1;
                    }
                }
            }
            pending += shared_busy;
            if pending == 0 {
                return Ok(found.into_iter().flatten().collect());
            }
            let wake = if shared_busy > 0 {
                deadline.min(tokio::time::Instant::now() + SHARED_POLL)
            } else {
                deadline
            };
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::time::timeout_at(wake, notified).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if tokio::time::Instant::now() >= deadline {
                return Err(pending);
            }
        }
    }

    /// The event of a pending id was accepted: a duplicate from now on, for the window.
    pub fn commit(&self, id: &Id, now_ms: u64) {
        self.dedup.commit(id.key, now_ms);
        if let (Some(store), Some(shared)) = (&self.store, &id.shared) {
            store.commit(shared.clone());
        }
        self.wake();
    }

    /// The accept of a pending id failed or was withdrawn: the next delivery is new.
    pub fn release(&self, id: &Id) {
        self.dedup.release(id.key);
        if let (Some(store), Some(shared)) = (&self.store, &id.shared) {
            store.release(shared.clone());
        }
        self.wake();
    }

    /// The shared store says another replica stored `id` (claimed pending here a moment
    /// ago): remembered here, so the next repeat costs no round trip, and the local retries
    /// waiting on it wake as duplicates.
    fn stored_elsewhere(&self, id: &Id, now_ms: u64) {
        self.dedup.commit(id.key, now_ms);
        self.wake();
    }

    /// The shared store says another replica holds `id` pending: the local claim is given
    /// up, and the local retries waiting on it wake to ask the store themselves (else they
    /// would sleep until their deadline and answer 503 though the event may be stored by
    /// then).
    fn busy_elsewhere(&self, id: &Id) {
        self.dedup.release(id.key);
        self.wake();
    }

    /// Remembers a key accepted before a restart (rebuilt from the spool).
    pub fn restore(&self, key: Key, committed_at_ms: u64, now_ms: u64) {
        self.dedup.restore(key, committed_at_ms, now_ms);
    }

    /// How far back duplicates are recognized now (shorter than `dedup.window` when
    /// `dedup.max_entries` is reached).
    pub fn effective_window_ms(&self, now_ms: u64) -> u64 {
        self.dedup.effective_window_ms(now_ms)
    }

    /// Committed ids remembered now.
    pub fn len(&self) -> usize {
        self.dedup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.settled.notify_waiters();
        }
    }
}

/// Pending ids owned by one request. Each is committed or handed on by its owner; whatever is
/// left when the holder is dropped is released (the owner failed or panicked before deciding).
pub struct Held {
    claims: Arc<Claims>,
    ids: Vec<Id>,
}

impl Held {
    pub fn new(claims: &Arc<Claims>) -> Held {
        Held {
            claims: claims.clone(),
            ids: Vec::new(),
        }
    }

    /// Commits every held id.
    pub fn commit_all(mut self, now_ms: u64) {
        for id in std::mem::take(&mut self.ids) {
            self.claims.commit(&id, now_ms);
        }
    }

    /// Takes `id` out of this holder: its new owner (a publish-mode ticket) settles it.
    pub fn hand_over(&mut self, id: &Id) -> Option<Id> {
        let at = self.ids.iter().position(|held| held == id)?;
        Some(self.ids.swap_remove(at))
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            self.claims.release(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Claims> {
        Arc::new(Claims::new(Duration::from_secs(60), 1000, None))
    }

    fn ids(claims: &Claims, names: &[&str]) -> Vec<Id> {
        names.iter().map(|n| claims.id(n)).collect()
    }

    #[tokio::test]
    async fn dropped_holder_releases_and_a_waiting_retry_takes_over() {
        let c = claims();
        let mut first = Held::new(&c);
        let found = c
            .claim(&ids(&c, &["1", "2"]), || 0, Duration::ZERO, &mut first)
            .await;
        assert_eq!(found, Ok(vec![Seen::New, Seen::New]));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut held = Held::new(&c);
                let found = c
                    .claim(&ids(&c, &["2"]), || 1, Duration::from_secs(10), &mut held)
                    .await;
                (found, held.is_empty())
            })
        };
        // The retry is parked on the pending id until its owner decides.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let (found, empty) = waiter.await.unwrap();
        assert_eq!(found, Ok(vec![Seen::New]));
        assert!(!empty);
    }

    #[tokio::test]
    async fn a_commit_makes_the_waiting_retry_a_duplicate() {
        let c = claims();
        let mut first = Held::new(&c);
        c.claim(&ids(&c, &["7"]), || 0, Duration::ZERO, &mut first)
            .await
            .unwrap();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut held = Held::new(&c);
                c.claim(&ids(&c, &["7"]), || 2, Duration::from_secs(10), &mut held)
                    .await
            })
        };
        tokio::task::yield_now().await;
        first.commit_all(1);
        assert_eq!(waiter.await.unwrap(), Ok(vec![Seen::Duplicate]));
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let c = claims();
        let mut first = Held::new(&c);
        c.claim(&ids(&c, &["3", "4"]), || 0, Duration::ZERO, &mut first)
            .await
            .unwrap();
        let mut second = Held::new(&c);
        let found = c
            .claim(
                &ids(&c, &["4", "5"]),
                || 0,
                Duration::from_millis(20),
                &mut second,
            )
            .await;
        assert_eq!(found, Err(1));
        assert!(
            !second.is_empty(),
            "5 was claimed and is released with the holder"
        );
        drop(second);
        let mut third = Held::new(&c);
        let found = c
            .claim(&ids(&c, &["5"]), || 0, Duration::ZERO, &mut third)
            .await;
        assert_eq!(found, Ok(vec![Seen::New]));
    }

    /// A retry parked on an id that this replica's own claim gives up because another replica
    /// holds it (or stored it), as the shared store answers: the retry wakes at once instead of
    /// sleeping until its deadline.
    #[tokio::test]
    async fn an_answer_of_the_shared_store_wakes_the_local_retries() {
        for stored in [false, true] {
            let c = claims();
            let id = c.id("11");
            // This replica's first claim of the id, between its local claim and the store's
            // answer.
            assert_eq!(c.dedup.begin(id.key, 0), Seen::New);
            let waiter = {
                let (c, id) = (c.clone(), id.clone());
                tokio::spawn(async move {
                    let mut held = Held::new(&c);
                    c.claim(&[id], || 1, Duration::from_secs(60), &mut held)
                        .await
                })
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                while c.waiting.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the retry waits on the pending id");
            if stored {
                c.stored_elsewhere(&id, 1);
            } else {
                c.busy_elsewhere(&id);
            }
            let found = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("the retry woke before its 60 s deadline")
                .unwrap();
            let expected = if stored { Seen::Duplicate } else { Seen::New };
            assert_eq!(found, Ok(vec![expected]), "stored elsewhere: {stored}");
        }
    }

    #[tokio::test]
    async fn handed_over_ids_are_not_released_by_the_holder() {
        let c = claims();
        let nine = c.id("9");
        let mut held = Held::new(&c);
        c.claim(std::slice::from_ref(&nine), || 0, Duration::ZERO, &mut held)
            .await
            .unwrap();
        assert_eq!(held.hand_over(&nine), Some(nine.clone()));
        drop(held);
        let mut again = Held::new(&c);
        assert_eq!(
            c.claim(
                std::slice::from_ref(&nine),
                || 0,
                Duration::from_millis(10),
                &mut again
            )
            .await,
            Err(1)
        );
        c.commit(&nine, 0);
    }
}
