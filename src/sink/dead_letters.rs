//! Reading the dead-letter destination back (`hookbus dead-letters`): every dead letter the
//! broker holds at the start of the read, oldest first, handed over one at a time so that a
//! large destination never sits in memory whole.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::SinkError;
use crate::config::{KafkaConfig, NatsConfig, SinkConfig, SinkKind};

/// One dead letter as the broker holds it.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    /// When it was written (Kafka: the record timestamp; NATS: the stream's store time).
    pub time_ms: u64,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// Where it is: `topic/partition/offset` (Kafka) or `stream/sequence` (NATS).
    pub reference: String,
}

/// Sends every dead letter on `topic` (the dead-letter destination) to `out`, oldest first
/// (per partition on Kafka); stdout has none. Gives up after `within`.
///
/// # Errors
/// `Retriable` when the broker cannot be read (unreachable, or not to the end in time).
pub async fn read_dead_letters(
    sink: &SinkConfig,
    nats: &NatsConfig,
    kafka: &KafkaConfig,
    topic: &str,
    within: Duration,
    out: mpsc::Sender<StoredDeadLetter>,
) -> Result<(), SinkError> {
    match sink.kind {
        SinkKind::Stdout => Ok(()),
        SinkKind::Nats => read_nats(nats, topic, within, out).await,
        SinkKind::Kafka => {
            let client = super::readback::consumer_config(&kafka.brokers, &kafka.properties);
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || read_kafka(&client, &topic, within, &out))
                .await
                .map_err(|e| SinkError::Retriable(e.to_string()))?
        }
    }
}

/// The stream that takes `subject`, read message by message from its first sequence to the
/// last one at the start.
async fn read_nats(
    config: &NatsConfig,
    subject: &str,
    within: Duration,
    out: mpsc::Sender<StoredDeadLetter>,
) -> Result<(), SinkError> {
    let unreachable = |e: &dyn std::fmt::Display| SinkError::Retriable(e.to_string());
    let read = async {
        let client = super::nats::client(config, "hookbus-dead-letters")
            .await
            .map_err(|e| unreachable(&e))?;
        let js = async_nats::jetstream::new(client);
        let Ok(name) = js.stream_by_subject(subject.to_owned()).await else {
            // No stream takes the subject: nothing was ever dead-lettered there.
            return Ok(());
        };
        let mut stream = js.get_stream(&name).await.map_err(|e| unreachable(&e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| unreachable(&e))?
            .state
            .last_sequence;
        let mut next = 1;
        while next <= last {
            let message = match stream.get_first_raw_message_by_subject(subject, next).await {
                Ok(message) => message,
                Err(error)
                    if matches!(
                        error.kind(),
                        async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    break;
                }
                Err(error) => return Err(unreachable(&error)),
            };
            if message.sequence > last {
                break;
            }
            next = message.sequence + 1;
            let headers = message
                .headers
                .iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.to_string(), v.as_str().to_owned()))
                })
                .collect();
            let time_ms = u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000);
            let letter = StoredDeadLetter {
                time_ms: time_ms.unwrap_or(0),
                headers,
                payload: message.payload,
                reference: format!("{name}/{}", message.sequence),
            };
            if out.send(letter).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(SinkError::Timeout(within)))
}

/// Every partition of `topic` from its earliest offset to its end at the start. Blocking.
fn read_kafka(
    client: &rdkafka::ClientConfig,
    topic: &str,
    within: Duration,
    out: &mpsc::Sender<StoredDeadLetter>,
) -> Result<(), SinkError> {
    let deadline = std::time::Instant::now() + within;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let unreachable = |e: &dyn std::fmt::Display| SinkError::Retriable(e.to_string());
    let consumer: BaseConsumer = client.create().map_err(|e| unreachable(&e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), left())
        .map_err(|e| unreachable(&e))?;
    let Some(partitions) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
    else {
        // The topic does not exist: nothing was ever dead-lettered.
        return Ok(());
    };
    let mut assignment = TopicPartitionList::new();
    // Partition → the last offset to read.
    let mut pending = std::collections::HashMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, left())
            .map_err(|e| unreachable(&e))?;
        if high > low {
            let _ = assignment.add_partition_offset(topic, partition, Offset::Offset(low));
            pending.insert(partition, high - 1);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment).map_err(|e| unreachable(&e))?;
    // Past the end offsets, what is already fetched is taken too, until the partitions are
    // quiet: a broker's end offset can lag the records it serves (tansu).
    let mut quiet_since: Option<std::time::Instant> = None;
    loop {
        if left().is_zero() {
            return Err(SinkError::Timeout(within));
        }
        if quiet_since.is_some_and(|t| t.elapsed() >= Duration::from_millis(500)) {
            return Ok(());
        }
        let message = match consumer.poll(left().min(Duration::from_millis(100))) {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(unreachable(&error)),
            None => {
                if pending.is_empty() && quiet_since.is_none() {
                    quiet_since = Some(std::time::Instant::now());
                }
                continue;
            }
        };
        quiet_since = None;
        if pending
            .get(&message.partition())
            .is_some_and(|last| message.offset() >= *last)
        {
            pending.remove(&message.partition());
        }
        let letter = letter_of(&message, topic);
        if out.blocking_send(letter).is_err() {
            return Ok(());
        }
    }
}

/// One consumed dead-letter record as [`StoredDeadLetter`].
fn letter_of(message: &rdkafka::message::BorrowedMessage<'_>, topic: &str) -> StoredDeadLetter {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    StoredDeadLetter {
        time_ms: message
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0),
        headers,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        reference: format!("{topic}/{}/{}", message.partition(), message.offset()),
    }
}
