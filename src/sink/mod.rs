//! The broker side: one producer per sink kind behind `enum Sink`. Only this folder sees
//! rdkafka or async-nats. A publish has two steps: `send` hands the message to the client in
//! call order (so per-channel order holds), and the returned [`Confirm`] resolves when the broker
//! has confirmed it. Each sink classifies its client's errors in one function.

mod kafka;
mod nats;
mod stdout;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use kafka::KafkaSink;
pub use nats::NatsSink;
pub use stdout::StdoutSink;

use crate::config::{ConfigError, KafkaConfig, NatsConfig, SinkConfig, SinkKind};
use crate::route::Router;

/// Header names of the normalized-event message.
pub const HEADER_EVENT_ID: &str = "hookbus-event-id";
pub const HEADER_ACTION: &str = "hookbus-action";
pub const HEADER_CHANNEL: &str = "hookbus-channel";
pub const HEADER_SUB_KEY: &str = "hookbus-sub-key";
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// On dead letters: why the body was rejected.
pub const HEADER_DEAD_LETTER_REASON: &str = "hookbus-dead-letter-reason";
/// On dead letters: the human-readable error that was sent to the client.
pub const HEADER_DEAD_LETTER_ERROR: &str = "hookbus-dead-letter-error";
/// On dead-lettered batch items: the item's position in the batch's `data` array.
pub const HEADER_DEAD_LETTER_INDEX: &str = "hookbus-dead-letter-index";

/// CloudEvents 1.0 attributes as binary-mode headers: the Kafka protocol binding's `ce_`
/// prefix, and the `ce-` prefix of the NATS (and HTTP) binding. `datacontenttype` travels as
/// `content-type` in both.
pub mod cloudevents {
    /// specversion, id, source, type, time, subject, dataschema.
    pub const KAFKA: [&str; 7] = [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "ce_dataschema",
    ];
    pub const NATS: [&str; 7] = [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-dataschema",
    ];
}

/// Every header name a message can carry, in a fixed order: spool records store a header as
/// its index here (append only, never reorder).
pub const HEADER_NAMES: [&str; 22] = [
    HEADER_EVENT_ID,
    HEADER_ACTION,
    HEADER_CHANNEL,
    HEADER_SUB_KEY,
    HEADER_CONTENT_TYPE,
    HEADER_DEAD_LETTER_REASON,
    HEADER_DEAD_LETTER_ERROR,
    HEADER_DEAD_LETTER_INDEX,
    cloudevents::KAFKA[0],
    cloudevents::KAFKA[1],
    cloudevents::KAFKA[2],
    cloudevents::KAFKA[3],
    cloudevents::KAFKA[4],
    cloudevents::KAFKA[5],
    cloudevents::KAFKA[6],
    cloudevents::NATS[0],
    cloudevents::NATS[1],
    cloudevents::NATS[2],
    cloudevents::NATS[3],
    cloudevents::NATS[4],
    cloudevents::NATS[5],
    cloudevents::NATS[6],
];

/// The index of `name` in [`HEADER_NAMES`] (by pointer first: callers pass the constants).
pub fn header_index(name: &str) -> Option<usize> {
    HEADER_NAMES
        .iter()
        .position(|n| std::ptr::eq(*n, name))
        .or_else(|| HEADER_NAMES.iter().position(|n| *n == name))
}

/// One message for the broker, already routed.
#[derive(Debug, Clone)]
pub struct Message {
    /// Kafka topic / NATS subject.
    pub topic: String,
    /// Kafka record key (the raw channel name); NATS has none.
    pub key: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Bytes,
    /// JetStream `Nats-Msg-Id` (the event id); `None` for dead letters.
    pub msg_id: Option<String>,
    /// The payload is the normalized-event JSON (not a raw dead-letter body).
    pub is_event: bool,
}

/// The broker's answer for one confirmed message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ack {
    /// JetStream recognized the `Nats-Msg-Id` as already stored (another replica or a replay).
    pub duplicate: bool,
}

/// Why a publish failed, in the classes the publisher branches on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The broker is unreachable or overloaded; the same message may succeed later.
    #[error("broker unavailable: {0}")]
    Retriable(String),
    /// No confirmation within the sink timeout; the message may or may not be stored.
    #[error("no broker confirmation within {0:?}")]
    Timeout(Duration),
    /// The broker refused this message; retrying it will not help.
    #[error("rejected by the broker: {0}")]
    Permanent(String),
    /// Larger than the broker accepts.
    #[error("message of {size} bytes exceeds the broker limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

impl SinkError {
    /// The `kind` label of `hookbus_publish_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Retriable(_) => "retriable",
            SinkError::Timeout(_) => "timeout",
            SinkError::Permanent(_) => "permanent",
            SinkError::TooLarge { .. } => "too_large",
        }
    }

    /// Whether the same message should be tried again.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable(_) | SinkError::Timeout(_))
    }
}

/// Resolves when the broker has confirmed (or refused) one sent message.
pub type Confirm = Pin<Box<dyn Future<Output = Result<Ack, SinkError>> + Send>>;

