//! `[routing]`: the names events and dead letters are published under. Only the bounds are
//! checked here; the templates themselves are compiled and checked by `route`.

use std::time::Duration;

use serde::Deserialize;

use super::validate::{GIB, count, span};
use super::{ConfigError, duration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Topic/subject per event; placeholders `{channel}` `{action}` `{sub_key}` `{source}`.
    pub template: String,
    /// Topic/subject that receives rejected raw bodies.
    pub dead_letter: String,
    /// Where events go once `kafka.max_topics` is reached; `{action}` and `{source}` only.
    pub overflow: String,
    /// Per-channel templates; the first whose glob matches the raw channel wins.
    pub rules: Vec<RoutingRule>,
    /// Add the CloudEvents 1.0 binary-mode headers to every event message.
    pub cloudevents: bool,
    /// Bytes of dead letters sent to the broker per `dead_letter_budget_window`; beyond it
    /// they go to `spool.dir/dead-letters/`, and once that is full they are dropped and
    /// counted. 0 sends none to the broker.
    pub dead_letter_budget_bytes: u64,
    /// The window `dead_letter_budget_bytes` is counted over (1s..=1h).
    #[serde(deserialize_with = "duration")]
    pub dead_letter_budget_window: Duration,
}

/// One `[[routing.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRule {
    /// Glob on the raw channel name: `*` any run of characters, `?` one character.
    pub channel: String,
    /// The template for matching channels (same placeholders as `routing.template`).
    pub template: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            template: "presence.{channel}.{action}".to_owned(),
            dead_letter: "presence.dead-letter".to_owned(),
            overflow: "presence._overflow.{action}".to_owned(),
            rules: Vec::new(),
            cloudevents: false,
            dead_letter_budget_bytes: 16 * 1024 * 1024,
            dead_letter_budget_window: Duration::from_secs(60),
        }
    }
}

impl RoutingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        count(
            "routing.dead_letter_budget_bytes",
            self.dead_letter_budget_bytes,
            0,
            1024 * GIB,
        )?;
        let secs = Duration::from_secs;
        span(
            "routing.dead_letter_budget_window",
            self.dead_letter_budget_window,
            secs(1),
            secs(3600),
        )
    }
}
