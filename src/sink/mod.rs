//! The broker side: one producer per sink kind behind `enum Sink`. Only this folder sees
//! rdkafka or async-nats. A publish has two steps: `send` hands the message to the client in
//! call order (so per-channel order holds), and the returned [`Confirm`] resolves when the broker
//! has confirmed it. Each sink classifies its client's errors in one function.

mod dead_letters;
mod jetstream;
mod kafka;
mod nats;
mod nats_readback;
mod readback;
mod reports;
mod stdout;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;

pub use dead_letters::{StoredDeadLetter, read_dead_letters};
pub use kafka::KafkaSink;
pub use nats::{NatsSink, client as nats_client};
pub use readback::{Stored, Suspects, Verdict};
pub use stdout::StdoutSink;

use crate::config::{ConfigError, KafkaConfig, NatsConfig, SinkConfig, SinkKind};
use crate::message::Message;
use crate::route::Router;

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

/// Settings that are valid but have no effect, one warning each naming the key: `--check`
/// prints them (exit 0) and a start logs them. Kafka: `ssl.*` / `sasl.*` properties that
/// `security.protocol` does not use.
pub fn warnings(sink: &SinkConfig, kafka: &KafkaConfig) -> Vec<String> {
    match sink.kind {
        SinkKind::Kafka => kafka::unused_security(kafka),
        SinkKind::Nats | SinkKind::Stdout => Vec::new(),
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

    /// Whether records a replay sends again may have to be checked against the broker first:
    /// Kafka (no broker-side dedup), and JetStream for records older than its duplicate
    /// window (its `read_back` decides, from the stream's window).
    pub fn checks_replay(&self) -> bool {
        matches!(self, Sink::Kafka(_) | Sink::Nats(_))
    }

    /// How long after its sender died a produce request may still be stored (Kafka: the
    /// producer's `request.timeout.ms`); zero for the others.
    pub fn replay_settle(&self) -> Duration {
        match self {
            Sink::Kafka(s) => s.settle(),
            Sink::Nats(_) | Sink::Stdout(_) => Duration::ZERO,
        }
    }

    /// Waits, at most `within`, until the client holds no unconfirmed message. Returns whether
    /// it got there.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        match self {
            Sink::Kafka(s) => s.wait_idle(within).await,
            Sink::Nats(_) | Sink::Stdout(_) => true,
        }
    }

    /// Which of `suspects` the broker holds already, read back within `within`; every record
    /// is [`Stored::No`] for a sink that needs no check.
    pub async fn read_back(&self, suspects: Suspects, within: Duration) -> Verdict {
        match self {
            Sink::Kafka(s) => s.read_back(suspects, within).await,
            Sink::Nats(s) => s.read_back(suspects, within).await,
            Sink::Stdout(_) => Verdict::default(),
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
