//! The `config.toml` file: one struct per section, deserialized strictly (unknown keys are
//! errors) and then validated. Each component receives its own section, never the whole
//! `Config`. Nothing here touches the network; the file system only to read the file and the
//! `${file:…}` secrets it references ([`refs`], through the bounded reader in [`files`]).

pub mod files;
pub mod refs;

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

/// The whole file. Every section is optional and defaults to the values of DESIGN §4.
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret expected in the `header` or `?token=`; empty (and no `tokens`) disables
    /// the check. Also from env `HOOKBUS_AUTH_TOKEN`.
    pub token: String,
    /// Further accepted tokens, for rotation without a window where PubNub is refused.
    pub tokens: Vec<String>,
    /// The request header the token is read from (the `token` query parameter always works).
    pub header: String,
    /// Accepted PubNub subscribe keys; empty accepts all.
    pub allowed_sub_keys: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: String::new(),
            tokens: Vec::new(),
            header: "X-Hookbus-Token".to_owned(),
            allowed_sub_keys: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Every accepted token (empty strings left out).
    pub fn accepted(&self) -> Vec<&str> {
        std::iter::once(self.token.as_str())
            .chain(self.tokens.iter().map(String::as_str))
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// When the webhook is answered 200 (DESIGN §5).
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
        }
    }
}

