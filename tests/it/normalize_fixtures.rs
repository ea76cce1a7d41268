//! The public `normalize` API as other modules use it: every corpus fixture normalizes, every
//! bad input is rejected, and every event validates against the published
//! `docs/event.schema.json` (checked by a minimal validator for the keywords that file uses).

use std::fs;
use std::path::{Path, PathBuf};

use hookbus::normalize::{Action, Event, Format, NormalizeError, SCHEMA, normalize};
use serde_json::Value;

/// Pins the public signatures others code against.
#[test]
fn public_api_shape() {
    let _: fn(&[u8], u64) -> Result<Vec<Event>, NormalizeError> = normalize;
    let _: fn(&Event) -> Vec<u8> = Event::to_json;
    let _: fn(Action) -> &'static str = Action::as_str;
    let _: fn(Format) -> &'static str = Format::as_str;
    assert_eq!(SCHEMA, "hookbus.presence.v1");
    assert_eq!(Action::ALL.len(), 7);
    assert_eq!(Format::ALL.len(), 3);
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pubnub")
        .join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}", path.display());
    files
}

fn event_schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/event.schema.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn fixtures_normalize_and_validate_against_the_published_schema() {
    let schema = event_schema();
    for path in corpus("fixtures") {
        let body = fs::read(&path).unwrap();
        let events = normalize(&body, 1_718_035_200_456)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!events.is_empty(), "{}", path.display());
        for event in events {
            let json: Value = serde_json::from_slice(&event.to_json()).unwrap();
            if let Err(problem) = validate(&schema, &json, "$") {
                panic!("{}: {problem}\n{json}", path.display());
            }
            assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
        }
    }
}

#[test]
fn bad_inputs_are_rejected() {
    for path in corpus("bad") {
        let body = fs::read(&path).unwrap();
        let error = normalize(&body, 0).expect_err(&path.display().to_string());
        assert!(!error.to_string().is_empty());
    }
}

/// Validates `value` against the subset of JSON Schema used by `docs/event.schema.json`.
fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                if !types.iter().any(|t| is_type(value, t)) {
                    return Err(format!("{at}: {value} is not of type {types:?}"));
                }
            }
            "const" if value != rule => return Err(format!("{at}: {value} != {rule}")),
            "enum" if !rule.as_array().unwrap().contains(value) => {
                return Err(format!("{at}: {value} not in {rule}"));
            }
            "minimum" if value.is_number() && cmp(value, rule) < 0 => {
                return Err(format!("{at}: {value} < {rule}"));
            }
            "maximum" if value.is_number() && cmp(value, rule) > 0 => {
                return Err(format!("{at}: {value} > {rule}"));
            }
            "minLength" => {
                if let Some(s) = value.as_str()
                    && (s.chars().count() as u64) < rule.as_u64().unwrap()
                {
                    return Err(format!("{at}: shorter than {rule}"));
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for key in rule.as_array().unwrap() {
                        if !object.contains_key(key.as_str().unwrap()) {
                            return Err(format!("{at}: missing {key}"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(object) = value.as_object() {
                    for (key, sub) in rule.as_object().unwrap() {
                        if let Some(v) = object.get(key) {
                            validate(sub, v, &format!("{at}.{key}"))?;
                        }
                    }
                }
            }
            "additionalProperties" if rule == &Value::Bool(false) => {
                let known = schema["properties"].as_object().unwrap();
                if let Some(object) = value.as_object()
                    && let Some(extra) = object.keys().find(|k| !known.contains_key(*k))
                {
                    return Err(format!("{at}: unexpected property {extra}"));
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        validate(rule, item, &format!("{at}[{i}]"))?;
                    }
                }
            }
            "oneOf" => {
                let passing = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|sub| validate(sub, value, at).is_ok())
                    .count();
                if passing != 1 {
                    return Err(format!("{at}: matches {passing} oneOf branches"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Compares two JSON integers exactly (the schema's bounds exceed f64 precision).
fn cmp(a: &Value, b: &Value) -> i8 {
    let wide = |v: &Value| {
        v.as_u64()
            .map(i128::from)
            .or_else(|| v.as_i64().map(i128::from))
            .unwrap()
    };
    match wide(a).cmp(&wide(b)) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    }
}
