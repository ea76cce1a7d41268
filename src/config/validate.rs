//! `Config::validate`: each section checks its own keys (`http.rs`, `nats.rs`, …); what is
//! left here are the range helpers they share and the rules that span sections. The routing
//! templates are compiled and checked by `route::check`, which the binary passes in as a
//! [`Check`] (config imports nothing from route).

use std::time::Duration;

use super::{AckMode, Check, Config, ConfigError, SinkKind, http, invalid};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
pub(super) const GIB: u64 = 1024 * MIB;

/// `value` of `key` within `min..=max`.
pub(super) fn count(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, format!("{value} is outside {min}..={max}")))
    }
}

/// The duration `value` of `key` within `min..=max`.
pub(super) fn span(
    key: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{value:?} is outside {min:?}..={max:?}"),
        ))
    }
}

impl Config {
    /// Checks values that types alone do not constrain, naming the key at fault: every number
    /// and duration within a range that cannot exhaust memory, overflow a clock or make a task
    /// panic, then the rules between sections. The error shows no value that came from a
    /// reference or an environment override (it names the reference instead) and no URL
    /// password.
    ///
    /// # Errors
    /// The first key at fault. A config with no token at all and no
    /// `auth.allow_anonymous = true` is refused last, after every other check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(&|_| Ok(()))
    }

    /// [`Config::validate`] with `also` (checks other modules own) run after every check of
    /// this module's and before the token check.
    ///
    /// # Errors
    /// As [`Config::validate`], and whatever `also` returns (redacted the same way).
    pub fn validate_with(&self, also: &Check) -> Result<(), ConfigError> {
        self.check(also)
            .map_err(|error| self.references.redact(error))
    }

    fn check(&self, also: &Check) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.admin.validate()?;
        self.auth.validate(&self.references)?;
        http::validate_listeners(&self.http, &self.admin)?;
        self.ack.validate()?;
        self.spool.validate()?;
        self.dedup.validate()?;
        self.routing.validate()?;
        self.sink.validate()?;
        self.nats.validate(self.sink.kind == SinkKind::Nats)?;
        self.kafka.validate(self.sink.kind == SinkKind::Kafka)?;
        self.shutdown.validate()?;
        if let Some(roster) = &self.roster {
            let listeners = [
                ("http.listen", self.http.listen),
                ("admin.listen", self.admin.listen),
            ];
            roster.validate(self.sink.kind, self.nats.jetstream, &listeners)?;
        }
        self.check_across_sections()?;
        also(self)?;
        self.auth.require_token()
    }

    /// Rules that tie one section's value to another's.
    fn check_across_sections(&self) -> Result<(), ConfigError> {
        if self.ack.mode == AckMode::Publish && self.sink.timeout <= self.ack.publish_timeout {
            return Err(invalid(
                "sink.timeout",
                "must be longer than ack.publish_timeout in publish mode: a message sent again \
                 after a confirmation timeout while its request still waits would be a second \
                 publish of the same event",
            ));
        }
        if self.sink.kind == SinkKind::Nats
            && self.nats.jetstream
            && self.nats.duplicate_window <= self.sink.timeout
        {
            return Err(invalid(
                "nats.duplicate_window",
                "must be longer than sink.timeout: a message whose PubAck timed out is sent \
                 again with the same Nats-Msg-Id, and only the stream's duplicate window keeps \
                 the copy out",
            ));
        }
        Ok(())
    }
}
