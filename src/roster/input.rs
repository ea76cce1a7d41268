//! What the roster reads: the events the bridge published, at least once, from the beginning
//! for a new consumer. NATS: a durable JetStream pull consumer on the bridge's stream,
//! filtered to the event subjects (dead letters have a stream of their own). Kafka: a
//! consumer group subscribed by regex to the topics the routing produces (so topics created
//! later are picked up), committed only after the batch is stored.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures::{FutureExt as _, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::KafkaConfig;

/// One input message: its bytes and when the bridge published it.
pub struct Delivery {
    pub payload: Vec<u8>,
    /// Unix ms the broker stamped (JetStream: stored; Kafka: the record's create time).
    pub published_ms: Option<i64>,
    token: Token,
}

enum Token {
    Nats(Box<jetstream::Message>),
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("input: {0}")]
pub struct InputError(pub String);

fn err(e: impl std::fmt::Display) -> InputError {
    InputError(e.to_string())
}

/// The configured input.
pub enum Input {
    Nats(Box<NatsInput>),
    Kafka(Box<KafkaInput>),
}

/// The Kafka side of [`Input`]: the consumer, and what tells a gap in what it delivers.
pub struct KafkaInput {
    consumer: StreamConsumer,
    offsets: Offsets,
}

/// Per partition, the offset its next record should have. A record past it (or the first
/// of a partition past the group's committed offset) skipped records; they were lost when
/// nobody committed past them (librdkafka resets an offset that retention deleted to the
/// earliest one left, silently). Skips another replica committed (a rebalance) are not.
#[derive(Debug, Default)]
struct Offsets {
    next: HashMap<(String, i32), i64>,
    gap: bool,
}

impl Offsets {
    /// Records that `offset` of `topic`/`partition` was delivered; `committed` gives the
    /// group's committed offset (`None`: none, or unknown) and is asked only on a skip.
    fn see(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        committed: impl FnOnce() -> Option<i64>,
    ) {
        let key = (topic.to_owned(), partition);
        let skipped = self.next.get(&key).is_none_or(|&next| offset > next);
        if skipped && committed().is_some_and(|committed| offset > committed) {
            self.gap = true;
        }
        self.next.insert(key, offset + 1);
    }
}

/// The JetStream side of [`Input`].
pub struct NatsInput {
    stream: jetstream::stream::Stream,
    consumer: jetstream::consumer::PullConsumer,
    name: String,
    subjects: Vec<String>,
    /// The stream's first sequence at the last gap reported (a gap is reported once).
    gap_at: u64,
    /// Messages still to deliver after the last one fetched.
    pending: Option<u64>,
    /// The consumer's message stream, once opened (`fetch_nats`).
    messages: Option<pull::Stream>,
    /// The greatest stream sequence handed out, and the one before the first jump over
    /// sequences since the last gap check (the check looks at it: the server's own delivered
    /// sequence is past the jump by then, its stream refilled in the background).
    last_seq: u64,
    jumped_from: Option<u64>,
}

impl Input {
    /// The durable pull consumer `name` on `stream` over `subjects` (created when missing,
    /// delivering everything the stream holds).
    ///
    /// # Errors
    /// The stream does not exist (start the bridge first) or the server refused the consumer.
    pub async fn nats(
        js: &jetstream::Context,
        stream: &str,
        name: &str,
        subjects: Vec<String>,
    ) -> Result<Input, InputError> {
        let stream = js
            .get_stream(stream)
            .await
            .map_err(|e| InputError(format!("stream {stream}: {e} (the bridge creates it)")))?;
        let consumer = create_consumer(&stream, name, &subjects).await?;
        Ok(Input::Nats(Box::new(NatsInput {
            stream,
            consumer,
            name: name.to_owned(),
            subjects,
            gap_at: 0,
            pending: None,
            messages: None,
            last_seq: 0,
            jumped_from: None,
        })))
    }

