//! Kafka sink: an rdkafka `FutureProducer` with `acks=all` and idempotence, key = raw channel,
//! headers of DESIGN §6, and a bounded delivery timeout. Missing topics are created through the
//! admin API on first use (`kafka.create_topics`) and remembered.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{Ack, Confirm, Message, SinkError};
use crate::config::{KafkaConfig, SinkConfig};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE: usize = 1_000_000;

/// Tracks broker reachability from librdkafka's error callback.
#[derive(Clone)]
pub struct UpContext {
    up: Arc<AtomicBool>,
}

impl ClientContext for UpContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.up.store(false, Ordering::Relaxed);
        }
        tracing::warn!(%error, reason, sink = "kafka", "client error");
    }
}

pub struct KafkaSink {
    producer: FutureProducer<UpContext>,
    admin: AdminClient<UpContext>,
    up: Arc<AtomicBool>,
    /// Topics known to exist. A std Mutex, held only for a lookup or insert, never across await.
    topics: Mutex<HashSet<String>>,
    create_topics: bool,
    partitions: i32,
    replication_factor: i32,
    timeout: Duration,
    max_message: usize,
}

impl KafkaSink {
    /// # Errors
    /// A `kafka.properties` entry librdkafka rejects.
    pub fn new(config: &KafkaConfig, sink: &SinkConfig) -> anyhow::Result<KafkaSink> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", sink.timeout.as_millis().to_string())
            .set("linger.ms", "2")
            .set("client.id", "hookbus");
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        let max_message = config
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE);
        let up = Arc::new(AtomicBool::new(false));
        let context = UpContext { up: up.clone() };
        let producer = client
            .create_with_context(context.clone())
            .map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?;
        let admin = client
            .create_with_context(context)
            .map_err(|e| anyhow::anyhow!("kafka admin client: {e}"))?;
        Ok(KafkaSink {
            producer,
            admin,
            up,
            topics: Mutex::new(HashSet::new()),
            create_topics: config.create_topics,
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            timeout: sink.timeout,
            max_message,
        })
    }

    /// Fetches cluster metadata once, which proves the brokers are reachable.
    pub async fn prepare(&self) -> Result<Vec<String>, SinkError> {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let result =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
                .await
                .map_err(|e| SinkError::Retriable(e.to_string()))?;
        match result {
            Ok(metadata) => {
                self.up.store(true, Ordering::Relaxed);
                tracing::info!(
                    brokers = metadata.brokers().len(),
                    sink = "kafka",
                    "connected"
                );
                Ok(Vec::new())
            }
            Err(e) => Err(classify(&e)),
        }
    }

    /// Creates the topics among `topics` not known to exist, in one CreateTopics request, so a
    /// burst of new channels costs one round trip per batch rather than one per channel.
    /// Topics whose creation failed stay unknown (their `send` retries the creation).
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), SinkError> {
        if !self.create_topics {
            return Ok(());
        }
        let mut missing: Vec<&str> = topics.iter().copied().filter(|t| !self.known(t)).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|topic| {
                NewTopic::new(
                    topic,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(|e| classify(&e))?;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = %name, sink = "kafka", "topic ready");
                    self.topics
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name);
                }
                Err((name, code)) => {
                    let error = KafkaError::AdminOp(code);
                    tracing::warn!(topic = %name, %error, sink = "kafka", "topic creation failed");
                    first_error.get_or_insert(classify(&error));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn known(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    pub async fn send(&self, message: &Message) -> Result<Confirm, SinkError> {
        if message.payload.len() > self.max_message {
            return Err(SinkError::TooLarge {
                size: message.payload.len(),
                limit: self.max_message,
            });
        }
        self.ensure_topics(&[message.topic.as_str()]).await?;
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut record = FutureRecord::to(&message.topic)
            .payload(message.payload.as_ref())
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_bytes());
        }
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(SinkError::Timeout(self.timeout));
                    }
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(classify(&error)),
            }
        };
        let up = self.up.clone();
        let timeout = self.timeout;
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => {
                    up.store(true, Ordering::Relaxed);
                    Ok(Ack::default())
                }
                Ok(Err((error, _))) => Err(match classify(&error) {
                    SinkError::Retriable(_)
                        if error.rdkafka_error_code()
                            == Some(RDKafkaErrorCode::MessageTimedOut) =>
                    {
                        SinkError::Timeout(timeout)
                    }
                    other => other,
                }),
                Err(_canceled) => Err(SinkError::Retriable("producer shut down".to_owned())),
            }
        }))
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message
    }

    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let result = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, sink = "kafka", "flush did not finish");
        }
    }
}

/// The one place Kafka errors become [`SinkError`] classes.
fn classify(error: &KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    let text = error.to_string();
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => SinkError::TooLarge {
            size: 0,
            limit: DEFAULT_MAX_MESSAGE,
        },
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic
            | C::InvalidReplicationFactor
            | C::InvalidPartitions
            | C::PolicyViolation
            | C::UnsupportedVersion
            | C::InvalidConfig
            | C::InvalidRecord,
        ) => SinkError::Permanent(text),
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut) => {
            SinkError::Retriable(text)
        }
        _ => SinkError::Retriable(text),
    }
}
