//! One Here Now answer, status and body, turned into a page of members or a `HereNowError`.
//! Pure; accepts every documented shape (members as objects with state or as plain strings,
//! count-only, empty) and never panics on any input.

use serde::Deserialize;
use serde_json::Value;

use super::{HereNowError, HereNowMember};
use crate::text::truncate;

/// How much of PubNub's error message an error keeps.
const MESSAGE_MAX: usize = 200;

/// One page of a Here Now read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Page {
    /// The channel's occupancy (never capped by paging).
    pub(super) occupancy: u64,
    /// The page's members; `None` when the answer has no `uuids` (count-only).
    pub(super) members: Option<Vec<HereNowMember>>,
}

#[derive(Deserialize)]
struct Body {
    status: Option<u16>,
    occupancy: Option<u64>,
    uuids: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Id(String),
    Member {
        uuid: String,
        #[serde(default)]
        state: Option<Value>,
    },
}

/// The page an answer with `status` and `body` holds, or why it holds none: 403 → `Forbidden`
/// with PubNub's message, 5xx → `Server`, any other non-200 → `Status`, a 200 that is not
/// Here Now's shape → `Malformed`.
///
/// # Errors
/// Every answer but a well-formed 200, as above.
pub(super) fn classify(status: u16, body: &[u8]) -> Result<Page, HereNowError> {
    match status {
        200 => parse_page(body),
        403 => Err(HereNowError::Forbidden(message(body))),
        500..=599 => Err(HereNowError::Server(status)),
        _ => Err(HereNowError::Status(status, message(body))),
    }
}

/// The page in a 200's body: `{"status":200,…,"occupancy":N,"uuids":[…]}`.
///
/// # Errors
/// `Malformed` naming what is wrong: not JSON, not an object of that shape, no occupancy, or a
/// `status` other than 200 in the body.
pub(super) fn parse_page(body: &[u8]) -> Result<Page, HereNowError> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| HereNowError::Malformed(format!("not a Here Now answer: {e}")))?;
    if let Some(status) = body.status.filter(|&s| s != 200) {
        return Err(HereNowError::Malformed(format!(
            "status {status} in the body of a 200"
        )));
    }
    let occupancy = body
        .occupancy
        .ok_or_else(|| HereNowError::Malformed("no occupancy".to_owned()))?;
    let members = body.uuids.map(|entries| {
        entries
            .into_iter()
            .map(|entry| match entry {
                Entry::Id(uuid) => HereNowMember { uuid, state: None },
                Entry::Member { uuid, state } => HereNowMember { uuid, state },
            })
            .collect()
    });
    Ok(Page { occupancy, members })
}

