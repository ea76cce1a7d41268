//! The roster store on a NATS JetStream key-value bucket (`roster.store = "nats"`).
//!
//! Keys (escaped with [`crate::route::escape`], so only `[A-Za-z0-9_-]` between the dots):
//! `<ch>` holds the channel's summary, `<ch>.m.<uuid>` one member (present or tombstone), and
//! `_epoch` the store's epoch (no escaped name is `_epoch`: an escape's `_` is followed by two
//! uppercase hex digits). A member key's value is exactly the caller's bytes; the header
//! `Hookbus-Member: present|absent` says which kind it is (`nats kv get` shows the bytes).
//!
//! The summary key holds a wrapper, `{"summary":<caller JSON>,"pending":[…]}` (layout in
//! `kv/wire.rs`; caller bytes that are not one JSON value are hex in `"summary_hex"`): the
//! caller's summary plus the member writes its commit still owes. Not headers, because the KV
//! API reads and writes no headers and JetStream caps a message's headers at 64 KiB, while the
//! owed writes may fill most of [`MAX_COMMIT_BYTES`].
//!
//! # Commit protocol (an intent log, the summary key as the lock)
//! NATS KV has no multi-key transaction. A commit of channel `ch` computed at summary `expected`:
//! 1. Settle: read the summary key; apply the member writes it owes (each a compare-and-set,
//!    CAS, on the member revision it records); if it is a removal marker, finish the removal.
//!    Every reader settles the same way before it answers. A commit computed from what this
//!    process knows of the channel at `expected` (its own last commit there, whose owed writes
//!    it paid, or its consistent read: `kv/cache.rs`) skips this step: if anyone committed
//!    since, the CAS in 3 refuses (revisions never return to an old value).
//! 2. Conflict unless the settled summary revision is `expected` (`0`: no summary, or a delete
//!    marker). Read the revision of each member key to write (`0`: no message; a deleted key's
//!    is its delete marker's), unless this process knows it at `expected`: member keys change
//!    only by owed writes, and those of that summary were applied (by this process, whose
//!    writes returned their revisions, or before its read), so the revisions it knows are
//!    current. (A bucket deleted and created again counts revisions from 1 again: any failed
//!    request forgets what the process knows, and the roster's epoch check rebuilds.)
//! 3. CAS the summary key from `expected` to the new summary plus the owed writes, each with
//!    the revision read in 2. The commit is decided here; its revision is the summary key's.
//! 4. Apply the owed writes (CAS each on its recorded revision; a mismatch means applied).
//!
//! Invariant: when a summary revision is written, every write owed by earlier revisions is
//! applied, and member keys change only by owed writes. By induction: the writer settled the
//! previous revision before its CAS, and the CAS succeeds only if that revision is still the
//! latest (revisions are stream sequences: unique, increasing, never back to an old value).
//!
//! No update is lost: a commit is one CAS, refused when anyone committed since the caller's
//! read. Once decided, its owed writes live in the summary value, and whoever reads it next (a
//! reader, the next writer, the writer itself) applies them first, so a writer that crashed
//! between 3 and 4 loses nothing. An owed write's CAS expects the revision read in 2, when all
//! earlier writes were applied; until the CAS in 3 nothing else could change the key (the
//! summary stayed at `expected`), and afterwards only this intent's appliers do. So that CAS
//! fails only when this very write was applied already.
//!
//! None is applied twice: once a write is applied its key's revision exceeds the recorded one
//! for good, so every later CAS of it (a slow writer, a second reader) fails, and a slow applier
//! of an old intent cannot overwrite a newer write either. A process remembers the summaries it
//! saw applied, so repeated reads skip the (failing) CAS round.
//!
//! Removal (summary `None`): the summary becomes a removal marker at revision M (a CAS, as any
//! commit); then each member key with a revision below M is deleted (CAS on its revision), then
//! the summary key (CAS on M). Until then readers finish the removal themselves and answer "no
//! channel"; the channel can be created again only once the summary key is deleted, so member
//! keys above M belong to the new channel and are left alone. Delete markers stay (one per key
//! ever deleted) until a compaction that respects owed writes is built.
//!
//! Reads settle first, then check that each member key read is still as of the settled
//! summary, and start again if a later commit wrote one (`kv/snapshot.rs`). Every read goes to
//! the stream leader (a lagging replica could hand step 2 an old revision), and every request
//! is bounded in time (`kv/io.rs`).

