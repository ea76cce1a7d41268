//! Pure normalization: one webhook request body → the normalized presence events it carries.
//!
//! Owns the [`Event`] type (the published message value, docs/events.md), generation detection and
//! the 400 rules (docs/events.md). One file per PubNub generation. Must stay synchronous and free of
//! I/O: no tokio, hyper or broker crate, no clock (the receive time is passed in).

pub mod bounded;
mod envelope;
mod error;
mod events_and_actions;
mod fields;
mod g1;
mod g2;
mod raw;
mod time;
mod wire;

pub use time::rfc3339_ms;

#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

pub use error::NormalizeError;

use fields::{Object, kind_of, snippet};

/// Value of the `schema` field of every normalized event; bumped on any breaking change.
pub const SCHEMA: &str = "hookbus.presence.v1";

/// Value of the `source` field of every normalized event.
const SOURCE: &str = "pubnub";

/// What happened to the channel or user; the `{action}` of the routing template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A user subscribed to the channel.
    Join,
    /// A user unsubscribed explicitly.
    Leave,
    /// A user stopped sending heartbeats.
    Timeout,
    /// A user's presence state on the channel changed.
    StateChange,
    /// The channel got its first occupant.
    Active,
    /// The channel lost its last occupant.
    Inactive,
    /// Periodic occupancy count (interval mode), possibly with join/leave/timeout deltas.
    Interval,
}

impl Action {
    /// Every action, in declaration order (metrics pre-create one series per value).
    pub const ALL: [Action; 7] = [
        Action::Join,
        Action::Leave,
        Action::Timeout,
        Action::StateChange,
        Action::Active,
        Action::Inactive,
        Action::Interval,
    ];

    /// The wire name: `join`, `leave`, `timeout`, `state-change`, `active`, `inactive`, `interval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Join => "join",
            Action::Leave => "leave",
            Action::Timeout => "timeout",
            Action::StateChange => "state-change",
            Action::Active => "active",
            Action::Inactive => "inactive",
            Action::Interval => "interval",
        }
    }

    /// The action whose wire name is exactly `name` (case-sensitive).
    fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The PubNub webhook generation an event was received in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Legacy Presence Webhooks: one flat object per request, `action` or `status`.
    G1,
    /// Legacy flat objects with `id`, `schema` and an ISO timestamp.
    G2,
    /// Events & Actions: `{"schema": …, "data": [items]}`, batched.
    EventsAndActions,
}

impl Format {
    /// Every format, in declaration order.
    pub const ALL: [Format; 3] = [Format::G1, Format::G2, Format::EventsAndActions];

