//! Kafka sink: an rdkafka `BaseProducer` with `acks=all` and idempotence, key = raw channel,
//! the contract's headers. A message handed to librdkafka stays there until delivered or
//! refused for good (no local timeout, so nothing is ever re-sent as a new message: partition
//! order and exactly-once hold). Missing topics are created through the admin API before the
//! batch that needs them (`kafka.create_topics`), within `kafka.max_topics`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::oneshot;

use super::readback::{self, Suspects, Verdict};
use super::reports::{ReportQueue, serve_reports};
use super::{Ack, Confirm, SinkError};
use crate::config::{ConfigError, KafkaConfig, SinkConfig};
use crate::message::Message;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE: usize = 1_000_000;
/// librdkafka's default `request.timeout.ms`.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Tracks broker reachability and fatal producer errors from librdkafka's error callback.
#[derive(Clone)]
pub struct UpContext {
    up: Arc<AtomicBool>,
    fatal: Arc<Mutex<Option<String>>>,
}

impl ClientContext for UpContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.up.store(false, Ordering::Relaxed),
            Some(RDKafkaErrorCode::Fatal) => {
                *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
            }
            _ => {}
        }
        tracing::warn!(%error, reason, sink = "kafka", "client error");
    }
}

/// What a delivery report says of one message: its partition and offset, or the error.
type Delivered = Result<(i32, i64), KafkaError>;

impl ProducerContext for UpContext {
    type DeliveryOpaque = Box<oneshot::Sender<Delivered>>;

    /// Runs on the runtime, inside [`serve_reports`]: settles the message's confirmation.
    fn delivery(&self, result: &DeliveryResult<'_>, settle: Self::DeliveryOpaque) {
        let delivered = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        // The confirmation future may be gone (its request left); nothing to settle then.
        let _ = settle.send(delivered);
    }
}

/// The librdkafka configuration of the sink: idempotent producer with `acks=all`, messages
/// kept until delivered (`message.timeout.ms = 0`: a message handed to librdkafka is never
/// timed out and re-sent as a new one), then every `kafka.properties` entry.
pub(super) fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "2")
        .set("client.id", "hookbus");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Builds the client exactly as [`KafkaSink::new`] does, without a broker address, so librdkafka
/// validates every property and their combination (security protocol, SASL mechanism, TLS
/// files) without contacting anyone.
///
/// # Errors
/// What librdkafka refuses, naming the property (or `kafka.properties` when it names none).
pub(super) fn check(config: &KafkaConfig) -> Result<(), ConfigError> {
    let property = |key: &str| config.properties.get(key).map(String::as_str);
    let invalid = |key: &str, message: String| ConfigError::InvalidAt {
        key: format!("kafka.properties.\"{key}\""),
        message,
    };
    let protocol = property("security.protocol").unwrap_or("plaintext");
    let mechanism = property("sasl.mechanisms").or(property("sasl.mechanism"));
    if protocol.to_ascii_lowercase().starts_with("sasl") && mechanism.is_none() {
        return Err(invalid(
            "sasl.mechanisms",
            format!(
                "security.protocol {protocol} needs a SASL mechanism: PLAIN, SCRAM-SHA-256, \
                 SCRAM-SHA-512 or OAUTHBEARER (GSSAPI/Kerberos is not built in)"
            ),
        ));
    }
    let mut client = client_config(config);
    client.set("bootstrap.servers", "");
    if property("sasl.oauthbearer.method").is_some_and(|m| m.eq_ignore_ascii_case("oidc")) {
        // librdkafka fetches a token as soon as the client exists: check the URL here and
        // point the throw-away client at a port nothing listens on.
        let url = property("sasl.oauthbearer.token.endpoint.url").unwrap_or("");
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                "sasl.oauthbearer.token.endpoint.url",
                format!("{url:?} is not an http(s) URL of the OIDC token endpoint"),
            ));
        }
        client.set("sasl.oauthbearer.token.endpoint.url", "http://127.0.0.1:1/");
    }
    client
        .create::<rdkafka::producer::BaseProducer>()
        .map(drop)
        .map_err(|error| {
            let text = error.to_string();
            let key = config
                .properties
                .keys()
                .filter(|k| text.contains(k.as_str()))
                .max_by_key(|k| k.len())
                .map_or_else(
                    || "kafka.properties".to_owned(),
                    |k| format!("kafka.properties.\"{k}\""),
                );
            ConfigError::InvalidAt { key, message: text }
        })
}

