//! `[sink]` (which broker and its delivery limits) and `[shutdown]`.

use std::time::Duration;

use serde::Deserialize;

use super::validate::{count, span};
use super::{ConfigError, duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Nats,
    Kafka,
    Stdout,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Nats => "nats",
            SinkKind::Kafka => "kafka",
            SinkKind::Stdout => "stdout",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// Messages sent to the broker and not yet confirmed, at most.
    pub max_in_flight: usize,
    /// How long one message may wait for its broker confirmation before it counts as failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Longest pause between retries of a failed publish (exponential backoff from 50 ms).
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Nats,
            max_in_flight: 1024,
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Time to drain queued events to the broker after SIGTERM.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(20),
        }
    }
}

impl SinkConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        count("sink.max_in_flight", self.max_in_flight as u64, 1, 100_000)?;
        span("sink.timeout", self.timeout, ms(100), secs(600))?;
        span("sink.max_backoff", self.max_backoff, ms(1), secs(600))
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let secs = Duration::from_secs;
        span("shutdown.grace", self.grace, secs(1), secs(3600))
    }
}
