//! The wire format: field order, constant fields, read-back, names, and the published
//! JSON Schema kept in step with the type.

use serde_json::{Value, json};

use super::super::{Action, Delta, Format, SCHEMA, State, time};
use super::*;

#[test]
fn to_json_is_the_design_wire_format() {
    let e = Event {
        id: "c0ffee".into(),
        format: Format::G1,
        sub_key: Some("sub-c-1".into()),
        channel: "room.lobby".into(),
        action: Action::Join,
        uuid: Some("user-7f3a".into()),
        occupancy: Some(3),
        timestamp: 1_718_035_200,
        timestamp_ms: Some(1_718_035_200_123),
        received_at_ms: RECEIVED,
        state: Some(State::from_value(&json!({"mood": "busy"}))),
        delta: None,
        here_now_refresh: false,
    };
    assert_eq!(
        String::from_utf8(e.to_json()).unwrap(),
        concat!(
            r#"{"schema":"hookbus.presence.v1","id":"c0ffee","source":"pubnub","format":"g1","#,
            r#""sub_key":"sub-c-1","channel":"room.lobby","action":"join","uuid":"user-7f3a","#,
            r#""occupancy":3,"timestamp":1718035200,"timestamp_ms":1718035200123,"#,
            r#""received_at_ms":1718035200456,"state":{"mood":"busy"},"delta":null,"#,
            r#""here_now_refresh":false}"#
        )
    );
    let e = Event {
        id: "i".into(),
        format: Format::EventsAndActions,
        sub_key: None,
        channel: "c".into(),
        action: Action::Interval,
        uuid: None,
        occupancy: None,
        timestamp: 1,
        timestamp_ms: None,
        received_at_ms: RECEIVED,
        state: None,
        delta: Some(Delta {
            join: vec!["a".into()],
            leave: vec![],
            timeout: vec![],
        }),
        here_now_refresh: true,
    };
    assert_eq!(
        String::from_utf8(e.to_json()).unwrap(),
        concat!(
            r#"{"schema":"hookbus.presence.v1","id":"i","source":"pubnub","#,
            r#""format":"events-and-actions","sub_key":null,"channel":"c","action":"interval","#,
            r#""uuid":null,"occupancy":null,"timestamp":1,"timestamp_ms":null,"#,
            r#""received_at_ms":1718035200456,"state":null,"delta":{"join":["a"],"leave":[],"timeout":[]},"#,
            r#""here_now_refresh":true}"#
        )
    );
}

#[test]
fn deserialize_checks_schema_and_source() {
    let e = one(r#"{"action":"join","channel":"c","timestamp":1}"#);
    let mut value: Value = serde_json::from_slice(&e.to_json()).unwrap();
    value["schema"] = json!("hookbus.presence.v2");
    let err = serde_json::from_value::<Event>(value.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported event schema"), "{err}");
    value["schema"] = json!(SCHEMA);
    value["source"] = json!("other");
    assert!(serde_json::from_value::<Event>(value.clone()).is_err());
    let object = value.as_object_mut().unwrap();
    object.remove("schema");
    object.remove("source");
    assert_eq!(serde_json::from_value::<Event>(value).unwrap(), e);
}

#[test]
fn names_of_actions_and_formats() {
    let actions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "join",
            "leave",
            "timeout",
            "state-change",
            "active",
            "inactive",
            "interval"
        ]
    );
    let formats: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(formats, ["g1", "g2", "events-and-actions"]);
    for a in Action::ALL {
        assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        assert_eq!(a.to_string(), a.as_str());
    }
    for f in Format::ALL {
        assert_eq!(serde_json::to_value(f).unwrap(), json!(f.as_str()));
        assert_eq!(f.to_string(), f.as_str());
    }
}

#[test]
fn published_json_schema_matches_the_event() {
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/event.schema.json")).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema["$id"].as_str().unwrap().contains("v1"));
    assert_eq!(schema["properties"]["schema"]["const"], SCHEMA);
    let wire: Value =
        serde_json::from_slice(&one(r#"{"action":"join","channel":"c","timestamp":1}"#).to_json())
            .unwrap();
    let wire_keys: Vec<&String> = wire.as_object().unwrap().keys().collect();
    let doc_keys: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert_eq!(wire_keys, doc_keys, "properties in the documented order");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        wire_keys.iter().map(|k| k.as_str()).collect::<Vec<_>>()
    );
    let actions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(schema["properties"]["action"]["enum"], json!(actions));
    let formats: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
    assert_eq!(schema["properties"]["format"]["enum"], json!(formats));
    assert_eq!(
        schema["properties"]["timestamp"]["maximum"],
        json!(time::MAX_SECS)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// The hand-written serializer of the hot path writes exactly what serde_json writes for
    /// the same event: any text (control characters, quotes, backslashes, non-ASCII), any
    /// integer, absent and present optional fields, deltas.
    #[test]
    fn hand_written_json_is_serde_json_byte_for_byte(
        id in "\\PC{0,40}",
        channel in "(\\PC|[\\x00-\\x1f\"\\\\\u{7f}])*",
        sub_key in proptest::option::of("(\\PC|[\\x00-\\x1f])*"),
        uuid in proptest::option::of("\\PC*"),
        occupancy in proptest::option::of(proptest::prelude::any::<u64>()),
        timestamp in proptest::prelude::any::<i64>(),
        timestamp_ms in proptest::option::of(proptest::prelude::any::<i64>()),
        received_at_ms in proptest::prelude::any::<u64>(),
        state in proptest::option::of(proptest::prelude::any::<u32>()),
        delta in proptest::option::of(proptest::collection::vec("(\\PC|[\\x00-\\x1f])*", 0..4)),
        here_now_refresh in proptest::prelude::any::<bool>(),
        action in proptest::sample::select(Action::ALL.to_vec()),
        format in proptest::sample::select(Format::ALL.to_vec()),
    ) {
        let e = Event {
            id,
            format,
            sub_key,
            channel,
            action,
            uuid,
            occupancy,
            timestamp,
            timestamp_ms,
            received_at_ms,
            state: state.map(|n| State::from_value(&json!({"n": n, "s": "x\u{1}\"y", "a": [1.5, null]}))),
            delta: delta.map(|ids| Delta {
                join: ids.clone(),
                leave: ids.iter().rev().cloned().collect(),
                timeout: Vec::new(),
            }),
            here_now_refresh,
        };
        proptest::prop_assert_eq!(
            String::from_utf8(e.to_json()).unwrap(),
            String::from_utf8(serde_json::to_vec(&e).unwrap()).unwrap()
        );
    }
}
