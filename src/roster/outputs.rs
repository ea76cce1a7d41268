//! The roster's optional outputs: a change event per member change (`roster.template`; Kafka
//! users get a compacted-topic view, consumers keep the highest `version` per key) and a
//! session event per ended stay (`roster.sessions`), published from the record the store
//! keeps, so a failure is retried by the sweep and a redelivered event publishes nothing.

use bytes::Bytes;
use serde_json::json;

use crate::message::{HEADER_CHANNEL, HEADER_CONTENT_TYPE, Message};
use crate::route::OutputTemplate;
use crate::sink::Sink;

use super::metrics::RosterMetrics;
use super::state::{Ended, Member, Summary};

/// The session event's schema name.
pub const SESSION_SCHEMA: &str = "hookbus.presence.session.v1";

/// Where outputs go.
pub enum Publisher {
    /// Both outputs are off.
    None,
    /// NATS: JetStream when a stream captures the subject (deduplicated by `Nats-Msg-Id`),
    /// else core NATS.
    Nats(Box<(async_nats::Client, async_nats::jetstream::Context)>),
    /// Kafka through the bridge's producer (topics created as `kafka.create_topics` says).
    Kafka(Box<Sink>),
}

pub struct Outputs {
    pub changes: Option<OutputTemplate>,
    pub sessions: Option<OutputTemplate>,
    pub publisher: Publisher,
    pub metrics: RosterMetrics,
}

impl Outputs {
    /// Publishes the change event of `uuid` (no-op when change events are off).
    pub async fn change(&self, summary: &Summary, uuid: &str, member: Option<&Member>) {
        let Some(template) = &self.changes else {
            return;
        };
        let present = member.is_some_and(|m| m.present);
        let body = json!({
            "channel": summary.channel,
            "uuid": uuid,
            "present": present,
            "state": member.filter(|m| m.present).and_then(|m| m.state.as_ref()),
            "since_ms": member.and_then(|m| m.since_ms),
            "last_ms": member.map(|m| m.last_ms),
            "occupancy": summary.occupancy,
            "version": summary.version,
        });
        let key = serde_json::to_string(&[summary.channel.as_str(), uuid]).unwrap_or_default();
        if self.send(template, &summary.channel, key, body, None).await {
            self.metrics.outputs.with_label_values(&["change"]).inc();
        }
    }

    /// Publishes the session event of an ended stay; `true` when it went out or sessions are
    /// off (either way the record may be marked published).
    pub async fn session(&self, channel: &str, uuid: &str, ended: &Ended) -> bool {
        let Some(template) = &self.sessions else {
            return true;
        };
        let id = session_id(channel, uuid, ended.since_ms);
        let body = json!({
            "schema": SESSION_SCHEMA,
            "channel": channel,
            "uuid": uuid,
            "since_ms": ended.since_ms,
            "until_ms": ended.until_ms,
            "duration_ms": ended.until_ms - ended.since_ms,
            "reason": ended.reason.as_str(),
            "id": id,
        });
        let sent = self
            .send(template, channel, channel.to_owned(), body, Some(id))
            .await;
        if sent {
            self.metrics.outputs.with_label_values(&["session"]).inc();
        }
        sent
    }

    async fn send(
        &self,
        template: &OutputTemplate,
        channel: &str,
        key: String,
        body: serde_json::Value,
        id: Option<String>,
    ) -> bool {
        let mut topic = String::new();
        if let Err(error) = template.render(channel, None, &mut topic) {
            tracing::warn!(%error, "roster output name");
            return false;
        }
        let message = Message {
            topic,
            key: Some(key),
            headers: vec![
                (HEADER_CHANNEL, channel.to_owned()),
                (HEADER_CONTENT_TYPE, "application/json".to_owned()),
            ],
            payload: Bytes::from(body.to_string()),
            msg_id: id,
            is_event: false,
        };
        let result = match &self.publisher {
            Publisher::None => return false,
            Publisher::Nats(nats) => send_nats(&nats.0, &nats.1, &message).await,
            Publisher::Kafka(sink) => send_kafka(sink, &message).await,
        };
        match result {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, topic = message.topic, "roster output not published");
                false
            }
        }
    }
}

/// The session event's `id`: the first 32 hex of SHA-256 of `channel\0uuid\0since_ms`.
pub fn session_id(channel: &str, uuid: &str, since_ms: i64) -> String {
    // The same digest as a G1 event's id.
    crate::normalize::body_id(format!("{channel}\0{uuid}\0{since_ms}").as_bytes())
}

async fn send_nats(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    message: &Message,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &message.headers {
        headers.insert(*name, value.as_str());
    }
    if let Some(id) = &message.msg_id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    }
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .headers(headers.clone())
        .payload(message.payload.clone());
    match js.send_publish(message.topic.clone(), publish).await {
        Ok(ack) => match ack.await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() != async_nats::jetstream::context::PublishErrorKind::StreamNotFound =>
            {
                return Err(e.to_string());
            }
            Err(_) => {}
        },
        Err(e) if e.kind() != async_nats::jetstream::context::PublishErrorKind::StreamNotFound => {
            return Err(e.to_string());
        }
        Err(_) => {}
    }
    // No stream captures the subject: a plain NATS message, for subscribers that are there.
    client
        .publish_with_headers(message.topic.clone(), headers, message.payload.clone())
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())
}

async fn send_kafka(sink: &Sink, message: &Message) -> Result<(), String> {
    if let Some(created) = sink.prepare_batch(std::iter::once(message.topic.as_str())) {
        created.await;
    }
    let confirm = sink.send(message).await.map_err(|e| e.to_string())?;
    confirm.await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn the_session_id_is_the_first_32_hex_of_sha256_of_channel_uuid_and_since() {
        let digest = Sha256::digest(b"room.b\x00u1\x001718035200000");
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::session_id("room.b", "u1", 1_718_035_200_000), hex);
    }
}
