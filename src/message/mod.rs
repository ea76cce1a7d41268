//! The outgoing message, its one home: the [`Message`] a sink sends, the header-name table
//! (spool records store a header as its index there), the CloudEvents header names, the one
//! step from a normalized event to its message ([`event`]) and the one dead-letter builder
//! ([`dead_letter`]), and where dead letters go when the broker cannot take them
//! ([`DeadLetterDir`], [`DeadLetterBudget`]). Pure but for `DeadLetterDir`'s file writes; it
//! imports no broker crate, and ingress, publisher and sinks all import it.

mod dead_letters;

use bytes::Bytes;

pub use dead_letters::{
    DEAD_LETTER_OVERHEAD, DROPPED_LOG, DeadLetterBudget, DeadLetterDir, DeadLetterError, DiskMeta,
};

use crate::normalize::{self, Event};
use crate::route::{RouteError, Router};

/// Header names of the normalized-event message.
pub const HEADER_EVENT_ID: &str = "hookbus-event-id";
pub const HEADER_ACTION: &str = "hookbus-action";
pub const HEADER_CHANNEL: &str = "hookbus-channel";
pub const HEADER_SUB_KEY: &str = "hookbus-sub-key";
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// On dead letters: why the body was rejected.
pub const HEADER_DEAD_LETTER_REASON: &str = "hookbus-dead-letter-reason";
/// On dead letters: the human-readable error that was sent to the client.
pub const HEADER_DEAD_LETTER_ERROR: &str = "hookbus-dead-letter-error";
/// On dead-lettered batch items: the item's position in the batch's `data` array.
pub const HEADER_DEAD_LETTER_INDEX: &str = "hookbus-dead-letter-index";
/// On dead-lettered batch items: the batch's `schema` text (the item's action comes from it).
pub const HEADER_DEAD_LETTER_SCHEMA: &str = "hookbus-dead-letter-schema";
/// On dead-lettered batch items: the hex SHA-256 of the whole batch body (with the index, the
/// id of an item that has none).
pub const HEADER_DEAD_LETTER_BATCH: &str = "hookbus-dead-letter-batch";

/// CloudEvents 1.0 attributes as binary-mode headers: the Kafka protocol binding's `ce_`
/// prefix, and the `ce-` prefix of the NATS (and HTTP) binding. `datacontenttype` travels as
/// `content-type` in both.
pub mod cloudevents {
    /// specversion, id, source, type, time, subject, dataschema.
    pub const KAFKA: [&str; 7] = [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "ce_dataschema",
    ];
    pub const NATS: [&str; 7] = [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-dataschema",
    ];
}

/// Every header name a message can carry, in a fixed order: spool records store a header as
/// its index here (append only, never reorder).
pub const HEADER_NAMES: [&str; 24] = [
    HEADER_EVENT_ID,
    HEADER_ACTION,
    HEADER_CHANNEL,
    HEADER_SUB_KEY,
    HEADER_CONTENT_TYPE,
    HEADER_DEAD_LETTER_REASON,
    HEADER_DEAD_LETTER_ERROR,
    HEADER_DEAD_LETTER_INDEX,
    cloudevents::KAFKA[0],
    cloudevents::KAFKA[1],
    cloudevents::KAFKA[2],
    cloudevents::KAFKA[3],
    cloudevents::KAFKA[4],
    cloudevents::KAFKA[5],
    cloudevents::KAFKA[6],
    cloudevents::NATS[0],
    cloudevents::NATS[1],
    cloudevents::NATS[2],
    cloudevents::NATS[3],
    cloudevents::NATS[4],
    cloudevents::NATS[5],
    cloudevents::NATS[6],
    HEADER_DEAD_LETTER_SCHEMA,
    HEADER_DEAD_LETTER_BATCH,
];

/// The index of `name` in [`HEADER_NAMES`] (by pointer first: callers pass the constants).
pub fn header_index(name: &str) -> Option<usize> {
    HEADER_NAMES
        .iter()
        .position(|n| std::ptr::eq(*n, name))
        .or_else(|| HEADER_NAMES.iter().position(|n| *n == name))
}

/// One message for the broker, already routed.
#[derive(Debug, Clone)]
pub struct Message {
    /// Kafka topic / NATS subject.
    pub topic: String,
    /// Kafka record key (the raw channel name); NATS has none.
    pub key: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Bytes,
    /// JetStream `Nats-Msg-Id` (the event id); `None` for dead letters.
    pub msg_id: Option<String>,
    /// The payload is the normalized-event JSON (not a raw dead-letter body).
    pub is_event: bool,
}

