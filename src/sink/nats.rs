//! NATS sink: core publish, or JetStream (default) with `Nats-Msg-Id` = event id and an
//! awaited PubAck, so the stream drops the copies a retry or a replay would add. The stream is
//! created if missing with `duplicate_window` = `dedup.window`.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue, ServerAddr};

use super::{Ack, Confirm, Message, SinkError};
use crate::config::{NatsConfig, SinkConfig};

/// NATS' default `max_payload`, used until the server has said otherwise.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

pub struct NatsSink {
    client: async_nats::Client,
    jetstream: Option<jetstream::Context>,
    stream: String,
    subjects: Vec<String>,
    dedup_window: Duration,
    timeout: Duration,
}

impl NatsSink {
    /// Creates the client; the connection is made (and re-made) in the background.
    ///
    /// # Errors
    /// An unparsable `nats.url`.
    pub async fn connect(
        config: &NatsConfig,
        sink: &SinkConfig,
        dedup_window: Duration,
        subjects: Vec<String>,
    ) -> anyhow::Result<NatsSink> {
        let addrs = config
            .url
            .split(',')
            .map(|u| u.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("nats.url {:?}: {e}", config.url))?;
        let mut options = async_nats::ConnectOptions::new()
            .name("hookbus")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(sink.timeout))
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                tracing::info!(%event, sink = "nats", "connection event");
            });
        if !config.user.is_empty() {
            options = options.user_and_password(config.user.clone(), config.password.clone());
        }
        let client = options.connect(addrs).await?;
        let jetstream = config.jetstream.then(|| {
            jetstream::ContextBuilder::new()
                .timeout(sink.timeout)
                .max_ack_inflight(sink.max_in_flight.max(1))
                .backpressure_on_inflight(true)
                .build(client.clone())
        });
        Ok(NatsSink {
            client,
            jetstream,
            stream: config.stream.clone(),
            subjects,
            dedup_window,
            timeout: sink.timeout,
        })
    }

    /// Creates the stream if missing; warns when an existing one has a shorter duplicate window
    /// than `dedup.window` or does not cover our subjects.
    pub async fn prepare(&self) -> Result<Vec<String>, SinkError> {
        let Some(js) = &self.jetstream else {
            return Ok(Vec::new());
        };
        let mut warnings = Vec::new();
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: self.subjects.clone(),
            duplicate_window: self.dedup_window,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        // Returns the existing stream untouched when there is one: its owner's settings win.
        let mut existing = js.get_or_create_stream(config).await.map_err(|e| {
            SinkError::Retriable(format!("get or create stream {}: {e}", self.stream))
        })?;
        let info = existing
            .info()
            .await
            .map_err(|e| SinkError::Retriable(format!("stream info: {e}")))?;
        if info.config.duplicate_window < self.dedup_window {
            warnings.push(format!(
                "JetStream stream {} has duplicate_window {:?}, shorter than dedup.window {:?}: \
                 replays and retries older than that are not deduplicated by the broker",
                self.stream, info.config.duplicate_window, self.dedup_window
            ));
        }
        for subject in &self.subjects {
            let covered = info
                .config
                .subjects
                .iter()
                .any(|s| s == subject || s == ">");
            if !covered {
                warnings.push(format!(
                    "JetStream stream {} does not list subject {subject}: publishes there fail",
                    self.stream
                ));
            }
        }
        Ok(warnings)
    }

    pub async fn send(&self, message: &Message) -> Result<Confirm, SinkError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(header_name(name), header_value(value));
        }
        let Some(js) = &self.jetstream else {
            self.client
                .publish_with_headers(message.topic.clone(), headers, message.payload.clone())
                .await
                .map_err(|e| SinkError::Retriable(e.to_string()))?;
            return Ok(Box::pin(async { Ok(Ack::default()) }));
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
            .map_err(|e| classify(e.kind(), &e.to_string(), self.timeout))?;
        let timeout = self.timeout;
        Ok(Box::pin(async move {
            match pending.await {
                Ok(ack) => Ok(Ack {
                    duplicate: ack.duplicate,
                }),
                Err(e) => Err(classify(e.kind(), &e.to_string(), timeout)),
            }
        }))
    }

    pub fn is_up(&self) -> bool {
        self.client.connection_state() == State::Connected
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

/// Our header names, resolved at compile time (no per-message parsing or validation).
fn header_name(name: &'static str) -> HeaderName {
    use crate::sink as h;
    const NAMES: [(&str, HeaderName); 7] = [
        (
            h::HEADER_EVENT_ID,
            HeaderName::from_static(h::HEADER_EVENT_ID),
        ),
        (h::HEADER_ACTION, HeaderName::from_static(h::HEADER_ACTION)),
        (
            h::HEADER_CHANNEL,
            HeaderName::from_static(h::HEADER_CHANNEL),
        ),
        (
            h::HEADER_SUB_KEY,
            HeaderName::from_static(h::HEADER_SUB_KEY),
        ),
        (
            h::HEADER_CONTENT_TYPE,
            HeaderName::from_static(h::HEADER_CONTENT_TYPE),
        ),
        (
            h::HEADER_DEAD_LETTER_REASON,
            HeaderName::from_static(h::HEADER_DEAD_LETTER_REASON),
        ),
        (
            h::HEADER_DEAD_LETTER_ERROR,
            HeaderName::from_static(h::HEADER_DEAD_LETTER_ERROR),
        ),
    ];
    NAMES
        .iter()
        .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
        .map_or_else(|| HeaderName::from_static(name), |(_, h)| h.clone())
}

/// A header value NATS can carry: async-nats panics on CR or LF, which a header line cannot
/// hold. The normalizer already rejects control characters in ids, channels and sub_keys;
/// this keeps any other value (e.g. an error message) from ever reaching that panic.
fn header_value(value: &str) -> HeaderValue {
    if value.contains(['\r', '\n']) {
        HeaderValue::from(value.replace(['\r', '\n'], " "))
    } else {
        HeaderValue::from(value)
    }
}

/// The one place NATS errors become [`SinkError`] classes.
fn classify(kind: PublishErrorKind, text: &str, timeout: Duration) -> SinkError {
    match kind {
        PublishErrorKind::TimedOut => SinkError::Timeout(timeout),
        PublishErrorKind::MaxPayloadExceeded => SinkError::Permanent(text.to_owned()),
        // No stream for the subject: an operator can fix it (create or widen the stream).
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => SinkError::Retriable(text.to_owned()),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            SinkError::Permanent(text.to_owned())
        }
        // Server-side errors (storage full, account limits) usually clear up.
        PublishErrorKind::Other => SinkError::Retriable(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_carry_line_breaks() {
        assert_eq!(header_value("a\r\nb").as_str(), "a  b");
        assert_eq!(header_value("room.lobby").as_str(), "room.lobby");
        assert_eq!(
            header_name(crate::sink::HEADER_CHANNEL).to_string(),
            "hookbus-channel"
        );
    }
}
