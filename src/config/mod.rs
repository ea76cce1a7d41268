//! The `config.toml` file: one struct per section, deserialized strictly (unknown keys are
//! errors) and then validated. Each component receives its own section, never the whole
//! `Config`. Nothing here touches the network; the file system only to read the file, the
//! `${file:…}` secrets it references ([`refs`], through the bounded reader in [`files`]) and
//! to see that `spool.dir` is not something other than a directory. No error it returns
//! shows a value that came from a reference or an environment override, or a URL's password.

mod auth;
pub mod files;
pub mod refs;
mod urls;
mod validate;

pub use auth::{AuthConfig, MAX_TOKEN_BYTES};
pub use urls::{redact_url, redact_urls};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Environment variable that overrides `auth.token`, so the secret need not sit in a file.
pub const TOKEN_ENV: &str = "HOOKBUS_AUTH_TOKEN";

/// A configuration problem, naming the key or the place in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// Like `Invalid`, for keys known only at run time (`kafka.properties."sasl.password"`).
    #[error("invalid value for `{key}`: {message}")]
    InvalidAt { key: String, message: String },
}

impl ConfigError {
    /// The same error with its message (or, for `Read`, nothing) passed through `f`.
    #[must_use]
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> ConfigError {
        match self {
            ConfigError::Read { .. } => self,
            ConfigError::Parse { path, message } => ConfigError::Parse {
                path,
                message: f(&message),
            },
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key,
                message: f(&message),
            },
            ConfigError::InvalidAt { key, message } => ConfigError::InvalidAt {
                key,
                message: f(&message),
            },
        }
    }

    /// The dotted key at fault, when the error names one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::InvalidAt { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The whole file. Every section is optional and defaults to the values in the shipped
/// `config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub ack: AckConfig,
    pub spool: SpoolConfig,
    pub dedup: DedupConfig,
    pub routing: RoutingConfig,
    pub sink: SinkConfig,
    pub nats: NatsConfig,
    pub kafka: KafkaConfig,
    pub shutdown: ShutdownConfig,
    /// What references and environment overrides put where, to scrub them out of errors.
    #[serde(skip)]
    references: refs::Substitutions,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the webhook listener.
    pub listen: SocketAddr,
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Connections open at once; at the cap the longest-idle keep-alive connection is closed
    /// to admit a new one.
    pub max_connections: usize,
    /// A request's header block must arrive within this, from its first byte (or from the
    /// connection's start).
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this, from the end of its headers (408 beyond).
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// A keep-alive connection with no request is closed after this.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Events & Actions items per request; more is a 413.
    pub max_batch_items: usize,
    /// Request bodies being read or processed at once, in bytes; beyond it 503.
    pub max_inflight_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 8 * 1024 * 1024,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_batch_items: 10_000,
            max_inflight_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Connections open at once (the longest-idle one is closed to admit a new one).
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_connections: 256,
        }
    }
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the write-ahead spool (and of `dead-letters/`).
    pub dir: PathBuf,
    /// Disk the spool may use; appends beyond it get 503.
    pub max_bytes: u64,
    /// Size at which a spool segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Disk for dead letters too large for the broker (`dir/dead-letters/`); when full, the
    /// body is dropped and counted (`hookbus_dead_letters_total{reason="dropped"}`).
    pub dead_letter_max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            dead_letter_max_bytes: 100 * 1024 * 1024,
        }
    }
}

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
pub struct NatsConfig {
    /// One server URL or several, comma-separated (`nats://`, `tls://`).
    pub url: String,
    /// Publish through JetStream with `Nats-Msg-Id` and await the PubAck.
    pub jetstream: bool,
    /// Stream created if missing, subjects derived from the template's literal prefix.
    pub stream: String,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// User and password; also from env `HOOKBUS_NATS_USER` / `HOOKBUS_NATS_PASSWORD`.
    pub user: String,
    pub password: String,
    /// Token authentication; also from env `HOOKBUS_NATS_TOKEN`.
    pub token: String,
    /// File holding an NKey user seed (`SU…`).
    pub nkey_seed_file: PathBuf,
    /// JWT credentials file (`.creds`, as written by `nsc`).
    pub credentials_file: PathBuf,
    /// PEM file of the CA(s) that sign the servers' certificates (default: the system roots).
    pub tls_ca_file: PathBuf,
    /// PEM client certificate (chain) and its private key, for servers that verify clients.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Refuse to connect without TLS (also implied by a `tls://` URL or any `tls_*` file).
    pub require_tls: bool,
    /// Settings of the stream hookbus creates (an existing stream is left as it is).
    /// Oldest messages are dropped past this age; `0s` keeps them for ever.
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// Oldest messages are dropped past this size; 0 = no limit.
    pub max_bytes: u64,
    pub storage: StreamStorage,
    /// Stream replicas on a clustered JetStream (1–5).
    pub replicas: usize,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a repeat.
    #[serde(deserialize_with = "duration")]
    pub duplicate_window: Duration,
    /// JetStream stream for dead letters (same name rules as `stream`, and a different name);
    /// empty: `<stream>_DEAD_LETTERS`.
    pub dead_letter_stream: String,
    /// Oldest dead letters are dropped past this size; 0 = no limit.
    pub dead_letter_max_bytes: u64,
    /// Oldest dead letters are dropped past this age; `0s` keeps them for ever.
    #[serde(deserialize_with = "duration")]
    pub dead_letter_max_age: Duration,
}

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStorage {
    File,
    Memory,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            jetstream: true,
            stream: "PRESENCE".to_owned(),
            connect_timeout: Duration::from_secs(5),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            nkey_seed_file: PathBuf::new(),
            credentials_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            require_tls: false,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1024 * 1024 * 1024,
            storage: StreamStorage::File,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            dead_letter_stream: String::new(),
            dead_letter_max_bytes: 256 * 1024 * 1024,
            dead_letter_max_age: Duration::from_secs(168 * 3600),
        }
    }
}