impl Message {
    /// The bytes that count against a broker's message limit (Kafka's `message.max.bytes`,
    /// NATS' `max_payload`): payload, key, and every header's name and value. Ingress and the
    /// sinks compare the same figure.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum::<usize>()
    }
}

/// Why a message is a dead letter (`hookbus-dead-letter-reason`, and the `reason` label of
/// `hookbus_dead_letters_total`).
pub struct DeadLetter<'a> {
    /// `invalid_payload`, `invalid_item`, `unroutable`, `publish_failed`, `too_large`.
    pub reason: &'a str,
    /// The error sent to the client, or the broker's (cut to 512 bytes).
    pub error: &'a str,
    /// For a batch item, its position in `data`.
    pub index: Option<usize>,
    /// For a batch item, the batch's `schema` text and the hex SHA-256 of the batch body.
    pub batch: Option<(&'a str, &'a str)>,
}

/// The message for `event`: routed by `router`, the event JSON as payload, the contract's headers
/// and, with `cloudevents` (the sink's header names), the CloudEvents attributes.
///
/// # Errors
/// A name no broker would accept (see [`RouteError`]).
pub fn event(
    router: &Router,
    event: &Event,
    cloudevents: Option<&'static [&'static str; 7]>,
) -> Result<Message, RouteError> {
    let topic = router.name(event)?;
    let mut headers = Vec::with_capacity(5);
    headers.push((HEADER_EVENT_ID, event.id.clone()));
    headers.push((HEADER_ACTION, event.action.as_str().to_owned()));
    headers.push((HEADER_CHANNEL, event.channel.clone()));
    if let Some(sub_key) = &event.sub_key {
        headers.push((HEADER_SUB_KEY, sub_key.clone()));
    }
    headers.push((HEADER_CONTENT_TYPE, "application/json".to_owned()));
    if let Some(names) = cloudevents {
        headers.extend(cloudevent_headers(names, event));
    }
    Ok(Message {
        topic,
        key: Some(event.channel.clone()),
        headers,
        payload: Bytes::from(event.to_json()),
        msg_id: Some(event.id.clone()),
        is_event: true,
    })
}

/// The dead letter carrying `payload` as it came (a rejected body or item, or the message the
/// broker refused) to `topic` (`routing.dead_letter`), with `key` and `msg_id` (the id the
/// broker deduplicates it by).
pub fn dead_letter(
    payload: Bytes,
    why: &DeadLetter<'_>,
    topic: &str,
    key: Option<String>,
    msg_id: Option<String>,
) -> Message {
    let mut headers = vec![
        (HEADER_DEAD_LETTER_REASON, why.reason.to_owned()),
        (
            HEADER_DEAD_LETTER_ERROR,
            crate::text::truncate(why.error, 512).to_owned(),
        ),
    ];
    if let Some(index) = why.index {
        headers.push((HEADER_DEAD_LETTER_INDEX, index.to_string()));
    }
    if let Some((schema, digest)) = why.batch {
        headers.push((
            HEADER_DEAD_LETTER_SCHEMA,
            crate::text::truncate(schema, 512).to_owned(),
        ));
        headers.push((HEADER_DEAD_LETTER_BATCH, digest.to_owned()));
    }
    Message {
        topic: topic.to_owned(),
        key,
        headers,
        payload,
        msg_id,
        is_event: false,
    }
}

/// The CloudEvents 1.0 binary-mode attributes of `event` (`names` per the sink's protocol
/// binding): `datacontenttype` is the `content-type` header every event message has.
fn cloudevent_headers(names: &[&'static str; 7], event: &Event) -> [(&'static str, String); 7] {
    let time = event
        .timestamp_ms
        .unwrap_or_else(|| event.timestamp.saturating_mul(1000));
    [
        (names[0], "1.0".to_owned()),
        (names[1], event.id.clone()),
        (names[2], cloudevents_source(event.sub_key.as_deref())),
        (
            names[3],
            format!("com.pubnub.presence.{}", event.action.as_str()),
        ),
        (names[4], normalize::rfc3339_ms(time)),
        (names[5], event.channel.clone()),
        (names[6], CLOUDEVENTS_DATASCHEMA.to_owned()),
    ]
}

/// `source`: the PubNub keyset the event came from.
fn cloudevents_source(sub_key: Option<&str>) -> String {
    format!("urn:pubnub:keyset:{}", sub_key.unwrap_or("unknown"))
}

/// `dataschema`: the `$id` of `docs/event.schema.json`.
const CLOUDEVENTS_DATASCHEMA: &str = "urn:hookbus:schema:hookbus.presence.v1";
