//! Events & Actions batches item by item (an invalid item is rejected alone, with its exact
//! text), and every envelope version yielding exactly the events of its unenveloped twin.

use serde_json::{Value, json};

use super::super::{normalize, normalize_items};
use super::{RECEIVED, ena_item, files_in};

fn batch(items: &[&str]) -> String {
    format!(
        r#"{{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[{}]}}"#,
        items.join(",")
    )
}

#[test]
fn invalid_items_stand_alone_with_their_exact_text() {
    let good = |n: u32| ena_item().to_string().replace("i-1", &format!("ok-{n}"));
    let bad = [
        r#"{"id":"e1","channel":"","userId":"u","timestamp":"2024-06-10T16:00:00Z"}"#,
        r#"{"id":"e2","channel":"a\u0007b","userId":"u","timestamp":"2024-06-10T16:00:00Z"}"#,
        r#"{"id":"e3","userId":"u","timestamp":"2024-06-10T16:00:00Z"}"#,
        "42",
        r#"  [ "not", "an", "object" ]"#,
        r#"{"id":"e6","channel":"c","occupancy":1e400,"timestamp":"2024-06-10T16:00:00Z"}"#,
    ];
    let items = [
        good(0),
        bad[0].to_owned(),
        good(1),
        bad[1].to_owned(),
        bad[2].to_owned(),
        bad[3].to_owned(),
        good(2),
        bad[4].to_owned(),
        bad[5].to_owned(),
    ];
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    let body = batch(&refs);
    let n = normalize_items(body.as_bytes(), RECEIVED, 10_000).unwrap();
    let ids: Vec<&str> = n.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["ok-0", "ok-1", "ok-2"]);
    let rejected: Vec<(usize, &str)> = n
        .rejected
        .iter()
        .map(|r| (r.index, &body[r.span.clone()]))
        .collect();
    assert_eq!(
        rejected,
        [
            (1, bad[0]),
            (3, bad[1]),
            (4, bad[2]),
            (5, bad[3]),
            (7, bad[4].trim_start()),
            (8, bad[5]),
        ]
    );
    let messages: Vec<String> = n.rejected.iter().map(|r| r.error.to_string()).collect();
    assert!(
        messages[0].starts_with("data[1]: channel is empty"),
        "{messages:?}"
    );
    assert!(messages[1].contains("control character"), "{messages:?}");
    assert!(messages[2].contains("channel is missing"), "{messages:?}");
    assert!(messages[3].contains("not a JSON object"), "{messages:?}");
    // The all-or-nothing form still rejects the body at the first bad item.
    assert!(
        normalize(body.as_bytes(), RECEIVED)
            .unwrap_err()
            .to_string()
            .starts_with("data[1]")
    );
}

#[test]
fn what_is_not_a_batch_is_still_rejected_whole() {
    for body in [
        r#"{"schema":"pubnub.com/schemas/events/presence.user.channel.joined","data":[{"id":"x"}"#,
        r#"{"schema":"pubnub.com/schemas/events/presence.nothing","data":[]}"#,
        r#"{"schema":"pubnub.com/schemas/events/presence.user.channel.joined","data":{"id":"x"}}"#,
        r#"[{"schema":"x"}]"#,
        r#"{"event":{"id":"e","payload":"not an object"}}"#,
        r#"{"event":{"eventType":"message.publish","eventId":"m","channel":"c"}}"#,
    ] {
        assert!(
            normalize_items(body.as_bytes(), RECEIVED, 10_000).is_err(),
            "{body}"
        );
    }
}

fn without_received(events: Vec<super::super::Event>) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut v: Value = serde_json::from_slice(&e.to_json()).unwrap();
            v.as_object_mut().unwrap().remove("received_at_ms");
            v
        })
        .collect()
}

/// The twin of an envelope fixture: `*-join*` wraps ena-join.json, `*-batch*` ena-batch.json.
pub(crate) fn twin(envelope: &str) -> &'static str {
    if envelope.contains("-batch") {
        "ena-batch.json"
    } else {
        "ena-join.json"
    }
}

#[test]
fn every_envelope_yields_the_events_of_its_unenveloped_twin() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hookbus/envelopes"
    );
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(files_in("fixtures").contains(&"ena-join.json".to_owned()));
    for name in names {
        let body = std::fs::read(format!("{dir}/{name}")).unwrap();
        let twin = std::fs::read(format!(
            "{}/tests/fixtures/pubnub/fixtures/{}",
            env!("CARGO_MANIFEST_DIR"),
            twin(&name)
        ))
        .unwrap();
        let got = normalize(&body, RECEIVED).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = normalize(&twin, RECEIVED).unwrap();
        assert_eq!(without_received(got), without_received(want), "{name}");
    }
}

#[test]
fn an_enveloped_single_item_without_an_id_takes_the_envelope_id() {
    let mut item = ena_item();
    item.as_object_mut().unwrap().remove("id");
    let body = json!({"schema": "pubnub.com/schemas/events/envelope?v=2.1.0", "event": {
    "id": "envelope-7", "payload": {
        "dataSchema": "pubnub.com/schemas/events/presence.user.channel.left?v=1.0.0",
        "data": [item]
    }}})
    .to_string();
    let events = normalize(body.as_bytes(), RECEIVED).unwrap();
    assert_eq!(events[0].id, "envelope-7");
    let bad = json!({"event": {"id": "e", "payload": {
        "schema": "pubnub.com/schemas/events/presence.user.channel.left?v=1.0.0",
        "data": [{"id": "x", "channel": "", "timestamp": "2024-06-10T16:00:00Z"}]}}})
    .to_string();
    let n = normalize_items(bad.as_bytes(), RECEIVED, 10_000).unwrap();
    assert_eq!(n.rejected.len(), 1, "an invalid inner item names the item");
    assert!(
        n.rejected[0]
            .error
            .to_string()
            .starts_with("data[0]: channel is empty")
    );
}

#[test]
fn a_batch_over_the_item_cap_is_refused_before_any_item_is_parsed() {
    let items = vec!["{}"; 11];
    let body = batch(&items);
    match normalize_items(body.as_bytes(), RECEIVED, 10) {
        Err(super::super::NormalizeError::TooManyItems { count: 11, max: 10 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        normalize_items(body.as_bytes(), RECEIVED, 11)
            .unwrap()
            .rejected
            .len(),
        11
    );
}