    /// A consumer in group `group` subscribed to `topic_regex`, from the earliest offset.
    ///
    /// # Errors
    /// librdkafka refused the configuration.
    pub fn kafka(kafka: &KafkaConfig, group: &str, topic_regex: &str) -> Result<Input, InputError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", group)
            .set("client.id", "hookbus-roster")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // New topics (channels seen for the first time) join the subscription soon.
            .set("topic.metadata.refresh.interval.ms", "2000")
            .set("enable.partition.eof", "false");
        for (key, value) in &kafka.properties {
            if key.starts_with("security.") || key.starts_with("ssl.") || key.starts_with("sasl.") {
                client.set(key, value);
            }
        }
        let consumer: StreamConsumer = client.create().map_err(err)?;
        consumer.subscribe(&[topic_regex]).map_err(err)?;
        Ok(Input::Kafka(Box::new(KafkaInput {
            consumer,
            offsets: Offsets::default(),
        })))
    }

    /// Up to `max` messages, waiting at most `wait` for the first.
    ///
    /// # Errors
    /// The broker could not be reached (retried by the caller).
    pub async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, InputError> {
        match self {
            Input::Nats(nats) => {
                let out = fetch_nats(nats, max, wait).await;
                if out.as_ref().is_ok_and(Vec::is_empty) {
                    nats.pending = Some(0);
                }
                out
            }
            Input::Kafka(kafka) => fetch_kafka(kafka, max, wait).await,
        }
    }

    /// Acknowledges `batch`: the roster has stored what it says.
    ///
    /// # Errors
    /// The acknowledgement could not be sent (the messages come again: harmless).
    pub async fn ack(&mut self, batch: Vec<Delivery>) -> Result<(), InputError> {
        match self {
            Input::Nats(_) => {
                for delivery in batch {
                    if let Token::Nats(message) = delivery.token {
                        message.ack().await.map_err(err)?;
                    }
                }
                Ok(())
            }
            Input::Kafka(kafka) => {
                let mut next: HashMap<(String, i32), i64> = HashMap::new();
                for delivery in batch {
                    if let Token::Kafka {
                        topic,
                        partition,
                        offset,
                    } = delivery.token
                    {
                        let at = next.entry((topic, partition)).or_insert(offset + 1);
                        *at = (*at).max(offset + 1);
                    }
                }
                if next.is_empty() {
                    return Ok(());
                }
                let mut list = TopicPartitionList::new();
                for ((topic, partition), offset) in next {
                    list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                        .map_err(err)?;
                }
                kafka.consumer.commit(&list, CommitMode::Async).map_err(err)
            }
        }
    }

    /// Messages not yet delivered to the roster (NATS: the consumer's pending count; Kafka:
    /// high watermark − position over the assignment).
    pub async fn backlog(&mut self) -> Option<u64> {
        match self {
            Input::Nats(nats) => match nats.pending {
                Some(pending) => Some(pending),
                None => nats.consumer.info().await.ok().map(|i| i.num_pending),
            },
            Input::Kafka(kafka) => {
                let consumer = &kafka.consumer;
                let assignment = consumer.assignment().ok()?;
                let position = consumer.position().ok()?;
                let mut total = 0u64;
                for element in assignment.elements() {
                    let (_, high) = consumer
                        .fetch_watermarks(
                            element.topic(),
                            element.partition(),
                            Duration::from_millis(500),
                        )
                        .ok()?;
                    let at = position
                        .find_partition(element.topic(), element.partition())
                        .and_then(|p| p.offset().to_raw())
                        .filter(|o| *o >= 0)
                        .unwrap_or(0);
                    total += u64::try_from(high - at).unwrap_or(0);
                }
                Some(total)
            }
        }
    }

    /// The backlog as of the last fetch, without asking the broker (NATS: the last message's
    /// pending count; Kafka: `None`).
    pub fn last_backlog(&self) -> Option<u64> {
        match self {
            Input::Nats(nats) => nats.pending,
            Input::Kafka(_) => None,
        }
    }

    /// Whether the input dropped events before they reached the roster (retention passed
    /// them while it was down or behind). NATS: the stream's first message is past the next
    /// one the consumer would deliver (or past a jump in what was handed out), reported once
    /// per first sequence. Kafka: a partition's records skipped offsets nobody committed past
    /// ([`Offsets`]), reported once per check.
    pub async fn gap(&mut self) -> bool {
        let nats = match self {
            Input::Nats(nats) => nats,
            Input::Kafka(kafka) => return std::mem::take(&mut kafka.offsets.gap),
        };
        let (Ok(first), Ok(delivered)) = (
            nats.stream.info().await.map(|i| i.state.first_sequence),
            nats.consumer
                .info()
                .await
                .map(|i| i.delivered.stream_sequence),
        ) else {
            return false;
        };
        let behind = nats
            .jumped_from
            .take()
            .map_or(delivered, |j| j.min(delivered));
        let gap = first > behind.saturating_add(1);
        if !gap || nats.gap_at == first {
            return false;
        }
        nats.gap_at = first;
        // A stream whose first messages expired before the roster ever read it is no gap of
        // the roster's (it starts from what is there).
        behind > 0
    }

    /// Starts over from the beginning (the store lost its data): NATS deletes and creates
    /// the durable consumer again; Kafka seeks every assigned partition to its start.
    ///
    /// # Errors
    /// The broker refused.
    pub async fn rewind(&mut self) -> Result<(), InputError> {
        match self {
            Input::Nats(nats) => {
                nats.messages = None;
                (nats.last_seq, nats.jumped_from) = (0, None);
                let _ = nats.stream.delete_consumer(&nats.name).await;
                nats.consumer = create_consumer(&nats.stream, &nats.name, &nats.subjects).await?;
                Ok(())
            }
            Input::Kafka(kafka) => {
                kafka.offsets = Offsets::default();
                let consumer = &kafka.consumer;
                let assignment = consumer.assignment().map_err(err)?;
                let mut list = TopicPartitionList::new();
                for element in assignment.elements() {
                    list.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Beginning,
                    )
                    .map_err(err)?;
                }
                consumer
                    .seek_partitions(list, Duration::from_secs(5))
                    .map_err(err)?;
                Ok(())
            }
        }
    }
}

