//! The broker check before a replay: what the spool is about to send again may be stored
//! already (a crash after the broker confirmed records and before the spool checkpoint said
//! so). Kafka has no broker-side dedup, so the partitions those records go to are read back
//! from a little before the oldest of them was written, and every `hookbus-event-id` found
//! there marks a record that is skipped. Bounded in time and bytes; what could not be read is
//! reported as unverified (published anyway: a repeat is better than a loss).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::message::{HEADER_EVENT_ID, Message};

/// How far before a record's spool append time the read-back starts: the producer stamps a
/// record when it hands it over (always after the append, on the same clock), so this only
/// covers a wall-clock step back or a topic stamped with the broker's clock (`LogAppendTime`).
pub const CLOCK_MARGIN_MS: u64 = 10_000;
/// Record bytes (payload, key, headers) read back at most, over all partitions.
pub const MAX_READ_BYTES: u64 = 64 << 20;

/// Where a record goes: its topic and the CRC-32 of its key (librdkafka's default
/// `consistent_random` partitioner takes `crc32(key) % partitions`); `None`: any partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    topic: String,
    key_hash: Option<u32>,
}

impl Place {
    pub fn of(message: &Message) -> Place {
        Place {
            topic: message.topic.clone(),
            key_hash: message
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(|k| crc32fast::hash(k.as_bytes())),
        }
    }
}

/// The records a replay is about to send again, by where they go: the append time of the
/// oldest, and how many.
#[derive(Debug, Default)]
pub struct Suspects {
    places: HashMap<Place, (u64, u64)>,
    records: u64,
}

impl Suspects {
    pub fn add(&mut self, message: &Message, appended_ms: u64) {
        let entry = self
            .places
            .entry(Place::of(message))
            .or_insert((appended_ms, 0));
        entry.0 = entry.0.min(appended_ms);
        entry.1 += 1;
        self.records += 1;
    }

    /// Another place `message` may have gone to (the overflow destination), read back too
    /// without counting a record.
    pub fn add_place(&mut self, message: &Message, appended_ms: u64) {
        let entry = self
            .places
            .entry(Place::of(message))
            .or_insert((appended_ms, 0));
        entry.0 = entry.0.min(appended_ms);
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// The append time of the oldest record.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.places.values().map(|(ms, _)| *ms).min()
    }

