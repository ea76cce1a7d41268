//! Reads consistent with one summary revision. A read settles the summary (revision `S`, its
//! owed writes applied), then reads the members; a member key's last message shows the state
//! as of `S` when it is older than `S`, or when it is the write `S` owed (the same value or
//! delete). Anything else is a later commit's write (history 1 keeps no older value): the read
//! starts again from the newer summary.

use std::collections::HashMap;

use super::KvStore;
use super::cache::Known;
use super::io::{Kind, Record};
use super::protocol::{Head, batched, member_key};
use crate::roster::store::{Entry, MemberOp, StoreError};
use crate::route::unescape;

/// How often a read starts again when a later commit wrote one of the members it read.
const SNAPSHOT_ATTEMPTS: usize = 8;

/// The members a consistent read reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wanted<'a> {
    /// These uuids, in this order.
    These(&'a [&'a str]),
    /// Every member key of the channel (delete markers too), sorted by raw uuid.
    All,
}

/// Member keys by raw uuid: their last message, `None` when they never had one.
pub(super) type Members = Vec<(String, Option<Record>)>;

/// Whether `record`, member `uuid`'s key now, is its state as of summary `rev` whose owed
/// writes are `owed`.
fn as_of(rev: u64, owed: &HashMap<&str, &MemberOp>, uuid: &str, record: Option<&Record>) -> bool {
    let Some(record) = record else {
        return true;
    };
    if record.rev < rev {
        return true;
    }
    owed.get(uuid).is_some_and(|op| match op {
        MemberOp::Present(value) => record.kind == Kind::Present && record.value == value[..],
        MemberOp::Absent(value) => record.kind == Kind::Absent && record.value == value[..],
        MemberOp::Delete => record.kind == Kind::Deleted,
    })
}

