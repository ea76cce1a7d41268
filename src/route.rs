//! Event → destination name (Kafka topic / NATS subject), the escaping that makes any channel
//! name safe for both brokers, and its inverse. Pure: no I/O, no broker crate. The rules
//! (DESIGN §7) live here only.
//!
//! Escaping: bytes of the UTF-8 value in `[A-Za-z0-9-]` stay; every other byte becomes `_`
//! followed by two uppercase hex digits. A name longer than 249 bytes keeps the longest prefix of
//! the escaped channel that does not split an escape, then `_h` and 16 hex chars of the
//! channel's SHA-256. `_h` never comes out of the escaping, so names stay distinct.

use sha2::{Digest, Sha256};

use crate::config::RoutingConfig;
use crate::normalize::Event;

/// Longest valid Kafka topic name; NATS has no smaller limit.
pub const MAX_NAME_BYTES: usize = 249;
/// Length of the `_h` + 16 hex chars suffix that replaces the cut part of a long channel.
const HASH_SUFFIX_BYTES: usize = 18;
/// What `{sub_key}` renders to when the event has none (`_` alone is never an escape).
pub const NO_SUB_KEY: &str = "_";

/// A template or dead-letter name that cannot produce valid names.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("unknown placeholder `{{{0}}}` (use {{channel}} {{action}} {{sub_key}} {{source}})")]
    UnknownPlaceholder(String),
    #[error("unclosed `{{` in template")]
    Unclosed,
    #[error("placeholder `{{{0}}}` appears more than once")]
    Repeated(String),
    #[error(
        "literal text may only use letters, digits, `.`, `-`, `_`, with no empty `.`-separated token: {0:?}"
    )]
    BadLiteral(String),
    #[error("template leaves no room for a channel within 249 bytes")]
    TooLong,
    #[error("{0}")]
    DeadLetter(String),
}

/// A name rendered from an event that no broker would accept.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("sub_key is too long to fit a topic name of 249 bytes")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Channel,
    Action,
    SubKey,
    Source,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Slot(Slot),
}

/// Compiled `routing` section.
#[derive(Debug, Clone)]
pub struct Router {
    parts: Vec<Part>,
    dead_letter: String,
}

impl Router {
    /// Compiles the template and checks that it and the dead-letter name render valid names.
    ///
    /// # Errors
    /// Unknown or repeated placeholders, literal characters outside `[A-Za-z0-9._-]`, empty
    /// `.`-tokens (invalid NATS subjects), or a template too long to leave room for a channel.
    pub fn new(config: &RoutingConfig) -> Result<Router, TemplateError> {
        let parts = parse_template(&config.template)?;
        let mut probe = String::new();
        for part in &parts {
            match part {
                Part::Literal(text) => probe.push_str(text),
                // Every placeholder renders to at least one safe character.
                Part::Slot(_) => probe.push('x'),
            }
        }
        check_literal(&probe).map_err(|_| TemplateError::BadLiteral(config.template.clone()))?;
        let fixed: usize = parts
            .iter()
            .map(|p| match p {
                Part::Literal(t) => t.len(),
                Part::Slot(Slot::Action) => "state-change".len(),
                Part::Slot(Slot::Source) => "pubnub".len(),
                Part::Slot(Slot::SubKey) => 3 * 64,
                Part::Slot(Slot::Channel) => HASH_SUFFIX_BYTES,
            })
            .sum();
        if fixed > MAX_NAME_BYTES {
            return Err(TemplateError::TooLong);
        }
        check_literal(&config.dead_letter).map_err(|_| {
            TemplateError::DeadLetter(format!(
                "{:?} is not a valid topic and subject: letters, digits, `.`, `-`, `_`, \
                 no empty `.`-token, at most 249 bytes",
                config.dead_letter
            ))
        })?;
        Ok(Router {
            parts,
            dead_letter: config.dead_letter.clone(),
        })
    }

    /// Renders the destination name of `event`.
    ///
    /// # Errors
    /// Only when a `{sub_key}` is so long that even an empty channel would not fit.
    pub fn name(&self, event: &Event) -> Result<String, RouteError> {
        let mut out = String::with_capacity(64);
        self.render(
            &event.channel,
            event.action.as_str(),
            event.sub_key.as_deref(),
            &mut out,
        )?;
        Ok(out)
    }

