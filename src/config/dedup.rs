//! `[dedup]`: the window of remembered event ids, local or shared.

use std::time::Duration;

use serde::Deserialize;

use super::validate::{count, span};
use super::{ConfigError, duration, invalid, urls};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// How long a published event id is remembered.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Most ids remembered; the oldest are evicted first.
    pub max_entries: usize,
    /// `""`: per process. `redis://[user:pass@]host:port[/db]` or `rediss://…`: one dedup set
    /// shared by every replica.
    pub shared: String,
    /// How long a request waits for the shared store before deciding locally.
    #[serde(deserialize_with = "duration")]
    pub shared_timeout: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window: Duration::from_secs(20 * 60),
            max_entries: 1_000_000,
            shared: String::new(),
            shared_timeout: Duration::from_millis(100),
        }
    }
}

impl DedupConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        span("dedup.window", self.window, ms(100), secs(7 * 24 * 3600))?;
        count("dedup.max_entries", self.max_entries as u64, 1, 100_000_000)?;
        span("dedup.shared_timeout", self.shared_timeout, ms(1), secs(10))?;
        urls::check_redis_url(&self.shared).map_err(|m| invalid("dedup.shared", m))
    }
}
