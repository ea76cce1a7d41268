//! G3, Events & Actions: `{"schema"|"dataSchema": "…/<event>?v=…", "data": [item, …]}`, up to
//! 10,000 items per request, each with its own `id`, ISO-8601 `timestamp` and an inner `data`
//! object of strings (`uuid`, `occupancy`, `timestamp`, `precise_timestamp`, `data` = state).
//!
//! The batch is parsed once and items are taken apart in place; one bad item rejects the batch.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::fields::{self, Object, kind_of};
use super::time::Instant;
use super::{Action, Event, Format, NormalizeError, hex32};

/// Normalizes every item of a batch whose schema named `action`, in order.
///
/// An item without an id gets the first 32 hex chars of SHA-256(SHA-256(body) ‖ index as
/// 8 big-endian bytes): stable across byte-identical retries, distinct per item.
pub(super) fn normalize(
    mut object: Object,
    action: Action,
    body: &[u8],
    received_at_ms: u64,
) -> Result<Vec<Event>, NormalizeError> {
    let Some(Value::Array(items)) = object.remove("data") else {
        return Err(NormalizeError::Missing {
            field: "data".into(),
        });
    };
    let mut body_digest = None;
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let mut event =
            normalize_item(item, action, received_at_ms).map_err(|e| e.in_item(index))?;
        if event.id.is_empty() {
            let digest = body_digest.get_or_insert_with(|| Sha256::digest(body));
            let mut hasher = Sha256::new();
            hasher.update(&digest[..]);
            hasher.update((index as u64).to_be_bytes());
            event.id = hex32(&hasher.finalize());
        }
        events.push(event);
    }
    Ok(events)
}

/// One batch item; `id` is left empty when the item has none.
fn normalize_item(
    item: Value,
    action: Action,
    received_at_ms: u64,
) -> Result<Event, NormalizeError> {
    let Value::Object(mut item) = item else {
        return Err(NormalizeError::NotAnObject {
            what: "item",
            found: kind_of(&item),
        });
    };
    let mut inner = match fields::take(&mut item, &["data"]) {
        None => Object::new(),
        Some((_, Value::Object(inner))) => inner,
        Some((_, other)) => {
            return Err(NormalizeError::Invalid {
                field: "data".into(),
                reason: format!("expected an object, got {}", kind_of(&other)),
            });
        }
    };

    let id = fields::header_string(&mut item, &["id"], "")?.unwrap_or_default();
    let channel = fields::channel(&mut item, &["channel", "channelId"])?;
    let uuid = match fields::string(&mut item, &["userId", "user_id"], "")? {
        Some(uuid) => Some(uuid),
        None => fields::string(&mut inner, &["uuid"], "data.")?,
    };
    let sub_key = fields::header_string(&mut item, &["subKey", "sub_key"], "")?;
    let occupancy = match fields::unsigned(&mut item, &["occupancy"], "")? {
        Some(n) => Some(n),
        None => fields::unsigned(&mut inner, &["occupancy"], "data.")?,
    };

    // Seconds from the item's ISO timestamp, else the inner seconds, else the inner
    // milliseconds; milliseconds from the inner `precise_timestamp`, else the ISO fraction.
    let precise_ms = fields::millis(&mut inner, &["precise_timestamp"], "data.")?;
    let instant = match fields::timestamp(&mut item, &["timestamp"], "")? {
        Some(instant) => instant,
        None => match fields::timestamp(&mut inner, &["timestamp"], "data.")? {
            Some(instant) => instant,
            None => match precise_ms {
                Some(ms) => Instant {
                    secs: ms.div_euclid(1000),
                    ms: Some(ms),
                },
                None => {
                    return Err(NormalizeError::Missing {
                        field: "timestamp".into(),
                    });
                }
            },
        },
    };

    let state = match fields::take(&mut inner, &["data"]) {
        Some((_, state)) => fields::decode_state(state),
        None => fields::take(&mut item, &["state"]).and_then(|(_, v)| fields::decode_state(v)),
    };

    Ok(Event {
        id,
        format: Format::EventsAndActions,
        sub_key,
        channel,
        action,
        uuid,
        occupancy,
        timestamp: instant.secs,
        timestamp_ms: precise_ms.or(instant.ms),
        received_at_ms,
        state,
        delta: fields::delta(&mut item, "")?,
        here_now_refresh: fields::flag(&mut item, &["hereNowRefresh", "here_now_refresh"], "")?,
    })
}