    /// Renders into `out` (cleared first), so a caller can reuse one buffer.
    pub fn render(
        &self,
        channel: &str,
        action: &str,
        sub_key: Option<&str>,
        out: &mut String,
    ) -> Result<(), RouteError> {
        out.clear();
        let mut channel_at = None;
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Slot(Slot::Action) => out.push_str(action),
                Part::Slot(Slot::Source) => out.push_str("pubnub"),
                Part::Slot(Slot::SubKey) => match sub_key {
                    Some(key) if !key.is_empty() => escape_into(key, out),
                    _ => out.push_str(NO_SUB_KEY),
                },
                Part::Slot(Slot::Channel) => {
                    let start = out.len();
                    escape_into(channel, out);
                    channel_at = Some(start..out.len());
                }
            }
        }
        if out.len() <= MAX_NAME_BYTES {
            return Ok(());
        }
        let Some(range) = channel_at else {
            return Err(RouteError::TooLong);
        };
        let other = out.len() - range.len();
        let budget = MAX_NAME_BYTES
            .checked_sub(other + HASH_SUFFIX_BYTES)
            .ok_or(RouteError::TooLong)?;
        let escaped = &out[range.clone()];
        let cut = escape_boundary(escaped, budget);
        let mut replacement = String::with_capacity(cut + HASH_SUFFIX_BYTES);
        replacement.push_str(&escaped[..cut]);
        replacement.push_str("_h");
        let digest = Sha256::digest(channel.as_bytes());
        push_hex_lower(&digest[..8], &mut replacement);
        out.replace_range(range, &replacement);
        Ok(())
    }

    /// The dead-letter destination.
    pub fn dead_letter(&self) -> &str {
        &self.dead_letter
    }

    /// JetStream subjects that cover every rendered name and the dead letter, e.g.
    /// `["presence.>"]`. Empty when the template has no literal first token.
    pub fn stream_subjects(&self) -> Vec<String> {
        let Some(Part::Literal(first)) = self.parts.first() else {
            return Vec::new();
        };
        let prefix = match (first.rfind('.'), self.parts.len()) {
            (_, 1) => {
                // No placeholder at all: the template is one fixed subject.
                let mut subjects = vec![first.clone()];
                if self.dead_letter != *first {
                    subjects.push(self.dead_letter.clone());
                }
                return subjects;
            }
            (Some(dot), _) => &first[..=dot],
            (None, _) => return Vec::new(),
        };
        let wildcard = format!("{prefix}>");
        let mut subjects = vec![wildcard];
        if !self.dead_letter.starts_with(prefix) {
            subjects.push(self.dead_letter.clone());
        }
        subjects
    }
}

fn parse_template(template: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut seen = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
        let name = &rest[open + 1..close];
        let slot = match name {
            "channel" => Slot::Channel,
            "action" => Slot::Action,
            "sub_key" => Slot::SubKey,
            "source" => Slot::Source,
            other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
        };
        if seen.contains(&slot) {
            return Err(TemplateError::Repeated(name.to_owned()));
        }
        seen.push(slot);
        parts.push(Part::Slot(slot));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    if parts.is_empty() {
        return Err(TemplateError::BadLiteral(template.to_owned()));
    }
    Ok(parts)
}

/// Valid as both a Kafka topic (`[A-Za-z0-9._-]{1,249}`) and a NATS subject (no empty token).
fn check_literal(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && name.split('.').all(|token| !token.is_empty());
    if ok { Ok(()) } else { Err(()) }
}

/// True for the bytes that stand for themselves in an escaped value.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the escaped form of `value` to `out`.
pub fn escape_into(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('_');
            out.push(HEX_UPPER[(b >> 4) as usize] as char);
            out.push(HEX_UPPER[(b & 0xF) as usize] as char);
        }
    }
}

/// The escaped form of `value`: `room.lobby` → `room_2Elobby`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(value, &mut out);
    out
}

/// Why an escaped name could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UnescapeError {
    #[error(
        "name was cut to fit 249 bytes (`_h` + hash suffix); the full channel is in the `hookbus-channel` header"
    )]
    Cut,
    #[error("byte {0} is neither a plain character nor a `_XX` escape")]
    Malformed(usize),
    #[error("decoded bytes are not UTF-8")]
    NotUtf8,
}

