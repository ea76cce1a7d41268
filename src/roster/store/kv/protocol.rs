//! The commit protocol (the intent log; why it loses and repeats nothing is in the module doc
//! of `kv`): settle a channel (apply what its summary owes, finish a removal), write a new
//! intent with one compare-and-set of the summary key, then pay what it owes.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::PoisonError;

use bytes::Bytes;

use super::cache::Known;
use super::io::Record;
use super::io::{Cas, Kind};
use super::wire::{self, Intent, Pending};
use super::{KvStore, MAX_COMMIT_BYTES};
use crate::roster::store::{CommitError, MemberOp, StoreError};

/// How many member writes (or reads) of one channel are in flight at once.
const PARALLEL: usize = 256;
/// How often [`KvStore::settle`] looks again when the summary changes under it.
const SETTLE_ATTEMPTS: usize = 8;
/// The most summaries remembered as fully applied (the memory is cleared when full).
const APPLIED_CAP: usize = 65_536;
/// Room left under the server's max payload for the message's subject and headers.
const HEADROOM: usize = 1024;
/// The server's max payload when the client does not know it (the server's default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A channel's summary key once settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Head {
    /// No summary. `rev` is what a create must expect: `0` (no message) or the revision of
    /// the key's delete marker.
    Missing { rev: u64 },
    /// A summary whose owed member writes are all applied; `rev` is the summary key's.
    Live {
        rev: u64,
        summary: Vec<u8>,
        owed: Vec<Pending>,
    },
}

/// How much of a commit to run: all of it, or (tests) only the summary's compare-and-set, as
/// a writer that crashed right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Full,
    #[cfg(test)]
    IntentOnly,
}

/// The key of member `uuid` of the channel whose summary key is `key`.
pub(super) fn member_key(key: &str, uuid: &str) -> String {
    format!("{key}.m.{}", crate::route::escape(uuid))
}

/// Awaits `futures`, at most [`PARALLEL`] at a time (a new one starts as each ends); their
/// outputs in order. Takes a `Vec` of futures, not a `stream::iter(..).map(..)`: a closure over
/// borrowed items held across an await keeps the caller's future from being `Send`
/// (rust-lang/rust#102211).
pub(super) async fn batched<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    use futures::StreamExt as _;
    futures::stream::iter(futures)
        .buffered(PARALLEL)
        .collect()
        .await
}

/// A member key's delete marker at `rev`.
fn deleted(rev: u64) -> Record {
    Record {
        rev,
        kind: Kind::Deleted,
        value: Bytes::new(),
    }
}

/// The member key's message once `op` was written at `rev`.
fn written(op: MemberOp, rev: u64) -> Record {
    match op {
        MemberOp::Present(value) => Record {
            rev,
            kind: Kind::Present,
            value: value.into(),
        },
        MemberOp::Absent(value) => Record {
            rev,
            kind: Kind::Absent,
            value: value.into(),
        },
        MemberOp::Delete => deleted(rev),
    }
}

