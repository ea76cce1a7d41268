//! The link between a `publish`-mode request and its job. The request waits for the broker's
//! confirmation up to `ack.publish_timeout`; when it gives up, the job is either withdrawn
//! (still queued: never sent, the id is released so PubNub's retry is new) or, once handed to
//! the producer, stays with it and settles the id itself (committed when confirmed, so the
//! retry is a duplicate). The request's answer and the job's fate always agree.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::dedup::{Claims, Id};
use crate::publisher::now_ms;

const QUEUED: u8 = 0;
const SENT: u8 = 1;
const WITHDRAWN: u8 = 2;
const SETTLED: u8 = 3;

/// Shared by the request (withdraw, wait) and the publisher (start, settle).
pub struct Ticket {
    state: AtomicU8,
    claims: Arc<Claims>,
    /// The pending id this job owns; `None` when it carries no id.
    key: Option<Id>,
    waiter: Mutex<Option<oneshot::Sender<()>>>,
}

impl Ticket {
    /// A queued ticket owning `key`, and the receiver its request waits on.
    pub fn new(claims: &Arc<Claims>, key: Option<Id>) -> (Arc<Ticket>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let ticket = Ticket {
            state: AtomicU8::new(QUEUED),
            claims: claims.clone(),
            key,
            waiter: Mutex::new(Some(tx)),
        };
        (Arc::new(ticket), rx)
    }

    /// The publisher is about to hand the job to the producer. `false` when the request
    /// withdrew it first: the job must not be sent.
    pub fn start(&self) -> bool {
        match self
            .state
            .compare_exchange(QUEUED, SENT, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(state) => state == SENT,
        }
    }

    /// The request gives up waiting. `true` when the job had not been sent and never will be
    /// (its id is released now); `false` when the producer has it and will settle it.
    pub fn withdraw(&self) -> bool {
        let withdrawn = self
            .state
            .compare_exchange(QUEUED, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if withdrawn && let Some(key) = &self.key {
            self.claims.release(key);
        }
        withdrawn
    }

    /// The broker confirmed the event (or it was dead-lettered for good): its id is committed
    /// and the request, if still waiting, is told.
    pub fn settle(&self) {
        if self.state.swap(SETTLED, Ordering::SeqCst) == SETTLED {
            return;
        }
        if let Some(key) = &self.key {
            self.claims.commit(key, now_ms());
        }
        let waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(waiter) = waiter {
            let _ = waiter.send(());
        }
    }
}

impl Drop for Ticket {
    /// Dropped unsettled: the publisher lost the job (a panic, or the drain deadline) before
    /// it was sent, or the broker refused it after (a sent job's ticket lives on in the task
    /// awaiting its confirmation). Its owner is gone, so the id is released and PubNub's retry
    /// is accepted anew.
    fn drop(&mut self) {
        let state = *self.state.get_mut();
        if (state == QUEUED || state == SENT)
            && let Some(key) = &self.key
        {
            self.claims.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dedup::{Held, Seen};

    async fn found(claims: &Arc<Claims>, id: &Id) -> Result<Vec<Seen>, usize> {
        let mut held = Held::new(claims);
        let found = claims
            .claim(std::slice::from_ref(id), || 1, Duration::ZERO, &mut held)
            .await;
        held.commit_all(1);
        found
    }

    async fn pending(claims: &Arc<Claims>, id: &Id) -> (Arc<Ticket>, oneshot::Receiver<()>) {
        let mut held = Held::new(claims);
        claims
            .claim(std::slice::from_ref(id), || 0, Duration::ZERO, &mut held)
            .await
            .unwrap();
        let id = held.hand_over(id).unwrap();
        Ticket::new(claims, Some(id))
    }

    fn setup(name: &str) -> (Arc<Claims>, Id) {
        let claims = Arc::new(Claims::new(Duration::from_secs(60), 100, None));
        let id = claims.id(name);
        (claims, id)
    }

    #[tokio::test]
    async fn withdrawn_before_sending_releases_and_is_never_sent() {
        let (claims, id) = setup("1");
        let (ticket, _rx) = pending(&claims, &id).await;
        assert!(ticket.withdraw());
        assert!(!ticket.start(), "a withdrawn job is not sent");
        assert_eq!(found(&claims, &id).await, Ok(vec![Seen::New]));
    }

    #[tokio::test]
    async fn sent_then_confirmed_commits_so_the_retry_is_a_duplicate() {
        let (claims, id) = setup("2");
        let (ticket, rx) = pending(&claims, &id).await;
        assert!(ticket.start());
        assert!(!ticket.withdraw(), "the producer has it");
        assert_eq!(
            found(&claims, &id).await,
            Err(1),
            "still pending, not released"
        );
        ticket.settle();
        rx.await.unwrap();
        assert_eq!(found(&claims, &id).await, Ok(vec![Seen::Duplicate]));
    }

    #[tokio::test]
    async fn a_lost_job_releases_its_id() {
        let (claims, id) = setup("3");
        let (ticket, _rx) = pending(&claims, &id).await;
        assert!(ticket.start());
        drop(ticket);
        assert_eq!(found(&claims, &id).await, Ok(vec![Seen::New]));
    }
}