    /// The topics (subjects) the records go to.
    pub fn topics(&self) -> HashSet<String> {
        self.places.keys().map(|p| p.topic.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// What the read-back found: the ids stored, and where it could not look.
#[derive(Debug, Default)]
pub struct Verdict {
    found: HashSet<String>,
    unverified: HashSet<Place>,
    /// Everything is unverified (the broker could not be asked at all).
    blind: bool,
}

/// One replayed record, judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Its id is on the broker: skip it.
    Yes,
    /// Not there: send it.
    No,
    /// Where it goes could not be read in time: send it, and count it.
    Unknown,
}

impl Verdict {
    /// Everything was read: the ids in `found` are stored, the rest are not.
    pub fn read(found: HashSet<String>) -> Verdict {
        Verdict {
            found,
            ..Verdict::default()
        }
    }

    /// Nothing could be read: every record is [`Stored::Unknown`].
    pub fn blind() -> Verdict {
        Verdict {
            blind: true,
            ..Verdict::default()
        }
    }

    pub fn stored(&self, message: &Message) -> Stored {
        if message
            .msg_id
            .as_deref()
            .is_some_and(|id| self.found.contains(id))
        {
            Stored::Yes
        } else if self.blind || self.unverified.contains(&Place::of(message)) {
            Stored::Unknown
        } else {
            Stored::No
        }
    }

    /// Ids found on the broker.
    pub fn found(&self) -> usize {
        self.found.len()
    }
}

/// A consumer for the read-back: the sink's brokers and `kafka.properties` (security), no
/// group membership, nothing committed.
pub(super) fn consumer_config(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    for (key, value) in properties {
        client.set(key, value);
    }
    client
        .set("group.id", "hookbus-replay-check")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("client.id", "hookbus-replay-check");
    client
}

/// Reads back, within `within`, the partitions `suspects` go to from before the oldest of them
/// was written. `by_key`: the producer's partitioner is `consistent_random` (or `consistent`),
/// so a keyed record's partition is known; otherwise every partition of its topic is read.
/// Blocking.
pub(super) fn read_back(
    client: &ClientConfig,
    suspects: &Suspects,
    by_key: bool,
    within: Duration,
) -> Verdict {
    let deadline = Instant::now() + within;
    let left = || deadline.saturating_duration_since(Instant::now());
    let consumer: BaseConsumer = match client.create() {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::warn!(%error, sink = "kafka", "replay check: no consumer");
            return Verdict::blind();
        }
    };
    let metadata = match consumer.fetch_metadata(None, left()) {
        Ok(metadata) => metadata,
        Err(error) => {
            tracing::warn!(%error, sink = "kafka", "replay check: no metadata");
            return Verdict::blind();
        }
    };
    let counts: HashMap<&str, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    // Each place's partitions; a topic that does not exist holds nothing.
    let mut parts: HashMap<&Place, Vec<i32>> = HashMap::new();
    let mut since: HashMap<(String, i32), u64> = HashMap::new();
    for (place, (oldest, _)) in &suspects.places {
        let Some(&n) = counts.get(place.topic.as_str()).filter(|n| **n > 0) else {
            continue;
        };
        let list: Vec<i32> = match place.key_hash.filter(|_| by_key) {
            Some(hash) => vec![(hash % n as u32) as i32],
            None => (0..n).collect(),
        };
        for &p in &list {
            let at = since.entry((place.topic.clone(), p)).or_insert(*oldest);
            *at = (*at).min(*oldest);
        }
        parts.insert(place, list);
    }
    let mut verdict = Verdict::default();
    let unread = read_partitions(&consumer, &since, &mut verdict.found, left);
    for (place, list) in parts {
        if list
            .iter()
            .any(|p| unread.contains(&(place.topic.clone(), *p)))
        {
            verdict.unverified.insert(place.clone());
        }
    }
    verdict
}

/// Reads every partition of `since` from its start time to its end offset, collecting the
/// event ids into `found`; returns the partitions not read to the end (time or bytes ran out,
/// or the broker refused).
fn read_partitions(
    consumer: &BaseConsumer,
    since: &HashMap<(String, i32), u64>,
    found: &mut HashSet<String>,
    left: impl Fn() -> Duration,
) -> HashSet<(String, i32)> {
    let all = || since.keys().cloned().collect::<HashSet<_>>();
    let mut starts = TopicPartitionList::new();
    let mut ends = TopicPartitionList::new();
    for ((topic, p), ms) in since {
        let at = ms.saturating_sub(CLOCK_MARGIN_MS) as i64;
        let _ = starts.add_partition_offset(topic, *p, Offset::Offset(at));
        let _ = ends.add_partition_offset(topic, *p, Offset::End);
    }
    if since.is_empty() {
        return HashSet::new();
    }
    let (starts, ends) = match (
        consumer.offsets_for_times(starts, left()),
        consumer.offsets_for_times(ends, left()),
    ) {
        (Ok(starts), Ok(ends)) => (starts, ends),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, sink = "kafka", "replay check: offsets not available");
            return all();
        }
    };
    let mut unread = HashSet::new();
    // Partition → the last offset to read.
    let mut pending: HashMap<(String, i32), i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for start in starts.elements() {
        let key = (start.topic().to_owned(), start.partition());
        let end = ends.find_partition(start.topic(), start.partition());
        let (Some(end), true) = (end, start.error().is_ok()) else {
            unread.insert(key);
            continue;
        };
        if end.error().is_err() {
            unread.insert(key);
            continue;
        }
        let (Offset::Offset(from), Offset::Offset(to)) = (start.offset(), end.offset()) else {
            continue; // no record at or after the start time (End): nothing to read
        };
        if from < to {
            let _ =
                assignment.add_partition_offset(start.topic(), start.partition(), start.offset());
            pending.insert(key, to - 1);
        }
    }
    if pending.is_empty() {
        return unread;
    }
    if let Err(error) = consumer.assign(&assignment) {
        tracing::warn!(%error, sink = "kafka", "replay check: cannot assign");
        unread.extend(pending.into_keys());
        return unread;
    }
    poll_until_read(consumer, &mut pending, found, left);
    unread.extend(pending.into_keys());
    unread
}

