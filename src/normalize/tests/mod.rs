//! Table-driven tests over every PubNub fixture and bad input, edge cases of the HTTP answers
//! and the event format (docs/events.md), the wire format and `docs/event.schema.json`, and
//! property tests (never panics, round-trips).

mod fixtures;
mod generations;
mod items;
mod plain_g1;
mod properties;
mod rejections;
mod wire;

use serde_json::{Value, json};

use super::{Delta, Event, normalize};

/// `received_at_ms` passed to every call.
const RECEIVED: u64 = 1_718_035_200_456;
/// The fixtures' subscribe key.
const SUB: &str = "sub-c-7d1e0c2a-0000-4000-8000-000000000001";

/// Every file of a corpus directory (`tests/fixtures/pubnub/{dir}`), so that a new fixture
/// without an expectation fails.
pub(super) fn files_in(dir: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/pubnub/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
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

/// A delta with all three lists.
fn delta(join: &[&str], leave: &[&str], timeout: &[&str]) -> Option<Delta> {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    Some(Delta {
        join: own(join),
        leave: own(leave),
        timeout: own(timeout),
    })
}
