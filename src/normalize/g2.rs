//! G2, the legacy flat objects of the migration period: one object with `id`, `schema` (an
//! Events & Actions event name), `user_id`, `sub_key`, `channel` and an ISO-8601 `timestamp`.
//!
//! The camelCase spellings of Events & Actions are accepted as aliases.

use super::bounded::Budget;
use super::fields::{self, Object};
use super::{Action, Event, Format, NormalizeError, body_id};

/// Normalizes a G2 object whose schema named `action`; `body` is hashed only when the `id`
/// is empty.
pub(super) fn normalize(
    mut object: Object,
    action: Action,
    body: &[u8],
    received_at_ms: u64,
    budget: &Budget,
) -> Result<Event, NormalizeError> {
    let id = fields::header_string(&mut object, &["id"], "")?
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| body_id(body));
    let channel = fields::channel(&mut object, &["channel", "channelId"])?;
    let instant =
        fields::timestamp(&mut object, &["timestamp"], "")?.ok_or(NormalizeError::Missing {
            field: "timestamp".into(),
        })?;
    Ok(Event {
        id,
        format: Format::G2,
        sub_key: fields::header_string(&mut object, &["sub_key", "subKey"], "")?,
        channel,
        action,
        uuid: fields::string(&mut object, &["user_id", "userId", "uuid"], "")?,
        occupancy: fields::unsigned(&mut object, &["occupancy"], "")?,
        timestamp: instant.secs,
        timestamp_ms: instant.ms,
        received_at_ms,
        state: match fields::take(&mut object, &["state", "data"]) {
            Some((_, v)) => fields::decode_state(v, budget)?,
            None => None,
        },
        delta: fields::delta(&mut object, "", budget)?,
        here_now_refresh: fields::flag(&mut object, &["here_now_refresh", "hereNowRefresh"], "")?,
    })
}