/// A hash of a summary value, told apart from a same-revision value of an older bucket.
pub(super) fn fingerprint(value: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl KvStore {
    /// The channel's summary after applying what it owes and finishing a removal in progress.
    ///
    /// # Errors
    /// A request failed, the summary key holds something else, or it changed
    /// [`SETTLE_ATTEMPTS`] times while being settled.
    pub(super) async fn settle(&self, key: &str) -> Result<Head, StoreError> {
        for _ in 0..SETTLE_ATTEMPTS {
            let Some(record) = self.get(key).await? else {
                return Ok(Head::Missing { rev: 0 });
            };
            if record.kind == Kind::Deleted {
                return Ok(Head::Missing { rev: record.rev });
            }
            let intent = wire::decode(&record.value).map_err(|e| {
                StoreError(format!(
                    "NATS KV bucket `{}`: key `{key}` (revision {}) is not a roster summary: {e}",
                    self.bucket, record.rev
                ))
            })?;
            let seen = (record.rev, fingerprint(&record.value));
            self.apply(key, seen, &intent.pending).await?;
            let Some(summary) = intent.summary else {
                self.remove_members(key, record.rev).await?;
                match self.cas_delete(key, record.rev).await? {
                    Cas::Written(rev) => return Ok(Head::Missing { rev }),
                    // Another reader finished the removal (or a writer re-created the channel
                    // after it): look again.
                    Cas::Mismatch => continue,
                }
            };
            return Ok(Head::Live {
                rev: record.rev,
                summary,
                owed: intent.pending,
            });
        }
        Err(StoreError(format!(
            "NATS KV bucket `{}`: summary `{key}` changed {SETTLE_ATTEMPTS} times while it was read",
            self.bucket
        )))
    }

    /// Applies the member writes a summary owes, unless this process saw them applied
    /// already. `seen`: the summary's revision and the [`fingerprint`] of its value (a bucket
    /// deleted and created again counts revisions from 1 again).
    pub(super) async fn apply(
        &self,
        key: &str,
        seen: (u64, u64),
        pending: &[Pending],
    ) -> Result<(), StoreError> {
        self.pay(key, seen, pending).await.map(|_| ())
    }

    /// [`KvStore::apply`], returning the revision of each write (in order) when this call
    /// wrote every one of them; `None` when some were applied by others, or seen applied.
    async fn pay(
        &self,
        key: &str,
        seen: (u64, u64),
        pending: &[Pending],
    ) -> Result<Option<Vec<u64>>, StoreError> {
        if pending.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let applied = |store: &KvStore| {
            store
                .applied
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                == Some(&seen)
        };
        if applied(self) {
            return Ok(None);
        }
        let writes = pending.iter().map(|p| self.apply_one(key, p)).collect();
        let results = batched(writes).await;
        let mut revs = Some(Vec::with_capacity(pending.len()));
        for result in results {
            // `Cas::Mismatch`: the write was applied already (module doc, "exactly once").
            match result? {
                Cas::Written(rev) => revs.iter_mut().for_each(|revs| revs.push(rev)),
                Cas::Mismatch => revs = None,
            }
        }
        let mut memory = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        if memory.len() >= APPLIED_CAP {
            memory.clear();
        }
        memory.insert(key.to_owned(), seen);
        Ok(revs)
    }

    async fn apply_one(&self, key: &str, pending: &Pending) -> Result<Cas, StoreError> {
        let member = member_key(key, &pending.uuid);
        match &pending.op {
            MemberOp::Present(value) => {
                let value = Bytes::copy_from_slice(value);
                self.cas_put(&member, value, Some(Kind::Present), pending.rev)
                    .await
            }
            MemberOp::Absent(value) => {
                let value = Bytes::copy_from_slice(value);
                self.cas_put(&member, value, Some(Kind::Absent), pending.rev)
                    .await
            }
            MemberOp::Delete => self.cas_delete(&member, pending.rev).await,
        }
    }

    /// Deletes every member key of the channel written before its removal marker at `marker`
    /// (later ones belong to the channel created again after the removal).
    async fn remove_members(&self, key: &str, marker: u64) -> Result<(), StoreError> {
        let members = self.scan(&format!("{key}.m.>")).await?;
        let deletes = members
            .iter()
            .filter(|(_, record)| record.kind != Kind::Deleted && record.rev < marker)
            .map(|(member, record)| self.cas_delete(member, record.rev))
            .collect();
        let results = batched(deletes).await;
        for result in results {
            // `Cas::Mismatch`: another reader deleted it first.
            result?;
        }
        Ok(())
    }

    /// Writes the intent of a commit that keeps the channel, computed against the settled
    /// summary revision `base`, and (`Step::Full`) pays what it owes. Returns the summary
    /// key's new revision.
    pub(super) async fn write(
        &self,
        key: &str,
        base: u64,
        summary: Vec<u8>,
        members: Vec<(String, MemberOp)>,
        known: Option<Known>,
        step: Step,
    ) -> Result<u64, CommitError> {
        let mut uuids = HashSet::with_capacity(members.len());
        if let Some((uuid, _)) = members
            .iter()
            .find(|(uuid, _)| !uuids.insert(uuid.as_str()))
        {
            return Err(CommitError::Store(format!(
                "member `{uuid}` is written twice in one commit of `{key}`"
            )));
        }
        // `known`: the channel as this process knows it at this very summary, so the keys'
        // revisions now (member keys change only by owed writes, all applied at `base`, and
        // nothing was committed since: the compare-and-set below checks that); the rest are
        // read.
        let reads = members
            .iter()
            .map(|(uuid, _)| {
                let known = known.as_ref().and_then(|k| k.revision(uuid));
                async move {
                    match known {
                        Some(current) => Ok(current),
                        None => Ok(self
                            .get(&member_key(key, uuid))
                            .await?
                            .map(|r| (r.rev, r.kind == Kind::Deleted))),
                    }
                }
            })
            .collect();
        let current: Vec<Result<Option<(u64, bool)>, StoreError>> = batched(reads).await;
        let mut pending = Vec::with_capacity(members.len());
        let mut unwritten = Vec::new();
        for ((uuid, op), current) in members.into_iter().zip(current) {
            let current = current.map_err(|e| CommitError::Store(e.0))?;
            let gone = current.is_none_or(|(_, deleted)| deleted);
            if op == MemberOp::Delete && gone {
                unwritten.push((uuid, current.map(|(rev, _)| deleted(rev))));
                continue;
            }
            let rev = current.map_or(0, |(rev, _)| rev);
            pending.push(Pending { uuid, rev, op });
        }
        let intent = Intent {
            summary: Some(summary),
            pending,
        };
        let value = wire::encode(&intent);
        self.check_size(key, value.len())?;
        let print = fingerprint(&value);
        let rev = self.cas_summary(key, value, base).await?;
        if step == Step::Full {
            match self.pay(key, (rev, print), &intent.pending).await {
                Ok(Some(revs)) => {
                    let mut known = known.unwrap_or_else(|| Known::new(base, Vec::new(), false));
                    for (pending, rev) in intent.pending.into_iter().zip(revs) {
                        known.set(pending.uuid, Some(written(pending.op, rev)));
                    }
                    for (uuid, record) in unwritten {
                        known.set(uuid, record);
                    }
                    known.advance(rev, intent.summary.unwrap_or_default());
                    self.cache().put(key, known);
                }
                // Some writes were paid by another process: their revisions are not known.
                Ok(None) => {}
                Err(e) => {
                    // The commit is decided; the next reader of the channel pays what it owes.
                    tracing::warn!(channel_key = key, error = %e, "roster commit left member writes to the next reader");
                }
            }
        }
        Ok(rev)
    }

    /// Removes the channel (settled at `head`): a removal marker by compare-and-set, then
    /// (`Step::Full`) its members and the summary key. Returns `0`.
    pub(super) async fn remove(
        &self,
        key: &str,
        head: &Head,
        step: Step,
    ) -> Result<u64, CommitError> {
        let Head::Live { rev: base, .. } = head else {
            return Ok(0);
        };
        let marker = wire::encode(&Intent {
            summary: None,
            pending: Vec::new(),
        });
        let marker = self.cas_summary(key, marker, *base).await?;
        if step == Step::Full {
            let finished = async {
                self.remove_members(key, marker).await?;
                self.cas_delete(key, marker).await
            };
            if let Err(e) = finished.await {
                tracing::warn!(channel_key = key, error = %e, "roster removal left to the next reader");
            }
        }
        Ok(0)
    }

    async fn cas_summary(&self, key: &str, value: Vec<u8>, base: u64) -> Result<u64, CommitError> {
        match self.cas_put(key, value.into(), None, base).await {
            Ok(Cas::Written(rev)) => Ok(rev),
            Ok(Cas::Mismatch) => Err(CommitError::Conflict),
            Err(e) => Err(CommitError::Store(e.0)),
        }
    }

    fn check_size(&self, key: &str, len: usize) -> Result<(), CommitError> {
        let max = match self.nats.js.client().server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            max => max,
        };
        if len + HEADROOM > max {
            return Err(CommitError::TooLarge(format!(
                "NATS KV bucket `{}`: the commit of `{key}` is {len} bytes (summary and owed \
                 member writes), over the server's max payload of {max} bytes; keep commits \
                 under MAX_COMMIT_BYTES ({MAX_COMMIT_BYTES})",
                self.bucket
            )));
        }
        Ok(())
    }
}
