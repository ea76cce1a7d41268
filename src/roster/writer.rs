//! Applies events to the store: per channel, read what the events touch, run the rules,
//! compare-and-set the result, and on a conflict read again and recompute (the rules are
//! idempotent, so a recomputation never applies anything twice). Then the outputs: a change
//! event per changed member, a session event per ended stay (marked published in the store).

use std::sync::Arc;
use std::time::Duration;

use crate::normalize::Event;
use crate::time::now_ms;

use super::metrics::RosterMetrics;
use super::outputs::Outputs;
use super::state::{self, Channel, Member, Outcome, Rules, Summary};
use super::store::{Commit, CommitError, MemberOp, Snapshot, Store, StoreError};

/// How many times a conflicting commit is recomputed before the batch is given back (and
/// retried as a whole, later).
const MAX_CONFLICTS: u32 = 64;

pub struct Writer {
    pub store: Arc<Store>,
    pub rules: Rules,
    pub metrics: RosterMetrics,
    pub outputs: Arc<Outputs>,
}

/// Why a channel's change did not reach the store.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store holds a value the roster cannot read for channel {0:?}: {1}")]
    Corrupt(String, String),
    #[error("channel {0:?} kept conflicting with other writers")]
    Busy(String),
    /// One event's change alone is larger than the store takes in one commit.
    #[error("store: {0}")]
    TooLarge(String),
}

impl Writer {
    /// Applies `events` (all of `channel`) until stored; returns what they did. When their
    /// change is too large for one commit (a burst of joins with large states into a hot
    /// channel, on NATS KV), each half of the events is applied on its own: the rules give the
    /// same state in any order and grouping, so halves commit what the whole would have.
    ///
    /// # Errors
    /// The store failed, or held an unreadable value, or one event's change alone does not
    /// fit a commit; nothing of the batch may be acknowledged.
    pub async fn apply(&self, channel: &str, events: &[&Event]) -> Result<Outcome, WriteError> {
        match self.apply_whole(channel, events).await {
            Err(WriteError::TooLarge(error)) if events.len() > 1 => {
                tracing::debug!(channel, events = events.len(), %error, "roster commit too large; applying it in halves");
                let (first, second) = events.split_at(events.len() / 2);
                let mut outcome = Box::pin(self.apply(channel, first)).await?;
                outcome.merge(Box::pin(self.apply(channel, second)).await?);
                Ok(outcome)
            }
            other => other,
        }
    }

    async fn apply_whole(&self, channel: &str, events: &[&Event]) -> Result<Outcome, WriteError> {
        let uuids = state::uuids(events);
        let all = state::needs_all(events);
        let mut fresh = false;
        for _ in 0..MAX_CONFLICTS {
            let (snapshot, remembered) = if all {
                (self.store.read_all(channel).await?, false)
            } else if fresh {
                (self.store.read(channel, &uuids).await?, false)
            } else {
                self.store.read_for_change(channel, &uuids).await?
            };
            let (mut loaded, expected) = decode(channel, &snapshot)?;
            let now = now_i64();
            let outcome = state::apply(&mut loaded, channel, events, self.rules, now);
            self.nothing_to_publish(&mut loaded, &outcome.changed, now);
            if !outcome.dirty && remembered {
                // Nothing to commit, so no compare-and-set checks the remembered state: judge
                // the events again on the store's.
                fresh = true;
                continue;
            }
            if !outcome.dirty {
                self.count(&outcome);
                return Ok(outcome);
            }
            match self
                .store
                .commit(channel, encode(&loaded, &outcome.changed, expected, now)?)
                .await
            {
                Ok(_) => {
                    self.count(&outcome);
                    self.after_commit(channel, &loaded, &outcome.changed).await;
                    return Ok(outcome);
                }
                Err(CommitError::Conflict) => self.metrics.conflicts.inc(),
                Err(CommitError::Store(e)) => return Err(WriteError::Store(StoreError(e))),
                Err(CommitError::TooLarge(e)) => return Err(WriteError::TooLarge(e)),
            }
        }
        Err(WriteError::Busy(channel.to_owned()))
    }

