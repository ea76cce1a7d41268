//! The roster store on Redis or Valkey (`roster.store = "redis://…"`): a channel's summary,
//! members and present-member index as a few keys under the configured prefix, each change one
//! Lua compare-and-set script ([`scripts`]), each read of a channel one script too, so it sees
//! one committed revision. Owns the key layout (see [`Keys`]), the connection and the mapping
//! of Redis errors (URL passwords redacted) to the store's errors.

mod scripts;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisResult, Script, ScriptInvocation};
use sha2::{Digest, Sha256};

use super::{Commit, CommitError, Entry, MemberOp, Page, Snapshot, StoreError};
use crate::config::redact_urls;

/// How long one connection attempt and one answer may take (the connection manager's own
/// limits).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole request may take, a reconnect and one retry included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many channel names [`RedisStore::channels`] asks for at least per round trip.
const CHANNEL_BATCH: usize = 64;

/// The store's key names. Every key starts with the prefix as a Redis Cluster hash tag,
/// `{PREFIX}:`, so every key of the store is in one slot and every script is a valid cluster
/// script (the channel index makes each commit touch a store-wide key, so per-channel slots
/// would not be). `E` is the channel escaped by [`crate::route::escape`] (only `[A-Za-z0-9-]`
/// and `_XX`), so no channel's keys can be another channel's or a store-wide key:
///
/// - `{P}:s:E` hash: `v` the summary value, `r` its revision;
/// - `{P}:m:E` hash: uuid → member value (present and tombstoned alike);
/// - `{P}:p:E` sorted set: the present uuids, score 0 (listed by lex range);
/// - `{P}:channels` sorted set: the raw names of the channels that have a summary, score 0;
/// - `{P}:revision` counter: every commit takes the next value as its revision, so revisions
///   climb across removal and re-creation of a channel, and nothing is left per removed
///   channel;
/// - `{P}:epoch` string: the store's epoch.
#[derive(Debug, Clone)]
struct Keys {
    /// `{PREFIX}:`
    head: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            head: format!("{{{prefix}}}:"),
        }
    }

    fn of_channel(&self, kind: &str, channel: &str) -> String {
        let mut key = String::with_capacity(self.head.len() + kind.len() + 1 + channel.len());
        key.push_str(&self.head);
        key.push_str(kind);
        key.push(':');
        crate::route::escape_into(channel, &mut key);
        key
    }

    fn summary(&self, channel: &str) -> String {
        self.of_channel("s", channel)
    }

    fn members(&self, channel: &str) -> String {
        self.of_channel("m", channel)
    }

    fn present(&self, channel: &str) -> String {
        self.of_channel("p", channel)
    }

    fn global(&self, name: &str) -> String {
        format!("{}{name}", self.head)
    }
}

/// The scripts with their hashes, computed once per process.
struct Scripts {
    commit: Script,
    read: Script,
    read_all: Script,
    page: Script,
    epoch: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    commit: Script::new(scripts::COMMIT),
    read: Script::new(scripts::READ),
    read_all: Script::new(scripts::READ_ALL),
    page: Script::new(scripts::PAGE),
    epoch: Script::new(scripts::EPOCH),
});

/// The roster's state in Redis: see [`Keys`] for the layout.
pub struct RedisStore {
    connection: ConnectionManager,
    keys: Keys,
    /// Whether the last request was answered.
    up: AtomicBool,
}

/// What a read script answers: nil (no summary) or the summary value, its revision and the
/// members part.
type ReadAnswer<T> = Option<(Vec<u8>, u64, T)>;

/// What the page script answers: nil (no summary) or the summary value, the uuids (the page
/// and one more when more follow) and the page's values.
type PageAnswer = Option<(Vec<u8>, Vec<Vec<u8>>, Vec<Option<Vec<u8>>>)>;

