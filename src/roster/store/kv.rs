//! Placeholder until the store lands.

use super::{Commit, CommitError, Page, Snapshot, StoreError};

pub struct KvStore;

#[allow(clippy::unused_async, unused_variables)]
impl KvStore {
    pub async fn open(
        js: async_nats::jetstream::Context,
        bucket: &str,
    ) -> Result<KvStore, StoreError> {
        Err(StoreError("not built".into()))
    }
    pub async fn read(&self, channel: &str, uuids: &[&str]) -> Result<Snapshot, StoreError> {
        Err(StoreError("not built".into()))
    }
    pub async fn read_all(&self, channel: &str) -> Result<Snapshot, StoreError> {
        Err(StoreError("not built".into()))
    }
    pub async fn commit(&self, channel: &str, commit: Commit) -> Result<u64, CommitError> {
        Err(CommitError::Store("not built".into()))
    }
    pub async fn page(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        Err(StoreError("not built".into()))
    }
    pub async fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>), StoreError> {
        Err(StoreError("not built".into()))
    }
    pub async fn epoch(&self, create: bool) -> Result<Option<String>, StoreError> {
        Err(StoreError("not built".into()))
    }
    pub fn is_up(&self) -> bool {
        false
    }
}
