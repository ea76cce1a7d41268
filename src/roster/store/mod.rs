//! Where the roster's state lives: one summary per channel plus one entry per member, so no
//! single value grows with the number of members. Byte-level: the store neither parses nor
//! decides anything; `roster::state` does. Every change of a channel is one compare-and-set on
//! its summary's revision, so replicas and redeliveries never lose an update.

pub mod kv;
pub mod redis;

/// A stored value and the revision it was read at (a store-specific, strictly increasing
/// number; never 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub rev: u64,
}

/// What [`Store::read`] returns: the channel's summary and the asked-for members, as of one
/// consistent point (every member write a committed summary promised is applied first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `None`: the channel has no state.
    pub summary: Option<Entry>,
    /// One per asked uuid (or every member, for [`Store::read_all`]), `None` when absent.
    pub members: Vec<(String, Option<Entry>)>,
}

/// A member write of a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    /// The member is present: listed by [`Store::page`].
    Present(Vec<u8>),
    /// The member is absent and its tombstone is kept (not listed by [`Store::page`], but
    /// returned by [`Store::read`]).
    Absent(Vec<u8>),
    /// Nothing is kept for the member (tombstone expired).
    Delete,
}

/// One change of one channel, to be applied all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The summary revision the change was computed from (`0`: the channel had no summary).
    /// The commit fails with [`CommitError::Conflict`] when the stored one differs.
    pub expected: u64,
    /// The new summary; `None` removes the channel (its members must all be deleted too).
    pub summary: Option<Vec<u8>>,
    /// Member writes, at most one per uuid.
    pub members: Vec<(String, MemberOp)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer changed the channel since it was read: read again and recompute.
    #[error("the channel changed since it was read")]
    Conflict,
    /// The store could not be reached or refused the write; retried with backoff.
    #[error("store: {0}")]
    Store(String),
    /// The commit is larger than the store takes in one write (NATS KV: the summary with its
    /// owed member writes over the server's max payload); nothing was written. A commit of
    /// fewer events fits.
    #[error("store: {0}")]
    TooLarge(String),
}

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// One page of a channel's present members, sorted by uuid (UTF-8 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The channel's summary value.
    pub summary: Vec<u8>,
    /// Present members' values (the bytes of [`MemberOp::Present`]), uuids greater than
    /// `after`, at most `limit`.
    pub members: Vec<Vec<u8>>,
    /// The uuid to continue after when more members follow, else `None`.
    pub next: Option<String>,
}

/// The configured store: NATS KV (`roster.store = "nats"`) or Redis (`redis://…`).
pub enum Store {
    Nats(kv::KvStore),
    Redis(redis::RedisStore),
}

impl Store {
    /// The channel's summary and the members `uuids` (in that order), consistent with one
    /// committed summary revision.
    ///
    /// # Errors
    /// The store is unreachable or answered with an error.
    pub async fn read(&self, channel: &str, uuids: &[&str]) -> Result<Snapshot, StoreError> {
        match self {
            Store::Nats(store) => store.read(channel, uuids).await,
            Store::Redis(store) => store.read(channel, uuids).await,
        }
    }

    /// [`Store::read`] for a change of the channel: NATS KV may answer from what this process
    /// remembers of its own last commit, without a request (`true`); the summary may then
    /// have changed since, which the commit computed from it finds (a conflict). Anything
    /// judged from a remembered answer that leads to no commit should be judged again on a
    /// [`Store::read`].
    ///
    /// # Errors
    /// As [`Store::read`].
    pub async fn read_for_change(
        &self,
        channel: &str,
        uuids: &[&str],
    ) -> Result<(Snapshot, bool), StoreError> {
        match self {
            Store::Nats(store) => store.read_for_change(channel, uuids).await,
            Store::Redis(store) => Ok((store.read(channel, uuids).await?, false)),
        }
    }

    /// Forgets what the store remembers of channels (the store was rebuilt, the input
    /// rewound).
    pub fn forget_all(&self) {
        match self {
            Store::Nats(store) => store.forget_all(),
            Store::Redis(_) => {}
        }
    }

    /// [`Store::read`] with every member the channel holds, present or tombstoned (an
    /// `inactive` event or a Here Now read decides over all of them).
    ///
    /// # Errors
    /// As [`Store::read`].
    pub async fn read_all(&self, channel: &str) -> Result<Snapshot, StoreError> {
        match self {
            Store::Nats(store) => store.read_all(channel).await,
            Store::Redis(store) => store.read_all(channel).await,
        }
    }

    /// Applies `commit` if the channel's summary is still at `commit.expected`; returns the
    /// new summary revision (`0` when the channel was removed).
    ///
    /// # Errors
    /// [`CommitError::Conflict`] when another writer came first; [`CommitError::Store`] when
    /// the store failed (the commit may or may not have been applied: read again).
    pub async fn commit(&self, channel: &str, commit: Commit) -> Result<u64, CommitError> {
        match self {
            Store::Nats(store) => store.commit(channel, commit).await,
            Store::Redis(store) => store.commit(channel, commit).await,
        }
    }

    /// One page of the channel's present members; `None` when the channel has no summary.
    ///
    /// # Errors
    /// As [`Store::read`].
    pub async fn page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        match self {
            Store::Nats(store) => store.page(channel, after, limit).await,
            Store::Redis(store) => store.page(channel, after, limit).await,
        }
    }

    /// Summaries of the channels whose raw name starts with `prefix` and sorts after `after`
    /// (UTF-8 bytes), at most `limit`, and the channel to continue after when more follow.
    ///
    /// # Errors
    /// As [`Store::read`].
    pub async fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), StoreError> {
        match self {
            Store::Nats(store) => store.channels(prefix, after, limit).await,
            Store::Redis(store) => store.channels(prefix, after, limit).await,
        }
    }

    /// The store's epoch: a random marker written once when the store is first used (or
    /// found missing). A different or missing epoch later means the store lost its data.
    /// `create`: write a new one when there is none, and return it.
    ///
    /// # Errors
    /// As [`Store::read`].
    pub async fn epoch(&self, create: bool) -> Result<Option<String>, StoreError> {
        match self {
            Store::Nats(store) => store.epoch(create).await,
            Store::Redis(store) => store.epoch(create).await,
        }
    }

    /// Whether the store answered its last request.
    pub fn is_up(&self) -> bool {
        match self {
            Store::Nats(store) => store.is_up(),
            Store::Redis(store) => store.is_up(),
        }
    }
}
