//! `[kafka]`: the brokers, topic creation and librdkafka's properties.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::validate::count;
use super::{AckMode, ConfigError, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Create missing topics through the admin API on first use.
    pub create_topics: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topics hookbus may publish to beyond those existing at start; past it, events go to
    /// `routing.overflow`.
    pub max_topics: usize,
    /// Passed to librdkafka as is (e.g. `"security.protocol" = "SASL_SSL"`).
    pub properties: BTreeMap<String, String>,
}

/// librdkafka properties hookbus sets itself because the exactly-once promise depends on them.
const KAFKA_FIXED: [(&str, &str); 6] = [
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("metadata.broker.list", "set kafka.brokers instead"),
    (
        "enable.idempotence",
        "hookbus needs the idempotent producer: a broker retry must never store a message twice",
    ),
    (
        "acks",
        "hookbus needs acks=all: a message is confirmed only once every in-sync replica has it",
    ),
    (
        "message.timeout.ms",
        "hookbus keeps every message with the producer until it is delivered (0 = never time \
         out): a timed-out message may be stored, and sending it again would duplicate it",
    ),
    (
        "delivery.timeout.ms",
        "hookbus keeps every message with the producer until it is delivered (0 = never time \
         out): a timed-out message may be stored, and sending it again would duplicate it",
    ),
];

impl KafkaConfig {
    /// The config the producer is built from under `mode`: in `publish` mode every request
    /// waits for its own delivery report, so lingering before a send adds straight to the
    /// ack; there `linger.ms` defaults to 0 (what arrives while a produce request is out still
    /// goes together in the next one). An explicit `kafka.properties."linger.ms"` always wins.
    #[must_use]
    pub fn for_ack_mode(&self, mode: AckMode) -> KafkaConfig {
        let mut config = self.clone();
        if mode == AckMode::Publish
            && !config.properties.contains_key("linger.ms")
            && !config.properties.contains_key("queue.buffering.max.ms")
        {
            config.properties.insert("linger.ms".into(), "0".into());
        }
        config
    }

    /// Ranges always; the rest only when Kafka is the sink (`in_use`).
    pub(super) fn validate(&self, in_use: bool) -> Result<(), ConfigError> {
        count("kafka.partitions", self.partitions.max(0) as u64, 1, 10_000)?;
        count(
            "kafka.replication_factor",
            self.replication_factor.max(0) as u64,
            1,
            10,
        )?;
        count("kafka.max_topics", self.max_topics as u64, 1, 1_000_000)?;
        if !in_use {
            return Ok(());
        }
        if self.brokers.is_empty() {
            return Err(invalid("kafka.brokers", "must not be empty"));
        }
        self.validate_properties()
    }

    /// Refuses properties that would break delivery guarantees (with the accepted values).
    fn validate_properties(&self) -> Result<(), ConfigError> {
        for (key, why) in KAFKA_FIXED {
            let Some(value) = self.properties.get(key) else {
                continue;
            };
            let harmless = match key {
                "enable.idempotence" => value == "true",
                "acks" => value == "all" || value == "-1",
                "message.timeout.ms" | "delivery.timeout.ms" => value == "0",
                _ => false,
            };
            if !harmless {
                return Err(ConfigError::InvalidAt {
                    key: format!("kafka.properties.\"{key}\""),
                    message: why.to_owned(),
                });
            }
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".to_owned(),
            create_topics: true,
            partitions: 3,
            replication_factor: 1,
            max_topics: 1000,
            properties: BTreeMap::new(),
        }
    }
}