/// Inverse of [`escape`]: `caf_C3_A9` → `café`.
///
/// # Errors
/// `Cut` for a name shortened with the `_h` hash suffix (not reversible: read the
/// `hookbus-channel` header instead), `Malformed` for anything [`escape`] cannot produce.
pub fn unescape(name: &str) -> Result<String, UnescapeError> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
        } else if b == b'_' {
            if bytes.get(i + 1) == Some(&b'h') {
                return Err(UnescapeError::Cut);
            }
            let hi = bytes.get(i + 1).and_then(|&c| hex_upper_value(c));
            let lo = bytes.get(i + 2).and_then(|&c| hex_upper_value(c));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(UnescapeError::Malformed(i)),
            }
            i += 3;
        } else {
            return Err(UnescapeError::Malformed(i));
        }
    }
    String::from_utf8(out).map_err(|_| UnescapeError::NotUtf8)
}

fn hex_upper_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Largest `cut <= budget` that does not fall inside a `_XX` escape of `escaped`.
fn escape_boundary(escaped: &str, budget: usize) -> usize {
    if budget >= escaped.len() {
        return escaped.len();
    }
    let bytes = escaped.as_bytes();
    // An escape starts at most 2 bytes before the cut; `_` appears only as an escape start.
    for back in 1..=2 {
        if budget >= back && bytes[budget - back] == b'_' {
            return budget - back;
        }
    }
    budget
}