mod cache;
mod io;
mod protocol;
mod snapshot;
mod wire;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cache;
#[cfg(test)]
mod tests_protocol;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use async_nats::jetstream::{
    self,
    context::KeyValueErrorKind,
    stream::{self, DiscardPolicy, StorageType},
};
use tokio::time::timeout;

use self::io::{Cas, Kind, OP_TIMEOUT, Record};
use self::protocol::{Head, Step};
use self::snapshot::Wanted;
use super::{Commit, CommitError, Entry, Page, Snapshot, StoreError};
use crate::route::{escape, unescape};

/// The most bytes a commit's summary and member values should take together: the summary key
/// carries them all until the member writes are applied, and a NATS message is at most the
/// server's `max_payload` (1 MiB by default). Bigger commits fail once over that limit.
pub const MAX_COMMIT_BYTES: usize = 512 * 1024;

/// The key of the store's epoch.
const EPOCH_KEY: &str = "_epoch";

/// The roster's state in one NATS KV bucket (layout and protocol in the module doc).
pub struct KvStore {
    /// Boxed: the handles are about 2 KB (the stream's info), and `Store` is an enum.
    nats: Box<Nats>,
    bucket: String,
    /// Whether the last request was answered.
    up: AtomicBool,
    /// Per summary key, the (revision, value fingerprint) whose owed writes this process saw
    /// applied.
    applied: Mutex<HashMap<String, (u64, u64)>>,
    /// The channels this process changed or read for a change last (`kv/cache.rs`).
    cache: Mutex<cache::Cache>,
}

/// The connection's JetStream context and the bucket's handle.
struct Nats {
    js: jetstream::Context,
    kv: jetstream::kv::Store,
}

impl KvStore {
    /// The store on `bucket`, created when missing (history 1, file storage, no max age).
    ///
    /// # Errors
    /// The bucket could neither be read nor created, or the context uses a JetStream domain
    /// or API prefix (not supported: writes go to the bucket's subjects directly).
    pub async fn open(js: jetstream::Context, bucket: &str) -> Result<KvStore, StoreError> {
        let kv = match timeout(OP_TIMEOUT, js.get_key_value(bucket)).await {
            Ok(Ok(kv)) => kv,
            Ok(Err(e)) if e.kind() == KeyValueErrorKind::InvalidStoreName => {
                return Err(StoreError(format!("NATS KV bucket `{bucket}`: {e}")));
            }
            Ok(Err(get)) => create_bucket(&js, bucket, &get.to_string()).await?,
            Err(_) => {
                return Err(StoreError(format!(
                    "NATS KV bucket `{bucket}`: no answer within {OP_TIMEOUT:?}"
                )));
            }
        };
        if kv.use_jetstream_prefix {
            return Err(StoreError(format!(
                "NATS KV bucket `{bucket}`: JetStream domains and API prefixes are not supported"
            )));
        }
        Ok(KvStore {
            nats: Box::new(Nats { js, kv }),
            bucket: bucket.to_owned(),
            up: AtomicBool::new(true),
            applied: Mutex::new(HashMap::new()),
            cache: Mutex::new(cache::Cache::default()),
        })
    }

    /// The channel's summary and the members `uuids` (in that order) at one summary revision,
    /// after applying the member writes the summary owes.
    ///
    /// # Errors
    /// A request failed or timed out, the summary key holds something else, or the channel
    /// changed during every one of a few attempts.
    pub async fn read(&self, channel: &str, uuids: &[&str]) -> Result<Snapshot, StoreError> {
        let key = escape(channel);
        let read = self.consistent(&key, Wanted::These(uuids)).await?;
        Ok(match read {
            Some((summary, members)) => Snapshot {
                summary: Some(summary),
                members: members
                    .into_iter()
                    .map(|(uuid, record)| (uuid, record.and_then(entry)))
                    .collect(),
            },
            None => Snapshot {
                summary: None,
                members: uuids.iter().map(|&uuid| (uuid.to_owned(), None)).collect(),
            },
        })
    }

    /// [`KvStore::read`] with every member key the channel holds (present or tombstone),
    /// sorted by uuid.
    ///
    /// # Errors
    /// As [`KvStore::read`]; also a member scan that did not finish within 30 s.
    pub async fn read_all(&self, channel: &str) -> Result<Snapshot, StoreError> {
        let key = escape(channel);
        let read = self.consistent(&key, Wanted::All).await?;
        let Some((summary, members)) = read else {
            return Ok(Snapshot::default());
        };
        let members = members
            .into_iter()
            .filter_map(|(uuid, record)| Some((uuid, Some(entry(record?)?))))
            .collect();
        Ok(Snapshot {
            summary: Some(summary),
            members,
        })
    }

