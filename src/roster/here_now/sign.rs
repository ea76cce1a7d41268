//! The request text of a Here Now read: PubNub's percent-encoding of the channel and the query,
//! the canonical (sorted) query, and the v2 signature over it (HMAC-SHA256 with the secret
//! key). Pure; the secret key never leaves `Signer` (its `Debug` does not print it).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use crate::text::push_hex_upper;

/// Appends `text` percent-encoded as PubNub signs it: JavaScript's `encodeURIComponent`, and
/// then `! ~ * ' ( )` too, so only `A–Z a–z 0–9 - _ .` stay as they are (UTF-8 bytes, `%XX`
/// uppercase). The same rule encodes the channel in the path.
pub(super) fn push_encoded(text: &str, out: &mut String) {
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            out.push('%');
            push_hex_upper(b, out);
        }
    }
}

/// `text` percent-encoded by [`push_encoded`]'s rule.
pub(super) fn encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_encoded(text, &mut out);
    out
}

/// The query as it is signed and sent: every parameter as `name=value`, values encoded by
/// [`push_encoded`]'s rule, sorted by name and joined by `&`.
pub(super) fn canonical_query(params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.cmp(b.1)));
    let mut out = String::new();
    for (name, value) in sorted {
        if !out.is_empty() {
            out.push('&');
        }
        push_encoded(name, &mut out);
        out.push('=');
        push_encoded(value, &mut out);
    }
    out
}

/// Signs requests with the keyset's secret key (signature v2).
#[derive(Clone)]
pub(super) struct Signer {
    publish_key: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("publish_key", &self.publish_key)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `publish_key`'s keyset; `None` only if the HMAC refuses the key, which
    /// HMAC-SHA256 never does (it takes keys of any length).
    pub(super) fn new(publish_key: &str, secret_key: &str) -> Option<Signer> {
        let mac = Hmac::<Sha256>::new_from_slice(secret_key.as_bytes()).ok()?;
        Some(Signer {
            publish_key: publish_key.to_owned(),
            mac,
        })
    }

    /// The text that is signed: `GET`, the publish key, the path and the canonical query, each
    /// followed by a newline.
    pub(super) fn signed_text(&self, path: &str, query: &str) -> String {
        format!("GET\n{}\n{path}\n{query}\n", self.publish_key)
    }

    /// The `signature` parameter for a GET of `path` with the canonical `query` (which already
    /// holds `timestamp`): `v2.` and the URL-safe, unpadded base64 of the HMAC-SHA256.
    pub(super) fn sign(&self, path: &str, query: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(self.signed_text(path, query).as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("v2.{}", URL_SAFE_NO_PAD.encode(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vector() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pubnub/here-now/signature-vector.json"
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn text<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key].as_str().unwrap_or_else(|| panic!("{key}"))
    }

    #[test]
    fn signature_vector_matches() {
        let v = vector();
        let params: Vec<(&str, &str)> = v["query"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str().unwrap()))
            .collect();
        let query = canonical_query(&params);
        let signer = Signer::new(text(&v, "publish_key"), text(&v, "secret_key")).unwrap();
        let path = text(&v, "path");
        assert_eq!(
            signer.signed_text(path, &query),
            text(&v, "signature_input")
        );
        assert_eq!(signer.sign(path, &query), text(&v, "signature"));
        // The vector's path is the channel "room.lobby 1" encoded by the same rule.
        assert_eq!(
            format!(
                "/v2/presence/sub-key/sub-c-example-0000/channel/{}",
                encoded("room.lobby 1")
            ),
            path
        );
    }

    #[test]
    fn signature_depends_on_every_part() {
        let signer = Signer::new("pub", "secret").unwrap();
        let base = signer.sign("/p", "a=1");
        assert_ne!(signer.sign("/q", "a=1"), base);
        assert_ne!(signer.sign("/p", "a=2"), base);
        assert_ne!(Signer::new("pub", "other").unwrap().sign("/p", "a=1"), base);
        assert_ne!(
            Signer::new("bup", "secret").unwrap().sign("/p", "a=1"),
            base
        );
        assert!(base.starts_with("v2."), "{base}");
        let body = &base[3..];
        assert!(!body.contains(['+', '/', '=']), "{base}");
        assert_eq!(body.len(), 43, "32 bytes in unpadded base64");
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        let cases = [
            ("room.lobby 1", "room.lobby%201"),
            ("a-b_c.D9", "a-b_c.D9"),
            ("!~*'()", "%21%7E%2A%27%28%29"),
            ("a/b?c&d=e#f+g,h:i%", "a%2Fb%3Fc%26d%3De%23f%2Bg%2Ch%3Ai%25"),
            ("café", "caf%C3%A9"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(encoded(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn canonical_query_sorts_by_name_and_encodes_values() {
        let query = canonical_query(&[
            ("uuid", "hookbus roster"),
            ("limit", "1000"),
            ("auth", "a+b"),
        ]);
        assert_eq!(query, "auth=a%2Bb&limit=1000&uuid=hookbus%20roster");
        assert_eq!(canonical_query(&[]), "");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let signer = Signer::new("pub-c-1", "sec-c-very-secret").unwrap();
        let shown = format!("{signer:?}");
        assert!(shown.contains("pub-c-1"), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
