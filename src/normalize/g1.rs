//! G1, legacy Presence Webhooks: one flat object per request with `action` (join, leave,
//! timeout, state-change, interval) or `status` (active, inactive), Unix-seconds `timestamp`.
//!
//! There is no event id: the id is derived from the exact body bytes, which PubNub repeats
//! byte for byte on retry.

use serde_json::Value;

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
