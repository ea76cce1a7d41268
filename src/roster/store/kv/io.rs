//! One KV request each, bounded in time: read a key's last message (with its headers: the KV
//! API's `Entry` drops them), compare-and-set a put or a delete marker, and scan the last
//! message of every key under a filter. Reads go to the stream leader (`STREAM.MSG.GET`), not
//! to a possibly lagging replica: the protocol records the revisions it reads.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, timeout, timeout_at};

use super::KvStore;
use crate::roster::store::StoreError;

/// The longest wait for one request (a get, a write's ack, a consumer's creation).
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for a scan to deliver every key it matched.
pub(super) const SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a scan's consumer may deliver nothing while keys are pending before it is
/// replaced (a local server delivers thousands of keys in that time).
const SCAN_STALL: Duration = Duration::from_secs(2);

/// Marks a member message: `present` (listed by `page`) or `absent` (a tombstone). The value
/// stays the caller's bytes.
const MEMBER_HEADER: &str = "Hookbus-Member";
const KV_OPERATION: &str = "KV-Operation";
const MARKER_REASON: &str = "Nats-Marker-Reason";

/// What a key's last message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A put (for member keys: a present member, or a put without our header).
    Present,
    /// A member put marked `absent`: a tombstone.
    Absent,
    /// A delete or purge marker: the key holds nothing, but the marker has a revision.
    Deleted,
}

/// A key's last message.
#[derive(Debug, Clone)]
pub(super) struct Record {
    /// The message's stream sequence: the key's KV revision.
    pub rev: u64,
    pub kind: Kind,
    pub value: Bytes,
}

/// The outcome of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cas {
    /// Written at this revision.
    Written(u64),
    /// The key's revision was not the expected one; nothing was written.
    Mismatch,
}

fn kind(headers: Option<&HeaderMap>) -> Kind {
    let Some(headers) = headers else {
        return Kind::Present;
    };
    let deleted = headers
        .get(KV_OPERATION)
        .is_some_and(|op| op.as_str() != "PUT")
        || headers.get(MARKER_REASON).is_some();
    if deleted {
        Kind::Deleted
    } else if headers
        .get(MEMBER_HEADER)
        .is_some_and(|v| v.as_str() == "absent")
    {
        Kind::Absent
    } else {
        Kind::Present
    }
}

impl KvStore {
    fn read_subject(&self, key: &str) -> String {
        format!("{}{}", self.nats.kv.prefix, key)
    }

    fn write_subject(&self, key: &str) -> String {
        let prefix = self
            .nats
            .kv
            .put_prefix
            .as_deref()
            .unwrap_or(&self.nats.kv.prefix);
        format!("{prefix}{key}")
    }

