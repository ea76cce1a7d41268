//! G3, Events & Actions: `{"schema"|"dataSchema": "…/<event>?v=…", "data": [item, …]}`, up to
//! 10,000 items per request, each with its own `id`, ISO-8601 `timestamp` and an inner `data`
//! object of strings (`uuid`, `occupancy`, `timestamp`, `precise_timestamp`, `data` = state).
//!
//! Each item is parsed and normalized on its own: one bad item is rejected alone.

use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::bounded::Budget;
use super::fields::{self, Object, kind_of};
use super::raw;
use super::time::Instant;
use super::{Action, Event, Format, NormalizeError, Normalized, Rejected, hex32};

/// Normalizes every item of a batch whose schema named `action`, in order, each on its own:
/// an invalid item is returned as [`Rejected`] with its span in `body`, the others as events.
///
/// An item without an id gets `envelope_id` when it is the only item of an enveloped body,
/// else the first 32 hex chars of SHA-256(SHA-256(body) ‖ index as 8 big-endian bytes):
/// stable across byte-identical retries, distinct per item.
pub(super) fn normalize(
    items: Vec<&RawValue>,
    action: Action,
    body: &[u8],
    envelope_id: Option<String>,
    received_at_ms: u64,
) -> Normalized {
    let budget = Budget::new();
    let mut body_digest = None;
    let mut envelope_id = envelope_id.filter(|_| items.len() == 1);
    let mut out = Normalized {
        events: Vec::with_capacity(items.len()),
        ..Normalized::default()
    };
    for (index, raw) in items.into_iter().enumerate() {
        budget.next_item();
        let event = raw::value_of(raw, &budget, "item")
            .and_then(|item| normalize_item(item, action, received_at_ms, &budget));
        match event {
            Ok(mut event) => {
                if event.id.is_empty() {
                    event.id = envelope_id.take().unwrap_or_else(|| {
                        let digest = body_digest.get_or_insert_with(|| super::batch_digest(body));
                        item_id(digest, index)
                    });
                }
                out.events.push(event);
            }
            Err(error) => {
                let text = raw.get();
                let start = (text.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
                out.rejected.push(Rejected {
                    index,
                    span: start..start + text.len(),
                    error: error.in_item(index),
                });
            }
        }
    }
    out
}

/// The id of the item at `index` that has none: SHA-256(SHA-256(body) ‖ index as 8
/// big-endian bytes), its first 32 hex chars.
fn item_id(batch: &[u8; 32], index: usize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(batch);
    hasher.update((index as u64).to_be_bytes());
    hex32(&hasher.finalize())
}

/// One item's JSON text on its own, as [`normalize`] would have normalized it at `index` of a
/// batch whose body hashes to `batch` (which names an item without an `id`).
pub(super) fn normalize_alone(
    text: &str,
    action: Action,
    index: usize,
    batch: Option<&[u8; 32]>,
    received_at_ms: u64,
) -> Result<Event, NormalizeError> {
    let budget = Budget::new();
    budget.next_item();
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| NormalizeError::from_json(&e, text))?;
    let item = raw::value_of(raw, &budget, "item")?;
    let mut event = normalize_item(item, action, received_at_ms, &budget)?;
    if event.id.is_empty() {
        let Some(batch) = batch else {
            return Err(NormalizeError::Missing { field: "id".into() });
        };
        event.id = item_id(batch, index);
    }
    Ok(event)
}

/// One event from a 1.0 envelope (see [`super::envelope`]); an item without an id gets the
/// body's digest.
pub(super) fn normalize_one(
    item: Object,
    action: Action,
    body: &[u8],
    received_at_ms: u64,
    budget: &Budget,
) -> Result<Event, NormalizeError> {
    let mut event = normalize_item(Value::Object(item), action, received_at_ms, budget)?;
    if event.id.is_empty() {
        event.id = super::body_id(body);
    }
    Ok(event)
}

/// One batch item; `id` is left empty when the item has none.
fn normalize_item(
    item: Value,
    action: Action,
    received_at_ms: u64,
    budget: &Budget,
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
        Some((_, state)) => fields::decode_state(state, budget)?,
        None => match fields::take(&mut item, &["state"]) {
            Some((_, v)) => fields::decode_state(v, budget)?,
            None => None,
        },
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
        delta: fields::delta(&mut item, "", budget)?,
        here_now_refresh: fields::flag(&mut item, &["hereNowRefresh", "here_now_refresh"], "")?,
    })
}
