//! `[ack]`: when a webhook is answered 200, and the in-memory queue's bounds.

use std::time::Duration;

use serde::Deserialize;

use super::validate::{GIB, MIB, count, span};
use super::{ConfigError, duration, invalid};

/// When the webhook is answered 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    Spool,
    Memory,
    Publish,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Spool => "spool",
            AckMode::Memory => "memory",
            AckMode::Publish => "publish",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AckConfig {
    pub mode: AckMode,
    /// Events the in-memory queue holds (`memory` and `publish` modes) before answering 503.
    pub queue_capacity: usize,
    /// Bytes the in-memory queue holds (messages not yet confirmed) before answering 503.
    pub queue_max_bytes: usize,
    /// In `publish` mode, how long a request waits for the broker before answering 503.
    #[serde(deserialize_with = "duration")]
    pub publish_timeout: Duration,
    /// `Retry-After` sent with every 503.
    #[serde(deserialize_with = "duration")]
    pub retry_after: Duration,
}

impl Default for AckConfig {
    fn default() -> Self {
        AckConfig {
            mode: AckMode::Spool,
            queue_capacity: 100_000,
            queue_max_bytes: 64 * 1024 * 1024,
            publish_timeout: Duration::from_secs(3),
            retry_after: Duration::from_secs(1),
        }
    }
}

impl AckConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        count(
            "ack.queue_capacity",
            self.queue_capacity as u64,
            1,
            10_000_000,
        )?;
        count(
            "ack.queue_max_bytes",
            self.queue_max_bytes as u64,
            MIB,
            64 * GIB,
        )?;
        let secs = Duration::from_secs;
        span("ack.retry_after", self.retry_after, secs(1), secs(3600))?;
        if self.publish_timeout.is_zero() || self.publish_timeout >= secs(5) {
            return Err(invalid(
                "ack.publish_timeout",
                "must be between 0 and 5s (PubNub gives up after 5 s)",
            ));
        }
        Ok(())
    }
}
