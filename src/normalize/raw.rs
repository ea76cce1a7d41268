//! The body as the parser first sees it: top-level keys with their values still unparsed
//! (serde_json `RawValue`), so the items of a batch keep their exact text (a rejected item is
//! dead-lettered byte-identical) and each item is parsed, and may fail, on its own.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use super::NormalizeError;
use super::fields::{Object, kind_of};

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
        return serde_json::from_str(text).map_err(|e| NormalizeError::from_json(&e, text));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Err(NormalizeError::NotAnObject {
            what,
            found: kind_of(&value),
        }),
        Err(e) => Err(NormalizeError::from_json(&e, text)),
    }
}

/// Parses every member but `data`, which is returned unparsed.
///
/// # Errors
/// A member whose value does not parse (a lone surrogate, a number beyond f64).
pub(super) fn split_data(
    mut raw: RawObject<'_>,
) -> Result<(Object, Option<Data<'_>>), NormalizeError> {
    let data = raw.remove("data").map(Data);
    Ok((parse(raw)?, data))
}

/// Every member parsed.
pub(super) fn parse(raw: RawObject<'_>) -> Result<Object, NormalizeError> {
    let mut object = Object::new();
    for (key, value) in raw {
        object.insert(key, value_of(value)?);
    }
    Ok(object)
}

/// `object` with `data` parsed back in (the single-event generations read it as a value).
pub(super) fn with_data(
    mut object: Object,
    data: Option<Data<'_>>,
) -> Result<Object, NormalizeError> {
    if let Some(data) = data {
        object.insert("data".to_owned(), value_of(data.0)?);
    }
    Ok(object)
}

/// The items of an array `data`, unparsed.
pub(super) fn items<'a>(data: Option<&Data<'a>>) -> Result<Vec<&'a RawValue>, NormalizeError> {
    let Some(data) = data else {
        return Err(NormalizeError::Missing {
            field: "data".into(),
        });
    };
    serde_json::from_str(data.0.get()).map_err(|e| NormalizeError::from_json(&e, data.0.get()))
}

/// One unparsed value, parsed.
pub(super) fn value_of(raw: &RawValue) -> Result<Value, NormalizeError> {
    serde_json::from_str(raw.get()).map_err(|e| NormalizeError::from_json(&e, raw.get()))
}
