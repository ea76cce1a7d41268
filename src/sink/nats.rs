//! NATS sink: JetStream (default) with `Nats-Msg-Id` = event id and an awaited PubAck, so the
//! stream drops the copy a re-send after an ambiguous timeout would add; or core publish,
//! confirmed by a round trip through the server. The stream is created if missing with the
//! configured retention, duplicate window, storage and replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue, ServerAddr};

use super::{Ack, Confirm, SinkError};
use crate::config::{ConfigError, NatsConfig, SinkConfig, redact_url, redact_urls};
use crate::message::Message;

/// NATS' default `max_payload`, used until the server has said otherwise.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

pub struct NatsSink {
    client: async_nats::Client,
    core: Arc<CoreConfirms>,
    pub(super) config: NatsConfig,
    pub(super) jetstream: Option<jetstream::Context>,
    pub(super) stream: String,
    pub(super) subjects: Vec<String>,
    /// `routing.dead_letter`: the one subject of the dead-letter stream.
    pub(super) dead_letter: String,
    pub(super) timeout: Duration,
}

impl NatsSink {
    /// Creates the client; the connection is made (and re-made) in the background.
    ///
    /// # Errors
    /// An unparsable `nats.url`, or a TLS, NKey or credentials file that cannot be read.
    pub async fn connect(
        config: &NatsConfig,
        sink: &SinkConfig,
        subjects: Vec<String>,
        dead_letter: String,
    ) -> anyhow::Result<NatsSink> {
        let addrs = server_addrs(config)?;
        let client = options(config)?
            .request_timeout(Some(sink.timeout))
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(sink = "nats", "connected");
                    }
                    event => {
                        let event = redact_urls(&event.to_string());
                        tracing::warn!(%event, sink = "nats", "connection event");
                    }
                }
            })
            .connect(addrs)
            .await?;
        // In-flight messages are bounded by the publisher (`sink.max_in_flight`), which
        // counts them exactly; the client's own limit is only a backstop above it.
        let jetstream = config.jetstream.then(|| {
            jetstream::ContextBuilder::new()
                .timeout(sink.timeout)
                .max_ack_inflight(sink.max_in_flight.saturating_mul(2).max(1))
                .backpressure_on_inflight(false)
                .build(client.clone())
        });
        let core = CoreConfirms::start(client.clone(), sink.timeout);
        Ok(NatsSink {
            client,
            core,
            config: config.clone(),
            jetstream,
            stream: config.stream.clone(),
            subjects,
            dead_letter,
            timeout: sink.timeout,
        })
    }

    /// Why the client is not connected: one connection attempt of its own, so the error (TLS,
    /// authorization, refused) reaches the log in full rather than as a bare kind.
    pub(super) async fn diagnose(&self) -> SinkError {
        let attempt = async {
            let addrs = server_addrs(&self.config).map_err(|e| e.to_string())?;
            let options = options(&self.config).map_err(|e| e.to_string())?;
            match options.connect(addrs).await {
                Ok(client) => {
                    let _ = client.drain().await;
                    Err("connected on a second attempt; the client is reconnecting".to_owned())
                }
                Err(error) => Err(error.to_string()),
            }
        };
        let detail: Result<(), String> = match tokio::time::timeout(
            self.config.connect_timeout + Duration::from_secs(1),
            attempt,
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err("connection attempt timed out".to_owned()),
        };
        // The URL may carry credentials (`nats://user:password@host`): never in a message.
        SinkError::Retriable(format!(
            "not connected to {}: {}",
            redact_urls(&self.config.url),
            redact_urls(&detail.err().unwrap_or_default())
        ))
    }

    pub async fn send(&self, message: &Message) -> Result<Confirm, SinkError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(header_name(name), header_value(value));
        }
        let Some(js) = &self.jetstream else {
            // Waiting for room in the client's command queue happens here, in this message's
            // future.
            self.client
                .publish_with_headers(message.topic.clone(), headers, message.payload.clone())
                .await
                .map_err(|e| SinkError::Retriable(e.to_string()))?;
            return Ok(self.core.confirm_sent());
        };
        if let Some(id) = &message.msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, header_value(id));
        }
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(message.payload.clone());
        let pending = js
            .send_publish(message.topic.clone(), publish)
            .await
            .map_err(|e| classify(&e, self.timeout))?;
        let timeout = self.timeout;
        Ok(Box::pin(async move {
            match pending.await {
                Ok(ack) => Ok(Ack {
                    duplicate: ack.duplicate,
                }),
                Err(e) => Err(classify(&e, timeout)),
            }
        }))
    }

    pub fn is_up(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Waits up to `nats.connect_timeout` for the background connection.
    pub(super) async fn wait_connected(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        while !self.is_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn max_message_bytes(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        }
    }

    pub async fn flush(&self, timeout: Duration) {
        if let Err(error) = tokio::time::timeout(timeout, self.client.flush()).await {
            tracing::warn!(%error, sink = "nats", "flush did not finish");
        }
    }
}

