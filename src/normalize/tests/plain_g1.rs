//! The plain G1 path (`g1::fast`) against the general one: on every corpus file and on
//! generated G1-shaped bodies (every member optional, of any plain or odd type, repeated,
//! escaped), whenever the plain path returns an event it is exactly the event the general path
//! returns, and it takes the common bodies (so the comparison is not vacuous).

use proptest::prelude::*;

use super::super::{g1, normalize_general};
use super::{RECEIVED, files_in};

/// `Some(event)` from the plain path must equal the general path's one event.
fn agree(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(fast) = g1::fast(text, body, RECEIVED) else {
        return false;
    };
    let general = normalize_general(text, body, RECEIVED, 10_000).unwrap_or_else(|e| {
        panic!("plain path accepted what the general path refuses ({e}): {text}")
    });
    assert!(general.rejected.is_empty(), "{text}");
    assert_eq!(general.events.len(), 1, "{text}");
    assert_eq!(general.events[0], fast, "{text}");
    true
}

#[test]
fn corpus_files_agree() {
    let mut taken = 0;
    for dir in ["fixtures", "bad"] {
        for name in files_in(dir) {
            let path = format!(
                "{}/tests/fixtures/pubnub/{dir}/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let body = std::fs::read(&path).unwrap();
            taken += usize::from(agree(&body));
        }
    }
    // The G1 fixtures without delta lists take the plain path.
    assert!(taken >= 5, "only {taken} corpus files took the plain path");
}

#[test]
fn the_benchmark_body_takes_the_plain_path() {
    let body = br#"{"action":"join","sub_key":"sub-c-bench","channel":"room.7","uuid":"u-1-2","timestamp":1718035203,"occupancy":3,"data":{"n":2}}"#;
    assert!(agree(body));
}

/// A member of a G1 body: its name and JSON text.
fn member() -> impl Strategy<Value = (String, String)> {
    let name = prop::sample::select(vec![
        "action",
        "status",
        "channel",
        "uuid",
        "timestamp",
        "occupancy",
        "sub_key",
        "data",
        "state",
        "here_now_refresh",
        "join",
        "x",
    ]);
    let value = prop::sample::select(vec![
        "\"join\"",
        "\"leave\"",
        "\"timeout\"",
        "\"state-change\"",
        "\"interval\"",
        "\"active\"",
        "\"inactive\"",
        "\"teleport\"",
        "\"room.lobby\"",
        "\"r\\u00e9\\n\"",
        "\"\"",
        "\"u\\\"1\"",
        "\"\\u0001\"",
        "\"1718035200\"",
        "1718035200",
        "17180352001234567",
        "1718035200.5",
        "-1",
        "0",
        "3",
        "null",
        "true",
        "false",
        "\"true\"",
        "{\"n\":1,\"a\":[1,2.50,\"x\"]}",
        "{\"b\":1,\"b\":2}",
        "[\"u1\",\"u2\"]",
        "{ \"s\" : 1e3 }",
        "\"sub-c-1\"",
    ]);
    (name, value).prop_map(|(n, v)| (n.to_owned(), v.to_owned()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn generated_bodies_agree(members in prop::collection::vec(member(), 0..10), spaced: bool) {
        let sep = if spaced { ", " } else { "," };
        let body = format!(
            "{{{}}}",
            members
                .iter()
                .map(|(n, v)| format!("\"{n}\":{v}"))
                .collect::<Vec<_>>()
                .join(sep)
        );
        agree(body.as_bytes());
    }

    #[test]
    fn well_formed_bodies_take_the_plain_path(
        action in prop::sample::select(vec!["join", "leave", "timeout", "state-change"]),
        channel in "[a-z.é]{1,12}",
        uuid in "[a-z0-9-]{0,12}",
        timestamp in 1_000_000_000u64..2_000_000_000,
        occupancy in prop::option::of(0u64..1000),
        state in prop::option::of("[a-z]{1,5}"),
    ) {
        let mut body = format!(
            "{{\"action\":\"{action}\",\"channel\":\"{channel}\",\"uuid\":\"{uuid}\",\"timestamp\":{timestamp}"
        );
        if let Some(n) = occupancy {
            body.push_str(&format!(",\"occupancy\":{n}"));
        }
        if let Some(s) = state {
            body.push_str(&format!(",\"data\":{{\"{s}\":[1,\"{s}\"]}}"));
        }
        body.push('}');
        prop_assert!(agree(body.as_bytes()), "{}", body);
    }
}
