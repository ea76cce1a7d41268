//! The summary key's value: the caller's summary and the member writes its commit still owes
//! (the intent), as one JSON object. The owed writes come first, as `_pending`, then the
//! caller's summary object's own fields, so `nats kv get` shows the documented summary
//! fields at the top level; caller bytes that are not a JSON object are hex.
//!
//! ```text
//! {"_pending":[
//!    {"uuid":"<raw uuid>","rev":<member key revision>,"op":"present","value":<caller JSON>},
//!    {"uuid":"<raw uuid>","rev":12,"op":"absent","value":<caller JSON>},
//!    {"uuid":"<raw uuid>","rev":13,"op":"delete"}],"channel":"room.lobby","occupancy":3,…}
//! {"_pending":[],"_summary_hex":"<hex>"}   caller bytes that are not a JSON object
//! {"_pending":[],"_removed":true}          a channel removal in progress
//! ```

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::roster::store::MemberOp;

/// What one summary key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Intent {
    /// The caller's summary; `None`: the channel is being removed.
    pub summary: Option<Vec<u8>>,
    /// Member writes the commit owes, each a compare-and-set on `rev`.
    pub pending: Vec<Pending>,
}

/// One owed member write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    /// The raw (unescaped) uuid.
    pub uuid: String,
    /// The member key's revision when the commit was computed (`0`: no message at all).
    pub rev: u64,
    pub op: MemberOp,
}