/// The server list of `nats.url`.
///
/// # Errors
/// A URL that does not parse, naming `nats.url`.
pub(super) fn server_addrs(config: &NatsConfig) -> Result<Vec<ServerAddr>, ConfigError> {
    config
        .url
        .split(',')
        .map(|u| {
            u.trim()
                .parse::<ServerAddr>()
                .map_err(|e| ConfigError::Invalid {
                    key: "nats.url",
                    message: format!("{:?} is not a NATS server URL: {e}", redact_url(u.trim())),
                })
        })
        .collect()
}

/// Client options for the `[nats]` section: name, connect timeout, authentication, TLS. Reads
/// and parses every file it names, so a bad file is reported here, naming its key. Every file
/// goes through the config's bounded reader first: a regular file of at most 1 MiB, so a
/// device or FIFO fails at once instead of hanging or filling memory.
///
/// # Errors
/// A TLS, NKey or credentials file that is missing, not a small regular file, or does not
/// parse.
pub(super) fn options(config: &NatsConfig) -> Result<async_nats::ConnectOptions, ConfigError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("hookbus")
        .connection_timeout(config.connect_timeout);
    if !config.user.is_empty() {
        options = options.user_and_password(config.user.clone(), config.password.clone());
    }
    if !config.token.is_empty() {
        options = options.token(config.token.clone());
    }
    if !config.nkey_seed_file.as_os_str().is_empty() {
        let seed = crate::config::files::read_at("nats.nkey_seed_file", &config.nkey_seed_file)?;
        let seed = seed.trim();
        nkeys::KeyPair::from_seed(seed).map_err(|e| ConfigError::Invalid {
            key: "nats.nkey_seed_file",
            message: format!(
                "{} does not hold an NKey seed (SU…): {e}",
                config.nkey_seed_file.display()
            ),
        })?;
        options = options.nkey(seed.to_owned());
    }
    if !config.credentials_file.as_os_str().is_empty() {
        let creds =
            crate::config::files::read_at("nats.credentials_file", &config.credentials_file)?;
        options = options
            .credentials(&creds)
            .map_err(|e| ConfigError::Invalid {
                key: "nats.credentials_file",
                message: format!(
                    "{} is not a NATS credentials file (JWT and NKey seed): {e}",
                    config.credentials_file.display()
                ),
            })?;
    }
    // The PEM checks and the client read these files by path themselves: the bounded read
    // comes first so that they only ever see a small regular file.
    for (key, path) in [
        ("nats.tls_ca_file", &config.tls_ca_file),
        ("nats.tls_cert_file", &config.tls_cert_file),
        ("nats.tls_key_file", &config.tls_key_file),
    ] {
        if !path.as_os_str().is_empty() {
            crate::config::files::read_at(key, path)?;
        }
    }
    if !config.tls_ca_file.as_os_str().is_empty() {
        super::tls::check_certificates("nats.tls_ca_file", &config.tls_ca_file)?;
        options = options.add_root_certificates(config.tls_ca_file.clone());
    }
    if !config.tls_cert_file.as_os_str().is_empty() {
        super::tls::check_certificates("nats.tls_cert_file", &config.tls_cert_file)?;
        super::tls::check_private_key("nats.tls_key_file", &config.tls_key_file)?;
        options = options
            .add_client_certificate(config.tls_cert_file.clone(), config.tls_key_file.clone());
    }
    if config.tls() {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Our header names, parsed once (no per-message parsing or validation).
fn header_name(name: &'static str) -> HeaderName {
    static NAMES: std::sync::LazyLock<Vec<HeaderName>> = std::sync::LazyLock::new(|| {
        crate::message::HEADER_NAMES
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect()
    });
    crate::message::header_index(name)
        .map_or_else(|| HeaderName::from_static(name), |i| NAMES[i].clone())
}

/// A header value NATS can carry: async-nats panics on CR or LF, which a header line cannot
/// hold. The normalizer already rejects control characters in ids, channels and sub_keys;
/// this keeps any other value (e.g. an error message) from ever reaching that panic.
fn header_value(value: &str) -> HeaderValue {
    // A byte scan: `contains([..])` on chars decodes UTF-8 and is several times slower.
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        HeaderValue::from(value.replace(['\r', '\n'], " "))
    } else {
        HeaderValue::from(value)
    }
}

