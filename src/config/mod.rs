//! The `config.toml` file: one struct per section, deserialized strictly (unknown keys are
//! errors) and then validated. Each component receives its own section, never the whole
//! `Config`. Nothing here touches the network; the file system only to read the file, the
//! `${file:…}` secrets it references ([`refs`], through the bounded reader in [`files`]) and
//! to see that `spool.dir` is not something other than a directory. No error it returns
//! shows a value that came from a reference or an environment override, or a URL's password.

mod ack;
mod auth;
mod dedup;
pub mod files;
mod http;
mod kafka;
mod nats;
pub mod refs;
mod roster;
mod routing;
mod sink;
mod spool;
mod urls;
mod validate;

pub use ack::{AckConfig, AckMode};
pub use auth::{AuthConfig, MAX_TOKEN_BYTES};
pub use dedup::DedupConfig;
pub use http::{AdminConfig, HttpConfig};
pub use kafka::KafkaConfig;
pub use nats::{NatsConfig, StreamStorage};
pub use roster::{HereNowConfig, RosterConfig, RosterStore};
pub use routing::{RoutingConfig, RoutingRule};
pub use sink::{ShutdownConfig, SinkConfig, SinkKind};
pub use spool::SpoolConfig;
pub use urls::{redact_url, redact_urls};

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A check of the whole config that another module owns (see [`Config::load_checked`]).
pub type Check = dyn Fn(&Config) -> Result<(), ConfigError>;

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
    /// `[roster]`: present only where the roster is configured (`hookbus roster`).
    pub roster: Option<RosterConfig>,
    /// What references and environment overrides put where, to scrub them out of errors.
    #[serde(skip)]
    references: refs::Substitutions,
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
        Config::load_checked(path, &|_| Ok(()))
    }

    /// [`Config::load`] with `also`, the checks other modules own (the routing templates, the
    /// broker clients' settings), run after this module's and before the token check, which
    /// stays last. Their errors are redacted like this module's.
    ///
    /// # Errors
    /// As [`Config::load`], and whatever `also` returns.
    pub fn load_checked(path: &Path, also: &Check) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_env(&text, &refs::Resolver::system(), also).map_err(|e| match e {
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
    fn parse_env(
        text: &str,
        resolver: &refs::Resolver<'_>,
        also: &Check,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::parse_unchecked(text, resolver)?;
        config.apply_env(resolver.env);
        config.validate_with(also)?;
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
        if let Some(roster) = self.roster.as_mut()
            && let Some(value) = env("HOOKBUS_PUBNUB_SECRET_KEY")
            && !value.is_empty()
        {
            self.references.record(
                "roster.here_now.secret_key",
                "HOOKBUS_PUBNUB_SECRET_KEY",
                &value,
            );
            roster.here_now.secret_key = value;
        }
    }
}

#[cfg(test)]
mod tests;