    /// The wire name: `g1`, `g2`, `events-and-actions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::G1 => "g1",
            Format::G2 => "g2",
            Format::EventsAndActions => "events-and-actions",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One normalized presence event: the message value published to the broker (docs/events.md).
///
/// Serializes to the event JSON (with the constant `schema` and `source` fields, in the documented order) and
/// deserializes from it, so spooled events read back unchanged. `docs/event.schema.json`
/// describes the same JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "wire::WireEvent")]
pub struct Event {
    /// Dedup key: the PubNub item id, or for G1 the first 32 hex chars of SHA-256(body).
    pub id: String,
    /// Generation the event arrived in.
    pub format: Format,
    /// PubNub subscribe key, when sent.
    pub sub_key: Option<String>,
    /// Raw channel name: non-empty, no control characters.
    pub channel: String,
    /// What happened.
    pub action: Action,
    /// The user the event is about (none for channel events).
    pub uuid: Option<String>,
    /// Channel occupancy after the event, when sent.
    pub occupancy: Option<u64>,
    /// Event time, Unix seconds.
    pub timestamp: i64,
    /// Event time, Unix milliseconds; `None` when the source gives whole seconds only.
    pub timestamp_ms: Option<i64>,
    /// When hookbus received the request, Unix milliseconds.
    pub received_at_ms: u64,
    /// The user state as sent (`{}` stays `{}`); `None` only when absent.
    pub state: Option<State>,
    /// Interval deltas; `None` when the event carries no delta array.
    pub delta: Option<Delta>,
    /// Interval mode: the delta was too large to send, consumers should call Here Now.
    pub here_now_refresh: bool,
}

/// A user's presence state: compact JSON text (what `Value::to_string` would print, order
/// kept), held as text rather than as a tree, so events waiting to be published cost what
/// their state's text costs.
#[derive(Debug, Clone)]
pub struct State(Box<RawValue>);

impl State {
    /// The state of a parsed value.
    pub fn from_value(value: &Value) -> State {
        // Cannot fail: a `Value` always serializes, and its output is valid JSON.
        let text = value.to_string();
        State(RawValue::from_string(text).unwrap_or_else(|_| null_raw()))
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The state parsed (tests and consumers that inspect it).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_default()
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Read back through a `Value` so that any deserializer works (a spooled event's state is
/// the bounded state a webhook carried).
impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<State, D::Error> {
        Value::deserialize(de).map(|value| State::from_value(&value))
    }
}

/// Users who joined, left and timed out since the previous interval event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delta {
    /// User ids that joined.
    pub join: Vec<String>,
    /// User ids that left.
    pub leave: Vec<String>,
    /// User ids that timed out.
    pub timeout: Vec<String>,
}

impl Event {
    /// The message value: the event JSON, fields in the documented order, absent fields as `null`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.id.len()
                + self.channel.len()
                + self.uuid.as_ref().map_or(0, String::len)
                + self.state.as_ref().map_or(0, |s| s.as_str().len()),
        );
        wire::write(self, &mut out);
        out
    }
}

/// Parses one webhook request body into the events it carries, in body order, all or
/// nothing: the first invalid batch item rejects the body (see [`normalize_items`] for the
/// item-by-item form the ingress uses).
///
/// # Errors
/// As [`normalize_items`], plus the first invalid item of an Events & Actions batch, named
/// `data[i]: …`.
pub fn normalize(body: &[u8], received_at_ms: u64) -> Result<Vec<Event>, NormalizeError> {
    let normalized = normalize_items(body, received_at_ms, usize::MAX)?;
    match normalized.rejected.into_iter().next() {
        Some(rejected) => Err(rejected.error),
        None => Ok(normalized.events),
    }
}

/// What one request body holds: its valid events, and the items of an Events & Actions batch
/// that are invalid on their own.
#[derive(Debug, Default)]
pub struct Normalized {
    pub events: Vec<Event>,
    pub rejected: Vec<Rejected>,
    /// An Events & Actions batch's `schema` (or `dataSchema`) text, when some item was
    /// rejected: an item's action comes from it, so a dead-lettered item carries it to be
    /// normalized again on its own.
    pub schema: Option<String>,
}

/// An invalid item of a valid Events & Actions batch.
#[derive(Debug)]
pub struct Rejected {
    /// Its position in `data`.
    pub index: usize,
    /// Where its raw JSON text sits in the body, so it can be kept byte-identical.
    pub span: Range<usize>,
    /// What is wrong with it (the message names `data[i]`).
    pub error: NormalizeError,
}