/// The one place NATS errors become [`SinkError`] classes.
fn classify(error: &async_nats::jetstream::context::PublishError, timeout: Duration) -> SinkError {
    use async_nats::jetstream::ErrorCode;
    let text = error.to_string();
    match error.kind() {
        PublishErrorKind::TimedOut => SinkError::Timeout(timeout),
        PublishErrorKind::MaxPayloadExceeded => SinkError::Permanent(text),
        // No stream for the subject: an operator can fix it (create or widen the stream).
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => SinkError::Retriable(text),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            SinkError::Permanent(text)
        }
        PublishErrorKind::Other => {
            let code = std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
                .map(async_nats::jetstream::Error::error_code);
            match code {
                // This message can never be stored in this stream (its max_msg_size).
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                | Some(ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => SinkError::Permanent(text),
                // Storage full, account limits: these clear up.
                _ => SinkError::Retriable(text),
            }
        }
    }
}

/// Confirmations for core NATS (`nats.jetstream = false`), which has no per-message ack: a
/// message counts as confirmed once a round trip through the server that was sent after it
/// has come back, since the server handles one connection's messages in order. One round trip
/// (a request to a subject nobody serves, answered "no responders" by the server itself)
/// covers every message sent before it.
struct CoreConfirms {
    /// Messages handed to the client so far.
    sent: AtomicU64,
    /// Messages the server is known to have, by a completed round trip.
    confirmed: watch::Sender<u64>,
    kick: Arc<Notify>,
}

impl CoreConfirms {
    fn start(client: async_nats::Client, timeout: Duration) -> Arc<CoreConfirms> {
        let confirms = Arc::new(CoreConfirms {
            sent: AtomicU64::new(0),
            confirmed: watch::channel(0).0,
            kick: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&confirms);
        let subject = format!("{}.hookbus-confirm", client.new_inbox());
        tokio::spawn(async move {
            loop {
                let Some(confirms) = weak.upgrade() else {
                    return;
                };
                let sent = confirms.sent.load(Ordering::SeqCst);
                if sent == *confirms.confirmed.borrow() {
                    let kick = confirms.kick.clone();
                    drop(confirms);
                    // Wakes at least once a second to notice that the sink is gone.
                    let _ = tokio::time::timeout(Duration::from_secs(1), kick.notified()).await;
                    continue;
                }
                let round_trip = client.request(subject.clone(), bytes::Bytes::new());
                match tokio::time::timeout(timeout, round_trip).await {
                    Ok(Ok(_)) => confirms.confirmed.send_replace(sent),
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        confirms.confirmed.send_replace(sent)
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, sink = "nats", "confirmation round trip failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(_) => continue,
                };
            }
        });
        confirms
    }

    /// The confirmation of the message just handed to the client.
    fn confirm_sent(self: &Arc<Self>) -> Confirm {
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        self.kick.notify_one();
        let mut confirmed = self.confirmed.subscribe();
        Box::pin(async move {
            confirmed
                .wait_for(|&c| c >= n)
                .await
                .map(|_| Ack::default())
                .map_err(|_| SinkError::Retriable("NATS client stopped".to_owned()))
        })
    }
}

/// A plain client with the sink's connection settings (TLS, credentials, timeouts), for the
/// roster's store and input; reconnects in the background.
///
/// # Errors
/// An unparsable `nats.url`, unreadable TLS/NKey/credentials files, or no server reachable
/// within `nats.connect_timeout`.
pub async fn client(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let addrs = server_addrs(config)?;
    let client = options(config)?
        .name(name)
        .event_callback(|event| async move {
            let event = redact_urls(&event.to_string());
            tracing::info!(%event, "nats connection event");
        })
        .connect(addrs)
        .await?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_carry_line_breaks() {
        assert_eq!(header_value("a\r\nb").as_str(), "a  b");
        assert_eq!(header_value("room.lobby").as_str(), "room.lobby");
        assert_eq!(
            header_name(crate::message::HEADER_CHANNEL).to_string(),
            "hookbus-channel"
        );
    }
}