impl RedisStore {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]` or `rediss://…`) and keeps the
    /// store's keys under `{prefix}:` (the bucket name, e.g. `PRESENCE_ROSTER`).
    ///
    /// # Errors
    /// An empty prefix or one holding `{` or `}` (it is the keys' hash tag), a URL the client
    /// cannot parse, or a server that cannot be reached within the timeouts. Messages never
    /// show the URL's password.
    pub async fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(StoreError(format!(
                "redis: the key prefix {prefix:?} must be non-empty and without `{{` or `}}`"
            )));
        }
        let client = ::redis::Client::open(url).map_err(|e| StoreError(redis_message(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(NETWORK_TIMEOUT))
            .set_response_timeout(Some(NETWORK_TIMEOUT))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            REQUEST_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError(format!("redis: no connection within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| StoreError(redis_message(&e)))?;
        Ok(RedisStore {
            connection,
            keys: Keys::new(prefix),
            up: AtomicBool::new(true),
        })
    }

    /// The channel's summary and the members `uuids` (in that order), from one script, so
    /// consistent with one committed revision. A member's revision is the summary's.
    ///
    /// # Errors
    /// The store did not answer in time or answered with an error.
    pub async fn read(&self, channel: &str, uuids: &[&str]) -> Result<Snapshot, StoreError> {
        let mut invocation = SCRIPTS.read.prepare_invoke();
        invocation
            .key(self.keys.summary(channel))
            .key(self.keys.members(channel));
        for uuid in uuids {
            invocation.arg(*uuid);
        }
        let answer: ReadAnswer<Vec<Option<Vec<u8>>>> =
            self.invoke("read", &invocation).await.map_err(StoreError)?;
        let Some((summary, rev, values)) = answer else {
            let members = uuids.iter().map(|uuid| ((*uuid).to_owned(), None));
            return Ok(Snapshot {
                summary: None,
                members: members.collect(),
            });
        };
        if values.len() != uuids.len() {
            return Err(StoreError(
                "redis read: answer does not match the request".into(),
            ));
        }
        let members = uuids.iter().zip(values).map(|(uuid, value)| {
            let entry = value.map(|value| Entry { value, rev });
            ((*uuid).to_owned(), entry)
        });
        Ok(Snapshot {
            summary: Some(Entry {
                value: summary,
                rev,
            }),
            members: members.collect(),
        })
    }

    /// [`RedisStore::read`] with every member the channel holds, present or tombstoned, sorted
    /// by uuid.
    ///
    /// # Errors
    /// As [`RedisStore::read`]; also a stored uuid that is not UTF-8.
    pub async fn read_all(&self, channel: &str) -> Result<Snapshot, StoreError> {
        let mut invocation = SCRIPTS.read_all.prepare_invoke();
        invocation
            .key(self.keys.summary(channel))
            .key(self.keys.members(channel));
        let answer: ReadAnswer<Vec<Vec<u8>>> =
            self.invoke("read", &invocation).await.map_err(StoreError)?;
        let Some((summary, rev, flat)) = answer else {
            return Ok(Snapshot::default());
        };
        let mut members = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(uuid), Some(value)) = (flat.next(), flat.next()) {
            let uuid = utf8(uuid, "member uuid")?;
            members.push((uuid, Some(Entry { value, rev })));
        }
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Snapshot {
            summary: Some(Entry {
                value: summary,
                rev,
            }),
            members,
        })
    }

    /// Applies `commit` in one script if the channel's summary revision is still
    /// `commit.expected`; returns the new revision, `0` when the channel was removed.
    ///
    /// # Errors
    /// [`CommitError::Conflict`] when the stored revision differs; [`CommitError::Store`] when
    /// the store did not answer in time or answered with an error (the commit may or may not
    /// have been applied).
    pub async fn commit(&self, channel: &str, commit: Commit) -> Result<u64, CommitError> {
        let mut invocation = SCRIPTS.commit.prepare_invoke();
        invocation
            .key(self.keys.summary(channel))
            .key(self.keys.members(channel))
            .key(self.keys.present(channel))
            .key(self.keys.global("channels"))
            .key(self.keys.global("revision"))
            .arg(commit.expected)
            .arg(channel);
        match &commit.summary {
            None => invocation.arg("r").arg(""),
            Some(summary) => invocation.arg("w").arg(summary.as_slice()),
        };
        if commit.summary.is_some() {
            for (uuid, op) in &commit.members {
                let (code, value): (&str, &[u8]) = match op {
                    MemberOp::Present(value) => ("p", value),
                    MemberOp::Absent(value) => ("a", value),
                    MemberOp::Delete => ("d", b""),
                };
                invocation.arg(code).arg(uuid.as_str()).arg(value);
            }
        }
        let rev: i64 = self
            .invoke("commit", &invocation)
            .await
            .map_err(CommitError::Store)?;
        // The script answers -1 for a conflict, else the new revision (0: removed).
        u64::try_from(rev).map_err(|_| CommitError::Conflict)
    }

    /// One page of the channel's present members: uuids after `after`, sorted by their bytes,
    /// at most `limit` (`0` is read as `1`), from one script; `None` when the channel has no
    /// summary.
    ///
    /// # Errors
    /// As [`RedisStore::read`]; also a stored uuid that is not UTF-8.
    pub async fn page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        let limit = limit.max(1);
        let mut invocation = SCRIPTS.page.prepare_invoke();
        invocation
            .key(self.keys.summary(channel))
            .key(self.keys.present(channel))
            .key(self.keys.members(channel))
            .arg(lex_after(after))
            .arg(limit.saturating_add(1))
            .arg(limit);
        let answer: PageAnswer = self.invoke("page", &invocation).await.map_err(StoreError)?;
        let Some((summary, mut uuids, values)) = answer else {
            return Ok(None);
        };
        let next = if uuids.len() > limit {
            uuids.truncate(limit);
            uuids
                .pop()
                .map(|uuid| utf8(uuid, "member uuid"))
                .transpose()?
        } else {
            None
        };
        let members = values
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError("redis page: a present member has no value".into()))?;
        Ok(Some(Page {
            summary,
            members,
            next,
        }))
    }

    /// Summaries of the channels whose raw name starts with `prefix` and sorts after `after`
    /// (bytes), at most `limit` (`0` is read as `1`), and the last channel returned when more
    /// follow. The names come from the channel index, the summaries from a second round trip:
    /// a channel removed in between is skipped.
    ///
    /// # Errors
    /// As [`RedisStore::read`]; also a stored channel name that is not UTF-8.
    pub async fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), StoreError> {
        let limit = limit.max(1);
        let mut found: Vec<Vec<u8>> = Vec::new();
        let mut last: Option<String> = None;
        // The names with the prefix are one run in byte order, from `prefix` itself on.
        let mut lower = match after {
            Some(after) if after >= prefix => lex_after(Some(after)),
            _ if prefix.is_empty() => "-".to_owned(),
            _ => format!("[{prefix}"),
        };
        loop {
            let want = (limit - found.len()).saturating_add(1).max(CHANNEL_BATCH);
            let (names, exhausted) = self.channel_names(&lower, want, prefix).await?;
            let summaries = self.summaries(&names).await?;
            for (name, summary) in names.iter().zip(summaries) {
                let Some(summary) = summary else { continue };
                if found.len() == limit {
                    return Ok((found, last));
                }
                found.push(summary);
                last = Some(name.clone());
            }
            match names.last() {
                Some(name) if !exhausted => lower = lex_after(Some(name)),
                _ => return Ok((found, None)),
            }
        }
    }

    /// Up to `want` names of the channel index from `lower` on that start with `prefix`, and
    /// whether the run of such names ended.
    async fn channel_names(
        &self,
        lower: &str,
        want: usize,
        prefix: &str,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let mut command = ::redis::cmd("ZRANGEBYLEX");
        command
            .arg(self.keys.global("channels"))
            .arg(lower)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(want);
        let mut connection = self.connection.clone();
        let raw: Vec<Vec<u8>> = self
            .timed("channels", command.query_async(&mut connection))
            .await
            .map_err(StoreError)?;
        let mut exhausted = raw.len() < want;
        let mut names = Vec::with_capacity(raw.len());
        for name in raw {
            let name = utf8(name, "channel name")?;
            if !name.starts_with(prefix) {
                exhausted = true;
                break;
            }
            names.push(name);
        }
        Ok((names, exhausted))
    }

    /// The summary values of `channels`, `None` for one without a summary, in one round trip.
    async fn summaries(&self, channels: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for channel in channels {
            pipe.cmd("HGET").arg(self.keys.summary(channel)).arg("v");
        }
        let mut connection = self.connection.clone();
        self.timed("channels", pipe.query_async(&mut connection))
            .await
            .map_err(StoreError)
    }

    /// The store's epoch (`{prefix}:epoch`); with `create`, a new random one is written first
    /// when there is none (set-if-absent, so concurrent creators agree on one).
    ///
    /// # Errors
    /// As [`RedisStore::read`].
    pub async fn epoch(&self, create: bool) -> Result<Option<String>, StoreError> {
        let key = self.keys.global("epoch");
        let answer: Result<Option<Vec<u8>>, String> = if create {
            let mut invocation = SCRIPTS.epoch.prepare_invoke();
            invocation.key(key).arg(new_epoch());
            self.invoke("epoch", &invocation).await
        } else {
            let mut command = ::redis::cmd("GET");
            command.arg(key);
            let mut connection = self.connection.clone();
            self.timed("epoch", command.query_async(&mut connection))
                .await
        };
        let answer = answer.map_err(StoreError)?;
        answer.map(|epoch| utf8(epoch, "epoch")).transpose()
    }

    /// Whether the store answered its last request.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs a script (by hash, loading it when the server does not have it) within the
    /// request timeout.
    async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.connection.clone();
        self.timed(what, invocation.invoke_async(&mut connection))
            .await
    }

    /// `request` within the request timeout; records whether it was answered.
    async fn timed<T>(
        &self,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(format!("redis {what}: {}", redis_message(&error))),
            Err(_) => Err(format!(
                "redis {what}: no answer within {REQUEST_TIMEOUT:?}"
            )),
        };
        self.up.store(answer.is_ok(), Ordering::Relaxed);
        answer
    }
}

/// The lower bound of a lex range for members or channels after `after`.
fn lex_after(after: Option<&str>) -> String {
    after.map_or_else(|| "-".to_owned(), |after| format!("({after}"))
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError(format!("redis: a stored {what} is not UTF-8")))
}

/// A Redis error as text, any URL password in it hidden.
fn redis_message(error: &::redis::RedisError) -> String {
    redact_urls(&error.to_string())
}

/// A new random epoch: 32 hex digits of a hash of the time, the process, a counter and a
/// per-process random key.
fn new_epoch() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hasher = Sha256::new();
    hasher.update(nanos.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(RandomState::new().hash_one(nanos).to_le_bytes());
    crate::text::hex(&hasher.finalize()[..16])
}