    /// Applies `commit` if the channel's summary is still at `commit.expected` (module doc,
    /// "Commit protocol"); returns the summary key's new revision (`0` when removed).
    ///
    /// # Errors
    /// [`CommitError::Conflict`] when the summary is at another revision. [`CommitError::Store`]
    /// when a request failed (the commit may or may not be decided: read again) or when one
    /// uuid is written twice. [`CommitError::TooLarge`] when the summary with its owed member
    /// writes exceeds the server's max payload (see [`MAX_COMMIT_BYTES`]); nothing is written.
    pub async fn commit(&self, channel: &str, commit: Commit) -> Result<u64, CommitError> {
        self.commit_step(channel, commit, Step::Full).await
    }

    async fn commit_step(
        &self,
        channel: &str,
        commit: Commit,
        step: Step,
    ) -> Result<u64, CommitError> {
        let key = escape(channel);
        // This process knows the channel at `expected` (its own last commit, or its
        // consistent read: the owed writes applied, the member revisions seen): no need to
        // settle again. If anyone committed since, the summary's compare-and-set refuses
        // (revisions never return to an old value).
        if commit.summary.is_some() && commit.expected != 0 {
            let known = self.cache().take_at(&key, commit.expected);
            if let Some(known) = known {
                let summary = commit.summary.unwrap_or_default();
                return self
                    .write(
                        &key,
                        commit.expected,
                        summary,
                        commit.members,
                        Some(known),
                        step,
                    )
                    .await;
            }
        }
        self.cache().forget(&key);
        let head = self
            .settle(&key)
            .await
            .map_err(|e| CommitError::Store(e.0))?;
        let base = match (&head, commit.expected) {
            (Head::Missing { rev }, 0) => *rev,
            (Head::Live { rev, .. }, expected) if *rev == expected => *rev,
            _ => return Err(CommitError::Conflict),
        };
        match commit.summary {
            Some(summary) => {
                // A summary key without any message: the channel never had a member key.
                let known = (matches!(head, Head::Missing { rev: 0 }))
                    .then(|| cache::Known::new(0, Vec::new(), true));
                self.write(&key, base, summary, commit.members, known, step)
                    .await
            }
            None => self.remove(&key, &head, step).await,
        }
    }

    /// The channel as this process last knew it, for a change (`kv/cache.rs`): no request
    /// when every member of `uuids` is known, else only those members are read; a
    /// [`KvStore::read`] when nothing is known. `true` with a remembered answer: the summary
    /// may have changed since (a commit computed from it then conflicts).
    ///
    /// # Errors
    /// As [`KvStore::read`].
    pub async fn read_for_change(
        &self,
        channel: &str,
        uuids: &[&str],
    ) -> Result<(Snapshot, bool), StoreError> {
        let key = escape(channel);
        match self.remembered(&key, uuids).await? {
            Some((summary, members)) => Ok((
                Snapshot {
                    summary: Some(summary),
                    members: members
                        .into_iter()
                        .map(|(uuid, record)| (uuid, record.and_then(entry)))
                        .collect(),
                },
                true,
            )),
            None => Ok((self.read(channel, uuids).await?, false)),
        }
    }

    /// Forgets what this process remembers of the channels (the store was rebuilt, or the
    /// input rewound).
    pub fn forget_all(&self) {
        self.cache().clear();
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, cache::Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Present members (tombstones not listed) with uuids after `after`, sorted by uuid bytes,
    /// at most `limit` (`0`: none, and `next` is `None`); `None` when the channel has no
    /// summary. Each page scans all the channel's member keys: O(members) per page.
    ///
    /// # Errors
    /// As [`KvStore::read_all`].
    pub async fn page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        let key = escape(channel);
        let read = self.consistent(&key, Wanted::All).await?;
        let Some((summary, members)) = read else {
            return Ok(None);
        };
        let mut present = members
            .into_iter()
            .filter_map(|(uuid, record)| match record {
                Some(r) if r.kind == Kind::Present => Some((uuid, r.value.to_vec())),
                _ => None,
            })
            .filter(|(uuid, _)| after.is_none_or(|after| uuid.as_str() > after));
        let members: Vec<(String, Vec<u8>)> = present.by_ref().take(limit).collect();
        let next = match present.next() {
            Some(_) => members.last().map(|(uuid, _)| uuid.clone()),
            None => None,
        };
        Ok(Some(Page {
            summary: summary.value,
            members: members.into_iter().map(|(_, value)| value).collect(),
            next,
        }))
    }