    /// Runs `change` on the whole channel (every member loaded) until stored: reconciliation
    /// and the sweep. `change` returns the members it changed, or `None` for nothing to do.
    ///
    /// # Errors
    /// As [`Writer::apply`].
    pub async fn apply_all<F>(
        &self,
        channel: &str,
        mut change: F,
    ) -> Result<Option<Channel>, WriteError>
    where
        F: FnMut(&mut Channel, i64) -> Option<Vec<String>>,
    {
        for _ in 0..MAX_CONFLICTS {
            let snapshot = self.store.read_all(channel).await?;
            let (before, expected) = decode(channel, &snapshot)?;
            let mut loaded = before.clone();
            let now = now_i64();
            let Some(changed) = change(&mut loaded, now) else {
                return Ok(None);
            };
            self.nothing_to_publish(&mut loaded, &changed, now);
            let committed = match self
                .store
                .commit(channel, encode(&loaded, &changed, expected, now)?)
                .await
            {
                Err(CommitError::TooLarge(_)) if changed.len() > 1 => {
                    self.commit_in_parts(channel, before, &loaded, &changed, expected, now)
                        .await
                }
                other => other.map(|_| loaded),
            };
            match committed {
                Ok(stored) => {
                    self.after_commit(channel, &stored, &changed).await;
                    return Ok(Some(stored));
                }
                Err(CommitError::Conflict) => self.metrics.conflicts.inc(),
                Err(CommitError::Store(e)) => return Err(WriteError::Store(StoreError(e))),
                Err(CommitError::TooLarge(e)) => return Err(WriteError::TooLarge(e)),
            }
        }
        Err(WriteError::Busy(channel.to_owned()))
    }

    /// Commits the change from `before` to `after` (members `changed`) in parts small enough
    /// for the store, each a whole state (`state::partly`): halved until one fits, then on
    /// with that size. Returns the state the last part stored (`after`'s members, a later
    /// version). A conflict between parts is returned (the caller reads the channel again and
    /// recomputes the rest: a Here Now read or a sweep applied again changes nothing it
    /// already changed).
    async fn commit_in_parts(
        &self,
        channel: &str,
        mut before: Channel,
        after: &Channel,
        changed: &[String],
        mut expected: u64,
        now: i64,
    ) -> Result<Channel, CommitError> {
        let corrupt = |e: WriteError| CommitError::Store(e.to_string());
        let (mut done, mut size) = (0, changed.len().div_ceil(2));
        while done < changed.len() {
            let part = &changed[done..(done + size).min(changed.len())];
            let next = state::partly(&before, after, part, now);
            match self
                .store
                .commit(
                    channel,
                    encode(&next, part, expected, now).map_err(corrupt)?,
                )
                .await
            {
                Ok(rev) => {
                    tracing::debug!(
                        channel,
                        part = part.len(),
                        "roster change committed in parts"
                    );
                    (before, expected, done) = (next, rev, done + part.len());
                }
                Err(CommitError::TooLarge(_)) if part.len() > 1 => size = part.len().div_ceil(2),
                Err(e) => return Err(e),
            }
        }
        Ok(before)
    }

    /// Without `roster.sessions` an ended stay has no event to wait for: it is recorded as
    /// published in the same commit that ends it (not by a commit of its own per member).
    fn nothing_to_publish(&self, loaded: &mut Channel, changed: &[String], now: i64) {
        if self.outputs.sessions.is_none() {
            for uuid in changed {
                state::mark_published(loaded, uuid, now);
            }
        }
    }

    fn count(&self, outcome: &Outcome) {
        for action in &outcome.applied {
            self.metrics
                .applied
                .with_label_values(&[action.as_str()])
                .inc();
        }
        self.metrics.stale.inc_by(outcome.stale);
    }

