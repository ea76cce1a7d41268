//! Every file in `tests/fixtures/pubnub/fixtures` with the full expected events (every field), and
//! every file in `tests/fixtures/pubnub/bad` with its exact error. A new file without a row fails.

use serde_json::{Value, json};

use super::super::{Event, NormalizeError, SCHEMA, normalize};
use super::{RECEIVED, SUB, files_in};

macro_rules! corpus {
    ($dir:literal, $name:literal) => {
        (
            $name,
            &include_bytes!(concat!("../../../tests/fixtures/pubnub/", $dir, "/", $name))[..],
        )
    };
}

/// Expected events as event JSON minus the constant `schema`, `source` and `received_at_ms`.
/// G1 ids are `sha256sum FILE | cut -c1-32` (the files end with a newline, hashed too).
#[allow(clippy::too_many_lines, reason = "a table: one entry per fixture file")]
fn fixture_table() -> Vec<((&'static str, &'static [u8]), Value)> {
    vec![
        (
            corpus!("fixtures", "ena-active.json"),
            json!([{"id": "9d2c0001-aaaa-4bbb-8ccc-dddddddddddd", "format": "events-and-actions",
                "sub_key": SUB, "channel": "room.lobby", "action": "active", "uuid": null,
                "occupancy": null, "timestamp": 1_718_035_200, "timestamp_ms": 1_718_035_200_004_i64,
                "state": null, "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "ena-batch.json"),
            json!([
                {"id": "b0000001-0000-4000-8000-000000000001", "format": "events-and-actions",
                 "sub_key": SUB, "channel": "room.1", "action": "join", "uuid": "u-1",
                 "occupancy": 1, "timestamp": 1_718_035_200, "timestamp_ms": 1_718_035_200_001_i64,
                 "state": null, "delta": null, "here_now_refresh": false},
                {"id": "b0000002-0000-4000-8000-000000000002", "format": "events-and-actions",
                 "sub_key": SUB, "channel": "room.2", "action": "join", "uuid": "u-2",
                 "occupancy": 1, "timestamp": 1_718_035_201, "timestamp_ms": 1_718_035_201_002_i64,
                 "state": null, "delta": null, "here_now_refresh": false},
                {"id": "b0000003-0000-4000-8000-000000000003", "format": "events-and-actions",
                 "sub_key": SUB, "channel": "room.1", "action": "join", "uuid": "u-3",
                 "occupancy": 2, "timestamp": 1_718_035_202, "timestamp_ms": 1_718_035_202_003_i64,
                 "state": null, "delta": null, "here_now_refresh": false},
            ]),
        ),
        (
            corpus!("fixtures", "ena-inactive.json"),
            json!([{"id": "9d2c0002-aaaa-4bbb-8ccc-dddddddddddd", "format": "events-and-actions",
                "sub_key": SUB, "channel": "room.lobby", "action": "inactive", "uuid": null,
                "occupancy": null, "timestamp": 1_718_035_500, "timestamp_ms": 1_718_035_500_004_i64,
                "state": null, "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "ena-interval.json"),
            json!([{"id": "71aa0000-0000-4000-8000-000000000001", "format": "events-and-actions",
                "sub_key": SUB, "channel": "stadium.main", "action": "interval", "uuid": null,
                "occupancy": 1250, "timestamp": 1_718_035_210, "timestamp_ms": 1_718_035_210_002_i64,
                "state": null, "delta": {"join": ["user-a"], "leave": ["user-b"], "timeout": []},
                "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "ena-join.json"),
            json!([{"id": "5b0e7c1e-2a8f-4d0b-9c55-0a4f1e2d3c4b", "format": "events-and-actions",
                "sub_key": SUB, "channel": "room.lobby", "action": "join", "uuid": "user-7f3a",
                "occupancy": 3, "timestamp": 1_718_035_200, "timestamp_ms": 1_718_035_200_123_i64,
                "state": null, "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "ena-left.json"),
            // No item occupancy: the inner data's "2" is used.
            json!([{"id": "0d7a6b9e-11aa-4c1b-8f00-3e5d2c1b0a99", "format": "events-and-actions",
                "sub_key": SUB, "channel": "room.lobby", "action": "leave", "uuid": "user-7f3a",
                "occupancy": 2, "timestamp": 1_718_035_300, "timestamp_ms": 1_718_035_300_456_i64,
                "state": null, "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "ena-state-change.json"),
            // data.data arrives JSON-encoded in a string and is decoded once.
            json!([{"id": "c0ffee00-1111-4222-8333-444455556666", "format": "events-and-actions",
                "sub_key": SUB, "channel": "room.lobby", "action": "state-change",
                "uuid": "user-7f3a", "occupancy": 3, "timestamp": 1_718_035_260,
                "timestamp_ms": 1_718_035_260_456_i64, "state": {"mood": "away"}, "delta": null,
                "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "ena-timeout.json"),
            json!([{"id": "a1b2c3d4-0000-4000-8000-00000000beef", "format": "events-and-actions",
                "sub_key": SUB, "channel": "room.lobby", "action": "timeout", "uuid": "device-42",
                "occupancy": 1, "timestamp": 1_718_035_600, "timestamp_ms": 1_718_035_600_001_i64,
                "state": null, "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-active.json"),
            json!([{"id": "4c17439763c3f1a2ef82f54dab9c15b1", "format": "g1", "sub_key": SUB,
                "channel": "room.lobby", "action": "active", "uuid": null, "occupancy": null,
                "timestamp": 1_718_035_200, "timestamp_ms": null, "state": null, "delta": null,
                "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-inactive.json"),
            json!([{"id": "1a1b4d204e4f848a85a5ec0677f58b98", "format": "g1", "sub_key": SUB,
                "channel": "room.lobby", "action": "inactive", "uuid": null, "occupancy": null,
                "timestamp": 1_718_039_999, "timestamp_ms": null, "state": null, "delta": null,
                "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-interval-deltas.json"),
            json!([{"id": "7f95d2186094b4507e4a663d83c1c7fb", "format": "g1", "sub_key": SUB,
                "channel": "stadium", "action": "interval", "uuid": null, "occupancy": 57,
                "timestamp": 1_718_035_230, "timestamp_ms": null, "state": null,
                "delta": {"join": ["user-a", "user-b"], "leave": ["user-c"], "timeout": ["user-d"]},
                "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-interval-refresh.json"),
            json!([{"id": "e3abdb316a24d2ebe75f9053eeae1b0d", "format": "g1", "sub_key": SUB,
                "channel": "stadium", "action": "interval", "uuid": null, "occupancy": 1203,
                "timestamp": 1_718_035_240, "timestamp_ms": null, "state": null, "delta": null,
                "here_now_refresh": true}]),
        ),
        (
            corpus!("fixtures", "g1-join.json"),
            // The data object sent with a join is the user's state.
            json!([{"id": "1144969e37505642e5322010fdee9820", "format": "g1", "sub_key": SUB,
                "channel": "lacrosse", "action": "join", "uuid": "1234-5678-90ab-cdef",
                "occupancy": 1, "timestamp": 1_440_568_311, "timestamp_ms": null,
                "state": {"foo": "bar"}, "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-leave.json"),
            json!([{"id": "f95dfd1729233a862de371c88a34da9f", "format": "g1", "sub_key": SUB,
                "channel": "lacrosse", "action": "leave", "uuid": "1234-5678-90ab-cdef",
                "occupancy": 0, "timestamp": 1_440_568_390, "timestamp_ms": null, "state": null,
                "delta": null, "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-state-change.json"),
            json!([{"id": "c332a26778f8f924e51fd774df6020ef", "format": "g1", "sub_key": SUB,
                "channel": "room.lobby", "action": "state-change", "uuid": "user-7f3a",
                "occupancy": 3, "timestamp": 1_718_035_260, "timestamp_ms": null,
                "state": {"mood": "away", "typing": false}, "delta": null,
                "here_now_refresh": false}]),
        ),
        (
            corpus!("fixtures", "g1-timeout.json"),
            // `{}` stays `{}`.
            json!([{"id": "3205792f65aff98c68ad7851a401cc7f", "format": "g1", "sub_key": SUB,
                "channel": "room.lobby", "action": "timeout", "uuid": "device-42",
                "occupancy": 2, "timestamp": 1_718_035_500, "timestamp_ms": null, "state": {},
                "delta": null, "here_now_refresh": false}]),
        ),
    ]
}

#[test]
fn every_fixture_normalizes_to_its_expected_events() {
    let table = fixture_table();
    let mut covered: Vec<String> = table.iter().map(|((n, _), _)| (*n).to_owned()).collect();
    covered.sort();
    assert_eq!(covered, files_in("fixtures"), "fixture table out of date");

    for ((name, body), expected) in table {
        let events = normalize(body, RECEIVED).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = expected.as_array().unwrap();
        assert_eq!(events.len(), expected.len(), "{name}");
        for (event, want) in events.iter().zip(expected) {
            let mut want = want.as_object().unwrap().clone();
            assert_eq!(want.len(), 12, "{name}: spell out every field");
            want.insert("schema".into(), json!(SCHEMA));
            want.insert("source".into(), json!("pubnub"));
            want.insert("received_at_ms".into(), json!(RECEIVED));
            let want = Value::Object(want);
            let got: Value = serde_json::from_slice(&event.to_json()).unwrap();
            assert_eq!(got, want, "{name}: wire JSON");
            let want: Event = serde_json::from_value(want).unwrap();
            assert_eq!(event, &want, "{name}: typed event");
        }
    }
}

#[test]
fn every_bad_input_is_rejected_with_a_clear_message() {
    let table = [
        (
            corpus!("bad", "array.json"),
            NormalizeError::NotAnObject {
                what: "body",
                found: "an array",
            },
            "body is not a JSON object (found an array)",
        ),
        (
            corpus!("bad", "binary.bin"),
            NormalizeError::InvalidUtf8 { offset: 0 },
            "body is not valid UTF-8 (first invalid byte at offset 0)",
        ),
        (
            corpus!("bad", "empty-channel.json"),
            NormalizeError::Empty {
                field: "channel".into(),
            },
            "channel is empty",
        ),
        (
            corpus!("bad", "form-encoded.txt"),
            NormalizeError::InvalidJson {
                line: 1,
                column: 1,
                reason: "expected value".into(),
            },
            "invalid JSON at line 1 column 1: expected value",
        ),
        (
            corpus!("bad", "truncated.json"),
            NormalizeError::InvalidJson {
                line: 1,
                column: 35,
                reason: "EOF while parsing an object".into(),
            },
            "invalid JSON at line 1 column 35: EOF while parsing an object",
        ),
        (
            corpus!("bad", "unknown-action.json"),
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
