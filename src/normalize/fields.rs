//! Typed field extraction shared by the generations: strings, channels, integers that may
//! arrive as strings, timestamps, user state and delta arrays.
//!
//! Fields are moved out of the parsed object (no copies, no re-serialization). Every failure
//! is a [`NormalizeError`] naming the field; nothing here panics.

use serde_json::{Map, Value};

use super::bounded::{self, Budget};
use super::time::{self, Instant};
use super::{Delta, NormalizeError, State};

/// A parsed JSON object.
pub(super) type Object = Map<String, Value>;

/// The first of `keys` present with a non-null value, removed from `object`.
pub(super) fn take(object: &mut Object, keys: &[&'static str]) -> Option<(&'static str, Value)> {
    keys.iter().find_map(|&key| match object.remove(key) {
        None | Some(Value::Null) => None,
        Some(value) => Some((key, value)),
    })
}

/// An optional string field; numbers are accepted and kept in their JSON spelling.
pub(super) fn string(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<String>, NormalizeError> {
    Ok(take_string(object, keys, prefix)?.map(|(_, s)| s))
}

/// An optional string that ends up in a message header (`id`, `sub_key`): as [`string`],
/// and without control characters, which would corrupt or inject headers.
pub(super) fn header_string(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<String>, NormalizeError> {
    let Some((key, s)) = take_string(object, keys, prefix)? else {
        return Ok(None);
    };
    reject_control_chars(prefix, key, &s)?;
    Ok(Some(s))
}

fn take_string(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<(&'static str, String)>, NormalizeError> {
    match take(object, keys) {
        None => Ok(None),
        Some((key, Value::String(s))) => Ok(Some((key, s))),
        Some((key, Value::Number(n))) => Ok(Some((key, n.to_string()))),
        Some((key, other)) => Err(invalid(prefix, key, expected("a string", &other))),
    }
}

/// The required channel: a non-empty string without control characters (U+0000–U+001F,
/// U+007F), because it becomes a topic name and a header value.
pub(super) fn channel(
    object: &mut Object,
    keys: &[&'static str],
) -> Result<String, NormalizeError> {
    let (key, channel) = match take(object, keys) {
        None => {
            return Err(NormalizeError::Missing {
                field: "channel".into(),
            });
        }
        Some((key, Value::String(s))) => (key, s),
        Some((key, other)) => return Err(invalid("", key, expected("a string", &other))),
    };
    if channel.is_empty() {
        return Err(NormalizeError::Empty { field: key.into() });
    }
    reject_control_chars("", key, &channel)?;
    Ok(channel)
}

/// An optional non-negative integer (occupancy); strings such as `"3"` are accepted.
pub(super) fn unsigned(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<u64>, NormalizeError> {
    let Some((key, value)) = take(object, keys) else {
        return Ok(None);
    };
    let n = integer(&value, prefix, key)?;
    u64::try_from(n)
        .map(Some)
        .map_err(|_| out_of_range(prefix, key))
}

/// An optional event time: Unix seconds, milliseconds or a 17-digit timetoken (as a number or
/// a numeric string), or an ISO-8601 string. See [`time::from_integer`].
pub(super) fn timestamp(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<Instant>, NormalizeError> {
    let Some((key, value)) = take(object, keys) else {
        return Ok(None);
    };
    if let Value::String(s) = &value
        && !is_integer_literal(s)
    {
        return time::parse_iso8601(s)
            .map(Some)
            .map_err(|why| invalid(prefix, key, format!("{why} in {:?}", snippet(s))));
    }
    if matches!(value, Value::Bool(_) | Value::Array(_) | Value::Object(_)) {
        return Err(invalid(
            prefix,
            key,
            expected("Unix seconds, a timetoken or an ISO-8601 string", &value),
        ));
    }
    let n = integer(&value, prefix, key)?;
    time::from_integer(n)
        .map(Some)
        .ok_or_else(|| out_of_range(prefix, key))
}

/// An optional Unix-milliseconds field (E&A `precise_timestamp`); a 17-digit timetoken is
/// converted exactly.
pub(super) fn millis(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<i64>, NormalizeError> {
    let Some((key, value)) = take(object, keys) else {
        return Ok(None);
    };
    let n = integer(&value, prefix, key)?;
    time::millis_from_integer(n)
        .map(Some)
        .ok_or_else(|| out_of_range(prefix, key))
}

/// An optional boolean flag (`here_now_refresh`); `"true"`/`"false"` strings are accepted.
pub(super) fn flag(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<bool, NormalizeError> {
    match take(object, keys) {
        None => Ok(false),
        Some((_, Value::Bool(b))) => Ok(b),
        Some((_, Value::String(s))) if s == "true" => Ok(true),
        Some((_, Value::String(s))) if s == "false" => Ok(false),
        Some((key, other)) => Err(invalid(prefix, key, expected("a boolean", &other))),
    }
}

/// User state that may arrive JSON-encoded in a string: decoded once, kept as the string if
/// it is not JSON. A decoded `null` counts as absent.
///
/// # Errors
/// `TooLarge` when the encoded state holds more JSON values than the parse `budget` has left.
pub(super) fn decode_state(value: Value, budget: &Budget) -> Result<Option<State>, NormalizeError> {
    Ok(match value {
        Value::Null => None,
        Value::String(s) => match bounded::value_of_str(&s, budget, "state") {
            Ok(Value::Null) => None,
            Ok(decoded) => Some(State::from_value(&decoded)),
            Err(e @ NormalizeError::TooLarge { .. }) => return Err(e),
            Err(_) => Some(State::from_value(&Value::String(s))),
        },
        other => Some(State::from_value(&other)),
    })
}

/// Keys a delta array may be sent under, per slot, first present wins: G1 `join`/`joined`…,
/// Events & Actions `usersJoined`/`usersJoinedDelta`…
const JOIN_KEYS: [&str; 4] = ["join", "joined", "usersJoined", "usersJoinedDelta"];
const LEAVE_KEYS: [&str; 4] = ["leave", "left", "usersLeft", "usersLeftDelta"];
const TIMEOUT_KEYS: [&str; 9] = [
    "timeout",
    "timedout",
    "timedOut",
    "usersTimedout",
    "usersTimedOut",
    "usersTimeout",
    "usersTimedoutDelta",
    "usersTimedOutDelta",
    "usersTimeoutDelta",
];

/// Whether `key` names a delta list.
pub(super) fn is_delta_key(key: &str) -> bool {
    [&JOIN_KEYS[..], &LEAVE_KEYS[..], &TIMEOUT_KEYS[..]]
        .iter()
        .any(|keys| keys.contains(&key))
}

/// The interval delta: `None` when no delta array is present, else all three lists.
///
/// # Errors
/// A list that is not an array of strings; `TooLarge` when the ids of this body so far
/// exceed [`bounded::MAX_DELTA_IDS`] (counted in `budget`).
pub(super) fn delta(
    object: &mut Object,
    prefix: &str,
    budget: &Budget,
) -> Result<Option<Delta>, NormalizeError> {
    let join = user_list(object, &JOIN_KEYS, prefix)?;
    let leave = user_list(object, &LEAVE_KEYS, prefix)?;
    let timeout = user_list(object, &TIMEOUT_KEYS, prefix)?;
    if join.is_none() && leave.is_none() && timeout.is_none() {
        return Ok(None);
    }
    let ids = [&join, &leave, &timeout]
        .iter()
        .map(|list| list.as_ref().map_or(0, Vec::len))
        .sum();
    budget.keep_delta_ids(ids)?;
    Ok(Some(Delta {
        join: join.unwrap_or_default(),
        leave: leave.unwrap_or_default(),
        timeout: timeout.unwrap_or_default(),
    }))
}

fn user_list(
    object: &mut Object,
    keys: &[&'static str],
    prefix: &str,
) -> Result<Option<Vec<String>>, NormalizeError> {
    let Some((key, value)) = take(object, keys) else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(invalid(
            prefix,
            key,
            expected("an array of user ids", &value),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s),
            other => Err(invalid(
                prefix,
                &format!("{key}[{i}]"),
                expected("a string", &other),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An integer given as a JSON integer or a decimal string, widened so that every range check
/// is exact; floats and integers beyond i64/u64 never pass (no f64 on the way).
fn integer(value: &Value, prefix: &str, key: &str) -> Result<i128, NormalizeError> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if n
                .as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() >= 9.2e18)
            {
                // An integer literal too large for u64 (serde_json fell back to f64).
                Err(out_of_range(prefix, key))
            } else {
                Err(invalid(
                    prefix,
                    key,
                    format!("expected an integer, got {n}"),
                ))
            }
        }
        Value::String(s) => {
            let t = s.trim_ascii();
            if !is_integer_literal(t) {
                return Err(invalid(
                    prefix,
                    key,
                    format!("expected an integer, got {:?}", snippet(s)),
                ));
            }
            // Only digits with an optional sign reach here, so the sole failure is overflow.
            t.parse::<i128>().map_err(|_| out_of_range(prefix, key))
        }
        other => Err(invalid(prefix, key, expected("an integer", other))),
    }
}

/// `[+-]?[0-9]+`, surrounding ASCII whitespace allowed.
fn is_integer_literal(s: &str) -> bool {
    let t = s.trim_ascii();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Rejects U+0000–U+001F and U+007F, naming the first one and its byte offset.
fn reject_control_chars(prefix: &str, key: &str, s: &str) -> Result<(), NormalizeError> {
    match s
        .char_indices()
        .find(|&(_, c)| c <= '\u{1f}' || c == '\u{7f}')
    {
        None => Ok(()),
        Some((offset, c)) => Err(NormalizeError::ControlChar {
            field: format!("{prefix}{key}"),
            code: u32::from(c),
            offset,
        }),
    }
}

/// "expected X, got Y" with Y the JSON type of `found`.
fn expected(what: &str, found: &Value) -> String {
    format!("expected {what}, got {}", kind_of(found))
}

fn invalid(prefix: &str, key: &str, reason: String) -> NormalizeError {
    NormalizeError::Invalid {
        field: format!("{prefix}{key}"),
        reason,
    }
}

fn out_of_range(prefix: &str, key: &str) -> NormalizeError {
    NormalizeError::OutOfRange {
        field: format!("{prefix}{key}"),
    }
}

/// The JSON type of a value, with its article: `an array`, `a number`…
pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Input to quote in an error message (with `{:?}`, which escapes it): at most 64 chars.
pub(super) fn snippet(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", s.get(..cut).unwrap_or_default()),
    }
}