    /// Publishes the change events of `changed` and the session events of stays they ended,
    /// marking each session published in the store. A failure leaves the session unpublished
    /// for the sweep to send again.
    async fn after_commit(&self, channel: &str, loaded: &Channel, changed: &[String]) {
        let Some(summary) = loaded.summary.as_ref() else {
            return;
        };
        for uuid in changed {
            let member = loaded.members.get(uuid).and_then(Option::as_ref);
            self.outputs.change(summary, uuid, member).await;
        }
        for uuid in changed {
            let Some(Some(member)) = loaded.members.get(uuid) else {
                continue;
            };
            if member.ended.as_ref().is_some_and(|e| !e.published) {
                self.publish_session(channel, member).await;
            }
        }
    }

    /// Sends `member`'s ended stay, then records it as sent (retried on conflict).
    pub async fn publish_session(&self, channel: &str, member: &Member) {
        let Some(ended) = member.ended.as_ref() else {
            return;
        };
        if !self.outputs.session(channel, &member.uuid, ended).await {
            return;
        }
        let uuid = [member.uuid.as_str()];
        for _ in 0..MAX_CONFLICTS {
            let Ok(snapshot) = self.store.read(channel, &uuid).await else {
                return;
            };
            let Ok((mut loaded, expected)) = decode(channel, &snapshot) else {
                return;
            };
            let now = now_i64();
            if !state::mark_published(&mut loaded, &member.uuid, now) {
                return;
            }
            let Ok(commit) = encode(&loaded, std::slice::from_ref(&member.uuid), expected, now)
            else {
                return;
            };
            match self.store.commit(channel, commit).await {
                Err(CommitError::Conflict) => self.metrics.conflicts.inc(),
                _ => return,
            }
        }
    }
}

/// Unix ms now, as the rules take it.
pub fn now_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

/// The stored values as the rules' types, and the summary revision they were read at.
///
/// # Errors
/// A value that does not parse.
pub fn decode(channel: &str, snapshot: &Snapshot) -> Result<(Channel, u64), WriteError> {
    let corrupt = |e: serde_json::Error| WriteError::Corrupt(channel.to_owned(), e.to_string());
    let (summary, expected) = match &snapshot.summary {
        Some(entry) => (
            Some(serde_json::from_slice::<Summary>(&entry.value).map_err(corrupt)?),
            entry.rev,
        ),
        None => (None, 0),
    };
    let mut loaded = Channel {
        summary,
        members: Default::default(),
    };
    for (uuid, entry) in &snapshot.members {
        let member = match entry {
            Some(entry) => Some(serde_json::from_slice::<Member>(&entry.value).map_err(corrupt)?),
            None => None,
        };
        loaded.members.insert(uuid.clone(), member);
    }
    Ok((loaded, expected))
}

/// The commit that stores `loaded` (its summary and the `changed` members), or removes the
/// channel when nothing is left of it.
///
/// # Errors
/// Never in practice (the types always serialize); a failure is reported as corrupt.
pub fn encode(
    loaded: &Channel,
    changed: &[String],
    expected: u64,
    now: i64,
) -> Result<Commit, WriteError> {
    let summary = loaded
        .summary
        .as_ref()
        .filter(|s| !state::removable(s, now));
    let summary = match summary {
        Some(s) => Some(json(s)?),
        None => None,
    };
    let mut members = Vec::with_capacity(changed.len());
    for uuid in changed {
        let op = match loaded.members.get(uuid).and_then(Option::as_ref) {
            Some(m) if m.present => MemberOp::Present(json(m)?),
            Some(m) if summary.is_some() => MemberOp::Absent(json(m)?),
            _ => MemberOp::Delete,
        };
        members.push((uuid.clone(), op));
    }
    Ok(Commit {
        expected,
        summary,
        members,
    })
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, WriteError> {
    serde_json::to_vec(value).map_err(|e| WriteError::Corrupt(String::new(), e.to_string()))
}

/// Backoff before retrying a failed store write: 100 ms doubling to 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}
