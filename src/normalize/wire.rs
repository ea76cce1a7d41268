//! The wire form of [`Event`]: serialization in the contract's field order with the
//! constant `schema` and `source` fields, and the checked read-back used for spooled events.
//!
//! `write` is the hot path's serializer (`Event::to_json`); the serde `Serialize` impl, which
//! writes the same bytes, is the reference it is tested against and serves everything else.

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

/// Writes `event`'s JSON into `out`: the bytes `serde_json::to_vec` writes for it (a test
/// holds them equal), without serde's per-field machinery. The hot path's serializer.
pub(super) fn write(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"schema\":");
    push_str(out, SCHEMA);
    out.extend_from_slice(b",\"id\":");
    push_str(out, &event.id);
    out.extend_from_slice(b",\"source\":");
    push_str(out, SOURCE);
    out.extend_from_slice(b",\"format\":");
    push_str(out, event.format.as_str());
    out.extend_from_slice(b",\"sub_key\":");
    push_opt_str(out, event.sub_key.as_deref());
    out.extend_from_slice(b",\"channel\":");
    push_str(out, &event.channel);
    out.extend_from_slice(b",\"action\":");
    push_str(out, event.action.as_str());
    out.extend_from_slice(b",\"uuid\":");
    push_opt_str(out, event.uuid.as_deref());
    out.extend_from_slice(b",\"occupancy\":");
    push_opt_int(out, event.occupancy);
    out.extend_from_slice(b",\"timestamp\":");
    push_int(out, event.timestamp);
    out.extend_from_slice(b",\"timestamp_ms\":");
    push_opt_int(out, event.timestamp_ms);
    out.extend_from_slice(b",\"received_at_ms\":");
    push_int(out, event.received_at_ms);
    out.extend_from_slice(b",\"state\":");
    match &event.state {
        Some(state) => out.extend_from_slice(state.as_str().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"delta\":");
    match &event.delta {
        Some(delta) => {
            out.extend_from_slice(b"{\"join\":");
            push_list(out, &delta.join);
            out.extend_from_slice(b",\"leave\":");
            push_list(out, &delta.leave);
            out.extend_from_slice(b",\"timeout\":");
            push_list(out, &delta.timeout);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"here_now_refresh\":");
    out.extend_from_slice(if event.here_now_refresh {
        b"true"
    } else {
        b"false"
    });
    out.push(b'}');
}

fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_opt_int(out: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => push_int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_list(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, item);
    }
    out.push(b']');
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, the short escapes for
/// backspace, form feed, newline, carriage return and tab, `\u00xx` (lowercase) for the other
/// control characters, everything else as it is.
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(escape);
        if escape == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}
