//! Any channel name (the input as UTF-8, invalid sequences replaced by U+FFFD) → the escaping
//! and the default template (`presence.{channel}.{action}`) keep DESIGN §7:
//! - `unescape(escape(s)) == s`, and `escape` writes only `[A-Za-z0-9_-]`;
//! - the rendered name is at most 249 bytes of `[A-Za-z0-9._-]` with no empty `.`-token;
//!   its channel part unescapes to the channel, or, when cut to fit, says `Cut` and keeps a
//!   prefix of the escaped channel that splits no `_XX` escape (it may split a character's
//!   bytes), then `_h` and 16 hex chars;
//! - two different channels never render to the same name. The pairs: the input split at its
//!   first NUL (the fuzzer picks both sides), and the input against itself with its last
//!   character dropped or changed, or its first one dropped (near pairs, around the cut).
//!
//! Channels are non-empty (normalize rejects an empty one), so the empty string only goes
//! through the escaping.
#![no_main]

use std::sync::LazyLock;

use hookbus::config::RoutingConfig;
use hookbus::normalize::Action;
use hookbus::route::{MAX_NAME_BYTES, Router, UnescapeError, escape, unescape};
use libfuzzer_sys::fuzz_target;

static ROUTER: LazyLock<Router> =
    LazyLock::new(|| Router::new(&RoutingConfig::default()).expect("the default routing compiles"));

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s: &str = &s;
    // One action per input, picked by the input so every action gets its share.
    let action = Action::ALL
        [data.iter().fold(0usize, |n, &b| n.wrapping_add(b as usize)) % Action::ALL.len()];
    check_escape(s);
    let name = check_render(s, action);

    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some((a, b)) = s.split_once('\0') {
        check_escape(a);
        check_escape(b);
        pairs.push((a.to_owned(), b.to_owned()));
    }
    let mut chars = s.chars();
    if let Some(last) = chars.next_back() {
        let rest = chars.as_str();
        pairs.push((s.to_owned(), rest.to_owned()));
        let other = if last == 'a' { 'b' } else { 'a' };
        pairs.push((s.to_owned(), format!("{rest}{other}")));
        let mut tail = s.chars();
        tail.next();
        pairs.push((s.to_owned(), tail.as_str().to_owned()));
    }
    for (a, b) in &pairs {
        if a == b || a.is_empty() || b.is_empty() {
            continue;
        }
        let name_a = if a == s {
            name.clone().unwrap()
        } else {
            check_render(a, action).unwrap()
        };
        let name_b = check_render(b, action).unwrap();
        assert_ne!(
            name_a, name_b,
            "channels {a:?} and {b:?} render to the same name"
        );
    }
});

fn check_escape(s: &str) {
    let escaped = escape(s);
    assert!(
        escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "escape({s:?}) = {escaped:?} has a character outside [A-Za-z0-9_-]"
    );
    assert!(
        !escaped.contains("_h"),
        "escape({s:?}) = {escaped:?} contains `_h`"
    );
    match unescape(&escaped) {
        Ok(back) => assert_eq!(back, s, "unescape(escape(s)) != s for {escaped:?}"),
        Err(e) => panic!("unescape(escape({s:?})) = {e:?}"),
    }
}

/// Renders `channel` with the default template and checks the name; `None` for the empty
/// channel, which normalize never lets through.
fn check_render(channel: &str, action: Action) -> Option<String> {
    if channel.is_empty() {
        return None;
    }
    let mut name = String::new();
    if let Err(e) = ROUTER.render(channel, action.as_str(), None, &mut name) {
        panic!("render({channel:?}) failed: {e}");
    }
    assert!(
        name.len() <= MAX_NAME_BYTES,
        "{} bytes: {name:?}",
        name.len()
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
        "character outside [A-Za-z0-9._-]: {name:?}"
    );
    assert!(
        name.split('.').all(|token| !token.is_empty()),
        "empty `.`-token: {name:?}"
    );

    // The default template has no `{sub_key}`: the sub_key changes nothing.
    let mut with_sub_key = String::new();
    ROUTER
        .render(channel, action.as_str(), Some(channel), &mut with_sub_key)
        .expect("render with a sub_key");
    assert_eq!(
        with_sub_key, name,
        "the sub_key changed a name without {{sub_key}}"
    );

    let middle = name
        .strip_prefix("presence.")
        .and_then(|rest| rest.strip_suffix(action.as_str()))
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or_else(|| panic!("not presence.<channel>.{action}: {name:?}"));
    match unescape(middle) {
        Ok(back) => assert_eq!(
            back, channel,
            "the channel part does not unescape to the channel"
        ),
        Err(UnescapeError::Cut) => {
            let (kept, hash) = middle
                .rsplit_once("_h")
                .unwrap_or_else(|| panic!("Cut without `_h`: {middle:?}"));
            assert!(
                hash.len() == 16 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "cut name's hash suffix is not 16 lowercase hex chars: {middle:?}"
            );
            let escaped = escape(channel);
            assert!(
                escaped.starts_with(kept),
                "cut name keeps no prefix of the escaped channel"
            );
            assert!(
                "presence.".len() + escaped.len() + 1 + action.as_str().len() > MAX_NAME_BYTES,
                "a channel that fits was cut: {channel:?}"
            );
            // The cut may split a multi-byte character (NotUtf8), never a `_XX` escape.
            assert!(
                !matches!(unescape(kept), Err(UnescapeError::Malformed(_))),
                "the cut splits an escape: {kept:?}"
            );
        }
        Err(e) => panic!("the channel part of {name:?} does not unescape: {e:?}"),
    }
    Some(name)
}