/// `ssl.*` and `sasl.*` properties that `security.protocol` leaves unused (librdkafka ignores
/// them silently: a CA path under PLAINTEXT, say, so a typo in a config about to switch to SSL
/// would pass), one warning each, naming the key.
pub(super) fn unused_security(config: &KafkaConfig) -> Vec<String> {
    let protocol = config
        .properties
        .get("security.protocol")
        .map_or("plaintext", String::as_str)
        .to_ascii_lowercase();
    let uses_ssl = protocol.ends_with("ssl");
    let uses_sasl = protocol.starts_with("sasl");
    config
        .properties
        .keys()
        .filter(|key| {
            (key.starts_with("ssl.") && !uses_ssl) || (key.starts_with("sasl.") && !uses_sasl)
        })
        .map(|key| {
            format!(
                "kafka.properties.\"{key}\" is set but unused: security.protocol is {protocol} \
                 (set security.protocol to {} to use it)",
                if key.starts_with("ssl.") {
                    "ssl or sasl_ssl"
                } else {
                    "sasl_plaintext or sasl_ssl"
                }
            )
        })
        .collect()
}

pub struct KafkaSink {
    producer: Arc<BaseProducer<UpContext>>,
    /// Serves the delivery reports ([`serve_reports`]); aborted with the sink.
    reports: tokio::task::JoinHandle<()>,
    /// The replay check's consumer settings, and whether a keyed record's partition is
    /// `crc32(key) % partitions` (the default partitioner).
    readback: ClientConfig,
    by_key: bool,
    /// The producer's `request.timeout.ms`: how long the broker may still be working on a
    /// produce request it received.
    request_timeout: Duration,
    context: UpContext,
    topics: Arc<Topics>,
    timeout: Duration,
    max_message: usize,
}

/// The topics the sink publishes to, and their creation through the admin API.
///
/// Topics found at start never count against `kafka.max_topics`; the others (created by
/// hookbus, or first seen later) are admitted until the cap is reached, and the set of them is
/// bounded by it. `exempt` names (the overflow and dead-letter topics) are always admitted.
struct Topics {
    /// Created on the first topic creation (a failed creation is tried again by the next):
    /// an admin client is a librdkafka instance of its own (four more threads and their
    /// connections), which an idle bridge, or one whose topics all exist, never needs.
    admin: tokio::sync::OnceCell<AdminClient<UpContext>>,
    client: ClientConfig,
    context: UpContext,
    /// Std mutexes, held only for a lookup or insert, never across an await.
    existing: Mutex<HashSet<String>>,
    admitted: Mutex<HashSet<String>>,
    /// Admitted topics not known to exist yet (created by the next batch).
    exempt: HashSet<String>,
    max_topics: usize,
    create_topics: bool,
    partitions: i32,
    replication_factor: i32,
    timeout: Duration,
}