/// Polls until every pending partition delivered its last offset, or time or bytes ran out.
/// Then what was fetched already is taken too: a broker whose latest offset names the first
/// record of its last batch (tansu) delivers the rest of that batch in the same fetch.
fn poll_until_read(
    consumer: &BaseConsumer,
    pending: &mut HashMap<(String, i32), i64>,
    found: &mut HashSet<String>,
    left: impl Fn() -> Duration,
) {
    let mut bytes = 0u64;
    let mut take = |m: &rdkafka::message::BorrowedMessage<'_>| {
        bytes += (m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64;
        if let Some(headers) = m.headers() {
            for header in headers.iter() {
                bytes += (header.key.len() + header.value.map_or(0, <[u8]>::len)) as u64;
                if header.key == HEADER_EVENT_ID
                    && let Some(id) = header.value.and_then(|v| std::str::from_utf8(v).ok())
                {
                    found.insert(id.to_owned());
                }
            }
        }
        bytes
    };
    while !pending.is_empty() && !left().is_zero() {
        match consumer.poll(left().min(Duration::from_millis(100))) {
            Some(Ok(m)) => {
                if take(&m) > MAX_READ_BYTES {
                    return;
                }
                let key = (m.topic().to_owned(), m.partition());
                if pending.get(&key).is_some_and(|last| m.offset() >= *last) {
                    pending.remove(&key);
                }
            }
            Some(Err(error)) => tracing::debug!(%error, sink = "kafka", "replay check: poll"),
            None => {}
        }
    }
    while !left().is_zero() {
        match consumer.poll(left().min(Duration::from_millis(50))) {
            Some(Ok(m)) => {
                if take(&m) > MAX_READ_BYTES {
                    return;
                }
            }
            Some(Err(_)) => {}
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's `consistent_random` partitioner is `crc32(key) % partitions` with the
    /// IEEE CRC-32 (check value 0xCBF43926); the Kafka tests read back from the partitions
    /// librdkafka itself chose.
    #[test]
    fn key_hash_is_ieee_crc32() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        let message = Message {
            topic: "t".to_owned(),
            key: Some("room.lobby".to_owned()),
            headers: Vec::new(),
            payload: bytes::Bytes::new(),
            msg_id: Some("a".to_owned()),
            is_event: true,
        };
        assert_eq!(
            Place::of(&message).key_hash,
            Some(crc32fast::hash(b"room.lobby"))
        );
        let unkeyed = Message {
            key: None,
            ..message.clone()
        };
        assert_eq!(Place::of(&unkeyed).key_hash, None);
        let mut suspects = Suspects::default();
        suspects.add(&message, 20);
        suspects.add(&message, 10);
        assert_eq!(suspects.places[&Place::of(&message)], (10, 2));
        let mut verdict = Verdict::default();
        verdict.found.insert("a".to_owned());
        assert_eq!(verdict.stored(&message), Stored::Yes);
        assert_eq!(verdict.stored(&unkeyed), Stored::Yes);
        let other = Message {
            msg_id: Some("b".to_owned()),
            ..message.clone()
        };
        assert_eq!(verdict.stored(&other), Stored::No);
        verdict.unverified.insert(Place::of(&other));
        assert_eq!(verdict.stored(&other), Stored::Unknown);
        assert_eq!(Verdict::blind().stored(&other), Stored::Unknown);
    }
}