impl KvStore {
    /// The settled summary and the `wanted` members as of its revision; `None` when the
    /// channel has no summary.
    ///
    /// # Errors
    /// A request failed, or later commits wrote a read member during each of
    /// [`SNAPSHOT_ATTEMPTS`] attempts.
    pub(super) async fn consistent(
        &self,
        key: &str,
        wanted: Wanted<'_>,
    ) -> Result<Option<(Entry, Members)>, StoreError> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let Head::Live { rev, summary, owed } = self.settle(key).await? else {
                return Ok(None);
            };
            let members = match wanted {
                Wanted::These(uuids) => self.read_members(key, uuids).await?,
                Wanted::All => self.scan_members(key).await?,
            };
            let owed: HashMap<&str, &MemberOp> =
                owed.iter().map(|p| (p.uuid.as_str(), &p.op)).collect();
            let consistent = members
                .iter()
                .all(|(uuid, record)| as_of(rev, &owed, uuid, record.as_ref()));
            if consistent {
                if matches!(wanted, Wanted::These(_)) {
                    self.remember(key, rev, &summary, &members);
                }
                let summary = Entry {
                    value: summary,
                    rev,
                };
                return Ok(Some((summary, members)));
            }
        }
        Err(StoreError(format!(
            "NATS KV bucket `{}`: channel `{key}` was written by other commits during each of \
             {SNAPSHOT_ATTEMPTS} reads",
            self.bucket
        )))
    }

    /// Remembers what the writer's read saw at summary revision `rev` (`kv/cache.rs`), added
    /// to what is known at that revision already.
    fn remember(&self, key: &str, rev: u64, summary: &[u8], members: &Members) {
        let mut cache = self.cache();
        if cache.get(key).is_some_and(|known| known.rev == rev) {
            cache.add(key, rev, members.clone());
            return;
        }
        let mut known = Known::new(rev, summary.to_vec(), false);
        for (uuid, record) in members {
            known.set(uuid.clone(), record.clone());
        }
        cache.put(key, known);
    }

    /// The summary and the members `uuids` as this process last knew them (`kv/cache.rs`):
    /// members not remembered are read, and kept when older than the remembered revision
    /// (a newer one means the channel changed since: `None`, as when nothing is remembered).
    /// Not a read of the summary: it may have changed since, which the commit's
    /// compare-and-set finds.
    ///
    /// # Errors
    /// A member read failed.
    pub(super) async fn remembered(
        &self,
        key: &str,
        uuids: &[&str],
    ) -> Result<Option<(Entry, Members)>, StoreError> {
        let (rev, summary, mut members, unknown) = {
            let cache = self.cache();
            let Some(known) = cache.get(key) else {
                return Ok(None);
            };
            let mut members: Members = Vec::with_capacity(uuids.len());
            let mut unknown = Vec::new();
            for &uuid in uuids {
                match known.member(uuid) {
                    Some(record) => members.push((uuid.to_owned(), record)),
                    None => unknown.push(uuid),
                }
            }
            (known.rev, known.summary.clone(), members, unknown)
        };
        if !unknown.is_empty() {
            let read = self.read_members(key, &unknown).await?;
            if read
                .iter()
                .any(|(_, record)| record.as_ref().is_some_and(|r| r.rev > rev))
            {
                self.cache().forget(key);
                return Ok(None);
            }
            members.extend(read.iter().cloned());
            self.cache().add(key, rev, read);
            let order: HashMap<&str, usize> =
                uuids.iter().enumerate().map(|(i, &u)| (u, i)).collect();
            members.sort_by_key(|(uuid, _)| order.get(uuid.as_str()).copied());
        }
        Ok(Some((
            Entry {
                value: summary,
                rev,
            },
            members,
        )))
    }

    async fn read_members(&self, key: &str, uuids: &[&str]) -> Result<Members, StoreError> {
        let reads = uuids
            .iter()
            .map(|&uuid| async move {
                let record = self.get(&member_key(key, uuid)).await?;
                Ok::<_, StoreError>((uuid.to_owned(), record))
            })
            .collect();
        batched(reads).await.into_iter().collect()
    }

    /// Every member key of the channel, delete markers included, by raw uuid, sorted by uuid
    /// bytes.
    async fn scan_members(&self, key: &str) -> Result<Members, StoreError> {
        let prefix = format!("{key}.m.");
        let mut members: Members = self
            .scan(&format!("{prefix}>"))
            .await?
            .into_iter()
            .filter_map(|(member, record)| {
                let escaped = member.strip_prefix(&prefix)?;
                match unescape(escaped) {
                    Ok(uuid) => Some((uuid, Some(record))),
                    Err(e) => {
                        tracing::warn!(key = member, error = %e, "roster member key skipped");
                        None
                    }
                }
            })
            .collect();
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(rev: u64, kind: Kind, value: &str) -> Record {
        Record {
            rev,
            kind,
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    #[test]
    fn a_member_is_as_of_the_summary_when_older_or_owed() {
        let present = MemberOp::Present(b"v".to_vec());
        let owed: HashMap<&str, &MemberOp> = [("a", &present), ("d", &MemberOp::Delete)].into();
        assert!(as_of(10, &owed, "x", None), "never written");
        assert!(as_of(
            10,
            &owed,
            "x",
            Some(&record(9, Kind::Present, "old"))
        ));
        assert!(as_of(10, &owed, "x", Some(&record(9, Kind::Deleted, ""))));
        assert!(as_of(10, &owed, "a", Some(&record(11, Kind::Present, "v"))));
        assert!(as_of(10, &owed, "d", Some(&record(12, Kind::Deleted, ""))));
        // Later commits' writes.
        assert!(!as_of(
            10,
            &owed,
            "x",
            Some(&record(11, Kind::Present, "new"))
        ));
        assert!(!as_of(
            10,
            &owed,
            "a",
            Some(&record(13, Kind::Present, "w"))
        ));
        assert!(!as_of(10, &owed, "a", Some(&record(13, Kind::Absent, "v"))));
        assert!(!as_of(10, &owed, "a", Some(&record(13, Kind::Deleted, ""))));
        assert!(!as_of(
            10,
            &owed,
            "d",
            Some(&record(13, Kind::Present, "v"))
        ));
    }
}
