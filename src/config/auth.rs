//! The `[auth]` section: the tokens the webhook listener accepts. It cannot fail open: a
//! reference or `HOOKBUS_AUTH_TOKEN` that resolves blank is an error, and running with no token
//! at all takes an explicit `allow_anonymous = true`.

use serde::Deserialize;

use super::refs::Substitutions;
use super::{ConfigError, TOKEN_ENV};

/// Longest accepted token, in bytes: far above any generated secret, and small enough that
/// comparing every token on every request stays cheap.
pub const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret expected in the `header` or `?token=`. Also from env
    /// `HOOKBUS_AUTH_TOKEN`, which overrides it. A literal `""` means no token.
    pub token: String,
    /// Further accepted tokens, for rotation without a window where PubNub is refused.
    pub tokens: Vec<String>,
    /// The request header the token is read from (the `token` query parameter always works).
    pub header: String,
    /// Accepted PubNub subscribe keys; empty accepts all.
    pub allowed_sub_keys: Vec<String>,
    /// With no token configured, accept webhooks from anyone. Without it, a config with no
    /// token is refused. Ignored (with a warning at start) when a token is set.
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: String::new(),
            tokens: Vec::new(),
            header: "X-Hookbus-Token".to_owned(),
            allowed_sub_keys: Vec::new(),
            allow_anonymous: false,
        }
    }
}

impl AuthConfig {
    /// Every accepted token (empty strings left out).
    pub fn accepted(&self) -> Vec<&str> {
        std::iter::once(self.token.as_str())
            .chain(self.tokens.iter().map(String::as_str))
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Whether webhooks are accepted without a token: no token is configured (a validated
    /// config then has `allow_anonymous = true`).
    pub fn anonymous(&self) -> bool {
        self.accepted().is_empty()
    }

    /// Each token well formed, and no reference (or `HOOKBUS_AUTH_TOKEN`) that resolved blank.
    /// `references` names where the values came from; no message quotes a token.
    pub(super) fn validate(&self, references: &Substitutions) -> Result<(), ConfigError> {
        let keyed = std::iter::once(("auth.token".to_owned(), &self.token)).chain(
            self.tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("auth.tokens[{i}]"), t)),
        );
        for (key, token) in keyed {
            let blank = references
                .at(&key)
                .find(|(_, value)| value.trim().is_empty())
                .map(|(reference, _)| reference.to_owned());
            if let Some(reference) = blank {
                let (what, instead) = if reference.starts_with("${") {
                    (
                        "resolves to an empty or blank value",
                        "remove the reference",
                    )
                } else {
                    ("is set but blank", "unset it")
                };
                return Err(ConfigError::InvalidAt {
                    message: format!(
                        "{reference} {what}: a token must not be empty (to run without one, \
                         {instead} and set auth.allow_anonymous = true)"
                    ),
                    key,
                });
            }
            if token.len() > MAX_TOKEN_BYTES {
                return Err(ConfigError::InvalidAt {
                    key,
                    message: format!("the token is longer than {MAX_TOKEN_BYTES} bytes"),
                });
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::InvalidAt {
                    key,
                    message: "the token holds whitespace or a control character (a stray \
                              newline or space from the secret's source?)"
                        .to_owned(),
                });
            }
        }
        let header_ok = !self.header.is_empty()
            && self
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !header_ok {
            return Err(super::invalid(
                "auth.header",
                "must be a header name: letters, digits, `-` and `_`",
            ));
        }
        Ok(())
    }

    /// Some token is configured, or anonymous webhooks were asked for explicitly.
    pub(super) fn require_token(&self) -> Result<(), ConfigError> {
        if self.anonymous() && !self.allow_anonymous {
            return Err(super::invalid(
                "auth.allow_anonymous",
                format!(
                    "no auth.token, auth.tokens or {TOKEN_ENV}: set one, or \
                     auth.allow_anonymous = true to accept anonymous webhooks"
                ),
            ));
        }
        Ok(())
    }
}