async fn create_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    subjects: &[String],
) -> Result<jetstream::consumer::PullConsumer, InputError> {
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // A replica killed mid-batch: its messages go to another after this long.
        ack_wait: Duration::from_secs(15),
        max_ack_pending: 20_000,
        filter_subjects: subjects.to_vec(),
        ..Default::default()
    };
    stream
        .get_or_create_consumer(name, config)
        .await
        .map_err(|e| InputError(format!("consumer {name}: {e}")))
}

/// Up to `max` messages from the consumer's message stream, waiting at most `wait` for the
/// first, then taking only what arrived already. The stream keeps pull requests outstanding
/// (each lives `wait`; a new one when half of the last is delivered), so messages arrive
/// while the roster applies the previous batches: one request per batch cost a round trip and the server's
/// delivery of the whole batch each time. A stream that failed or ended is opened again on
/// the next fetch (what it had not delivered comes again after `ack_wait`).
async fn fetch_nats(
    nats: &mut NatsInput,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, InputError> {
    let messages = match &mut nats.messages {
        Some(messages) => messages,
        None => nats.messages.insert(
            nats.consumer
                .stream()
                .max_messages_per_batch(max.clamp(1, 1000))
                // Short-lived requests, as the fetches were: a roster that stops (paused, or
                // gone without a goodbye) leaves no request that takes new messages for long.
                .expires(wait.max(Duration::from_millis(200)))
                .heartbeat(wait.max(Duration::from_millis(200)) / 2)
                .messages()
                .await
                .map_err(err)?,
        ),
    };
    let mut out = Vec::new();
    let first = match tokio::time::timeout(wait, messages.next()).await {
        Err(_) => return Ok(out),
        Ok(first) => first,
    };
    let mut next = Some(first);
    while let Some(item) = next {
        match item {
            Some(Ok(message)) => out.push(delivery(nats, message)),
            Some(Err(e)) => {
                nats.messages = None;
                return if out.is_empty() { Err(err(e)) } else { Ok(out) };
            }
            None => {
                nats.messages = None;
                return if out.is_empty() {
                    Err(InputError("the consumer's message stream ended".to_owned()))
                } else {
                    Ok(out)
                };
            }
        }
        if out.len() >= max {
            break;
        }
        let Some(messages) = nats.messages.as_mut() else {
            break;
        };
        next = messages.next().now_or_never();
    }
    Ok(out)
}

fn delivery(nats: &mut NatsInput, message: jetstream::Message) -> Delivery {
    let info = message.info().ok();
    nats.pending = info.as_ref().map(|i| i.pending);
    if let Some(seq) = info.as_ref().map(|i| i.stream_sequence) {
        if nats.last_seq > 0 && seq > nats.last_seq + 1 && nats.jumped_from.is_none() {
            nats.jumped_from = Some(nats.last_seq);
        }
        nats.last_seq = nats.last_seq.max(seq);
    }
    let published_ms =
        info.and_then(|i| i64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).ok());
    Delivery {
        payload: message.payload.to_vec(),
        published_ms,
        token: Token::Nats(Box::new(message)),
    }
}