impl NatsConfig {
    /// The dead-letter stream's name: `nats.dead_letter_stream`, or `<nats.stream>_DEAD_LETTERS`
    /// when empty (so that deployments sharing a NATS server each get their own).
    pub fn dead_letter_stream_name(&self) -> String {
        if self.dead_letter_stream.is_empty() {
            format!("{}_DEAD_LETTERS", self.stream)
        } else {
            self.dead_letter_stream.clone()
        }
    }

    /// Whether the connection must use TLS.
    pub fn tls(&self) -> bool {
        self.require_tls
            || !self.tls_ca_file.as_os_str().is_empty()
            || !self.tls_cert_file.as_os_str().is_empty()
            || self.url.split(',').any(|u| u.trim().starts_with("tls://"))
    }
}

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

/// Parses `500ms`, `5s`, `20m`, `1h 30m`.
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration like 500ms, 5s or 20m ({e})"
        ))
    })
}

impl Config {
    /// Reads and parses the file, applies the environment overrides, then validates.
    ///
    /// # Errors
    /// Names the file and the bad key: unreadable file, TOML syntax, wrong type, unknown key,
    /// or a value `validate` rejects (the overrides are held to the same rules as the file).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_env(&text, &refs::Resolver::system()).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text, expands `${VAR}` / `${file:PATH}` references from the process
    /// environment and file system, and validates (no `HOOKBUS_*` environment overrides).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, &refs::Resolver::system())
    }

    /// [`Config::parse`] with references resolved by `resolver`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse_with(text: &str, resolver: &refs::Resolver<'_>) -> Result<Config, ConfigError> {
        let config = Config::parse_unchecked(text, resolver)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::parse_with`], with the `HOOKBUS_*` overrides read from `resolver.env` before
    /// validating.
    fn parse_env(text: &str, resolver: &refs::Resolver<'_>) -> Result<Config, ConfigError> {
        let mut config = Config::parse_unchecked(text, resolver)?;
        config.apply_env(resolver.env);
        config.validate()?;
        Ok(config)
    }

    /// Syntax, references and types: everything but `validate`.
    fn parse_unchecked(text: &str, resolver: &refs::Resolver<'_>) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::from("config"),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let references = refs::expand(&mut table, resolver)?;
        // A type error after expansion quotes the expanded value (`unknown variant `…``).
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| references.redact(parse_error(e.to_string())))?;
        config.references = references;
        Ok(config)
    }

    /// `error` (from anything that checked this config, such as the sink's client checks)
    /// with every value a reference or an environment override supplied replaced by its
    /// reference, and URL passwords by `***`: safe to print.
    #[must_use]
    pub fn redact_error(&self, error: ConfigError) -> ConfigError {
        self.references.redact(error)
    }

    /// The `HOOKBUS_*` overrides. A set `HOOKBUS_AUTH_TOKEN` always replaces `auth.token`,
    /// even when blank, so that `validate` refuses a blank one rather than ignoring it.
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let mut set = |name: &'static str, key: &'static str, field: &mut String, blank: bool| {
            if let Some(value) = env(name)
                && (blank || !value.is_empty())
            {
                self.references.record(key, name, &value);
                *field = value;
            }
        };
        set(
            "HOOKBUS_DEDUP_SHARED",
            "dedup.shared",
            &mut self.dedup.shared,
            false,
        );
        set(TOKEN_ENV, "auth.token", &mut self.auth.token, true);
        set("HOOKBUS_NATS_USER", "nats.user", &mut self.nats.user, true);
        set(
            "HOOKBUS_NATS_PASSWORD",
            "nats.password",
            &mut self.nats.password,
            true,
        );
        set(
            "HOOKBUS_NATS_TOKEN",
            "nats.token",
            &mut self.nats.token,
            true,
        );
    }
}

#[cfg(test)]
mod tests;