/// PubNub's message in an error body (`"message"`, or Access Manager v3's `"error":{"message"}`),
/// else the body's text; cut to [`MESSAGE_MAX`] bytes.
fn message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.get("message")
            .and_then(Value::as_str)
            .or_else(|| v.get("error")?.get("message")?.as_str())
    });
    match found {
        Some(text) => truncate(text, MESSAGE_MAX).to_owned(),
        None => truncate(&String::from_utf8_lossy(body), MESSAGE_MAX)
            .trim()
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/pubnub/here-now/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn uuids(page: &Page) -> Vec<&str> {
        let members = page.members.as_deref().unwrap_or_default();
        members.iter().map(|m| m.uuid.as_str()).collect()
    }

    #[test]
    fn first_page_lists_members_with_and_without_state() {
        let page = parse_page(&fixture("page-1-of-3.json")).unwrap();
        assert_eq!(page.occupancy, 2500);
        let members = page.members.as_deref().unwrap();
        assert_eq!(members.len(), 1000);
        assert_eq!(members[0].uuid, "user-0000");
        assert_eq!(members[0].state, Some(json!({"mood": "ok"})));
        assert_eq!(members[1].uuid, "user-0001");
        assert_eq!(members[1].state, None);
        assert_eq!(members[999].uuid, "user-0999");
        let with_state = members.iter().filter(|m| m.state.is_some()).count();
        assert_eq!(with_state, 334);
    }

    #[test]
    fn last_page_lists_the_rest() {
        let page = parse_page(&fixture("page-3-of-3.json")).unwrap();
        assert_eq!(page.occupancy, 2500);
        let listed = uuids(&page);
        assert_eq!(listed.len(), 500);
        assert_eq!(listed.first(), Some(&"user-2000"));
        assert_eq!(listed.last(), Some(&"user-2499"));
    }

    #[test]
    fn other_documented_shapes_parse() {
        let count_only = parse_page(&fixture("count-only.json")).unwrap();
        assert_eq!((count_only.occupancy, count_only.members), (3, None));

        let empty = parse_page(&fixture("untracked-or-empty.json")).unwrap();
        assert_eq!((empty.occupancy, empty.members), (0, Some(Vec::new())));

        let strings = parse_page(&fixture("uuids-as-strings.json")).unwrap();
        assert_eq!(strings.occupancy, 2);
        assert_eq!(uuids(&strings), ["user-a", "user-b"]);
        assert!(strings.members.unwrap().iter().all(|m| m.state.is_none()));
    }

    #[test]
    fn null_state_and_mixed_entries_parse() {
        let body = br#"{"occupancy":3,"uuids":["a",{"uuid":"b","state":null},{"uuid":"c","state":{"n":[1]}}]}"#;
        let page = parse_page(body).unwrap();
        assert_eq!(uuids(&page), ["a", "b", "c"]);
        let states: Vec<Option<Value>> =
            page.members.unwrap().into_iter().map(|m| m.state).collect();
        assert_eq!(states, [None, None, Some(json!({"n": [1]}))]);
    }

    #[test]
    fn bodies_of_another_shape_are_malformed() {
        let bodies: [&[u8]; 11] = [
            b"",
            b"{not json",
            b"[]",
            b"null",
            br#"{"status":200,"message":"OK"}"#,
            br#"{"occupancy":-1,"uuids":[]}"#,
            br#"{"occupancy":"3"}"#,
            br#"{"occupancy":1.5}"#,
            br#"{"occupancy":1,"uuids":[1]}"#,
            br#"{"occupancy":1,"uuids":[{"state":{}}]}"#,
            br#"{"status":500,"occupancy":1,"uuids":["a"]}"#,
        ];
        for body in bodies {
            let result = classify(200, body);
            assert!(
                matches!(result, Err(HereNowError::Malformed(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn statuses_map_to_their_errors() {
        let pam_v2 = br#"{"message":"Forbidden","payload":{"channels":["lobby"]},"error":true,"service":"Access Manager","status":403}"#;
        let pam_v3 = br#"{"status":403,"error":{"message":"Token is expired.","source":"authz"},"service":"Access Manager"}"#;
        let cases: [(u16, &[u8], HereNowError); 7] = [
            (403, pam_v2, HereNowError::Forbidden("Forbidden".into())),
            (
                403,
                pam_v3,
                HereNowError::Forbidden("Token is expired.".into()),
            ),
            (403, b"", HereNowError::Forbidden(String::new())),
            (500, b"{}", HereNowError::Server(500)),
            (503, b"<html>down</html>", HereNowError::Server(503)),
            (
                400,
                br#"{"status":400,"message":"Invalid Subscribe Key","error":true}"#,
                HereNowError::Status(400, "Invalid Subscribe Key".into()),
            ),
            (
                429,
                b" Too Many Requests\n",
                HereNowError::Status(429, "Too Many Requests".into()),
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(classify(status, body), Err(want), "{status}");
        }
    }

    #[test]
    fn error_messages_are_cut() {
        let long = format!(r#"{{"message":"{}"}}"#, "é".repeat(300));
        let Err(HereNowError::Forbidden(text)) = classify(403, long.as_bytes()) else {
            panic!("not forbidden");
        };
        assert!(
            text.len() <= MESSAGE_MAX && text.len() >= MESSAGE_MAX - 1,
            "{}",
            text.len()
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_answer(status in 100_u16..600, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = classify(status, &body);
        }
    }
}
