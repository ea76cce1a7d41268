//! Events & Actions bodies wrapped in an envelope (PubNub's "Is Enveloped" option, envelope
//! versions 1.0, 2.0 and 2.1). What the envelope adds (listener and action metadata, a
//! `schema` naming the envelope itself) is ignored; the event inside is normalized exactly as
//! an unwrapped body:
//!
//! - 2.0 / 2.1: `{"event": {"id", …, "payload": {"schema"|"dataSchema", "data": [items]}}, …}`
//!   — the payload is an ordinary Events & Actions body; each item keeps its own `id` (the
//!   envelope's `event.id` stands in for a single item that has none).
//! - 1.0: `{"event": {"eventId", "eventType", "channel", "subscribeKey", "senderId",
//!   "iso8601timestamp", "timetoken", "eventPayload": {…}}, …}` — one event, its fields
//!   mapped onto an Events & Actions item.

use serde_json::Value;

use super::bounded::Budget;
use super::fields::Object;
use super::raw::{self, RawObject};
use super::{Action, NormalizeError, action_from_schema, snippet};

/// What [`unwrap`] found.
pub(super) enum Unwrapped {
    /// No envelope: the body is what it is.
    None,
    /// A 2.x envelope; the body returned is its payload.
    Payload { id: Option<String> },
    /// A 1.0 envelope: one event, as an Events & Actions item.
    V1 { action: Action, item: Object },
}

/// Takes an envelope off `top` when it has one.
///
/// # Errors
/// An envelope whose payload is not an object, or a 1.0 envelope whose `eventType` names no
/// presence event.
pub(super) fn unwrap<'a>(
    top: RawObject<'a>,
    budget: &Budget,
) -> Result<(RawObject<'a>, Unwrapped), NormalizeError> {
    let is_body = ["data", "action", "status"]
        .iter()
        .any(|k| top.contains_key(*k));
    let event = match top.get("event") {
        Some(event) if !is_body && event.get().trim_start().starts_with('{') => *event,
        _ => return Ok((top, Unwrapped::None)),
    };
    let event = raw::object(event.get(), "event")?;
    if let Some(payload) = event.get("payload") {
        let id = match event
            .get("id")
            .map(|id| raw::value_of(id, budget, "event.id"))
            .transpose()?
        {
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            _ => None,
        };
        let inner = raw::object(payload.get(), "event.payload")?;
        return Ok((inner, Unwrapped::Payload { id }));
    }
    if event.contains_key("eventType") {
        let event = raw::parse(event, budget)?;
        let (action, item) = v1_item(event)?;
        return Ok((RawObject::new(), Unwrapped::V1 { action, item }));
    }
    Ok((top, Unwrapped::None))
}

/// The Events & Actions item a 1.0 envelope stands for: `eventPayload`'s fields, with the
/// envelope's id, channel, keyset, sender and time where the payload has none.
fn v1_item(mut event: Object) -> Result<(Action, Object), NormalizeError> {
    let action = match event.get("eventType") {
        Some(Value::String(kind)) => {
            action_from_schema(kind).ok_or_else(|| NormalizeError::UnknownEvent(snippet(kind)))?
        }
        _ => {
            return Err(NormalizeError::Invalid {
                field: "event.eventType".into(),
                reason: "expected a string naming a presence event".into(),
            });
        }
    };
    let mut item = match event.remove("eventPayload") {
        Some(Value::Object(payload)) => payload,
        _ => Object::new(),
    };
    for (from, to) in [
        ("eventId", "id"),
        ("channel", "channel"),
        ("subscribeKey", "subKey"),
        ("senderId", "userId"),
        // The 17-digit timetoken is finer than the ISO time (whole seconds).
        ("timetoken", "timestamp"),
        ("iso8601timestamp", "timestamp"),
    ] {
        if let Some(value) = event.remove(from)
            && !value.is_null()
            && !item.contains_key(to)
        {
            item.insert(to.to_owned(), value);
        }
    }
    if !item.contains_key("userId")
        && let Some(uuid) = item.remove("uuid")
    {
        item.insert("userId".to_owned(), uuid);
    }
    Ok((action, item))
}