/// What `--check` adds to the config file's own validation for the configured sink, without
/// contacting a broker: the Kafka client is built exactly as the sink builds it (librdkafka
/// validates every property and the TLS files it names), NATS URLs parse, and every TLS, NKey
/// and credentials file exists and parses.
///
/// # Errors
/// The first problem, naming its key.
pub fn check(sink: &SinkConfig, nats: &NatsConfig, kafka: &KafkaConfig) -> Result<(), ConfigError> {
    match sink.kind {
        SinkKind::Nats => {
            nats::server_addrs(nats)?;
            nats::options(nats).map(drop)
        }
        SinkKind::Kafka => kafka::check(kafka),
        SinkKind::Stdout => Ok(()),
    }
}

/// The configured producer.
pub enum Sink {
    Nats(Box<NatsSink>),
    Kafka(KafkaSink),
    Stdout(StdoutSink),
}

impl Sink {
    /// Builds the client. Does not wait for the broker: a broker that is down at start only
    /// delays publishing (the spool keeps accepting).
    ///
    /// # Errors
    /// Invalid client configuration (e.g. a bad `kafka.properties` entry).
    pub async fn connect(
        sink: &SinkConfig,
        nats: &NatsConfig,
        kafka: &KafkaConfig,
        router: &Router,
    ) -> anyhow::Result<Sink> {
        Ok(match sink.kind {
            SinkKind::Nats => Sink::Nats(Box::new(
                NatsSink::connect(
                    nats,
                    sink,
                    router.stream_subjects(),
                    router.dead_letter().to_owned(),
                )
                .await?,
            )),
            SinkKind::Kafka => {
                let exempt = router
                    .overflow_names()
                    .iter()
                    .cloned()
                    .chain([router.dead_letter().to_owned()])
                    .collect();
                Sink::Kafka(KafkaSink::new(kafka, sink, exempt)?)
            }
            SinkKind::Stdout => Sink::Stdout(StdoutSink::new()),
        })
    }

    /// The `sink` label value.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Nats(_) => "nats",
            Sink::Kafka(_) => "kafka",
            Sink::Stdout(_) => "stdout",
        }
    }

    /// One-time broker-side setup (JetStream stream, Kafka metadata), retried by the caller.
    /// Returns warnings about the broker's configuration worth an operator's attention.
    ///
    /// # Errors
    /// `Retriable` while the broker is unreachable.
    pub async fn prepare(&self) -> Result<Vec<String>, SinkError> {
        match self {
            Sink::Nats(s) => s.prepare().await,
            Sink::Kafka(s) => s.prepare().await,
            Sink::Stdout(_) => Ok(Vec::new()),
        }
    }

    /// Whether a message may go to `topic`; `false` once `kafka.max_topics` topics beyond
    /// those existing at start are in use (the caller sends it to the overflow destination).
    pub fn admit(&self, topic: &str) -> bool {
        match self {
            Sink::Kafka(s) => s.admit(topic),
            Sink::Nats(_) | Sink::Stdout(_) => true,
        }
    }

    /// What must happen before a batch's messages are sent, as a future each of them awaits
    /// (Kafka: one CreateTopics request for its new topics); `None` when nothing must.
    pub fn prepare_batch<'a>(
        &self,
        topics: impl Iterator<Item = &'a str>,
    ) -> Option<BoxFuture<'static, ()>> {
        match self {
            Sink::Kafka(s) => s.prepare_batch(topics),
            Sink::Nats(_) | Sink::Stdout(_) => None,
        }
    }

    /// An error the client cannot recover from (a fatal Kafka producer error): the process
    /// must restart.
    pub fn fatal(&self) -> Option<String> {
        match self {
            Sink::Kafka(s) => s.fatal(),
            Sink::Nats(_) | Sink::Stdout(_) => None,
        }
    }

    /// Hands `message` to the client, waiting for room in the client's queue, and returns the
    /// future of its confirmation. Messages handed in sequence reach the broker in that order.
    ///
    /// # Errors
    /// The client refused the message (too large, not connected).
    pub async fn send(&self, message: &Message) -> Result<Confirm, SinkError> {
        match self {
            Sink::Nats(s) => s.send(message).await,
            Sink::Kafka(s) => s.send(message).await,
            Sink::Stdout(s) => s.send(message),
        }
    }

    /// True while the client is connected to the broker.
    pub fn is_up(&self) -> bool {
        match self {
            Sink::Nats(s) => s.is_up(),
            Sink::Kafka(s) => s.is_up(),
            Sink::Stdout(_) => true,
        }
    }

    /// Largest message the broker accepts, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        match self {
            Sink::Nats(s) => s.max_message_bytes(),
            Sink::Kafka(s) => s.max_message_bytes(),
            Sink::Stdout(_) => usize::MAX,
        }
    }

    /// Waits (up to `timeout`) until the client has written out everything sent.
    pub async fn flush(&self, timeout: Duration) {
        match self {
            Sink::Nats(s) => s.flush(timeout).await,
            Sink::Kafka(s) => s.flush(timeout).await,
            Sink::Stdout(s) => s.flush(timeout).await,
        }
    }
}