    /// Summaries of the channels whose raw name starts with `prefix` and sorts after `after`
    /// (UTF-8 bytes), at most `limit`, and the channel to continue after when more follow.
    /// Scans every summary key of the bucket: O(channels) per call.
    ///
    /// # Errors
    /// The scan failed or did not finish within 30 s.
    pub async fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), StoreError> {
        let mut found: Vec<(String, Vec<u8>)> = self
            .scan("*")
            .await?
            .into_iter()
            .filter(|(key, record)| record.kind != Kind::Deleted && key != EPOCH_KEY)
            .filter_map(|(key, record)| {
                let name = unescape(&key).ok()?;
                let wanted = name.starts_with(prefix) && after.is_none_or(|a| name.as_str() > a);
                // A removal marker (`summary: None`) is a channel being removed: not listed.
                let summary = wire::decode(&record.value).ok()?.summary?;
                wanted.then_some((name, summary))
            })
            .collect();
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = if more {
            found.last().map(|(name, _)| name.clone())
        } else {
            None
        };
        Ok((
            found.into_iter().map(|(_, summary)| summary).collect(),
            next,
        ))
    }

    /// The store's epoch (random hex); when missing, a new one if `create`, else `None`.
    ///
    /// # Errors
    /// A request failed, or `_epoch` holds something that is not UTF-8.
    pub async fn epoch(&self, create: bool) -> Result<Option<String>, StoreError> {
        // Two rounds: a concurrent creator's epoch wins over ours, and is read in the second.
        for _ in 0..2 {
            let expected = match self.get(EPOCH_KEY).await? {
                Some(record) if record.kind != Kind::Deleted => {
                    return String::from_utf8(record.value.to_vec())
                        .map(Some)
                        .map_err(|_| self.corrupt(EPOCH_KEY, "is not UTF-8"));
                }
                Some(record) => record.rev,
                None => 0,
            };
            if !create {
                return Ok(None);
            }
            let epoch = random_hex();
            if let Cas::Written(_) = self
                .cas_put(EPOCH_KEY, epoch.clone().into(), None, expected)
                .await?
            {
                return Ok(Some(epoch));
            }
        }
        Err(self.corrupt(EPOCH_KEY, "changed twice while it was created"))
    }

    /// Whether the store answered its last request.
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn corrupt(&self, key: &str, what: &str) -> StoreError {
        StoreError(format!(
            "NATS KV bucket `{}`: key `{key}` {what}",
            self.bucket
        ))
    }
}

/// The entry of a member key that holds a value; `None` for a delete marker.
fn entry(record: Record) -> Option<Entry> {
    (record.kind != Kind::Deleted).then(|| Entry {
        value: record.value.to_vec(),
        rev: record.rev,
    })
}

/// Creates the bucket's stream with the configuration `create_key_value` would give it (history
/// 1, file storage, no max age), then opens it. Not `create_key_value` itself: it first asks for
/// the account's info, which async-nats 0.51 cannot parse from nats-server 2.9 (Debian's).
async fn create_bucket(
    js: &jetstream::Context,
    bucket: &str,
    get: &str,
) -> Result<jetstream::kv::Store, StoreError> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("hookbus roster: who is in each channel now".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: 1,
        ..Default::default()
    };
    let created = match timeout(OP_TIMEOUT, js.create_stream(config)).await {
        Ok(Ok(_)) => String::new(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {OP_TIMEOUT:?}"),
    };
    // Also when the create failed: another process may have created it in between.
    match timeout(OP_TIMEOUT, js.get_key_value(bucket)).await {
        Ok(Ok(kv)) => Ok(kv),
        Ok(Err(e)) => Err(StoreError(format!(
            "NATS KV bucket `{bucket}`: not readable ({get}), created ({created}), still not \
             readable ({e})"
        ))),
        Err(_) => Err(StoreError(format!(
            "NATS KV bucket `{bucket}`: not readable ({get}), created ({created}), then no \
             answer within {OP_TIMEOUT:?}"
        ))),
    }
}

/// 32 random hex digits (std's per-process random hash keys, over the time and the pid).
fn random_hex() -> String {
    use std::hash::{BuildHasher, RandomState};
    let now = std::time::SystemTime::now();
    let pid = std::process::id();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&RandomState::new().hash_one((now, pid, 1u8)).to_le_bytes());
    bytes[8..].copy_from_slice(&RandomState::new().hash_one((now, pid, 2u8)).to_le_bytes());
    crate::text::hex(&bytes)
}
