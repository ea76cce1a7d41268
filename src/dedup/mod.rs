//! Deduplication, its one home: the ids PubNub's retries repeat are recognized here.
//!
//! - [`local`]: the local set, pure: this process's bounded two-phase id set (time passed in),
//!   sharded for concurrent use ([`ShardedSet`]).
//! - [`claims`]: ids between arrival and outcome, as the async side uses them: owners that
//!   commit or release every id exactly once ([`Held`]), retries that wait on a pending id.
//! - [`store`]: the shared store (`dedup.shared`, Redis/Valkey), one set across replicas.
//!
//! "Shared" always means the store across replicas; the in-process set is "local".

mod claims;
mod local;
pub mod store;

pub use claims::{Claims, Held, Id};
pub use local::{Key, LocalSet, ShardedSet};
pub use store::{SharedStore, Timings};

/// How an id was found, by the local set, the claims or the shared store: the one outcome type
/// of deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not known: now pending; the caller must `commit` or `release` it.
    New,
    /// Committed within the window: answer as success, do not publish again.
    Duplicate,
    /// Another request (or, in the shared store, another replica) holds this id pending: its
    /// outcome is not known yet. [`Claims::claim`] waits these out and never returns one.
    Pending,
}
