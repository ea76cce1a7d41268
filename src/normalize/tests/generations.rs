//! Accepted shapes: every generation, field spelling, number and time form the contract names.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::super::{Action, Format, SCHEMA_KEYS, hex32};
use super::*;

#[test]
fn numbers_may_arrive_as_strings() {
    let e = one(
        r#"{"action":"join","channel":"c","uuid":"u","timestamp":"1718035200","occupancy":"3"}"#,
    );
    assert_eq!(
        (e.timestamp, e.timestamp_ms, e.occupancy),
        (1_718_035_200, None, Some(3))
    );
    let e = one(&ena(
        "presence.user.channel.joined",
        json!({"id": "i", "channel": "c", "occupancy": " 7 ", "timestamp": "2024-06-10T16:00:00Z"}),
    ));
    assert_eq!(e.occupancy, Some(7));
    // A numeric uuid is kept in its JSON spelling.
    let e = one(r#"{"action":"join","channel":"c","uuid":42,"timestamp":1718035200}"#);
    assert_eq!(e.uuid.as_deref(), Some("42"));
}

#[test]
fn events_and_actions_channel_id_and_fallbacks_to_inner_data() {
    let e = one(&ena(
        "presence.user.channel.left",
        json!({"id": "i", "channelId": "room.x", "data": {"uuid": "inner-u", "occupancy": "4",
               "timestamp": "1718035300", "precise_timestamp": "1718035300456"}}),
    ));
    assert_eq!(e.channel, "room.x");
    assert_eq!(e.uuid.as_deref(), Some("inner-u"));
    assert_eq!(e.occupancy, Some(4));
    assert_eq!(
        (e.timestamp, e.timestamp_ms),
        (1_718_035_300, Some(1_718_035_300_456))
    );
    // Inner seconds only: no milliseconds.
    let e = one(&ena(
        "presence.user.channel.left",
        json!({"id": "i", "channel": "c", "data": {"timestamp": "1718035300"}}),
    ));
    assert_eq!((e.timestamp, e.timestamp_ms), (1_718_035_300, None));
    // Milliseconds only: seconds derived from them.
    let e = one(&ena(
        "presence.user.channel.left",
        json!({"id": "i", "channel": "c", "data": {"precise_timestamp": "1718035300999"}}),
    ));
    assert_eq!(
        (e.timestamp, e.timestamp_ms),
        (1_718_035_300, Some(1_718_035_300_999))
    );
    // The item's own fields win over the inner data's.
    let e = one(&ena(
        "presence.user.channel.joined",
        json!({"id": "i", "channel": "c", "userId": "outer", "occupancy": 9,
               "timestamp": "2024-06-10T16:00:00Z", "data": {"uuid": "inner", "occupancy": "1"}}),
    ));
    assert_eq!((e.uuid.as_deref(), e.occupancy), (Some("outer"), Some(9)));
}

#[test]
fn envelope_is_unwrapped() {
    let body = json!({"event": {"id": "env-1", "type": "presence", "payload": {
        "schema": "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
        "data": [ena_item()]
    }}})
    .to_string();
    let e = one(&body);
    assert_eq!(
        (e.id.as_str(), e.action, e.format),
        ("i-1", Action::Join, Format::EventsAndActions)
    );
}

#[test]
fn schema_names_match_by_substring() {
    let cases = [
        (
            "pubnub.com/schemas/events/pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
            Action::Join,
        ),
        (
            "pubnub.com/schemas/events/presence.user.channel.left?v=1.0.00",
            Action::Leave,
        ),
        ("presence.user.timedout.in.channel", Action::Timeout),
        (
            "pubnub.com/schemas/events/presence.channel.user.state.in.changed",
            Action::StateChange,
        ),
        (
            "pubnub.com/schemas/events/presence.channel.state.active?v=1.0.0",
            Action::Active,
        ),
        (
            "pubnub.com/schemas/events/presence.channel.state.inactive?v=1.0.0",
            Action::Inactive,
        ),
        (
            "pubnub.com/schemas/events/presence.channel.occupancy.counted?v=1",
            Action::Interval,
        ),
    ];
    for (schema, action) in cases {
        for key in SCHEMA_KEYS {
            let body = json!({ key: schema, "data": [ena_item()] }).to_string();
            assert_eq!(one(&body).action, action, "{key}: {schema}");
        }
    }
    assert_eq!(
        rejected(&ena("presence.user.channel.joinedx", ena_item())),
        "unknown event kind \"pubnub.com/schemas/events/presence.user.channel.joinedx?v=1.0.0\""
    );
    assert_eq!(
        rejected(&ena("message.sent", ena_item())),
        "unknown event kind \"pubnub.com/schemas/events/message.sent?v=1.0.0\""
    );
}

#[test]
fn iso_timestamps_with_fractions_and_offsets() {
    let cases = [
        ("2024-06-10T16:00:00Z", 1_718_035_200, 1_718_035_200_000),
        (
            "2024-06-10T16:00:00.123456789Z",
            1_718_035_200,
            1_718_035_200_123,
        ),
        ("2024-06-10T16:00:00.9Z", 1_718_035_200, 1_718_035_200_900),
        (
            "2024-06-10T18:00:00.5+02:00",
            1_718_035_200,
            1_718_035_200_500,
        ),
        (
            "2024-06-10T10:30:00-05:30",
            1_718_035_200,
            1_718_035_200_000,
        ),
        ("2024-06-10T18:00:00+0200", 1_718_035_200, 1_718_035_200_000),
        ("2024-06-10T18:00:00+02", 1_718_035_200, 1_718_035_200_000),
        ("2024-06-10t16:00:00,25z", 1_718_035_200, 1_718_035_200_250),
        ("2024-06-10 16:00:00Z", 1_718_035_200, 1_718_035_200_000),
    ];
    for (iso, secs, ms) in cases {
        let mut item = ena_item();
        item["timestamp"] = json!(iso);
        let e = one(&ena("presence.user.channel.joined", item));
        assert_eq!((e.timestamp, e.timestamp_ms), (secs, Some(ms)), "{iso}");
        // G2 uses the same rules.
        let g2 = json!({"id": "g", "schema": "presence.user.channel.joined", "channel": "c",
                        "timestamp": iso});
        let e = one(&g2.to_string());
        assert_eq!((e.timestamp, e.timestamp_ms), (secs, Some(ms)), "G2 {iso}");
    }
}

#[test]
fn timetokens_and_milliseconds_are_converted_exactly() {
    // 17 digits, 100 ns units: never through f64 (f64 would round the last digits).
    let e = one(r#"{"action":"join","channel":"c","timestamp":17180352001239999}"#);
    assert_eq!(
        (e.timestamp, e.timestamp_ms),
        (1_718_035_200, Some(1_718_035_200_123))
    );
    let e = one(r#"{"action":"join","channel":"c","timestamp":"17180352001239999"}"#);
    assert_eq!(
        (e.timestamp, e.timestamp_ms),
        (1_718_035_200, Some(1_718_035_200_123))
    );
    // 13 digits: Unix milliseconds.
    let e = one(r#"{"action":"join","channel":"c","timestamp":1718035200123}"#);
    assert_eq!(
        (e.timestamp, e.timestamp_ms),
        (1_718_035_200, Some(1_718_035_200_123))
    );
    // precise_timestamp given as a timetoken.
    let mut item = ena_item();
    item["data"] = json!({"precise_timestamp": "17180352009876543"});
    let e = one(&ena("presence.user.channel.joined", item));
    assert_eq!(e.timestamp_ms, Some(1_718_035_200_987));
}

#[test]
fn g1_delta_spellings() {
    let e = one(
        r#"{"action":"interval","channel":"c","timestamp":1718035230,"occupancy":5,
            "joined":["a"],"left":["b","c"],"timedout":["d"]}"#,
    );
    assert_eq!(e.delta, delta(&["a"], &["b", "c"], &["d"]));
    let e = one(r#"{"action":"interval","channel":"c","timestamp":1718035230,"leave":[]}"#);
    assert_eq!(e.delta, delta(&[], &[], &[]));
    assert_eq!(
        rejected(r#"{"action":"interval","channel":"c","timestamp":1,"join":["a",7]}"#),
        "join[1]: expected a string, got a number"
    );
    assert_eq!(
        rejected(r#"{"action":"interval","channel":"c","timestamp":1,"join":"a"}"#),
        "join: expected an array of user ids, got a string"
    );
}

#[test]
fn events_and_actions_delta_spellings() {
    let mut item = ena_item();
    item["usersJoinedDelta"] = json!(["a"]);
    item["usersTimedOut"] = json!(["t"]);
    let e = one(&ena("presence.channel.occupancy.counted", item));
    assert_eq!(e.delta, delta(&["a"], &[], &["t"]));
    let mut item = ena_item();
    item["usersTimedout"] = json!(["t2"]);
    let e = one(&ena("presence.channel.occupancy.counted", item));
    assert_eq!(e.delta, delta(&[], &[], &["t2"]));
}

#[test]
fn events_and_actions_state() {
    let state_of = |inner: Value| {
        let mut item = ena_item();
        item["data"] = json!({ "data": inner });
        one(&ena("presence.channel.user.state.in.changed", item))
            .state
            .map(|s| s.to_value())
    };
    assert_eq!(
        state_of(json!("{\"mood\":\"busy\"}")),
        Some(json!({"mood": "busy"}))
    );
    assert_eq!(state_of(json!("{}")), Some(json!({})));
    // Not JSON: kept as the string.
    assert_eq!(state_of(json!("away")), Some(json!("away")));
    // Decoded once only.
    assert_eq!(
        state_of(json!("\"{\\\"a\\\":1}\"")),
        Some(json!("{\"a\":1}"))
    );
    // Already an object.
    assert_eq!(state_of(json!({"x": [1, 2]})), Some(json!({"x": [1, 2]})));
    assert_eq!(state_of(json!("null")), None);
    let mut item = ena_item();
    item["data"] = json!({});
    assert_eq!(
        one(&ena("presence.channel.user.state.in.changed", item)).state,
        None
    );
}

#[test]
fn g1_state_is_carried_as_sent() {
    let e = one(r#"{"action":"state-change","channel":"c","uuid":"u","timestamp":1,"data":{}}"#);
    assert_eq!(e.state.map(|s| s.to_value()), Some(json!({})));
    let e = one(r#"{"action":"state-change","channel":"c","uuid":"u","timestamp":1}"#);
    assert_eq!(e.state, None);
    let e = one(r#"{"action":"join","channel":"c","timestamp":1,"data":{"b":1,"a":2}}"#);
    // Key order as sent.
    assert_eq!(serde_json::to_string(&e.state).unwrap(), r#"{"b":1,"a":2}"#);
}

#[test]
fn g2_flat_object() {
    let e = one(
        r#"{"id":"g2-1","schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
            "user_id":"u-9","sub_key":"sub-c-2","channel":"room","timestamp":"2024-06-10T16:00:00.250Z",
            "occupancy":"4","extra":{"ignored":true}}"#,
    );
    assert_eq!(
        e,
        Event {
            id: "g2-1".into(),
            format: Format::G2,
            sub_key: Some("sub-c-2".into()),
            channel: "room".into(),
            action: Action::Join,
            uuid: Some("u-9".into()),
            occupancy: Some(4),
            timestamp: 1_718_035_200,
            timestamp_ms: Some(1_718_035_200_250),
            received_at_ms: RECEIVED,
            state: None,
            delta: None,
            here_now_refresh: false,
        }
    );
    let e = one(
        r#"{"id":"g2-2","schema":"presence.channel.user.state.in.changed","channel":"room",
            "timestamp":"2024-06-10T16:00:00Z","state":"{\"k\":1}"}"#,
    );
    assert_eq!(
        (e.action, e.state.map(|s| s.to_value())),
        (Action::StateChange, Some(json!({"k": 1})))
    );
}

#[test]
fn empty_batch_is_no_events() {
    let body =
        br#"{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[]}"#;
    assert_eq!(normalize(body, RECEIVED), Ok(vec![]));
}

#[test]
fn large_batch_in_order() {
    let items: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"id": format!("id-{i}"), "channel": format!("room.{}", i % 7), "userId": "u",
                   "occupancy": i, "timestamp": "2024-06-10T16:00:00.001Z",
                   "data": {"uuid": "u", "occupancy": i.to_string(), "precise_timestamp": "1718035200001"}})
        })
        .collect();
    let body = json!({"schema": "presence.user.channel.joined", "data": items}).to_string();
    let events = normalize(body.as_bytes(), RECEIVED).unwrap();
    assert_eq!(events.len(), 10_000);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.id == format!("id-{i}") && e.occupancy == Some(i as u64))
    );
}

#[test]
fn items_without_id_get_a_stable_distinct_id() {
    let mut item = ena_item();
    item.as_object_mut().unwrap().remove("id");
    let body =
        json!({"schema": "presence.user.channel.joined", "data": [item.clone(), item]}).to_string();
    let first = normalize(body.as_bytes(), RECEIVED).unwrap();
    let again = normalize(body.as_bytes(), RECEIVED + 1).unwrap();
    assert_eq!(first[0].id, again[0].id);
    assert_ne!(first[0].id, first[1].id);
    assert!(
        first
            .iter()
            .all(|e| e.id.len() == 32 && e.id.bytes().all(|b| b.is_ascii_hexdigit()))
    );
}

#[test]
fn g1_ids_follow_the_exact_bytes() {
    let a = br#"{"action":"join","channel":"c","uuid":"u","timestamp":1718035200,"occupancy":1}"#;
    let b = br#"{"action":"join","channel":"c","uuid":"u","timestamp":1718035200,"occupancy":2}"#;
    let id = |body: &[u8]| normalize(body, RECEIVED).unwrap().remove(0).id;
    // A retry is byte-identical: same id. Two devices of one user, or join→leave→join within
    // a second: the occupancy differs, so the ids differ and neither is a duplicate.
    assert_eq!(id(a), id(a));
    assert_ne!(id(a), id(b));
    assert_eq!(id(a), hex32(&Sha256::digest(a)));
}

#[test]
fn g1_actions_and_statuses() {
    for action in Action::ALL {
        let body = json!({"action": action.as_str(), "channel": "c", "timestamp": 1}).to_string();
        assert_eq!(one(&body).action, action);
    }
    assert_eq!(
        one(r#"{"status":"active","channel":"c","timestamp":1}"#).action,
        Action::Active
    );
    assert_eq!(
        rejected(r#"{"status":"join","channel":"c","timestamp":1}"#),
        "unknown status \"join\""
    );
    assert_eq!(
        rejected(r#"{"action":"JOIN","channel":"c","timestamp":1}"#),
        "unknown action \"JOIN\""
    );
    assert_eq!(
        rejected(r#"{"action":7,"channel":"c","timestamp":1}"#),
        "action: expected a string, got a number"
    );
    let long = "x".repeat(500);
    let message = rejected(&json!({"action": long, "channel": "c", "timestamp": 1}).to_string());
    assert!(message.len() < 100, "echoed input is truncated: {message}");
}

#[test]
fn unknown_fields_are_ignored() {
    let e = one(
        r#"{"action":"leave","channel":"c","timestamp":1,"future":{"deep":[1,2,{"x":null}]},"n":1.5}"#,
    );
    assert_eq!(e.action, Action::Leave);
}