fn push_hex_lower(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xF) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn router(template: &str) -> Router {
        Router::new(&RoutingConfig {
            template: template.to_owned(),
            dead_letter: "presence.dead-letter".to_owned(),
        })
        .unwrap()
    }

    fn render(r: &Router, channel: &str) -> String {
        let mut out = String::new();
        r.render(channel, "join", Some("sub-c-1"), &mut out)
            .unwrap();
        out
    }

    fn valid_kafka_topic(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 249
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    fn valid_nats_subject(name: &str) -> bool {
        !name.is_empty()
            && name.split('.').all(|t| {
                !t.is_empty()
                    && t != "*"
                    && t != ">"
                    && !t.bytes().any(|b| b.is_ascii_whitespace() || b == 0)
            })
    }

    #[test]
    fn contract_examples() {
        for (raw, escaped) in [
            ("room.lobby", "room_2Elobby"),
            ("a_b", "a_5Fb"),
            ("café", "caf_C3_A9"),
            ("has space", "has_20space"),
            ("Plain-9", "Plain-9"),
            ("a>b*c", "a_3Eb_2Ac"),
        ] {
            assert_eq!(escape(raw), escaped);
            assert_eq!(unescape(escaped).unwrap(), raw);
        }
        assert_eq!(
            render(&router("presence.{channel}.{action}"), "room.lobby"),
            "presence.room_2Elobby.join"
        );
    }

    #[test]
    fn all_placeholders() {
        let r = router("{source}.{sub_key}.{channel}.{action}");
        let mut out = String::new();
        r.render("x", "state-change", Some("sub-c-1"), &mut out)
            .unwrap();
        assert_eq!(out, "pubnub.sub-c-1.x.state-change");
        r.render("x", "leave", None, &mut out).unwrap();
        assert_eq!(out, "pubnub._.x.leave");
    }

    #[test]
    fn long_channel_is_cut_with_hash() {
        let r = router("presence.{channel}.{action}");
        let channel = "é".repeat(200);
        let name = render(&r, &channel);
        // 14 fixed bytes + 18 suffix leave 217 for the channel; 217 would split an escape → 216.
        assert_eq!(name.len(), 14 + 216 + 18, "{name}");
        assert!(name.len() <= 249);
        let digest = Sha256::digest(channel.as_bytes());
        let mut hex = String::new();
        push_hex_lower(&digest[..8], &mut hex);
        assert!(name.ends_with(&format!("_h{hex}.join")), "{name}");
        // The kept prefix ends on an escape boundary.
        let channel_part = &name["presence.".len()..name.len() - ".join".len()];
        let kept = &channel_part[..channel_part.len() - 18];
        assert_eq!(kept.len() % 3, 0);
        assert!(unescape(kept).is_ok());
        assert_eq!(unescape(channel_part), Err(UnescapeError::Cut));
    }

    #[test]
    fn exactly_249_is_not_cut() {
        let r = router("presence.{channel}.{action}");
        let channel = "a".repeat(249 - "presence..join".len());
        let name = render(&r, &channel);
        assert_eq!(name.len(), 249);
        assert!(!name.contains("_h"));
        let longer = render(&r, &format!("{channel}a"));
        assert_eq!(longer.len(), 249);
        assert!(longer.contains("_h"));
    }

    #[test]
    fn bad_templates_are_rejected() {
        let cfg = |t: &str, d: &str| RoutingConfig {
            template: t.to_owned(),
            dead_letter: d.to_owned(),
        };
        assert!(matches!(
            Router::new(&cfg("p.{chan}", "dl")),
            Err(TemplateError::UnknownPlaceholder(_))
        ));
        assert!(Router::new(&cfg("p.{channel", "dl")).is_err());
        assert!(Router::new(&cfg("p..{channel}", "dl")).is_err());
        assert!(Router::new(&cfg("p.{channel}.{channel}", "dl")).is_err());
        assert!(Router::new(&cfg("p {channel}", "dl")).is_err());
        assert!(Router::new(&cfg("p.{channel}", "d l")).is_err());
        assert_eq!(
            Router::new(&cfg(&format!("{}.{{channel}}", "x".repeat(235)), "dl")).unwrap_err(),
            TemplateError::TooLong
        );
        assert!(Router::new(&cfg(&"x".repeat(250), "dl")).is_err());
    }

    #[test]
    fn stream_subjects_cover_names() {
        assert_eq!(
            router("presence.{channel}.{action}").stream_subjects(),
            vec!["presence.>"]
        );
        let r = Router::new(&RoutingConfig {
            template: "pn.events.{channel}".to_owned(),
            dead_letter: "dlq.presence".to_owned(),
        })
        .unwrap();
        assert_eq!(r.stream_subjects(), vec!["pn.events.>", "dlq.presence"]);
        assert!(router("{channel}.{action}").stream_subjects().is_empty());
    }

    #[test]
    fn unescape_rejects_what_escape_cannot_produce() {
        assert_eq!(unescape("a.b"), Err(UnescapeError::Malformed(1)));
        assert_eq!(unescape("a_2"), Err(UnescapeError::Malformed(1)));
        assert_eq!(unescape("a_2e"), Err(UnescapeError::Malformed(1)));
        assert_eq!(unescape("_FF"), Err(UnescapeError::NotUtf8));
    }

    proptest! {
        #[test]
        fn escape_roundtrips_and_is_valid(channel in "\\PC{1,40}|[ -~]{1,40}|.{1,200}") {
            let escaped = escape(&channel);
            prop_assert_eq!(unescape(&escaped).unwrap(), channel.clone());
            let name = render(&router("presence.{channel}.{action}"), &channel);
            prop_assert!(valid_kafka_topic(&name), "{}", name);
            prop_assert!(valid_nats_subject(&name), "{}", name);
        }

        #[test]
        fn distinct_channels_never_share_a_name(
            a in "[a-z._ é-]{1,120}|.{1,120}",
            b in "[a-z._ é-]{1,120}|.{1,120}",
        ) {
            prop_assume!(a != b);
            let r = router("presence.{channel}.{action}");
            prop_assert_ne!(render(&r, &a), render(&r, &b));
        }

        #[test]
        fn long_names_fit_and_stay_valid(channel in ".{80,400}") {
            let name = render(&router("presence.{channel}.{action}"), &channel);
            prop_assert!(name.len() <= 249);
            prop_assert!(valid_kafka_topic(&name), "{}", name);
            prop_assert!(valid_nats_subject(&name), "{}", name);
        }
    }

    #[test]
    fn cut_names_of_channels_sharing_a_prefix_differ() {
        let r = router("presence.{channel}.{action}");
        let base = "x".repeat(300);
        assert_ne!(
            render(&r, &format!("{base}1")),
            render(&r, &format!("{base}2"))
        );
        // A short channel can never look like a cut one.
        let cut = render(&r, &format!("{base}1"));
        let channel_part = &cut["presence.".len()..cut.len() - ".join".len()];
        assert_ne!(render(&r, channel_part), cut);
    }
}
