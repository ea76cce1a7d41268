//! The wire form of [`Event`]: serialization in the contract's field order with the
//! constant `schema` and `source` fields, and the checked read-back used for spooled events.
//!
//! Borrowing serializer (no clone per event); `Event::to_json` is the only caller on the hot path.

use serde::{Deserialize, Serialize, Serializer};

use super::{Action, Delta, Event, Format, SCHEMA, SOURCE, State};

/// The field order, borrowed from an [`Event`], with the constant fields filled in.
#[derive(Serialize)]
struct WireEventRef<'a> {
    schema: &'static str,
    id: &'a str,
    source: &'static str,
    format: Format,
    sub_key: Option<&'a str>,
    channel: &'a str,
    action: Action,
    uuid: Option<&'a str>,
    occupancy: Option<u64>,
    timestamp: i64,
    timestamp_ms: Option<i64>,
    received_at_ms: u64,
    state: Option<&'a State>,
    delta: Option<&'a Delta>,
    here_now_refresh: bool,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireEventRef {
            schema: SCHEMA,
            id: &self.id,
            source: SOURCE,
            format: self.format,
            sub_key: self.sub_key.as_deref(),
            channel: &self.channel,
            action: self.action,
            uuid: self.uuid.as_deref(),
            occupancy: self.occupancy,
            timestamp: self.timestamp,
            timestamp_ms: self.timestamp_ms,
            received_at_ms: self.received_at_ms,
            state: self.state.as_ref(),
            delta: self.delta.as_ref(),
            here_now_refresh: self.here_now_refresh,
        }
        .serialize(serializer)
    }
}

/// The event JSON as read back; `schema` and `source` are optional but checked when present.
#[derive(Deserialize)]
pub(super) struct WireEvent {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    source: Option<String>,
    id: String,
    format: Format,
    #[serde(default)]
    sub_key: Option<String>,
    channel: String,
    action: Action,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    occupancy: Option<u64>,
    timestamp: i64,
    #[serde(default)]
    timestamp_ms: Option<i64>,
    received_at_ms: u64,
    #[serde(default)]
    state: Option<State>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    here_now_refresh: bool,
}

impl TryFrom<WireEvent> for Event {
    type Error = String;

    fn try_from(w: WireEvent) -> Result<Self, Self::Error> {
        if let Some(schema) = w.schema.as_deref().filter(|s| *s != SCHEMA) {
            return Err(format!(
                "unsupported event schema {schema:?}, expected {SCHEMA:?}"
            ));
        }
        if let Some(source) = w.source.as_deref().filter(|s| *s != SOURCE) {
            return Err(format!(
                "unsupported event source {source:?}, expected {SOURCE:?}"
            ));
        }
        Ok(Event {
            id: w.id,
            format: w.format,
            sub_key: w.sub_key,
            channel: w.channel,
            action: w.action,
            uuid: w.uuid,
            occupancy: w.occupancy,
            timestamp: w.timestamp,
            timestamp_ms: w.timestamp_ms,
            received_at_ms: w.received_at_ms,
            state: w.state,
            delta: w.delta,
            here_now_refresh: w.here_now_refresh,
        })
    }
}
