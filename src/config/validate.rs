//! `Config::validate`: what types alone do not constrain, naming the key at fault; ranges
//! that cannot exhaust memory or overflow a clock, the NATS authentication rules, listeners
//! that cannot clash, and, last, a token or an explicit `auth.allow_anonymous`.

use std::time::Duration;

use super::{AckMode, Config, ConfigError, SinkKind, invalid, urls};

impl Config {
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
        count(
            "nats.dead_letter_max_bytes",
            self.nats.dead_letter_max_bytes,
            0,
            i64::MAX as u64,
        )?;
        span(
            "nats.dead_letter_max_age",
            self.nats.dead_letter_max_age,
            Duration::ZERO,
            secs(10 * 365 * 24 * 3600),
        )?;
        count(
            "routing.dead_letter_budget_bytes",
            self.routing.dead_letter_budget_bytes,
            0,
            1024 * GIB,
        )?;
        span(
            "routing.dead_letter_budget_window",
            self.routing.dead_letter_budget_window,
            secs(1),
            secs(3600),
        )?;
        span("shutdown.grace", self.shutdown.grace, secs(1), secs(3600))?;
        Ok(())
    }

    /// Checks values that types alone do not constrain, naming the key at fault. The error
    /// shows no value that came from a reference or an environment override (it names the
    /// reference instead) and no URL password.
    ///
    /// # Errors
    /// The first key at fault. A config with no token at all and no
    /// `auth.allow_anonymous = true` is refused last, after every other check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|error| self.references.redact(error))
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.validate_bounds()?;
        self.auth.validate(&self.references)?;
        self.validate_listeners()?;
        urls::check_redis_url(&self.dedup.shared).map_err(|m| invalid("dedup.shared", m))?;
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
        // A missing directory is created at start; something else in its place never works.
        if let Ok(metadata) = std::fs::metadata(&self.spool.dir)
            && !metadata.is_dir()
        {
            return Err(invalid(
                "spool.dir",
                format!("{} exists and is not a directory", self.spool.dir.display()),
            ));
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
                let stream_name = |name: &str| {
                    !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                if !stream_name(&self.nats.stream) {
                    return Err(invalid(
                        "nats.stream",
                        "must be a non-empty name of letters, digits, `-` and `_`",
                    ));
                }
                if !self.nats.dead_letter_stream.is_empty()
                    && !stream_name(&self.nats.dead_letter_stream)
                {
                    return Err(invalid(
                        "nats.dead_letter_stream",
                        "must be empty (`<nats.stream>_DEAD_LETTERS`) or a name of letters, \
                         digits, `-` and `_`",
                    ));
                }
                if self.nats.dead_letter_stream_name() == self.nats.stream {
                    return Err(invalid(
                        "nats.dead_letter_stream",
                        "must differ from nats.stream: dead letters have a stream of their own",
                    ));
                }
                if router.stream_subjects().is_empty() {
                    return Err(invalid(
                        "routing.template",
                        "JetStream needs a literal first token, like `presence.{channel}`",
                    ));
                }
                if let Some(subject) = router.dead_letter_overlap() {
                    return Err(invalid(
                        "routing.dead_letter",
                        format!(
                            "the event subject {subject} would take the dead letters too: \
                             dead letters need a stream of their own, so choose a subject \
                             outside it (e.g. another token count or prefix)"
                        ),
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
        self.auth.require_token()
    }

    /// The webhook and admin listeners cannot share a port: the same address, or the same
    /// port where one is a wildcard that covers the other (`0.0.0.0` covers every IPv4
    /// address; `::` every address, as Linux binds it dual-stack). Port 0 picks a free port.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let (http, admin) = (self.http.listen, self.admin.listen);
        let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
            wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
        };
        let clash = http.port() != 0
            && http.port() == admin.port()
            && (http.ip() == admin.ip()
                || covers(http.ip(), admin.ip())
                || covers(admin.ip(), http.ip()));
        if clash {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{admin} and http.listen {http} cannot both listen on port {}",
                    admin.port()
                ),
            ));
        }
        Ok(())
    }
}
