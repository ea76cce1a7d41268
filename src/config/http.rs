//! `[http]` (the webhook listener and its limits) and `[admin]` (metrics and probes).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{GIB, MIB, count, span};
use super::{ConfigError, duration, invalid};

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

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        count(
            "http.max_body_bytes",
            self.max_body_bytes as u64,
            1,
            256 * MIB,
        )?;
        count(
            "http.max_connections",
            self.max_connections as u64,
            1,
            1_000_000,
        )?;
        span(
            "http.header_timeout",
            self.header_timeout,
            ms(100),
            secs(3600),
        )?;
        span(
            "http.request_timeout",
            self.request_timeout,
            ms(100),
            secs(3600),
        )?;
        span("http.idle_timeout", self.idle_timeout, ms(100), secs(3600))?;
        count(
            "http.max_batch_items",
            self.max_batch_items as u64,
            1,
            1_000_000,
        )?;
        count(
            "http.max_inflight_bytes",
            self.max_inflight_bytes as u64,
            self.max_body_bytes as u64,
            64 * GIB,
        )
    }
}

impl AdminConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        count(
            "admin.max_connections",
            self.max_connections as u64,
            1,
            100_000,
        )
    }
}

/// The webhook and admin listeners cannot share a port: the same address, or the same port
/// where one is a wildcard that covers the other (`0.0.0.0` covers every IPv4 address; `::`
/// every address, as Linux binds it dual-stack). Port 0 picks a free port.
pub(super) fn validate_listeners(
    http: &HttpConfig,
    admin: &AdminConfig,
) -> Result<(), ConfigError> {
    let (http, admin) = (http.listen, admin.listen);
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