async fn fetch_kafka(
    kafka: &mut KafkaInput,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, InputError> {
    let KafkaInput { consumer, offsets } = kafka;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < max {
        // After the first message, take only what is already there.
        let until = if out.is_empty() {
            deadline
        } else {
            tokio::time::Instant::now() + Duration::from_millis(5)
        };
        let message = match tokio::time::timeout_at(until, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                if out.is_empty() {
                    return Err(err(e));
                }
                break;
            }
            Ok(Ok(message)) => message,
        };
        let (topic, partition) = (message.topic(), message.partition());
        offsets.see(topic, partition, message.offset(), || {
            committed(consumer, topic, partition)
        });
        out.push(Delivery {
            payload: message.payload().unwrap_or_default().to_vec(),
            published_ms: message.timestamp().to_millis(),
            token: Token::Kafka {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
        });
    }
    Ok(out)
}

/// The group's committed offset of `topic`/`partition`; `None` when it has none or the
/// coordinator did not answer within 2 s (rare: asked only when a partition's offsets skip).
fn committed(consumer: &StreamConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(list, Duration::from_secs(2))
        .ok()?;
    match got.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Offsets;

    #[test]
    fn contiguous_offsets_and_a_new_group_are_no_gap() {
        let mut offsets = Offsets::default();
        let mut asked = 0;
        for offset in 0..5 {
            offsets.see("t", 0, offset, || {
                asked += 1;
                None
            });
        }
        assert!(!offsets.gap);
        assert_eq!(
            asked, 1,
            "the committed offset is asked for a new partition only"
        );
    }

    #[test]
    fn records_skipped_past_the_committed_offset_are_a_gap() {
        // Down past retention: the first record after the restart is past what was committed.
        let mut offsets = Offsets::default();
        offsets.see("t", 0, 50, || Some(10));
        assert!(offsets.gap);
        // Behind while running: the next record skips ahead, nobody committed past it.
        let mut offsets = Offsets::default();
        offsets.see("t", 1, 10, || Some(10));
        offsets.see("t", 1, 11, || unreachable!("contiguous"));
        assert!(!offsets.gap);
        offsets.see("t", 1, 30, || Some(12));
        assert!(offsets.gap);
    }

    #[test]
    fn a_skip_another_replica_committed_or_a_step_back_is_no_gap() {
        let mut offsets = Offsets::default();
        offsets.see("t", 0, 10, || Some(10));
        // The partition went to another replica, which committed up to 200, and came back.
        offsets.see("t", 0, 200, || Some(200));
        // A redelivery from an older committed offset after a rebalance.
        offsets.see("t", 0, 150, || unreachable!("not a skip"));
        offsets.see("t", 0, 151, || unreachable!("contiguous"));
        assert!(!offsets.gap);
        // The coordinator did not answer: no gap claimed.
        offsets.see("t", 0, 400, || None);
        assert!(!offsets.gap);
    }
}
