//! `[nats]`: the NATS connection, its authentication and TLS, and the JetStream streams.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{count, span};
use super::{ConfigError, duration, invalid};

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

impl NatsConfig {
    /// Ranges always; the rest only when NATS is the sink (`in_use`).
    pub(super) fn validate(&self, in_use: bool) -> Result<(), ConfigError> {
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        let ten_years = secs(10 * 365 * 24 * 3600);
        span(
            "nats.connect_timeout",
            self.connect_timeout,
            ms(100),
            secs(600),
        )?;
        span("nats.max_age", self.max_age, Duration::ZERO, ten_years)?;
        count("nats.max_bytes", self.max_bytes, 0, i64::MAX as u64)?;
        span(
            "nats.duplicate_window",
            self.duplicate_window,
            secs(1),
            secs(7 * 24 * 3600),
        )?;
        count(
            "nats.dead_letter_max_bytes",
            self.dead_letter_max_bytes,
            0,
            i64::MAX as u64,
        )?;
        span(
            "nats.dead_letter_max_age",
            self.dead_letter_max_age,
            Duration::ZERO,
            ten_years,
        )?;
        if !in_use {
            return Ok(());
        }
        if self.url.is_empty() {
            return Err(invalid("nats.url", "must not be empty"));
        }
        self.validate_auth()?;
        if self.jetstream {
            self.validate_streams()?;
        }
        Ok(())
    }

    /// One authentication method at most, and TLS files that come in pairs.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let methods: Vec<&'static str> = [
            (
                !self.user.is_empty() || !self.password.is_empty(),
                "nats.user/nats.password",
            ),
            (!self.token.is_empty(), "nats.token"),
            (
                !self.nkey_seed_file.as_os_str().is_empty(),
                "nats.nkey_seed_file",
            ),
            (
                !self.credentials_file.as_os_str().is_empty(),
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
        if self.user.is_empty() != self.password.is_empty() {
            return Err(invalid(
                "nats.password",
                "nats.user and nats.password go together",
            ));
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "nats.tls_key_file",
                "nats.tls_cert_file and nats.tls_key_file go together",
            ));
        }
        Ok(())
    }

    /// The stream settings hookbus creates its streams with, and their names.
    fn validate_streams(&self) -> Result<(), ConfigError> {
        if !(1..=5).contains(&self.replicas) {
            return Err(invalid("nats.replicas", "must be between 1 and 5"));
        }
        if !self.max_age.is_zero() && self.max_age < self.duplicate_window {
            return Err(invalid(
                "nats.max_age",
                "must be 0s (no limit) or at least nats.duplicate_window",
            ));
        }
        let stream_name = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !stream_name(&self.stream) {
            return Err(invalid(
                "nats.stream",
                "must be a non-empty name of letters, digits, `-` and `_`",
            ));
        }
        if !self.dead_letter_stream.is_empty() && !stream_name(&self.dead_letter_stream) {
            return Err(invalid(
                "nats.dead_letter_stream",
                "must be empty (`<nats.stream>_DEAD_LETTERS`) or a name of letters, digits, `-` \
                 and `_`",
            ));
        }
        if self.dead_letter_stream_name() == self.stream {
            return Err(invalid(
                "nats.dead_letter_stream",
                "must differ from nats.stream: dead letters have a stream of their own",
            ));
        }
        Ok(())
    }
}