/// The JSON text of `intent`.
pub(super) fn encode(intent: &Intent) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + intent.summary.as_ref().map_or(0, Vec::len)
            + intent
                .pending
                .iter()
                .map(|p| 64 + p.uuid.len() + op_value(&p.op).map_or(0, <[u8]>::len))
                .sum::<usize>(),
    );
    out.extend_from_slice(PREFIX);
    for (i, pending) in intent.pending.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"uuid\":");
        push_json_string(&mut out, &pending.uuid);
        out.extend_from_slice(format!(",\"rev\":{},\"op\":", pending.rev).as_bytes());
        match &pending.op {
            MemberOp::Present(value) => {
                out.extend_from_slice(b"\"present\",");
                push_field(&mut out, "value", value);
            }
            MemberOp::Absent(value) => {
                out.extend_from_slice(b"\"absent\",");
                push_field(&mut out, "value", value);
            }
            MemberOp::Delete => out.extend_from_slice(b"\"delete\""),
        }
        out.push(b'}');
    }
    out.push(b']');
    match &intent.summary {
        Some(summary) if is_object(summary) => {
            // `{` is replaced by the pending field; an empty object adds no comma.
            if summary.len() > 2 {
                out.push(b',');
            }
            out.extend_from_slice(&summary[1..]);
        }
        Some(summary) => {
            out.extend_from_slice(b",\"_summary_hex\":\"");
            out.extend_from_slice(crate::text::hex(summary).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        None => out.extend_from_slice(b",\"_removed\":true}"),
    }
    out
}

/// The start of every summary key's value.
const PREFIX: &[u8] = b"{\"_pending\":[";

/// One JSON object, byte for byte (no surrounding whitespace).
fn is_object(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{')
        && bytes.last() == Some(&b'}')
        && serde_json::from_slice::<&RawValue>(bytes)
            .is_ok_and(|raw| raw.get().len() == bytes.len())
}

/// The intent `bytes` hold.
///
/// # Errors
/// The bytes are not what [`encode`] writes (the key was written by something else).
pub(super) fn decode(bytes: &[u8]) -> Result<Intent, String> {
    let Some(body) = bytes.strip_prefix(&PREFIX[..PREFIX.len() - 1]) else {
        return Err("not a roster summary (no leading `_pending`)".into());
    };
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<Vec<WirePending<'_>>>();
    let pending = match stream.next() {
        Some(Ok(pending)) => pending,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("no `_pending` array".into()),
    };
    let rest = &body[stream.byte_offset()..];
    let summary = if rest == b"}" {
        Some(b"{}".to_vec())
    } else if rest == b",\"_removed\":true}" {
        None
    } else if let Some(hex) = rest
        .strip_prefix(b",\"_summary_hex\":\"")
        .and_then(|r| r.strip_suffix(b"\"}"))
    {
        Some(unhex(std::str::from_utf8(hex).map_err(|e| e.to_string())?)?)
    } else if let Some(fields) = rest.strip_prefix(b",") {
        let mut summary = Vec::with_capacity(fields.len() + 1);
        summary.push(b'{');
        summary.extend_from_slice(fields);
        if !is_object(&summary) {
            return Err("the summary after `_pending` is not a JSON object".into());
        }
        Some(summary)
    } else {
        return Err("unexpected text after `_pending`".into());
    };
    let pending = pending
        .into_iter()
        .map(|p| {
            let value = match (p.value, p.value_hex) {
                (Some(raw), None) => Some(raw.get().as_bytes().to_vec()),
                (None, Some(hex)) => Some(unhex(&hex)?),
                (None, None) => None,
                (Some(_), Some(_)) => return Err("both `value` and `value_hex`".to_owned()),
            };
            let op = match (p.op, value) {
                ("present", Some(value)) => MemberOp::Present(value),
                ("absent", Some(value)) => MemberOp::Absent(value),
                ("delete", None) => MemberOp::Delete,
                (op, _) => return Err(format!("pending op `{op}` with or without a value")),
            };
            Ok(Pending {
                uuid: p.uuid,
                rev: p.rev,
                op,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Intent { summary, pending })
}

fn op_value(op: &MemberOp) -> Option<&[u8]> {
    match op {
        MemberOp::Present(value) | MemberOp::Absent(value) => Some(value),
        MemberOp::Delete => None,
    }
}

/// `"name":<bytes>` when the bytes are one JSON value with no surrounding whitespace (read
/// back byte for byte), else `"name_hex":"<hex>"`.
fn push_field(out: &mut Vec<u8>, name: &str, bytes: &[u8]) {
    let verbatim =
        serde_json::from_slice::<&RawValue>(bytes).is_ok_and(|raw| raw.get().len() == bytes.len());
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    if verbatim {
        out.extend_from_slice(b"\":");
        out.extend_from_slice(bytes);
    } else {
        out.extend_from_slice(b"_hex\":\"");
        out.extend_from_slice(crate::text::hex(bytes).as_bytes());
        out.push(b'"');
    }
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Serializing a &str cannot fail; the fallback keeps the output valid JSON regardless.
    match serde_json::to_vec(text) {
        Ok(json) => out.extend_from_slice(&json),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

fn unhex(hex: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(format!("`{}` is not a lowercase hex digit", char::from(c))),
    };
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[derive(Deserialize)]
struct WirePending<'a> {
    uuid: String,
    rev: u64,
    op: &'a str,
    #[serde(borrow, default, deserialize_with = "some_raw")]
    value: Option<&'a RawValue>,
    #[serde(default)]
    value_hex: Option<String>,
}

/// A present field is `Some` even when it holds `null` (a caller's summary may be `null`).
fn some_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(intent: &Intent) -> Vec<u8> {
        let bytes = encode(intent);
        assert_eq!(
            &decode(&bytes).unwrap(),
            intent,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        bytes
    }

    #[test]
    fn json_values_are_embedded_verbatim() {
        let intent = Intent {
            summary: Some(br#"{"n":1, "s":"caf\u00e9"}"#.to_vec()),
            pending: vec![
                Pending {
                    uuid: "a.b c/é\"".into(),
                    rev: 7,
                    op: MemberOp::Present(br#"{"uuid":"a"}"#.to_vec()),
                },
                Pending {
                    uuid: "x".into(),
                    rev: 0,
                    op: MemberOp::Absent(b"[1,2]".to_vec()),
                },
                Pending {
                    uuid: "y".into(),
                    rev: 9,
                    op: MemberOp::Delete,
                },
            ],
        };
        let bytes = round_trip(&intent);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"_pending":[{"uuid":"a.b c/é\"","rev":7"#)
                && text.ends_with(r#""rev":9,"op":"delete"}],"n":1, "s":"caf\u00e9"}"#),
            "{text}"
        );
        assert!(!text.contains("_hex"), "{text}");
    }

    #[test]
    fn other_bytes_are_hex_and_survive_exactly() {
        for odd in [
            &b" {}"[..],
            b"{} ",
            b"\xff\x00",
            b"",
            b"not json",
            b"{\"a\":1}\n",
        ] {
            let intent = Intent {
                summary: Some(odd.to_vec()),
                pending: vec![Pending {
                    uuid: "u".into(),
                    rev: 1,
                    op: MemberOp::Absent(odd.to_vec()),
                }],
            };
            let text = String::from_utf8(round_trip(&intent)).unwrap();
            assert!(text.contains("\"_summary_hex\""), "{text}");
            assert!(text.contains("\"value_hex\""), "{text}");
        }
    }

    #[test]
    fn a_null_summary_is_not_a_removal() {
        let null = Intent {
            summary: Some(b"null".to_vec()),
            pending: vec![],
        };
        round_trip(&null);
        let removal = Intent {
            summary: None,
            pending: vec![],
        };
        assert_eq!(round_trip(&removal), br#"{"_pending":[],"_removed":true}"#);
        let empty = Intent {
            summary: Some(b"{}".to_vec()),
            pending: vec![],
        };
        assert_eq!(round_trip(&empty), br#"{"_pending":[]}"#);
    }

    #[test]
    fn foreign_values_are_refused() {
        for bad in [
            &b"{}"[..],
            b"hello",
            br#"{"summary":1,"removed":true}"#,
            br#"{"_pending":[{"uuid":"u","rev":1,"op":"delete","value":1}]}"#,
            br#"{"_pending":[{"uuid":"u","rev":1,"op":"present"}]}"#,
            br#"{"_pending":[],"_summary_hex":"0g"}"#,
            br#"{"_pending":[] ,"a":1}"#,
            br#"{"_pending":[],"a":1"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
