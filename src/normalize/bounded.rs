//! Parsing whose memory the body cannot blow up: a JSON value costs far more as a tree than as
//! text (an element of `[0,0,…]` is 2 bytes of text and ~100 bytes of `serde_json::Value`), so
//! an 8 MiB body of one long array would take most of a gigabyte to parse naively.
//!
//! - Members no generation reads are checked (syntax, surrogates, number range) and dropped
//!   without being stored ([`Skip`]), so a body's unknown fields cost nothing.
//! - Values that are read are built against a [`Budget`] of JSON nodes; a body (or one batch
//!   item) beyond it is invalid ([`NormalizeError::TooLarge`]), whatever its byte size.
//! - The count of items collected from a batch stops at the item limit.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::NormalizeError;

/// JSON nodes (objects, arrays, strings, numbers, literals) one body, or one item of a batch,
/// may hold in the fields hookbus reads. A presence event has a few dozen; 32 KiB of user
/// state cannot spell more than ~16,000 nodes.
pub const MAX_NODES: usize = 65_536;

/// User ids in the interval deltas of one body, all events together. PubNub sends a delta
/// only while it fits a 32 KiB message (else `here_now_refresh`), a few hundred ids.
pub const MAX_DELTA_IDS: usize = 100_000;

/// What one body may still cost: the nodes its parse may build (per batch item, see
/// [`Budget::next_item`]) and the delta user ids its events may keep.
pub(super) struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
    delta_ids_left: Cell<usize>,
}

impl Budget {
    pub(super) fn new() -> Budget {
        Budget {
            left: Cell::new(MAX_NODES),
            exceeded: Cell::new(false),
            delta_ids_left: Cell::new(MAX_DELTA_IDS),
        }
    }

    /// A fresh node budget for the next item of a batch: an item's tree is dropped once its
    /// event is built. The delta ids stay counted for the whole body.
    pub(super) fn next_item(&self) {
        self.left.set(MAX_NODES);
        self.exceeded.set(false);
    }

    /// Counts `ids` delta user ids kept by an event of this body.
    ///
    /// # Errors
    /// `TooLarge` once the body's events keep more than [`MAX_DELTA_IDS`].
    pub(super) fn keep_delta_ids(&self, ids: usize) -> Result<(), NormalizeError> {
        match self.delta_ids_left.get().checked_sub(ids) {
            Some(left) => {
                self.delta_ids_left.set(left);
                Ok(())
            }
            None => Err(NormalizeError::TooLarge {
                what: "delta".to_owned(),
                max: MAX_DELTA_IDS,
            }),
        }
    }

    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("too many JSON values"))
            }
        }
    }

    /// The error for a parse that failed: `TooLarge` when the budget ran out, else the
    /// parser's own.
    fn error(&self, e: &serde_json::Error, text: &str, what: &str) -> NormalizeError {
        if self.exceeded.get() {
            NormalizeError::TooLarge {
                what: what.to_owned(),
                max: MAX_NODES,
            }
        } else {
            NormalizeError::from_json(e, text)
        }
    }
}

/// `raw` parsed into a tree of at most the budget's remaining nodes; `what` names it in the
/// error (`body`, `item`).
pub(super) fn value_of(
    raw: &RawValue,
    budget: &Budget,
    what: &str,
) -> Result<Value, NormalizeError> {
    value_of_str(raw.get(), budget, what)
}

/// As [`value_of`], for JSON text (a state sent JSON-encoded in a string).
pub(super) fn value_of_str(
    text: &str,
    budget: &Budget,
    what: &str,
) -> Result<Value, NormalizeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Node(budget)
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|e| budget.error(&e, text, what))?;
    Ok(value)
}

/// Builds a `Value` exactly as `Value::deserialize` does (same numbers, objects keep their
/// order and the last of duplicate keys), one budget node per value.
#[derive(Clone, Copy)]
struct Node<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A value that is checked as `Value` would be (strings decoded, so a lone surrogate fails;
/// numbers parsed, so one beyond f64 fails) and then dropped: nothing is stored, whatever its
/// size. serde_json's nesting limit (128) bounds the recursion.
pub(super) struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Skip, D::Error> {
        de.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

/// The items of a JSON array, unparsed, at most `max` of them; beyond, the rest are only
/// counted (and checked), so a batch of millions of tiny items costs no memory.
pub(super) struct Items<'a> {
    pub(super) items: Vec<&'a RawValue>,
    /// Every item in the array, including those not collected.
    pub(super) count: usize,
}

pub(super) struct ItemsSeed {
    pub(super) max: usize,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = Items<'de>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Items<'de>, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed {
    type Value = Items<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'de>, A::Error> {
        let mut items = Vec::new();
        let mut count = 0;
        loop {
            if count < self.max {
                match seq.next_element::<&'de RawValue>()? {
                    Some(item) => items.push(item),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            count += 1;
        }
        Ok(Items { items, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_value_builds() {
        let text = r#"{"b":[1,-2,3.5,"x\u00e9",true,null,{}],"a":{"z":1,"y":2},"b":0}"#;
        let budget = Budget::new();
        let ours = value_of_str(text, &budget, "body").unwrap();
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.to_string(), theirs.to_string(), "order and duplicates");
    }

    #[test]
    fn a_long_array_runs_out_of_budget_not_of_memory() {
        let mut text = String::from("[");
        for _ in 0..MAX_NODES {
            text.push_str("0,");
        }
        text.push_str("0]");
        let e = value_of_str(&text, &Budget::new(), "data").unwrap_err();
        assert!(matches!(e, NormalizeError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("data"), "{e}");
        // One node fewer than the budget passes.
        let fits = format!("[{}0]", "0,".repeat(MAX_NODES - 2));
        value_of_str(&fits, &Budget::new(), "data").unwrap();
    }

    #[test]
    fn skip_checks_what_value_checks() {
        for bad in [r#"["\ud800"]"#, "[1e400]", "[1,]", r#"{"a":}"#] {
            assert!(serde_json::from_str::<Skip>(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
        serde_json::from_str::<Skip>(r#"{"a":[1,2,{"b":"\ud83d\ude00"}]}"#).unwrap();
    }
}
