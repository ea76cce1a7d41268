//! Any request body → `normalize_items` and `normalize` never panic, and what they return
//! keeps the contract the ingress and the publisher rely on:
//! - every rejected item's span lies inside the body, on char boundaries, and is JSON text
//!   (the ingress dead-letters it byte-identical);
//! - every event's `to_json()` is a JSON object that reads back to the same event (the spool),
//!   with a non-empty channel and no control character (U+0000–U+001F, U+007F: the contract's
//!   definition, DESIGN §6 / docs/event.schema.json) in the channel, id or sub_key (they
//!   become topic names and headers);
//! - the all-or-nothing `normalize` agrees with the item-by-item form.
#![no_main]

use hookbus::normalize::{Event, NormalizeError, Normalized, normalize, normalize_items};
use libfuzzer_sys::fuzz_target;

const RECEIVED_AT_MS: u64 = 1_718_035_200_456;
/// Small enough that fuzzed batches reach the cap (the service's default is 10,000).
const MAX_ITEMS: usize = 64;

fuzz_target!(|body: &[u8]| {
    let items = normalize_items(body, RECEIVED_AT_MS, MAX_ITEMS);
    let whole = normalize(body, RECEIVED_AT_MS);
    match items {
        Ok(normalized) => check_normalized(body, &normalized, &whole),
        Err(NormalizeError::TooManyItems { count, max }) => {
            assert_eq!(max, MAX_ITEMS);
            assert!(count > MAX_ITEMS, "TooManyItems for {count} <= {max} items");
            // `normalize` has no cap: it either takes the batch or names a bad item.
            if let Err(NormalizeError::TooManyItems { .. }) = whole {
                panic!("normalize (no cap) said TooManyItems");
            }
        }
        Err(error) => match whole {
            Err(whole_error) => assert_eq!(error, whole_error, "the two forms disagree"),
            Ok(events) => panic!(
                "normalize_items: {error}; normalize: {} events",
                events.len()
            ),
        },
    }
});

fn check_normalized(
    body: &[u8],
    normalized: &Normalized,
    whole: &Result<Vec<Event>, NormalizeError>,
) {
    let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
    let mut last_index = None;
    for rejected in &normalized.rejected {
        let span = rejected.span.clone();
        assert!(
            span.start <= span.end && span.end <= body.len(),
            "rejected data[{}] span {span:?} outside a body of {} bytes",
            rejected.index,
            body.len()
        );
        assert!(
            text.is_char_boundary(span.start) && text.is_char_boundary(span.end),
            "rejected data[{}] span {span:?} splits a character",
            rejected.index
        );
        let raw = &text[span.clone()];
        if let Err(e) = serde_json::from_str::<serde_json::Value>(raw) {
            panic!(
                "rejected data[{}] span {span:?} is not JSON ({e}): {raw:?}",
                rejected.index
            );
        }
        assert!(
            last_index.is_none_or(|last| rejected.index > last),
            "rejected indexes not increasing"
        );
        last_index = Some(rejected.index);
        assert!(
            rejected
                .error
                .to_string()
                .starts_with(&format!("data[{}]", rejected.index)),
            "rejected data[{}] message does not name it: {}",
            rejected.index,
            rejected.error
        );
    }
    assert!(
        normalized.events.len() + normalized.rejected.len() <= MAX_ITEMS,
        "more items than the cap"
    );
    for event in &normalized.events {
        check_event(event);
    }
    match (whole, normalized.rejected.first()) {
        (Ok(events), None) => assert_eq!(events, &normalized.events, "the two forms disagree"),
        (Err(error), Some(first)) => assert_eq!(error, &first.error, "the two forms disagree"),
        (Ok(events), Some(first)) => panic!(
            "normalize took {} events, normalize_items rejected data[{}]",
            events.len(),
            first.index
        ),
        (Err(error), None) => panic!("normalize: {error}; normalize_items rejected nothing"),
    }
}

fn check_event(event: &Event) {
    assert!(!event.channel.is_empty(), "empty channel: {event:?}");
    check_no_control("channel", &event.channel);
    check_no_control("id", &event.id);
    if let Some(sub_key) = &event.sub_key {
        check_no_control("sub_key", sub_key);
    }
    assert_eq!(event.received_at_ms, RECEIVED_AT_MS);

    let json = event.to_json();
    let value: serde_json::Value = match serde_json::from_slice(&json) {
        Ok(value) => value,
        Err(e) => panic!(
            "to_json is not JSON ({e}): {:?} from {event:?}",
            String::from_utf8_lossy(&json)
        ),
    };
    assert!(value.is_object(), "to_json is not an object: {value}");
    assert_eq!(value["channel"].as_str(), Some(event.channel.as_str()));
    match serde_json::from_slice::<Event>(&json) {
        Ok(back) => assert_eq!(&back, event, "the event does not read back unchanged"),
        Err(e) => panic!("to_json does not read back ({e}): {value}"),
    }
}

fn check_no_control(field: &str, value: &str) {
    if let Some((offset, c)) = value
        .char_indices()
        .find(|&(_, c)| c <= '\u{1f}' || c == '\u{7f}')
    {
        panic!(
            "{field} has control character U+{:04X} at byte {offset}: {value:?}",
            u32::from(c)
        );
    }
}
