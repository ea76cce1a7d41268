//! Event → destination name (Kafka topic / NATS subject), the escaping that makes any channel
//! name safe for both brokers, and its inverse. Pure: no I/O, no broker crate. The rules
//! (docs/events.md, "Topic and subject names") live here only.
//!
//! Escaping: bytes of the UTF-8 value in `[A-Za-z0-9-]` stay; every other byte becomes `_`
//! followed by two uppercase hex digits. A name longer than 249 bytes keeps the longest prefix of
//! the escaped channel that does not split an escape, then `_h` and 16 hex chars of the
//! channel's SHA-256. `_h` never comes out of the escaping, so names stay distinct.

mod check;
mod output;

pub use check::check;
pub use output::OutputTemplate;

use sha2::{Digest, Sha256};

use crate::config::RoutingConfig;
use crate::normalize::{Action, Event};

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
    #[error("placeholder `{{{0}}}` is not allowed here")]
    NotAllowed(String),
    #[error("rule {0}: {1}")]
    Rule(usize, String),
    #[error("{0}")]
    Overflow(String),
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

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Channel => "channel",
            Slot::Action => "action",
            Slot::SubKey => "sub_key",
            Slot::Source => "source",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Slot(Slot),
}

/// One compiled template.
#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Compiles `text` and checks that it renders valid names; `allowed` lists the placeholders
    /// it may use.
    fn new(text: &str, allowed: &[Slot]) -> Result<Template, TemplateError> {
        let parts = parse_template(text)?;
        let mut probe = String::new();
        for part in &parts {
            match part {
                Part::Literal(text) => probe.push_str(text),
                Part::Slot(slot) if !allowed.contains(slot) => {
                    return Err(TemplateError::NotAllowed(slot.name().to_owned()));
                }
                // Every placeholder renders to at least one safe character.
                Part::Slot(_) => probe.push('x'),
            }
        }
        check_literal(&probe).map_err(|_| TemplateError::BadLiteral(text.to_owned()))?;
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
        Ok(Template { parts })
    }

    fn render(
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
        crate::text::push_hex(&digest[..8], &mut replacement);
        out.replace_range(range, &replacement);
        Ok(())
    }

    /// The JetStream subject matching exactly the names this template renders: its literal
    /// tokens as they are and `*` for each token a placeholder is in (a placeholder renders
    /// without dots, so the token count is fixed). `None` when the first token is not
    /// literal (a stream needs a fixed prefix).
    fn subject(&self) -> Option<String> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(literal) => text.push_str(literal),
                // `{` cannot appear in a literal (the parser took it as a placeholder).
                Part::Slot(_) => text.push('{'),
            }
        }
        let mut subject = Vec::new();
        for (i, token) in text.split('.').enumerate() {
            if token.contains('{') {
                if i == 0 {
                    return None;
                }
                subject.push("*");
            } else {
                subject.push(token);
            }
        }
        Some(subject.join("."))
    }
}

/// A channel glob of `[[routing.rules]]`: `*` matches any run of characters (dots included),
/// `?` exactly one character; everything else matches itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Glob(Vec<char>);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.chars().collect())
    }

    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (pattern, mut p, mut t) = (&self.0, 0, 0);
        // The last `*` seen and where the text stood then: on a mismatch, let it eat one more.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some('?') => {
                    p += 1;
                    t += 1;
                }
                Some(&c) if c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == '*')
    }
}

/// Compiled `routing` section.
#[derive(Debug, Clone)]
pub struct Router {
    default: Template,
    rules: Vec<(Glob, Template)>,
    /// The overflow destination per action, in `Action::ALL` order.
    overflow: Vec<String>,
    dead_letter: String,
}

/// Which template named a channel (for `hookbus topic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// `[[routing.rules]]` entry `n` (0-based).
    Rule(usize),
    /// `routing.template`.
    Default,
}