    /// Records that the store answered.
    fn answered(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that the store failed to answer, and the error to return. What this process
    /// remembers of the channels is forgotten: the bucket may have been lost (and created
    /// again, counting revisions from 1 again).
    fn failed(&self, what: String) -> StoreError {
        self.up.store(false, std::sync::atomic::Ordering::Relaxed);
        self.forget_all();
        StoreError(format!("NATS KV bucket `{}`: {what}", self.bucket))
    }

    /// The last message of `key`; `None` when the key never had one (or it was purged away).
    ///
    /// # Errors
    /// No answer within [`OP_TIMEOUT`], or an error answer.
    pub(super) async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let subject = self.read_subject(key);
        let got = timeout(
            OP_TIMEOUT,
            self.nats
                .kv
                .stream
                .get_last_raw_message_by_subject(&subject),
        )
        .await;
        match got {
            Ok(Ok(message)) => {
                self.answered();
                Ok(Some(Record {
                    rev: message.sequence,
                    kind: kind(Some(&message.headers)),
                    value: message.payload,
                }))
            }
            Ok(Err(e)) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                self.answered();
                Ok(None)
            }
            Ok(Err(e)) => Err(self.failed(format!("get `{key}`: {e}"))),
            Err(_) => Err(self.failed(format!("get `{key}`: no answer within {OP_TIMEOUT:?}"))),
        }
    }

    /// Puts `value` at `key` if the key's revision is `expected` (`0`: the key has no message
    /// at all; a deleted key's revision is its delete marker's). `member`: the member header
    /// to set ([`Kind::Present`] or [`Kind::Absent`]), `None` for other keys.
    ///
    /// # Errors
    /// No answer within [`OP_TIMEOUT`], or an error answer other than a revision mismatch.
    pub(super) async fn cas_put(
        &self,
        key: &str,
        value: Bytes,
        member: Option<Kind>,
        expected: u64,
    ) -> Result<Cas, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        match member {
            Some(Kind::Absent) => headers.insert(MEMBER_HEADER, "absent"),
            Some(_) => headers.insert(MEMBER_HEADER, "present"),
            None => {}
        }
        self.publish(key, headers, value).await
    }

    /// Writes a delete marker at `key` if the key's revision is `expected`.
    ///
    /// # Errors
    /// As [`KvStore::cas_put`].
    pub(super) async fn cas_delete(&self, key: &str, expected: u64) -> Result<Cas, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        self.publish(key, headers, Bytes::new()).await
    }

    async fn publish(
        &self,
        key: &str,
        headers: HeaderMap,
        value: Bytes,
    ) -> Result<Cas, StoreError> {
        let subject = self.write_subject(key);
        let sent = timeout(OP_TIMEOUT, async {
            self.nats
                .js
                .publish_with_headers(subject, headers, value)
                .await?
                .await
        })
        .await;
        match sent {
            Ok(Ok(ack)) => {
                self.answered();
                Ok(Cas::Written(ack.sequence))
            }
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.answered();
                Ok(Cas::Mismatch)
            }
            Ok(Err(e)) => Err(self.failed(format!("write `{key}`: {e}"))),
            Err(_) => Err(self.failed(format!("write `{key}`: no ack within {OP_TIMEOUT:?}"))),
        }
    }

    /// The last message of every key matching `filter` (a KV key with `*`/`>` wildcards),
    /// deleted keys included, read with an ordered consumer until it has nothing pending. A
    /// consumer that delivers nothing for [`SCAN_STALL`] while the server counted more pending
    /// (seen once under load: the count named a message the consumer never delivered) is
    /// replaced by a new one, which reads every key again; the newest revision of a key wins.
    ///
    /// # Errors
    /// A consumer could not be created, or the scan did not catch up within [`SCAN_TIMEOUT`].
    pub(super) async fn scan(&self, filter: &str) -> Result<Vec<(String, Record)>, StoreError> {
        let deadline = Instant::now() + SCAN_TIMEOUT;
        // Keyed by key: an ordered consumer that recreates itself may deliver a key twice.
        let mut found: HashMap<String, Record> = HashMap::new();
        loop {
            match self.scan_once(filter, deadline, &mut found).await? {
                None => break,
                Some(pending) if Instant::now() >= deadline => {
                    return Err(self.failed(format!(
                        "scan `{filter}`: {} keys read, {pending} still pending after {SCAN_TIMEOUT:?}",
                        found.len()
                    )));
                }
                Some(pending) => {
                    tracing::debug!(filter, pending, "roster store scan stalled; scanning again");
                }
            }
        }
        self.answered();
        Ok(found.into_iter().collect())
    }

    /// One consumer's pass of [`KvStore::scan`] into `found`: `None` once it delivered all it
    /// counted, or how many it still counted when it stalled or `deadline` passed.
    async fn scan_once(
        &self,
        filter: &str,
        deadline: Instant,
        found: &mut HashMap<String, Record>,
    ) -> Result<Option<u64>, StoreError> {
        let config = push::OrderedConfig {
            deliver_subject: self.nats.js.client().new_inbox(),
            description: Some("hookbus roster scan".into()),
            filter_subject: self.read_subject(filter),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        };
        let consumer = match timeout(OP_TIMEOUT, self.nats.kv.stream.create_consumer(config)).await
        {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => return Err(self.failed(format!("scan `{filter}`: {e}"))),
            Err(_) => {
                return Err(self.failed(format!(
                    "scan `{filter}`: no consumer within {OP_TIMEOUT:?}"
                )));
            }
        };
        let mut pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(None);
        }
        let mut messages = match timeout(OP_TIMEOUT, consumer.messages()).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(e)) => return Err(self.failed(format!("scan `{filter}`: {e}"))),
            Err(_) => {
                return Err(self.failed(format!(
                    "scan `{filter}`: no subscription within {OP_TIMEOUT:?}"
                )));
            }
        };
        while pending > 0 {
            let stall = deadline.min(Instant::now() + SCAN_STALL);
            let message = match timeout_at(stall, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(self.failed(format!("scan `{filter}`: {e}"))),
                Ok(None) => {
                    return Err(self.failed(format!("scan `{filter}`: the consumer ended")));
                }
                Err(_) => return Ok(Some(pending)),
            };
            let info = message
                .info()
                .map_err(|e| self.failed(format!("scan `{filter}`: message metadata: {e}")))?;
            pending = info.pending;
            let rev = info.stream_sequence;
            let Some(key) = message.subject.strip_prefix(self.nats.kv.prefix.as_str()) else {
                continue;
            };
            let record = Record {
                rev,
                kind: kind(message.headers.as_ref()),
                value: message.payload.clone(),
            };
            if found.get(key).is_none_or(|seen| seen.rev < rev) {
                found.insert(key.to_owned(), record);
            }
        }
        Ok(None)
    }
}
