//! Rejected bodies (HTTP 400): each error says what and where, and a batch names its item.

use serde_json::json;

use super::super::{NormalizeError, body_id};
use super::*;

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
