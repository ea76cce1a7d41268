//! The body as the parser first sees it: top-level keys with their values still unparsed
//! (serde_json `RawValue`), so the items of a batch keep their exact text (a rejected item is
//! dead-lettered byte-identical) and each item is parsed, and may fail, on its own. Members
//! that no generation reads are checked and dropped here (see [`super::bounded`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::NormalizeError;
use super::bounded::{Budget, Items, ItemsSeed, Skip};
use super::fields::{self, Object};

/// Every member name read from a body, an envelope or its payload by any generation, besides
/// the delta lists ([`fields::is_delta_key`]); other members are checked and dropped unstored.
const READ: [&str; 28] = [
    // Generation detection and G1/G2 fields.
    "action",
    "status",
    "schema",
    "dataSchema",
    "data",
    "id",
    "channel",
    "channelId",
    "timestamp",
    "sub_key",
    "subKey",
    "uuid",
    "user_id",
    "userId",
    "occupancy",
    "state",
    "here_now_refresh",
    "hereNowRefresh",
    // Envelopes (see `envelope`).
    "event",
    "payload",
    "eventType",
    "eventId",
    "subscribeKey",
    "senderId",
    "timetoken",
    "iso8601timestamp",
    "eventPayload",
    "precise_timestamp",
];

/// A JSON object whose values are not parsed yet (duplicate keys: the last wins).
pub(super) type RawObject<'a> = BTreeMap<String, &'a RawValue>;

/// The unparsed `data` member.
pub(super) struct Data<'a>(&'a RawValue);

impl Data<'_> {
    fn first(&self) -> u8 {
        self.0
            .get()
            .bytes()
            .find(|b| !b.is_ascii_whitespace())
            .unwrap_or(b'n')
    }

    pub(super) fn is_array(&self) -> bool {
        self.first() == b'['
    }

    pub(super) fn is_null(&self) -> bool {
        self.0.get().trim_ascii() == "null"
    }

    /// The JSON type, for messages: `an object`, `a string`, …
    pub(super) fn kind(&self) -> &'static str {
        match self.first() {
            b'{' => "an object",
            b'[' => "an array",
            b'"' => "a string",
            b't' | b'f' => "a boolean",
            b'n' => "null",
            _ => "a number",
        }
    }
}

/// `text` as an object of unparsed values; `what` names it in errors (`body`, `event`).
///
/// # Errors
/// Malformed JSON, or JSON that is not an object.
pub(super) fn object<'a>(
    text: &'a str,
    what: &'static str,
) -> Result<RawObject<'a>, NormalizeError> {
    if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        return ReadMembers
            .deserialize(&mut de)
            .and_then(|object| de.end().map(|()| object))
            .map_err(|e| NormalizeError::from_json(&e, text));
    }
    match serde_json::from_str::<Skip>(text) {
        Ok(Skip) => Err(NormalizeError::NotAnObject {
            what,
            found: kind_of_text(text),
        }),
        Err(e) => Err(NormalizeError::from_json(&e, text)),
    }
}

/// The JSON type of valid JSON text that is not an object.
fn kind_of_text(text: &str) -> &'static str {
    match text.trim_start().bytes().next() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// An object's members that someone reads ([`READ`]), unparsed; the others checked and
/// dropped. Duplicate keys: the last wins.
struct ReadMembers;

impl<'de> DeserializeSeed<'de> for ReadMembers {
    type Value = RawObject<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<RawObject<'de>, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReadMembers {
    type Value = RawObject<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
        let mut object = RawObject::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if READ.contains(&key.as_ref()) || fields::is_delta_key(&key) {
                let value = map.next_value::<&'de RawValue>()?;
                object.insert(key.into_owned(), value);
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(object)
    }
}

/// Parses every member but `data`, which is returned unparsed.
///
/// # Errors
/// A member whose value does not parse (a lone surrogate, a number beyond f64).
pub(super) fn split_data<'a>(
    mut raw: RawObject<'a>,
    budget: &Budget,
) -> Result<(Object, Option<Data<'a>>), NormalizeError> {
    let data = raw.remove("data").map(Data);
    Ok((parse(raw, budget)?, data))
}

/// Every member parsed, within `budget`.
pub(super) fn parse(raw: RawObject<'_>, budget: &Budget) -> Result<Object, NormalizeError> {
    let mut object = Object::new();
    for (key, value) in raw {
        let parsed = value_of(value, budget, "body")?;
        object.insert(key, parsed);
    }
    Ok(object)
}

/// `object` with `data` parsed back in (the single-event generations read it as a value).
pub(super) fn with_data(
    mut object: Object,
    data: Option<Data<'_>>,
    budget: &Budget,
) -> Result<Object, NormalizeError> {
    if let Some(data) = data {
        object.insert("data".to_owned(), value_of(data.0, budget, "data")?);
    }
    Ok(object)
}

/// The items of an array `data`, unparsed: at most `max` collected, all counted.
pub(super) fn items<'a>(data: Option<&Data<'a>>, max: usize) -> Result<Items<'a>, NormalizeError> {
    let Some(data) = data else {
        return Err(NormalizeError::Missing {
            field: "data".into(),
        });
    };
    let text = data.0.get();
    let mut de = serde_json::Deserializer::from_str(text);
    ItemsSeed { max }
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items))
        .map_err(|e| NormalizeError::from_json(&e, text))
}

/// One unparsed value, parsed within `budget`; `what` names it if it is too large.
pub(super) fn value_of(
    raw: &RawValue,
    budget: &Budget,
    what: &str,
) -> Result<Value, NormalizeError> {
    super::bounded::value_of(raw, budget, what)
}