impl KafkaSink {
    /// `exempt`: topics admitted whatever the cap (overflow and dead-letter destinations).
    ///
    /// # Errors
    /// A `kafka.properties` entry librdkafka rejects.
    pub fn new(
        config: &KafkaConfig,
        sink: &SinkConfig,
        exempt: HashSet<String>,
    ) -> anyhow::Result<KafkaSink> {
        let client = client_config(config);
        let max_message = config
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE);
        let context = UpContext {
            up: Arc::new(AtomicBool::new(false)),
            fatal: Arc::new(Mutex::new(None)),
        };
        let producer: Arc<BaseProducer<UpContext>> = Arc::new(
            client
                .create_with_context(context.clone())
                .map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?,
        );
        let (queue, wake) = ReportQueue::new(&producer)
            .map_err(|e| anyhow::anyhow!("kafka delivery report queue: {e}"))?;
        let reports = tokio::spawn(serve_reports(producer.clone(), queue, wake));
        let partitioner = config.properties.get("partitioner").map(String::as_str);
        let request_timeout = config
            .properties
            .get("request.timeout.ms")
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis);
        Ok(KafkaSink {
            producer,
            reports,
            readback: readback::consumer_config(&config.brokers, &config.properties),
            by_key: matches!(partitioner, None | Some("consistent_random" | "consistent")),
            request_timeout,
            context: context.clone(),
            topics: Arc::new(Topics {
                admin: tokio::sync::OnceCell::new(),
                client,
                context,
                existing: Mutex::new(HashSet::new()),
                admitted: Mutex::new(HashSet::new()),
                exempt,
                max_topics: config.max_topics,
                create_topics: config.create_topics,
                partitions: config.partitions,
                replication_factor: config.replication_factor,
                timeout: sink.timeout,
            }),
            timeout: sink.timeout,
            max_message,
        })
    }

    /// Fetches cluster metadata once: proves the brokers are reachable and records the topics
    /// that exist at start.
    pub async fn prepare(&self) -> Result<Vec<String>, SinkError> {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let result =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
                .await
                .map_err(|e| SinkError::Retriable(e.to_string()))?;
        match result {
            Ok(metadata) => {
                self.context.up.store(true, Ordering::Relaxed);
                let names: HashSet<String> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.name().to_owned())
                    .collect();
                tracing::info!(
                    brokers = metadata.brokers().len(),
                    topics = names.len(),
                    sink = "kafka",
                    "connected"
                );
                self.topics.lock_existing().extend(names);
                Ok(Vec::new())
            }
            Err(e) => Err(classify(&e, 0, self.max_message)),
        }
    }

    /// Whether `topic` may be published to: it existed at start, was admitted before, is
    /// exempt, or the cap still has room (then it is admitted now). `false`: publish to the
    /// overflow destination instead.
    pub fn admit(&self, topic: &str) -> bool {
        let topics = &self.topics;
        if topics.exempt.contains(topic) || topics.lock_existing().contains(topic) {
            return true;
        }
        let mut admitted = topics.lock_admitted();
        if admitted.contains(topic) {
            return true;
        }
        if admitted.len() >= topics.max_topics {
            return false;
        }
        admitted.insert(topic.to_owned());
        true
    }

    /// Creates the topics among `topics` not known to exist, in one CreateTopics request, so a
    /// burst of new channels costs one round trip per batch. `None` when all are known.
    /// A failed creation is logged, not returned: the messages are produced anyway (the topic
    /// may exist, or the cluster may create it), and librdkafka reports a missing topic.
    pub fn prepare_batch<'a>(
        &self,
        topics: impl Iterator<Item = &'a str>,
    ) -> Option<BoxFuture<'static, ()>> {
        if !self.topics.create_topics {
            return None;
        }
        let mut missing: Vec<String> = {
            let existing = self.topics.lock_existing();
            topics
                .filter(|t| !existing.contains(*t))
                .map(str::to_owned)
                .collect()
        };
        if missing.is_empty() {
            return None;
        }
        missing.sort_unstable();
        missing.dedup();
        let topics = self.topics.clone();
        Some(Box::pin(async move { topics.create(missing).await }))
    }

    /// # Errors
    /// `TooLarge` before sending when the record (payload, key and headers: [`Message::size`],
    /// what ingress checks dead letters against too) exceeds `message.max.bytes`.
    pub async fn send(&self, message: &Message) -> Result<Confirm, SinkError> {
        let (size, limit) = (message.size(), self.max_message);
        if size > limit {
            return Err(SinkError::TooLarge { size, limit });
        }
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let (settle, settled) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(&message.topic, Box::new(settle))
            .payload(message.payload.as_ref())
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_bytes());
        }
        // Waiting for room in librdkafka's queue happens here, in this message's future.
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(classify(&error, size, limit)),
            }
        }
        let up = self.context.up.clone();
        Ok(Box::pin(async move {
            match settled.await {
                Ok(Ok(_)) => {
                    up.store(true, Ordering::Relaxed);
                    Ok(Ack::default())
                }
                Ok(Err(error)) => Err(classify(&error, size, limit)),
                Err(_canceled) => Err(SinkError::Retriable("producer shut down".to_owned())),
            }
        }))
    }

    pub fn is_up(&self) -> bool {
        self.context.up.load(Ordering::Relaxed)
    }

    /// How long a produce request may still be stored after its sender died: the broker
    /// answers (stored or not) within the request's timeout, the producer's
    /// `request.timeout.ms`.
    pub fn settle(&self) -> Duration {
        self.request_timeout
    }

    /// Waits until librdkafka holds no message (a restarted publisher's predecessor sent them),
    /// at most `within`. Returns whether it got there.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.producer.in_flight_count() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The replay check (see `readback`), off the runtime.
    pub async fn read_back(&self, suspects: Suspects, within: Duration) -> Verdict {
        let client = self.readback.clone();
        let by_key = self.by_key;
        tokio::task::spawn_blocking(move || readback::read_back(&client, &suspects, by_key, within))
            .await
            .unwrap_or_else(|_| Verdict::blind())
    }

    /// A fatal producer error (the idempotent producer cannot go on): the process must restart.
    pub fn fatal(&self) -> Option<String> {
        self.context
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.reports.abort();
    }
}

impl Topics {
    fn lock_existing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.existing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_admitted(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn create(&self, missing: Vec<String>) {
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
        let admin = self.admin.get_or_try_init(|| async {
            self.client
                .create_with_context(self.context.clone())
                .map_err(|e| format!("kafka admin client: {e}"))
        });
        let created = match admin.await {
            Ok(admin) => admin
                .create_topics(&new, &options)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        let results = match created {
            Ok(results) => results,
            Err(error) => {
                tracing::warn!(%error, topics = missing.len(), sink = "kafka", "creating topics failed; producing anyway");
                return;
            }
        };
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = %name, sink = "kafka", "topic ready");
                    self.lock_existing().insert(name);
                }
                Err((name, code)) => {
                    let error = KafkaError::AdminOp(code);
                    tracing::warn!(topic = %name, %error, sink = "kafka", "topic creation failed; producing anyway");
                }
            }
        }
    }
}

/// The one place Kafka errors become [`SinkError`] classes. `size`: the record's
/// ([`Message::size`]); `limit`: the configured `message.max.bytes`, which a too-large error
/// names.
fn classify(error: &KafkaError, size: usize, limit: usize) -> SinkError {
    use RDKafkaErrorCode as C;
    let text = error.to_string();
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => SinkError::TooLarge { size, limit },
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