impl Router {
    /// Compiles the templates and checks that they, the rules, the overflow and the dead-letter
    /// name render valid names.
    ///
    /// # Errors
    /// Unknown or repeated placeholders, literal characters outside `[A-Za-z0-9._-]`, empty
    /// `.`-tokens (invalid NATS subjects), a template too long to leave room for a channel, an
    /// empty rule glob, an overflow template with `{channel}` or `{sub_key}`.
    pub fn new(config: &RoutingConfig) -> Result<Router, TemplateError> {
        const ALL: [Slot; 4] = [Slot::Channel, Slot::Action, Slot::SubKey, Slot::Source];
        let default = Template::new(&config.template, &ALL)?;
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.channel.is_empty() {
                return Err(TemplateError::Rule(i, "channel glob is empty".to_owned()));
            }
            let template = Template::new(&rule.template, &ALL)
                .map_err(|e| TemplateError::Rule(i, e.to_string()))?;
            rules.push((Glob::new(&rule.channel), template));
        }
        let overflow_template = Template::new(&config.overflow, &[Slot::Action, Slot::Source])
            .map_err(|e| TemplateError::Overflow(e.to_string()))?;
        let mut overflow = Vec::with_capacity(Action::ALL.len());
        for action in Action::ALL {
            let mut name = String::new();
            overflow_template
                .render("", action.as_str(), None, &mut name)
                .map_err(|e| TemplateError::Overflow(e.to_string()))?;
            overflow.push(name);
        }
        check_literal(&config.dead_letter).map_err(|_| {
            TemplateError::DeadLetter(format!(
                "{:?} is not a valid topic and subject: letters, digits, `.`, `-`, `_`, \
                 no empty `.`-token, at most 249 bytes",
                config.dead_letter
            ))
        })?;
        Ok(Router {
            default,
            rules,
            overflow,
            dead_letter: config.dead_letter.clone(),
        })
    }

    /// The first rule whose glob matches `channel`, else the default template.
    pub fn matched(&self, channel: &str) -> Matched {
        self.rules
            .iter()
            .position(|(glob, _)| glob.matches(channel))
            .map_or(Matched::Default, Matched::Rule)
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
        let template = match self.matched(channel) {
            Matched::Rule(i) => &self.rules[i].1,
            Matched::Default => &self.default,
        };
        template.render(channel, action, sub_key, out)
    }

    /// Where an event of `action` goes once `kafka.max_topics` is reached.
    pub fn overflow(&self, action: Action) -> &str {
        &self.overflow[action as usize]
    }

    /// Every overflow destination.
    pub fn overflow_names(&self) -> &[String] {
        &self.overflow
    }

    /// The dead-letter destination.
    pub fn dead_letter(&self) -> &str {
        &self.dead_letter
    }

    /// JetStream subjects that match every rendered event name and nothing else of ours, e.g.
    /// `["presence.*.*"]` (the overflow is Kafka's only). Dead letters are not among them:
    /// they have a stream of their own, so that refused input never pushes events out.
    /// Empty when a template has no literal first token.
    pub fn stream_subjects(&self) -> Vec<String> {
        let mut subjects: Vec<String> = Vec::new();
        let templates = std::iter::once(&self.default).chain(self.rules.iter().map(|(_, t)| t));
        for template in templates {
            let Some(subject) = template.subject() else {
                return Vec::new();
            };
            subjects.push(subject);
        }
        // Drop what another subject already covers (JetStream refuses overlapping subjects),
        // keeping the first-seen order.
        let mut out: Vec<String> = Vec::new();
        for (i, subject) in subjects.iter().enumerate() {
            let covered = subjects.iter().enumerate().any(|(j, wide)| {
                j != i && subject_covers(wide, subject) && (wide != subject || j < i)
            });
            if !covered {
                out.push(subject.clone());
            }
        }
        out
    }

    /// The first event subject that would also take the dead letters (they need a stream of
    /// their own), if any.
    pub fn dead_letter_overlap(&self) -> Option<String> {
        self.stream_subjects()
            .into_iter()
            .find(|subject| subject_covers(subject, &self.dead_letter))
    }
}

/// Whether every subject `narrow` matches is also matched by `wide` (NATS wildcards: `*` one
/// token, `>` one or more at the end). A literal subject covers only itself.
pub fn subject_covers(wide: &str, narrow: &str) -> bool {
    let mut wide = wide.split('.');
    let mut narrow = narrow.split('.');
    loop {
        match (wide.next(), narrow.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(n)) if n != ">" => {}
            (Some(w), Some(n)) if w == n => {}
            (None, None) => return true,
            _ => return false,
        }
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

/// Appends the escaped form of `value` to `out`.
pub fn escape_into(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('_');
            crate::text::push_hex_upper(b, out);
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

#[cfg(test)]
mod tests;