/// Parses one webhook request body item by item.
///
/// The generation is detected per body: an object with `schema`/`dataSchema` and a `data`
/// array is Events & Actions (also inside an envelope, see [`envelope`]); `schema` + `id` is
/// G2; `action` or `status` is G1. `received_at_ms` is copied into every event. An Events &
/// Actions body with `data: []` yields no events. Inside a batch each item stands alone: an
/// invalid one is returned in [`Normalized::rejected`] and the others are normalized.
///
/// # Errors
/// Every [`NormalizeError`] means the whole body is invalid (HTTP 400): invalid UTF-8,
/// malformed JSON (lone surrogates and numbers beyond f64 included), a body that is not an
/// object, an unknown generation or event kind, or, for a single event, a missing/empty/
/// control-character channel, a missing timestamp, or a number out of range; and
/// `TooManyItems` for a batch of more than `max_items` (counted before any item is parsed).
pub fn normalize_items(
    body: &[u8],
    received_at_ms: u64,
    max_items: usize,
) -> Result<Normalized, NormalizeError> {
    let text = std::str::from_utf8(body).map_err(|e| NormalizeError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_ascii().is_empty() {
        return Err(NormalizeError::EmptyBody);
    }
    if let Some(event) = g1::fast(text, body, received_at_ms) {
        return Ok(Normalized {
            events: vec![event],
            ..Normalized::default()
        });
    }
    normalize_general(text, body, received_at_ms, max_items)
}

/// [`normalize_items`] without the plain G1 path: every generation through the raw object.
fn normalize_general(
    text: &str,
    body: &[u8],
    received_at_ms: u64,
    max_items: usize,
) -> Result<Normalized, NormalizeError> {
    let top = raw::object(text, "body")?;
    // One node budget for a single event's body; a batch gives each item its own.
    let budget = bounded::Budget::new();
    let (inner, unwrapped) = envelope::unwrap(top, &budget)?;
    let (object, data) = raw::split_data(inner, &budget)?;
    let single = |event: Result<Event, NormalizeError>| {
        event.map(|event| Normalized {
            events: vec![event],
            ..Normalized::default()
        })
    };
    match unwrapped {
        envelope::Unwrapped::V1 { action, item } => single(events_and_actions::normalize_one(
            item,
            action,
            body,
            received_at_ms,
            &budget,
        )),
        envelope::Unwrapped::None | envelope::Unwrapped::Payload { .. } => {
            let envelope_id = match &unwrapped {
                envelope::Unwrapped::Payload { id } => id.clone(),
                _ => None,
            };
            match detect(&object, data.as_ref())? {
                Detected::EventsAndActions(action) => {
                    let items = raw::items(data.as_ref(), max_items)?;
                    if items.count > max_items {
                        return Err(NormalizeError::TooManyItems {
                            count: items.count,
                            max: max_items,
                        });
                    }
                    let mut normalized = events_and_actions::normalize(
                        items.items,
                        action,
                        body,
                        envelope_id,
                        received_at_ms,
                    );
                    // Only a batch with refused items needs it (their dead letters carry it).
                    if !normalized.rejected.is_empty() {
                        normalized.schema = SCHEMA_KEYS
                            .iter()
                            .find_map(|&key| object.get(key).and_then(Value::as_str))
                            .map(str::to_owned);
                    }
                    Ok(normalized)
                }
                Detected::G2(action) => {
                    let object = raw::with_data(object, data, &budget)?;
                    single(g2::normalize(object, action, body, received_at_ms, &budget))
                }
                Detected::G1 => {
                    let object = raw::with_data(object, data, &budget)?;
                    single(g1::normalize(object, body, received_at_ms, &budget))
                }
            }
        }
    }
}

/// One item of an Events & Actions batch on its own, as the batch would have normalized it:
/// `schema` is the batch's schema text, `index` the item's place in `data`, and `batch` the
/// SHA-256 of the whole batch body ([`batch_digest`]), which names an item that has no `id`
/// (`None`: such an item is refused). Dead-letter replay runs a dead-lettered item through
/// this.
///
/// # Errors
/// What the batch would have refused the item for, named `data[index]`; an unknown schema.
pub fn normalize_item(
    item: &[u8],
    schema: &str,
    index: usize,
    batch: Option<&[u8; 32]>,
    received_at_ms: u64,
) -> Result<Event, NormalizeError> {
    let action =
        action_from_schema(schema).ok_or_else(|| NormalizeError::UnknownEvent(snippet(schema)))?;
    let text = std::str::from_utf8(item).map_err(|e| NormalizeError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    events_and_actions::normalize_alone(text, action, index, batch, received_at_ms)
        .map_err(|error| error.in_item(index))
}

/// The SHA-256 of a batch body: with an item's index, the id of an item that has none.
pub fn batch_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The generation of a body, with the action named by its schema where it has one.
enum Detected {
    G1,
    G2(Action),
    EventsAndActions(Action),
}

/// Keys that the schema name of a G2 or Events & Actions body may be sent under.
const SCHEMA_KEYS: [&str; 2] = ["schema", "dataSchema"];

/// `object` is the body without its `data`, which `data` holds unparsed.
fn detect(object: &Object, data: Option<&raw::Data<'_>>) -> Result<Detected, NormalizeError> {
    let present = |key: &str| object.get(key).is_some_and(|v| !v.is_null());
    let schema = SCHEMA_KEYS
        .iter()
        .find_map(|&key| object.get(key).filter(|v| !v.is_null()).map(|v| (key, v)));
    let Some((schema_key, schema)) = schema else {
        if present("action") || present("status") {
            return Ok(Detected::G1);
        }
        return Err(NormalizeError::UnknownFormat);
    };
    let is_batch = data.is_some_and(raw::Data::is_array);
    if !is_batch && !present("id") {
        if present("action") || present("status") {
            return Ok(Detected::G1);
        }
        return Err(match data {
            None => NormalizeError::Missing {
                field: "data".into(),
            },
            Some(data) if data.is_null() => NormalizeError::Missing {
                field: "data".into(),
            },
            Some(data) => NormalizeError::Invalid {
                field: "data".into(),
                reason: format!("expected an array of events, got {}", data.kind()),
            },
        });
    }
    let Value::String(name) = schema else {
        return Err(NormalizeError::Invalid {
            field: schema_key.into(),
            reason: format!("expected a string, got {}", kind_of(schema)),
        });
    };
    let action =
        action_from_schema(name).ok_or_else(|| NormalizeError::UnknownEvent(snippet(name)))?;
    Ok(if is_batch {
        Detected::EventsAndActions(action)
    } else {
        Detected::G2(action)
    })
}

/// Events & Actions event names (also used by G2 `schema`) and the action each maps to.
const EVENT_NAMES: [(&str, Action); 7] = [
    ("presence.user.channel.joined", Action::Join),
    ("presence.user.channel.left", Action::Leave),
    ("presence.user.timedout.in.channel", Action::Timeout),
    (
        "presence.channel.user.state.in.changed",
        Action::StateChange,
    ),
    ("presence.channel.state.inactive", Action::Inactive),
    ("presence.channel.state.active", Action::Active),
    ("presence.channel.occupancy.counted", Action::Interval),
];

/// Finds a known event name inside a schema string such as
/// `pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0`.
///
/// Substring match, because official samples double the prefix and vary the version; the name
/// must not be glued to letters or digits on either side (`…joinedx` is not `joined`).
fn action_from_schema(schema: &str) -> Option<Action> {
    let bytes = schema.as_bytes();
    EVENT_NAMES.iter().find_map(|&(name, action)| {
        schema
            .match_indices(name)
            .any(|(start, _)| {
                let end = start + name.len();
                let before = start.checked_sub(1).and_then(|i| bytes.get(i));
                let after = bytes.get(end);
                !before.is_some_and(u8::is_ascii_alphanumeric)
                    && !after.is_some_and(u8::is_ascii_alphanumeric)
            })
            .then_some(action)
    })
}

/// First 32 lowercase hex chars of SHA-256 of `data`: the G1 event id, and the key of a
/// dead-lettered body.
pub fn body_id(data: &[u8]) -> String {
    hex32(&Sha256::digest(data))
}

/// [`body_id`] from the body's [`batch_digest`], for a caller that needs both.
pub fn body_id_of(digest: &[u8; 32]) -> String {
    hex32(digest)
}

/// Lowercase hex of the first 16 bytes of a digest.
fn hex32(digest: &[u8]) -> String {
    crate::text::hex(&digest[..digest.len().min(16)])
}
