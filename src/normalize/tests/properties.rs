//! Property tests: no input panics, and every accepted event survives its wire format.

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
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..10).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
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
