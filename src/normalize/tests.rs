//! Table-driven tests over every PubNub fixture and bad input, edge cases of DESIGN §3/§6, the
//! §6 wire format and `docs/event.schema.json`, and property tests (never panics, round-trips).

use serde_json::{Value, json};

use super::*;

const RECEIVED: u64 = 1_718_035_200_456;
const SUB: &str = "sub-c-7d1e0c2a-0000-4000-8000-000000000001";

/// Shorthand for an expected event; every field is spelled out by the callers.
#[allow(clippy::too_many_arguments)]
fn ev(
    format: Format,
    id: &str,
    sub_key: Option<&str>,
    channel: &str,
    action: Action,
    uuid: Option<&str>,
    occupancy: Option<u64>,
    timestamp: i64,
    timestamp_ms: Option<i64>,
    state: Option<Value>,
    delta: Option<Delta>,
    here_now_refresh: bool,
) -> Event {
    Event {
        id: id.into(),
        format,
        sub_key: sub_key.map(Into::into),
        channel: channel.into(),
        action,
        uuid: uuid.map(Into::into),
        occupancy,
        timestamp,
        timestamp_ms,
        received_at_ms: RECEIVED,
        state,
        delta,
        here_now_refresh,
    }
}

fn delta(join: &[&str], leave: &[&str], timeout: &[&str]) -> Option<Delta> {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    Some(Delta {
        join: own(join),
        leave: own(leave),
        timeout: own(timeout),
    })
}

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            &include_bytes!(concat!("../../../shared/pubnub/fixtures/", $name))[..],
        )
    };
}

macro_rules! bad {
    ($name:literal) => {
        (
            $name,
            &include_bytes!(concat!("../../../shared/pubnub/bad/", $name))[..],
        )
    };
}