impl NatsConfig {
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
    /// Reads, parses and validates the file, then applies the environment overrides.
    ///
    /// # Errors
    /// Names the file and the bad key: unreadable file, TOML syntax, wrong type, unknown key,
    /// or a value `validate` rejects.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.apply_env();
        // The overrides are held to the same rules as the file (a non-redis
        // HOOKBUS_DEDUP_SHARED, NATS credentials that clash with the file's).
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text, expands `${VAR}` / `${file:PATH}` references from the process
    /// environment and file system, and validates (no `HOOKBUS_*` environment overrides).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, &refs::Resolver::system())
    }

    /// [`Config::parse`] with references resolved by `resolver`.
    pub fn parse_with(text: &str, resolver: &refs::Resolver<'_>) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::from("config"),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        refs::expand(&mut table, resolver)?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self) {
        if let Ok(url) = std::env::var("HOOKBUS_DEDUP_SHARED")
            && !url.is_empty()
        {
            self.dedup.shared = url;
        }
        if let Ok(token) = std::env::var(TOKEN_ENV)
            && !token.is_empty()
        {
            self.auth.token = token;
        }
        if let Ok(user) = std::env::var("HOOKBUS_NATS_USER") {
            self.nats.user = user;
        }
        if let Ok(password) = std::env::var("HOOKBUS_NATS_PASSWORD") {
            self.nats.password = password;
        }
        if let Ok(token) = std::env::var("HOOKBUS_NATS_TOKEN") {
            self.nats.token = token;
        }
    }

    /// One NATS authentication method at most, and TLS files that come in pairs.
    fn validate_nats_auth(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        let methods: Vec<&'static str> = [
            (
                !n.user.is_empty() || !n.password.is_empty(),
                "nats.user/nats.password",
            ),
            (!n.token.is_empty(), "nats.token"),
            (
                !n.nkey_seed_file.as_os_str().is_empty(),
                "nats.nkey_seed_file",
            ),
            (
                !n.credentials_file.as_os_str().is_empty(),
                "nats.credentials_file",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(invalid(
                "nats.credentials_file",
                format!(
                    "set one NATS authentication method, not {}",
                    methods.join(" and ")
                ),
            ));
        }
        if n.user.is_empty() != n.password.is_empty() {
            return Err(invalid(
                "nats.password",
                "nats.user and nats.password go together",
            ));
        }
        if n.tls_cert_file.as_os_str().is_empty() != n.tls_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "nats.tls_key_file",
                "nats.tls_cert_file and nats.tls_key_file go together",
            ));
        }
        Ok(())
    }

    /// Every number and duration within a range that cannot exhaust memory, overflow a clock
    /// or make a task panic.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        const GIB: u64 = 1024 * MIB;
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let count = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(invalid(key, format!("{value} is outside {min}..={max}")))
            }
        };
        let span = |key: &'static str, value: Duration, min: Duration, max: Duration| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("{value:?} is outside {min:?}..={max:?}"),
                ))
            }
        };
        count(
            "http.max_body_bytes",
            self.http.max_body_bytes as u64,
            1,
            256 * MIB,
        )?;
        count(
            "http.max_connections",
            self.http.max_connections as u64,
            1,
            1_000_000,
        )?;
        span(
            "http.header_timeout",
            self.http.header_timeout,
            ms(100),
            secs(3600),
        )?;
        span(
            "http.request_timeout",
            self.http.request_timeout,
            ms(100),
            secs(3600),
        )?;
        span(
            "http.idle_timeout",
            self.http.idle_timeout,
            ms(100),
            secs(3600),
        )?;
        count(
            "http.max_batch_items",
            self.http.max_batch_items as u64,
            1,
            1_000_000,
        )?;
        count(
            "http.max_inflight_bytes",
            self.http.max_inflight_bytes as u64,
            self.http.max_body_bytes as u64,
            64 * GIB,
        )?;
        count(
            "admin.max_connections",
            self.admin.max_connections as u64,
            1,
            100_000,
        )?;
        count(
            "ack.queue_capacity",
            self.ack.queue_capacity as u64,
            1,
            10_000_000,
        )?;
        count(
            "ack.queue_max_bytes",
            self.ack.queue_max_bytes as u64,
            MIB,
            64 * GIB,
        )?;
        span("ack.retry_after", self.ack.retry_after, secs(1), secs(3600))?;
        count(
            "spool.max_bytes",
            self.spool.max_bytes,
            64 * KIB,
            16 * 1024 * GIB,
        )?;
        count(
            "spool.dead_letter_max_bytes",
            self.spool.dead_letter_max_bytes,
            0,
            1024 * GIB,
        )?;
        span(
            "dedup.window",
            self.dedup.window,
            ms(100),
            secs(7 * 24 * 3600),
        )?;
        count(
            "dedup.max_entries",
            self.dedup.max_entries as u64,
            1,
            100_000_000,
        )?;
        span(
            "dedup.shared_timeout",
            self.dedup.shared_timeout,
            ms(1),
            secs(10),
        )?;
        count(
            "sink.max_in_flight",
            self.sink.max_in_flight as u64,
            1,
            100_000,
        )?;
        span("sink.timeout", self.sink.timeout, ms(100), secs(600))?;
        span("sink.max_backoff", self.sink.max_backoff, ms(1), secs(600))?;
        span(
            "nats.connect_timeout",
            self.nats.connect_timeout,
            ms(100),
            secs(600),
        )?;
        span(
            "nats.max_age",
            self.nats.max_age,
            Duration::ZERO,
            secs(10 * 365 * 24 * 3600),
        )?;
        count("nats.max_bytes", self.nats.max_bytes, 0, i64::MAX as u64)?;
        span(
            "nats.duplicate_window",
            self.nats.duplicate_window,
            secs(1),
            secs(7 * 24 * 3600),
        )?;
        count(
            "kafka.partitions",
            self.kafka.partitions.max(0) as u64,
            1,
            10_000,
        )?;
        count(
            "kafka.replication_factor",
            self.kafka.replication_factor.max(0) as u64,
            1,
            10,
        )?;
        count(
            "kafka.max_topics",
            self.kafka.max_topics as u64,
            1,
            1_000_000,
        )?;
        span("shutdown.grace", self.shutdown.grace, secs(1), secs(3600))?;
        Ok(())
    }

    /// Checks values that types alone do not constrain, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_bounds()?;
        let header_ok = !self.auth.header.is_empty()
            && self
                .auth
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !header_ok {
            return Err(invalid(
                "auth.header",
                "must be a header name: letters, digits, `-` and `_`",
            ));
        }
        let shared = &self.dedup.shared;
        if !(shared.is_empty() || shared.starts_with("redis://") || shared.starts_with("rediss://"))
        {
            return Err(invalid(
                "dedup.shared",
                "must be empty or a redis:// or rediss:// URL",
            ));
        }
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be greater than 0"));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be greater than 0"));
        }
        if self.ack.queue_capacity == 0 {
            return Err(invalid("ack.queue_capacity", "must be greater than 0"));
        }
        if self.ack.publish_timeout.is_zero() || self.ack.publish_timeout >= Duration::from_secs(5)
        {
            return Err(invalid(
                "ack.publish_timeout",
                "must be between 0 and 5s (PubNub gives up after 5 s)",
            ));
        }
        if self.spool.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "must not be empty"));
        }
        if self.spool.segment_bytes < 4096 || self.spool.segment_bytes > self.spool.max_bytes {
            return Err(invalid(
                "spool.segment_bytes",
                "must be at least 4096 and at most spool.max_bytes",
            ));
        }
        if self.dedup.window.is_zero() {
            return Err(invalid("dedup.window", "must be greater than 0"));
        }
        if self.dedup.max_entries == 0 {
            return Err(invalid("dedup.max_entries", "must be greater than 0"));
        }
        let router = crate::route::Router::new(&self.routing).map_err(|e| match e {
            crate::route::TemplateError::DeadLetter(m) => invalid("routing.dead_letter", m),
            crate::route::TemplateError::Overflow(m) => invalid("routing.overflow", m),
            crate::route::TemplateError::Rule(i, m) => ConfigError::InvalidAt {
                key: format!("routing.rules[{i}]"),
                message: m,
            },
            other => invalid("routing.template", other.to_string()),
        })?;
        if self.sink.max_in_flight == 0 {
            return Err(invalid("sink.max_in_flight", "must be greater than 0"));
        }
        if self.sink.timeout.is_zero() {
            return Err(invalid("sink.timeout", "must be greater than 0"));
        }
        if self.ack.mode == AckMode::Publish && self.sink.timeout <= self.ack.publish_timeout {
            return Err(invalid(
                "sink.timeout",
                "must be longer than ack.publish_timeout in publish mode: a message sent again \
                 after a confirmation timeout while its request still waits would be a second \
                 publish of the same event",
            ));
        }
        if self.sink.kind == SinkKind::Nats {
            if self.nats.url.is_empty() {
                return Err(invalid("nats.url", "must not be empty"));
            }
            self.validate_nats_auth()?;
            if self.nats.jetstream {
                if !(1..=5).contains(&self.nats.replicas) {
                    return Err(invalid("nats.replicas", "must be between 1 and 5"));
                }
                if self.nats.duplicate_window <= self.sink.timeout {
                    return Err(invalid(
                        "nats.duplicate_window",
                        "must be longer than sink.timeout: a message whose PubAck timed out is \
                         sent again with the same Nats-Msg-Id, and only the stream's duplicate \
                         window keeps the copy out",
                    ));
                }
                if !self.nats.max_age.is_zero() && self.nats.max_age < self.nats.duplicate_window {
                    return Err(invalid(
                        "nats.max_age",
                        "must be 0s (no limit) or at least nats.duplicate_window",
                    ));
                }
                if self.nats.stream.is_empty()
                    || !self
                        .nats
                        .stream
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(invalid(
                        "nats.stream",
                        "must be a non-empty name of letters, digits, `-` and `_`",
                    ));
                }
                if router.stream_subjects().is_empty() {
                    return Err(invalid(
                        "routing.template",
                        "JetStream needs a literal first token, like `presence.{channel}`",
                    ));
                }
            }
        }
        if self.sink.kind == SinkKind::Kafka {
            if self.kafka.brokers.is_empty() {
                return Err(invalid("kafka.brokers", "must not be empty"));
            }
            if self.kafka.partitions < 1 {
                return Err(invalid("kafka.partitions", "must be at least 1"));
            }
            if self.kafka.replication_factor < 1 {
                return Err(invalid("kafka.replication_factor", "must be at least 1"));
            }
            if self.kafka.max_topics == 0 || self.kafka.max_topics > 1_000_000 {
                return Err(invalid("kafka.max_topics", "must be between 1 and 1000000"));
            }
            self.kafka.validate_properties()?;
        }
        if self.shutdown.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be greater than 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_contract_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.http.max_body_bytes, 8_388_608);
        assert_eq!(c.admin.listen.port(), 9090);
        assert_eq!(c.ack.mode, AckMode::Spool);
        assert_eq!(c.spool.max_bytes, 1_073_741_824);
        assert_eq!(c.dedup.window, Duration::from_secs(1200));
        assert_eq!(c.dedup.max_entries, 1_000_000);
        assert_eq!(c.routing.template, "presence.{channel}.{action}");
        assert_eq!(c.sink.kind, SinkKind::Nats);
        assert!(c.nats.jetstream);
        assert_eq!(c.shutdown.grace, Duration::from_secs(20));
        assert_eq!(c.kafka.partitions, 3);
    }

    #[test]
    fn shipped_config_toml_is_valid() {
        let text = include_str!("../../config.toml");
        Config::parse(text).unwrap();
    }

    /// Every key of every section appears in the shipped `config.toml` (set, or commented out
    /// with its explanation): the file is the user documentation. The keys are read from the
    /// parser's own "expected one of" list.
    #[test]
    fn shipped_config_toml_shows_every_key() {
        let shipped = include_str!("../../config.toml");
        let sections = [
            "http", "admin", "auth", "ack", "spool", "dedup", "routing", "sink", "nats", "kafka",
            "shutdown",
        ];
        for section in sections {
            let e = Config::parse(&format!("[{section}]\nzz_not_a_key = 1"))
                .unwrap_err()
                .to_string();
            let expected = e
                .split("expected ")
                .nth(1)
                .unwrap_or_else(|| panic!("{section}: {e}"));
            let keys: Vec<&str> = expected
                .lines()
                .next()
                .unwrap_or_default()
                .split('`')
                .skip(1)
                .step_by(2)
                .collect();
            assert!(!keys.is_empty(), "{section}: {e}");
            for key in keys {
                let shown = shipped.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.starts_with(&format!("{key} ="))
                        || l.starts_with(&format!("[{section}.{key}]"))
                        || l.starts_with(&format!("[[{section}.{key}]]"))
                });
                assert!(shown, "config.toml does not show {section}.{key}");
            }
        }
    }

    #[test]
    fn durations_accept_units() {
        let c = Config::parse("[dedup]\nwindow = \"500ms\"\n[shutdown]\ngrace = \"5s\"").unwrap();
        assert_eq!(c.dedup.window, Duration::from_millis(500));
        assert_eq!(c.shutdown.grace, Duration::from_secs(5));
        let e = Config::parse("[dedup]\nwindow = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            ("[http]\nlisten = 5", "listen"),
            ("[http]\nlisten_addr = \"0.0.0.0:1\"", "listen_addr"),
            ("[surprise]\nx = 1", "surprise"),
            ("[ack]\nmode = \"fast\"", "fast"),
            ("[sink]\nkind = \"redis\"", "redis"),
            (
                "[routing]\ntemplate = \"presence.{chanel}\"",
                "routing.template",
            ),
            (
                "[routing]\ndead_letter = \"bad subject\"",
                "routing.dead_letter",
            ),
            (
                "[kafka]\npartitions = 0\n[sink]\nkind = \"kafka\"",
                "kafka.partitions",
            ),
            ("[ack]\npublish_timeout = \"6s\"", "ack.publish_timeout"),
            ("[nats]\nstream = \"a.b\"", "nats.stream"),
        ];
        for (text, key) in cases {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?} → {e}");
        }
    }

    #[test]
    fn kafka_properties_pass_through() {
        let c = Config::parse("[kafka.properties]\n\"linger.ms\" = \"5\"").unwrap();
        assert_eq!(c.kafka.properties["linger.ms"], "5");
        assert_eq!(
            c.kafka.for_ack_mode(AckMode::Publish).properties["linger.ms"],
            "5",
            "an explicit linger wins"
        );
        let d = Config::parse("").unwrap();
        assert_eq!(
            d.kafka.for_ack_mode(AckMode::Publish).properties["linger.ms"],
            "0"
        );
        assert!(
            !d.kafka
                .for_ack_mode(AckMode::Spool)
                .properties
                .contains_key("linger.ms")
        );
    }
}
