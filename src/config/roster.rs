//! `[roster]` and `[roster.here_now]`: the presence roster (`hookbus roster`), its listener,
//! store, input consumer and Here Now reconciliation. Absent means no roster; when present it
//! is checked by every `--check`, whichever mode reads the file.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{count, span};
use super::{ConfigError, SinkKind, duration, invalid, urls};

/// Where the roster's state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterStore {
    /// A JetStream key-value bucket on the `[nats]` server.
    Nats,
    /// A Redis server: `redis://host:port[/db]` or `rediss://…`.
    Redis(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RosterConfig {
    /// The read API, `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// `"nats"` or a Redis URL.
    pub store: String,
    /// The KV bucket (NATS) or key prefix (Redis).
    pub bucket: String,
    /// The durable JetStream consumer (NATS) or consumer group (Kafka).
    pub consumer: String,
    /// `""`: every sub_key; else only this one (others are skipped and counted).
    pub sub_key: String,
    /// How long an absent member's tombstone (and a channel horizon) is kept.
    #[serde(deserialize_with = "duration")]
    pub tombstone_ttl: Duration,
    /// Change events, one per member change (`""` = off), e.g. `hookbus.roster.{channel}`.
    pub template: String,
    /// Session events, one per ended stay (`""` = off), e.g. `hookbus.sessions.{channel}`.
    pub sessions: String,
    /// Most events taken from the input per fetch.
    pub batch: usize,
    pub here_now: HereNowConfig,
}

impl Default for RosterConfig {
    fn default() -> Self {
        RosterConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            store: "nats".to_owned(),
            bucket: "PRESENCE_ROSTER".to_owned(),
            consumer: "hookbus-roster".to_owned(),
            sub_key: String::new(),
            tombstone_ttl: Duration::from_secs(30 * 60),
            template: String::new(),
            sessions: String::new(),
            batch: 500,
            here_now: HereNowConfig::default(),
        }
    }
}

/// `[roster.here_now]`: reconciliation with PubNub's Here Now REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HereNowConfig {
    /// `""`: off. PubNub's REST origin, e.g. `https://ps.pndsn.com`.
    pub origin: String,
    pub subscribe_key: String,
    /// With `secret_key`: requests are signed (Access Manager).
    pub publish_key: String,
    /// Also from `HOOKBUS_PUBNUB_SECRET_KEY`.
    pub secret_key: String,
    /// Every channel is read again after about this long (jittered).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Requests per second over all channels.
    pub max_requests_per_second: u32,
    /// Each page request's timeout.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for HereNowConfig {
    fn default() -> Self {
        HereNowConfig {
            origin: String::new(),
            subscribe_key: String::new(),
            publish_key: String::new(),
            secret_key: String::new(),
            interval: Duration::from_secs(5 * 60),
            max_requests_per_second: 10,
            timeout: Duration::from_secs(5),
        }
    }
}

impl RosterConfig {
    /// The parsed `store`.
    pub fn store(&self) -> RosterStore {
        if self.store == "nats" {
            RosterStore::Nats
        } else {
            RosterStore::Redis(self.store.clone())
        }
    }

    pub(super) fn validate(
        &self,
        sink: SinkKind,
        jetstream: bool,
        listeners: &[(&'static str, SocketAddr)],
    ) -> Result<(), ConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 200
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if let Some((key, _)) = listeners
            .iter()
            .find(|(_, a)| a.port() == self.listen.port() && a.port() != 0)
        {
            return Err(invalid(
                "roster.listen",
                format!("shares its port with {key}: the roster runs beside the bridge"),
            ));
        }
        match self.store() {
            RosterStore::Nats if sink != SinkKind::Nats || !jetstream => {
                return Err(invalid(
                    "roster.store",
                    "\"nats\" keeps the roster in a JetStream key-value bucket: it needs \
                     sink.kind = \"nats\" with nats.jetstream = true (with Kafka, use a \
                     redis://host:port store)",
                ));
            }
            RosterStore::Nats => {}
            RosterStore::Redis(url) => {
                if url.is_empty() {
                    return Err(invalid(
                        "roster.store",
                        "\"nats\" or redis://host:port[/db]",
                    ));
                }
                urls::check_redis_url(&url).map_err(|m| invalid("roster.store", m))?;
            }
        }
        if !name_ok(&self.bucket) {
            return Err(invalid(
                "roster.bucket",
                "letters, digits, `-` and `_` only (1–200)",
            ));
        }
        if !name_ok(&self.consumer) {
            return Err(invalid(
                "roster.consumer",
                "letters, digits, `-` and `_` only (1–200)",
            ));
        }
        let (secs, days) = (Duration::from_secs, |d: u64| {
            Duration::from_secs(d * 24 * 3600)
        });
        span("roster.tombstone_ttl", self.tombstone_ttl, secs(1), days(7))?;
        count("roster.batch", self.batch as u64, 1, 10_000)?;
        self.here_now.validate(&self.sub_key)
    }
}

impl HereNowConfig {
    /// Whether reconciliation is on.
    pub fn enabled(&self) -> bool {
        !self.origin.is_empty()
    }

    fn validate(&self, sub_key: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let scheme_ok = ["http://", "https://"].iter().any(|p| {
            self.origin
                .strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']))
        });
        if !scheme_ok {
            return Err(invalid(
                "roster.here_now.origin",
                "an origin like https://ps.pndsn.com (scheme and host, no path)",
            ));
        }
        if sub_key.is_empty() {
            return Err(invalid(
                "roster.sub_key",
                "reconciliation reads one subscribe key's channels: set roster.sub_key",
            ));
        }
        if self.subscribe_key.is_empty() {
            return Err(invalid(
                "roster.here_now.subscribe_key",
                "required with an origin",
            ));
        }
        if !self.secret_key.is_empty() && self.publish_key.is_empty() {
            return Err(invalid(
                "roster.here_now.publish_key",
                "signed requests (a secret_key is set) need the publish key",
            ));
        }
        let secs = Duration::from_secs;
        span(
            "roster.here_now.interval",
            self.interval,
            secs(10),
            secs(24 * 3600),
        )?;
        count(
            "roster.here_now.max_requests_per_second",
            u64::from(self.max_requests_per_second),
            1,
            1_000,
        )?;
        span(
            "roster.here_now.timeout",
            self.timeout,
            Duration::from_millis(100),
            secs(60),
        )
    }
}