fn fixtures() -> Vec<(&'static str, &'static [u8], Vec<Event>)> {
    use Action::*;
    use Format::*;
    let s = Some(SUB);
    let ena = EventsAndActions;
    vec![
        (
            fixture!("ena-active.json").0,
            fixture!("ena-active.json").1,
            vec![ev(
                ena,
                "9d2c0001-aaaa-4bbb-8ccc-dddddddddddd",
                s,
                "room.lobby",
                Active,
                None,
                None,
                1_718_035_200,
                Some(1_718_035_200_004),
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("ena-batch.json").0,
            fixture!("ena-batch.json").1,
            vec![
                ev(
                    ena,
                    "b0000001-0000-4000-8000-000000000001",
                    s,
                    "room.1",
                    Join,
                    Some("u-1"),
                    Some(1),
                    1_718_035_200,
                    Some(1_718_035_200_001),
                    None,
                    None,
                    false,
                ),
                ev(
                    ena,
                    "b0000002-0000-4000-8000-000000000002",
                    s,
                    "room.2",
                    Join,
                    Some("u-2"),
                    Some(1),
                    1_718_035_201,
                    Some(1_718_035_201_002),
                    None,
                    None,
                    false,
                ),
                ev(
                    ena,
                    "b0000003-0000-4000-8000-000000000003",
                    s,
                    "room.1",
                    Join,
                    Some("u-3"),
                    Some(2),
                    1_718_035_202,
                    Some(1_718_035_202_003),
                    None,
                    None,
                    false,
                ),
            ],
        ),
        (
            fixture!("ena-inactive.json").0,
            fixture!("ena-inactive.json").1,
            vec![ev(
                ena,
                "9d2c0002-aaaa-4bbb-8ccc-dddddddddddd",
                s,
                "room.lobby",
                Inactive,
                None,
                None,
                1_718_035_500,
                Some(1_718_035_500_004),
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("ena-interval.json").0,
            fixture!("ena-interval.json").1,
            vec![ev(
                ena,
                "71aa0000-0000-4000-8000-000000000001",
                s,
                "stadium.main",
                Interval,
                None,
                Some(1250),
                1_718_035_210,
                Some(1_718_035_210_002),
                None,
                delta(&["user-a"], &["user-b"], &[]),
                false,
            )],
        ),
        (
            fixture!("ena-join.json").0,
            fixture!("ena-join.json").1,
            vec![ev(
                ena,
                "5b0e7c1e-2a8f-4d0b-9c55-0a4f1e2d3c4b",
                s,
                "room.lobby",
                Join,
                Some("user-7f3a"),
                Some(3),
                1_718_035_200,
                Some(1_718_035_200_123),
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("ena-left.json").0,
            fixture!("ena-left.json").1,
            vec![ev(
                ena,
                "0d7a6b9e-11aa-4c1b-8f00-3e5d2c1b0a99",
                s,
                "room.lobby",
                Leave,
                Some("user-7f3a"),
                Some(2),
                1_718_035_300,
                Some(1_718_035_300_456),
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("ena-state-change.json").0,
            fixture!("ena-state-change.json").1,
            vec![ev(
                ena,
                "c0ffee00-1111-4222-8333-444455556666",
                s,
                "room.lobby",
                StateChange,
                Some("user-7f3a"),
                Some(3),
                1_718_035_260,
                Some(1_718_035_260_456),
                Some(json!({"mood": "away"})),
                None,
                false,
            )],
        ),
        (
            fixture!("ena-timeout.json").0,
            fixture!("ena-timeout.json").1,
            vec![ev(
                ena,
                "a1b2c3d4-0000-4000-8000-00000000beef",
                s,
                "room.lobby",
                Timeout,
                Some("device-42"),
                Some(1),
                1_718_035_600,
                Some(1_718_035_600_001),
                None,
                None,
                false,
            )],
        ),
        // G1 ids: `sha256sum FILE | cut -c1-32` (the files end with a newline, hashed too).
        (
            fixture!("g1-active.json").0,
            fixture!("g1-active.json").1,
            vec![ev(
                G1,
                "4c17439763c3f1a2ef82f54dab9c15b1",
                s,
                "room.lobby",
                Active,
                None,
                None,
                1_718_035_200,
                None,
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("g1-inactive.json").0,
            fixture!("g1-inactive.json").1,
            vec![ev(
                G1,
                "1a1b4d204e4f848a85a5ec0677f58b98",
                s,
                "room.lobby",
                Inactive,
                None,
                None,
                1_718_039_999,
                None,
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("g1-interval-deltas.json").0,
            fixture!("g1-interval-deltas.json").1,
            vec![ev(
                G1,
                "7f95d2186094b4507e4a663d83c1c7fb",
                s,
                "stadium",
                Interval,
                None,
                Some(57),
                1_718_035_230,
                None,
                None,
                delta(&["user-a", "user-b"], &["user-c"], &["user-d"]),
                false,
            )],
        ),
        (
            fixture!("g1-interval-refresh.json").0,
            fixture!("g1-interval-refresh.json").1,
            vec![ev(
                G1,
                "e3abdb316a24d2ebe75f9053eeae1b0d",
                s,
                "stadium",
                Interval,
                None,
                Some(1203),
                1_718_035_240,
                None,
                None,
                None,
                true,
            )],
        ),
        (
            fixture!("g1-join.json").0,
            fixture!("g1-join.json").1,
            vec![ev(
                G1,
                "1144969e37505642e5322010fdee9820",
                s,
                "lacrosse",
                Join,
                Some("1234-5678-90ab-cdef"),
                Some(1),
                1_440_568_311,
                None,
                Some(json!({"foo": "bar"})),
                None,
                false,
            )],
        ),
        (
            fixture!("g1-leave.json").0,
            fixture!("g1-leave.json").1,
            vec![ev(
                G1,
                "f95dfd1729233a862de371c88a34da9f",
                s,
                "lacrosse",
                Leave,
                Some("1234-5678-90ab-cdef"),
                Some(0),
                1_440_568_390,
                None,
                None,
                None,
                false,
            )],
        ),
        (
            fixture!("g1-state-change.json").0,
            fixture!("g1-state-change.json").1,
            vec![ev(
                G1,
                "c332a26778f8f924e51fd774df6020ef",
                s,
                "room.lobby",
                StateChange,
                Some("user-7f3a"),
                Some(3),
                1_718_035_260,
                None,
                Some(json!({"mood": "away", "typing": false})),
                None,
                false,
            )],
        ),
        (
            fixture!("g1-timeout.json").0,
            fixture!("g1-timeout.json").1,
            vec![ev(
                G1,
                "3205792f65aff98c68ad7851a401cc7f",
                s,
                "room.lobby",
                Timeout,
                Some("device-42"),
                Some(2),
                1_718_035_500,
                None,
                Some(json!({})),
                None,
                false,
            )],
        ),
    ]
}

/// Every file of a shared directory, so that a new fixture without an expectation fails.
fn files_in(dir: &str) -> Vec<String> {
    let path = format!("{}/../shared/pubnub/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn every_fixture_normalizes_to_its_expected_events() {
    let table = fixtures();
    let mut covered: Vec<String> = table.iter().map(|(n, _, _)| (*n).to_owned()).collect();
    covered.sort();
    assert_eq!(covered, files_in("fixtures"), "fixture table out of date");
    for (name, body, expected) in table {
        let events = normalize(body, RECEIVED).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(events, expected, "{name}");
        for event in &events {
            let json = event.to_json();
            let back: Event = serde_json::from_slice(&json).unwrap();
            assert_eq!(&back, event, "{name}: round trip");
        }
    }
}

#[test]
fn every_bad_input_is_rejected_with_a_clear_message() {
    let table = [
        (
            bad!("array.json"),
            NormalizeError::NotAnObject {
                what: "body",
                found: "an array",
            },
            "body is not a JSON object (found an array)",
        ),
        (
            bad!("binary.bin"),
            NormalizeError::InvalidUtf8 { offset: 0 },
            "body is not valid UTF-8 (first invalid byte at offset 0)",
        ),
        (
            bad!("empty-channel.json"),
            NormalizeError::Empty {
                field: "channel".into(),
            },
            "channel is empty",
        ),
        (
            bad!("form-encoded.txt"),
            NormalizeError::InvalidJson {
                line: 1,
                column: 1,
                reason: "expected value".into(),
            },
            "invalid JSON at line 1 column 1: expected value",
        ),
        (
            bad!("truncated.json"),
            NormalizeError::InvalidJson {
                line: 1,
                column: 35,
                reason: "EOF while parsing an object".into(),
            },
            "invalid JSON at line 1 column 35: EOF while parsing an object",
        ),
        (
            bad!("unknown-action.json"),
            NormalizeError::UnknownAction("teleport".into()),
            "unknown action \"teleport\"",
        ),
    ];
    let mut covered: Vec<String> = table.iter().map(|((n, _), _, _)| (*n).to_owned()).collect();
    covered.sort();
    assert_eq!(covered, files_in("bad"), "bad-input table out of date");
    for ((name, body), error, message) in table {
        let got = normalize(body, RECEIVED).expect_err(name);
        assert_eq!(got, error, "{name}");
        assert_eq!(got.to_string(), message, "{name}");
    }
}

/// Normalizes a body that must yield exactly one event.
fn one(body: &str) -> Event {
    match normalize(body.as_bytes(), RECEIVED) {
        Ok(mut events) if events.len() == 1 => events.remove(0),
        other => panic!("{body}: {other:?}"),
    }
}

/// The message of a body that must be rejected.
fn rejected(body: &str) -> String {
    match normalize(body.as_bytes(), RECEIVED) {
        Err(e) => e.to_string(),
        Ok(events) => panic!("{body}: accepted as {events:?}"),
    }
}

/// A one-item Events & Actions body for `event` with `item` as the item.
fn ena(event: &str, item: Value) -> String {
    json!({
        "schema": format!("pubnub.com/schemas/events/{event}?v=1.0.0"),
        "data": [item]
    })
    .to_string()
}

fn ena_item() -> Value {
    json!({"id": "i-1", "channel": "c", "userId": "u", "timestamp": "2024-06-10T16:00:00.123Z"})
}

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
        one(&ena("presence.channel.user.state.in.changed", item)).state
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
    assert_eq!(e.state, Some(json!({})));
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
        (e.action, e.state),
        (Action::StateChange, Some(json!({"k": 1})))
    );
}

#[test]
fn out_of_range_and_non_integer_numbers_are_rejected() {
    let g1 = |occupancy: &str| {
        rejected(&format!(
            r#"{{"action":"join","channel":"c","timestamp":1718035200,"occupancy":{occupancy}}}"#
        ))
    };
    assert_eq!(g1("-1"), "occupancy: number out of range");
    assert_eq!(g1("\"-1\""), "occupancy: number out of range");
    assert_eq!(g1("18446744073709551616"), "occupancy: number out of range");
    assert_eq!(
        g1("\"99999999999999999999999999999999999999999\""),
        "occupancy: number out of range"
    );
    assert_eq!(g1("1.5"), "occupancy: expected an integer, got 1.5");
    assert_eq!(g1("3.0"), "occupancy: expected an integer, got 3.0");
    assert_eq!(g1("\"abc\""), "occupancy: expected an integer, got \"abc\"");
    assert_eq!(g1("true"), "occupancy: expected an integer, got a boolean");
    assert!(
        g1("1e400").starts_with("invalid JSON at line 1 column "),
        "{}",
        g1("1e400")
    );
    assert!(g1("1e400").ends_with(": number out of range"));
    assert!(g1("-1e400").ends_with(": number out of range"));

    let ts = |t: &str| {
        rejected(&format!(
            r#"{{"action":"join","channel":"c","timestamp":{t}}}"#
        ))
    };
    assert_eq!(ts("-5"), "timestamp: number out of range");
    assert_eq!(ts("253402300800"), "timestamp: number out of range");
    assert_eq!(ts("1000000000000000000"), "timestamp: number out of range");
    assert_eq!(ts("9223372036854775808"), "timestamp: number out of range");
    assert_eq!(
        ts("1718035200.5"),
        "timestamp: expected an integer, got 1718035200.5"
    );
    assert_eq!(ts("null"), "timestamp is missing");
    assert_eq!(
        ts("[1]"),
        "timestamp: expected Unix seconds, a timetoken or an ISO-8601 string, got an array"
    );
    assert_eq!(
        ts("\"2024-13-01T00:00:00Z\""),
        "timestamp: month out of range in \"2024-13-01T00:00:00Z\""
    );
    assert_eq!(
        ts("\"2023-02-29T00:00:00Z\""),
        "timestamp: day out of range in \"2023-02-29T00:00:00Z\""
    );
    assert_eq!(
        ts("\"2024-06-10T16:00:00\""),
        "timestamp: missing time zone (Z or ±HH:MM) in \"2024-06-10T16:00:00\""
    );
    assert_eq!(
        ts("\"1969-12-31T23:59:59Z\""),
        "timestamp: before 1970-01-01T00:00:00Z in \"1969-12-31T23:59:59Z\""
    );
    assert!(ts("\"yesterday\"").starts_with("timestamp: not an ISO-8601 time"));
    assert!(ts("\"2024-06-10T16:00:00.Z\"").starts_with("timestamp: not an ISO-8601 time"));

    // Inside a batch the item and the inner field are named.
    let mut item = ena_item();
    item["data"] = json!({"precise_timestamp": "x"});
    assert_eq!(
        rejected(&ena("presence.user.channel.joined", item)),
        "data[0]: data.precise_timestamp: expected an integer, got \"x\""
    );
    let mut item = ena_item();
    item.as_object_mut().unwrap().remove("userId");
    item["data"] = json!({"occupancy": "-2"});
    item.as_object_mut().unwrap().remove("occupancy");
    assert_eq!(
        rejected(&ena("presence.user.channel.joined", item)),
        "data[0]: data.occupancy: number out of range"
    );
}

#[test]
fn lone_surrogates_are_rejected_anywhere() {
    for body in [
        r#"{"action":"join","channel":"\ud800","timestamp":1}"#,
        r#"{"action":"join","channel":"\udc00x","timestamp":1}"#,
        r#"{"action":"join","channel":"c","timestamp":1,"unknown":"\ud83d"}"#,
    ] {
        let message = rejected(body);
        assert!(
            message.starts_with("invalid JSON at line 1 column "),
            "{message}"
        );
        assert!(
            message.contains("surrogate") || message.contains("hex escape"),
            "{message}"
        );
    }
    // A correctly paired surrogate is fine.
    assert_eq!(
        one(r#"{"action":"join","channel":"\ud83d\ude00","timestamp":1}"#).channel,
        "😀"
    );
}

#[test]
fn channels_must_be_present_non_empty_and_free_of_control_characters() {
    assert_eq!(
        rejected(r#"{"action":"join","timestamp":1}"#),
        "channel is missing"
    );
    assert_eq!(
        rejected(r#"{"action":"join","channel":null,"timestamp":1}"#),
        "channel is missing"
    );
    assert_eq!(
        rejected(r#"{"action":"join","channel":"","timestamp":1}"#),
        "channel is empty"
    );
    assert_eq!(
        rejected(r#"{"action":"join","channel":5,"timestamp":1}"#),
        "channel: expected a string, got a number"
    );
    assert_eq!(
        rejected(r#"{"action":"join","channel":"ab\u0007","timestamp":1}"#),
        "channel contains control character U+0007 at byte 2"
    );
    assert_eq!(
        rejected(r#"{"action":"join","channel":"x\n","timestamp":1}"#),
        "channel contains control character U+000A at byte 1"
    );
    assert_eq!(
        rejected("{\"action\":\"join\",\"channel\":\"caf\u{e9}\u{7f}\",\"timestamp\":1}"),
        "channel contains control character U+007F at byte 5"
    );
    // Unusual but legal names pass through untouched.
    for name in ["room.lobby>x", "a_b=c@d~e", "café", "has space", "中文"] {
        let body = json!({"action": "join", "channel": name, "timestamp": 1}).to_string();
        assert_eq!(one(&body).channel, name);
    }
    let mut item = ena_item();
    item["channel"] = json!("");
    assert_eq!(
        rejected(&ena("presence.user.channel.joined", item)),
        "data[0]: channel is empty"
    );
}

#[test]
fn batches_are_rejected_whole_naming_the_item() {
    let mut bad = ena_item();
    bad["channel"] = json!("");
    let body = json!({
        "schema": "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
        "data": [ena_item(), ena_item(), ena_item(), bad, ena_item()]
    });
    let err = normalize(body.to_string().as_bytes(), RECEIVED).unwrap_err();
    assert_eq!(err.to_string(), "data[3]: channel is empty");
    assert!(matches!(err, NormalizeError::Item { index: 3, .. }));
    let body = json!({"schema": "presence.user.channel.joined", "data": [ena_item(), 42]});
    assert_eq!(
        rejected(&body.to_string()),
        "data[1]: item is not a JSON object (found a number)"
    );
    let body =
        json!({"schema": "presence.user.channel.joined", "data": [{"id": "x", "channel": "c"}]});
    assert_eq!(rejected(&body.to_string()), "data[0]: timestamp is missing");
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
fn bodies_that_are_not_presence_objects() {
    assert_eq!(rejected(""), "body is empty");
    assert_eq!(rejected(" \n"), "body is empty");
    assert_eq!(rejected("null"), "body is not a JSON object (found null)");
    assert_eq!(
        rejected("\"s\""),
        "body is not a JSON object (found a string)"
    );
    assert!(rejected(r#"{"hello":"world"}"#).starts_with("unrecognized payload"));
    assert_eq!(
        rejected(r#"{"schema":"presence.user.channel.joined"}"#),
        "data is missing"
    );
    assert_eq!(
        rejected(r#"{"schema":"presence.user.channel.joined","data":{}}"#),
        "data: expected an array of events, got an object"
    );
    assert_eq!(
        rejected(r#"{"schema":5,"data":[]}"#),
        "schema: expected a string, got a number"
    );
    assert!(rejected("{\"a\":").starts_with("invalid JSON at line 1 column 5"));
    assert_eq!(
        rejected("{\"a\":[1,"),
        "invalid JSON at line 1 column 8: EOF while parsing an array"
    );
    assert_eq!(
        rejected("{\"a\":\"x\\\"y"),
        "invalid JSON at line 1 column 10: EOF while parsing a string"
    );
    assert_eq!(
        rejected("{\"a\":1}}"),
        "invalid JSON at line 1 column 8: trailing characters"
    );
    // A UTF-8 byte-order mark is tolerated; the id still hashes the exact bytes.
    let body = "\u{feff}{\"action\":\"join\",\"channel\":\"c\",\"timestamp\":1}";
    assert_eq!(one(body).id, body_id(body.as_bytes()));
}

#[test]
fn unknown_fields_are_ignored() {
    let e = one(
        r#"{"action":"leave","channel":"c","timestamp":1,"future":{"deep":[1,2,{"x":null}]},"n":1.5}"#,
    );
    assert_eq!(e.action, Action::Leave);
}

#[test]
fn to_json_is_the_design_wire_format() {
    let e = ev(
        Format::G1,
        "c0ffee",
        Some("sub-c-1"),
        "room.lobby",
        Action::Join,
        Some("user-7f3a"),
        Some(3),
        1_718_035_200,
        Some(1_718_035_200_123),
        Some(json!({"mood": "busy"})),
        None,
        false,
    );
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
    let e = ev(
        Format::EventsAndActions,
        "i",
        None,
        "c",
        Action::Interval,
        None,
        None,
        1,
        None,
        None,
        delta(&["a"], &[], &[]),
        true,
    );
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
    let schema: Value = serde_json::from_str(include_str!("../../docs/event.schema.json")).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema["$id"].as_str().unwrap().contains("v1"));
    assert_eq!(schema["properties"]["schema"]["const"], SCHEMA);
    let wire: Value = serde_json::from_slice(&fixtures()[0].2[0].to_json()).unwrap();
    let wire_keys: Vec<&String> = wire.as_object().unwrap().keys().collect();
    let doc_keys: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert_eq!(wire_keys, doc_keys, "properties in §6 order");
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

mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Number, Value};

    use super::super::{Event, normalize};

    const KEYS: &[&str] = &[
        "action",
        "status",
        "channel",
        "channelId",
        "uuid",
        "userId",
        "user_id",
        "sub_key",
        "subKey",
        "timestamp",
        "precise_timestamp",
        "occupancy",
        "data",
        "state",
        "schema",
        "dataSchema",
        "id",
        "event",
        "payload",
        "join",
        "joined",
        "usersJoined",
        "usersLeft",
        "usersTimedOut",
        "here_now_refresh",
        "x",
    ];
    const WORDS: &[&str] = &[
        "join",
        "leave",
        "timeout",
        "state-change",
        "active",
        "inactive",
        "interval",
        "teleport",
        "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
        "presence.channel.occupancy.counted",
        "presence.channel.user.state.in.changed",
        "17180352001234567",
        "1718035200",
        "-1",
        "",
        "{\"a\":1}",
        "{",
        "room.lobby",
        "true",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop::sample::select(WORDS).prop_map(Value::from),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:?[0-9]{0,2})?"
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..10).prop_map(
                    |pairs| {
                        Value::Object(
                            pairs
                                .into_iter()
                                .map(|(k, v)| (k.to_owned(), v))
                                .collect::<Map<_, _>>(),
                        )
                    }
                ),
            ]
        })
    }

    /// Accepted events survive the wire format unchanged.
    fn check(body: &[u8]) {
        if let Ok(events) = normalize(body, 42) {
            for e in events {
                let back: Event = serde_json::from_slice(&e.to_json()).expect("round trip");
                assert_eq!(back, e);
                assert!(!e.channel.is_empty());
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&body);
        }

        #[test]
        fn json_ish_strings_never_panic(body in "[{}\\[\\]\":,0-9a-z.+eE\\\\ -]{0,128}") {
            check(body.as_bytes());
        }

        #[test]
        fn structured_json_never_panics(value in json_value()) {
            check(value.to_string().as_bytes());
        }

        #[test]
        fn presence_shaped_objects_never_panic(
            fields in prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..12),
            batch in any::<bool>(),
        ) {
            let object: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let body = if batch {
                serde_json::json!({"schema": "presence.user.channel.joined", "data": [object]})
            } else {
                Value::Object(object)
            };
            check(body.to_string().as_bytes());
        }
    }
}

#[test]
fn header_fields_reject_control_characters() {
    assert_eq!(
        rejected(r#"{"action":"join","channel":"c","timestamp":1,"sub_key":"sub\r\nX: y"}"#),
        "sub_key contains control character U+000D at byte 3"
    );
    let mut item = ena_item();
    item["id"] = json!("a\nb");
    assert_eq!(
        rejected(&ena("presence.user.channel.joined", item)),
        "data[0]: id contains control character U+000A at byte 1"
    );
    let mut item = ena_item();
    item.as_object_mut().unwrap().remove("channel");
    item["channelId"] = json!("");
    assert_eq!(
        rejected(&ena("presence.user.channel.joined", item)),
        "data[0]: channelId is empty"
    );
}
