//! G1, legacy Presence Webhooks: one flat object per request with `action` (join, leave,
//! timeout, state-change, interval) or `status` (active, inactive), Unix-seconds `timestamp`.
//!
//! There is no event id: the id is derived from the exact body bytes, which PubNub repeats
//! byte for byte on retry.

use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;

use super::bounded::Budget;
use super::fields::{self, Object, kind_of, snippet};
use super::{Action, Event, Format, NormalizeError, State, body_id};

/// Normalizes a G1 object; `body` is the raw request, hashed for the id.
pub(super) fn normalize(
    mut object: Object,
    body: &[u8],
    received_at_ms: u64,
    budget: &Budget,
) -> Result<Event, NormalizeError> {
    let action = action(&mut object)?;
    let channel = fields::channel(&mut object, &["channel"])?;
    let instant =
        fields::timestamp(&mut object, &["timestamp"], "")?.ok_or(NormalizeError::Missing {
            field: "timestamp".into(),
        })?;
    Ok(Event {
        id: body_id(body),
        format: Format::G1,
        sub_key: fields::header_string(&mut object, &["sub_key"], "")?,
        channel,
        action,
        uuid: fields::string(&mut object, &["uuid"], "")?,
        occupancy: fields::unsigned(&mut object, &["occupancy"], "")?,
        timestamp: instant.secs,
        timestamp_ms: instant.ms,
        received_at_ms,
        // The user state sent with the event (state-change, and join when the client set
        // state on subscribe), kept exactly as sent.
        state: fields::take(&mut object, &["data", "state"]).map(|(_, v)| State::from_value(&v)),
        delta: fields::delta(&mut object, "", budget)?,
        here_now_refresh: fields::flag(&mut object, &["here_now_refresh"], "")?,
    })
}

/// `action` when present (any of the seven names), else `status` (`active` / `inactive`).
fn action(object: &mut Object) -> Result<Action, NormalizeError> {
    let Some((key, value)) = fields::take(object, &["action", "status"]) else {
        return Err(NormalizeError::Missing {
            field: "action".into(),
        });
    };
    let Value::String(name) = value else {
        return Err(NormalizeError::Invalid {
            field: key.into(),
            reason: format!("expected a string, got {}", kind_of(&value)),
        });
    };
    match (key, Action::from_name(&name)) {
        ("action", Some(action)) => Ok(action),
        ("action", None) => Err(NormalizeError::UnknownAction(snippet(&name))),
        (_, Some(action @ (Action::Active | Action::Inactive))) => Ok(action),
        (_, _) => Err(NormalizeError::UnknownStatus(snippet(&name))),
    }
}

/// Bytes of `data` (the user state) a plain body may carry; a larger one takes the general path.
const MAX_PLAIN_STATE: usize = 4096;

/// The common G1 body, read straight into borrowed fields: only the members a G1 event reads,
/// each of its plainest type. Anything else (an unknown or repeated member, a number sent as
/// a string, a delta list, `state`) fails this parse and the body takes the general path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<'a> {
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow, default)]
    uuid: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    occupancy: Option<u64>,
    #[serde(borrow, default)]
    sub_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    here_now_refresh: Option<bool>,
}

/// The event of a plain G1 body (see [`Plain`]), or `None` when the body is anything else —
/// then the general path decides, errors included. When it returns an event, it is the one
/// the general path returns for the same body (`tests/plain_g1.rs` holds them equal).
pub(super) fn fast(text: &str, body: &[u8], received_at_ms: u64) -> Option<Event> {
    // A derived struct also reads a JSON array positionally: objects only.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let plain: Plain<'_> = serde_json::from_str(text).ok()?;
    let action = match (&plain.action, &plain.status) {
        (Some(name), _) => Action::from_name(name)?,
        (None, Some(name)) => match Action::from_name(name)? {
            action @ (Action::Active | Action::Inactive) => action,
            _ => return None,
        },
        (None, None) => return None,
    };
    let channel = plain.channel;
    if channel.is_empty() || has_control_chars(&channel) {
        return None;
    }
    if plain.sub_key.as_deref().is_some_and(has_control_chars) {
        return None;
    }
    let instant = super::time::from_integer(i128::from(plain.timestamp?))?;
    // A large state goes the general way, so that the parse budget (which the general path
    // also charges for the other members) can never be what tells the two apart.
    if plain
        .data
        .is_some_and(|raw| raw.get().len() > MAX_PLAIN_STATE)
    {
        return None;
    }
    let state = match plain.data {
        None => None,
        Some(raw) => {
            let value = super::bounded::value_of(raw, &Budget::new(), "data").ok()?;
            Some(State::from_value(&value))
        }
    };
    Some(Event {
        id: body_id(body),
        format: Format::G1,
        sub_key: plain.sub_key.map(Cow::into_owned),
        channel: channel.into_owned(),
        action,
        uuid: plain.uuid.map(Cow::into_owned),
        occupancy: plain.occupancy,
        timestamp: instant.secs,
        timestamp_ms: instant.ms,
        received_at_ms,
        state,
        delta: None,
        here_now_refresh: plain.here_now_refresh.unwrap_or(false),
    })
}

/// U+0000–U+001F or U+007F: never in a channel or a header value.
fn has_control_chars(s: &str) -> bool {
    s.bytes().any(|b| b <= 0x1f || b == 0x7f)
}
