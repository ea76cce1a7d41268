//! Event ids between arrival and outcome. Wraps the pure two-phase [`SharedDedup`] with what
//! the async side needs: a wake-up for retries waiting on a pending id, and owner handles
//! ([`Held`]) that commit or release every claimed id exactly once — by their owner, or on
//! drop when the owner is gone (a panic), never by a timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::dedup::{Key, Seen, SharedDedup};

/// The dedup set shared by the ingress and the publisher.
pub struct Claims {
    dedup: SharedDedup,
    /// Woken whenever a pending id is committed or released.
    settled: Notify,
    /// Tasks waiting on `settled`; when 0, settling skips the notify.
    waiting: AtomicUsize,
}

/// How one id of a request was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Not known: now pending and held by the caller.
    New,
    /// Committed within the window: a duplicate.
    Duplicate,
}

impl Claims {
    pub fn new(window: Duration, max_entries: usize) -> Claims {
        Claims {
            dedup: SharedDedup::new(window, max_entries),
            settled: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The dedup key of an event id.
    pub fn key(&self, id: &str) -> Key {
        self.dedup.key(id)
    }

    /// Looks every key up; new ones become pending and are added to `held`. A key that another
    /// request holds pending is waited on (until `wait` passes) for its outcome: committed →
    /// duplicate, released → new.
    ///
    /// Cancel safe: keys claimed so far are in `held`, which releases them when dropped.
    ///
    /// # Errors
    /// `Err(still_pending)` when some keys were still pending after `wait`; `held` keeps what
    /// it claimed (the caller drops it to release them).
    pub async fn claim(
        self: &Arc<Self>,
        keys: &[Key],
        now_ms: impl Fn() -> u64,
        wait: Duration,
        held: &mut Held,
    ) -> Result<Vec<Found>, usize> {
        let mut found: Vec<Option<Found>> = vec![None; keys.len()];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut pending = 0;
            let now = now_ms();
            for (key, slot) in keys.iter().zip(found.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                match self.dedup.begin(*key, now) {
                    Seen::New => {
                        held.keys.push(*key);
                        *slot = Some(Found::New);
                    }
                    Seen::Duplicate => *slot = Some(Found::Duplicate),
                    Seen::Pending => pending += 1,
                }
            }
            if pending == 0 {
                return Ok(found.into_iter().flatten().collect());
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let woke = tokio::time::timeout_at(deadline, notified).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if woke.is_err() {
                return Err(pending);
            }
        }
    }

    /// The event of a pending key was accepted: a duplicate from now on, for the window.
    pub fn commit(&self, key: Key, now_ms: u64) {
        self.dedup.commit(key, now_ms);
        self.wake();
    }

    /// The accept of a pending key failed or was withdrawn: the next delivery is new.
    pub fn release(&self, key: Key) {
        self.dedup.release(key);
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

/// Pending keys owned by one request. Each is committed or handed on by its owner; whatever is
/// left when the holder is dropped is released (the owner failed or panicked before deciding).
pub struct Held {
    claims: Arc<Claims>,
    keys: Vec<Key>,
}

impl Held {
    pub fn new(claims: &Arc<Claims>) -> Held {
        Held {
            claims: claims.clone(),
            keys: Vec::new(),
        }
    }

    /// Commits every held key.
    pub fn commit_all(mut self, now_ms: u64) {
        for key in self.keys.drain(..) {
            self.claims.commit(key, now_ms);
        }
    }

    /// Takes `key` out of this holder: its new owner (a publish-mode ticket) settles it.
    pub fn hand_over(&mut self, key: Key) -> Option<Key> {
        let at = self.keys.iter().position(|k| *k == key)?;
        Some(self.keys.swap_remove(at))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for key in self.keys.drain(..) {
            self.claims.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Claims> {
        Arc::new(Claims::new(Duration::from_secs(60), 1000))
    }

    #[tokio::test]
    async fn dropped_holder_releases_and_a_waiting_retry_takes_over() {
        let c = claims();
        let mut first = Held::new(&c);
        let found = c.claim(&[1, 2], || 0, Duration::ZERO, &mut first).await;
        assert_eq!(found, Ok(vec![Found::New, Found::New]));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut held = Held::new(&c);
                let found = c
                    .claim(&[2], || 1, Duration::from_secs(10), &mut held)
                    .await;
                (found, held.is_empty())
            })
        };
        // The retry is parked on the pending key until its owner decides.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let (found, empty) = waiter.await.unwrap();
        assert_eq!(found, Ok(vec![Found::New]));
        assert!(!empty);
    }

    #[tokio::test]
    async fn a_commit_makes_the_waiting_retry_a_duplicate() {
        let c = claims();
        let mut first = Held::new(&c);
        c.claim(&[7], || 0, Duration::ZERO, &mut first)
            .await
            .unwrap();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut held = Held::new(&c);
                c.claim(&[7], || 2, Duration::from_secs(10), &mut held)
                    .await
            })
        };
        tokio::task::yield_now().await;
        first.commit_all(1);
        assert_eq!(waiter.await.unwrap(), Ok(vec![Found::Duplicate]));
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let c = claims();
        let mut first = Held::new(&c);
        c.claim(&[3, 4], || 0, Duration::ZERO, &mut first)
            .await
            .unwrap();
        let mut second = Held::new(&c);
        let found = c
            .claim(&[4, 5], || 0, Duration::from_millis(20), &mut second)
            .await;
        assert_eq!(found, Err(1));
        assert!(
            !second.is_empty(),
            "key 5 was claimed and is released with the holder"
        );
        drop(second);
        let mut third = Held::new(&c);
        let found = c.claim(&[5], || 0, Duration::ZERO, &mut third).await;
        assert_eq!(found, Ok(vec![Found::New]));
    }

    #[tokio::test]
    async fn handed_over_keys_are_not_released_by_the_holder() {
        let c = claims();
        let mut held = Held::new(&c);
        c.claim(&[9], || 0, Duration::ZERO, &mut held)
            .await
            .unwrap();
        assert_eq!(held.hand_over(9), Some(9));
        drop(held);
        let mut again = Held::new(&c);
        assert_eq!(
            c.claim(&[9], || 0, Duration::from_millis(10), &mut again)
                .await,
            Err(1)
        );
        c.commit(9, 0);
    }
}
