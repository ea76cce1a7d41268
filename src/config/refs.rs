//! References to secrets outside `config.toml`: in any string value, `${NAME}` is replaced by
//! the environment variable `NAME` and `${file:PATH}` by the contents of the file at `PATH`
//! (one trailing newline dropped, as editors and `kubectl create secret --from-file` add one),
//! read through [`files`](super::files). `$${` stands for a literal `${`. An unset variable or
//! an unreadable file is an error naming the key. Every value put in place is recorded in
//! [`Substitutions`], which scrubs it out of any later error, so no message shows a secret.

use std::fmt;
use std::path::Path;

use super::ConfigError;

/// Where references are resolved: the process environment and file system in production,
/// closures in tests.
pub struct Resolver<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub file: &'a dyn Fn(&Path) -> std::io::Result<String>,
}

impl Resolver<'static> {
    /// The process environment and the real file system (regular files of at most 1 MiB).
    pub fn system() -> Resolver<'static> {
        Resolver {
            env: &|name| std::env::var(name).ok(),
            file: &|path| super::files::read_to_string(path),
        }
    }
}

/// One value put in the config from outside the file: at `key`, `reference` (`${PW}`,
/// `${file:/run/secrets/pw}`, or an environment override such as `HOOKBUS_AUTH_TOKEN`)
/// stood for `value`.
#[derive(Clone)]
struct Substitution {
    key: String,
    reference: String,
    value: String,
}

/// Every value a reference or an environment override put in the config, kept so that errors
/// raised later (by the TOML deserializer, `validate`, the sink's checks) can be scrubbed of
/// them. Its `Debug` shows keys and references only.
#[derive(Clone, Default)]
pub struct Substitutions(Vec<Substitution>);

impl fmt::Debug for Substitutions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|s| format!("{} = {}", s.key, s.reference)),
            )
            .finish()
    }
}

/// Values shorter than this are scrubbed only where a message quotes them whole: replacing
/// every `ab` in a message would garble it without hiding anything worth hiding.
const SCRUB_MIN: usize = 4;

impl Substitutions {
    /// Records that `reference` put `value` at `key`.
    pub(super) fn record(&mut self, key: &str, reference: &str, value: &str) {
        self.0.push(Substitution {
            key: key.to_owned(),
            reference: reference.to_owned(),
            value: value.to_owned(),
        });
    }

    /// `(reference, value)` of every substitution made at exactly `key`.
    pub(super) fn at<'s>(&'s self, key: &'s str) -> impl Iterator<Item = (&'s str, &'s str)> {
        self.0
            .iter()
            .filter(move |s| s.key == key)
            .map(|s| (s.reference.as_str(), s.value.as_str()))
    }

    /// `text` with every substituted value replaced by its reference: the value as it is, its
    /// Debug-escaped form, and each line of a multi-line value; values shorter than 4 bytes
    /// only where quoted (`` `ab` ``, `"ab"`, `'ab'`).
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        let mut patterns: Vec<(String, String)> = Vec::new();
        for s in self.0.iter().filter(|s| !s.value.is_empty()) {
            let value = s.value.as_str();
            if value.len() < SCRUB_MIN {
                for (open, close) in [("`", "`"), ("\"", "\""), ("'", "'")] {
                    patterns.push((
                        format!("{open}{value}{close}"),
                        format!("{open}{}{close}", s.reference),
                    ));
                }
                continue;
            }
            let lines = value
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| l.len() >= SCRUB_MIN && *l != value);
            for form in std::iter::once(value).chain(lines) {
                patterns.push((form.to_owned(), s.reference.clone()));
                let escaped = format!("{form:?}");
                let escaped = &escaped[1..escaped.len() - 1];
                if escaped != form {
                    patterns.push((escaped.to_owned(), s.reference.clone()));
                }
            }
        }
        // Longest first, so a whole value goes before the lines it holds.
        patterns.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let mut text = text.to_owned();
        for (from, to) in patterns {
            if text.contains(&from) {
                text = text.replace(&from, &to);
            }
        }
        text
    }

    /// `error` made safe to print: substituted values scrubbed ([`Substitutions::scrub`]) and
    /// URL passwords hidden ([`redact_urls`](super::urls::redact_urls)). An error at a key
    /// whose value came from references names those references; if its message would still
    /// quote part of such a value (any 4 bytes of it), the message is replaced by one that
    /// names only the key and the references.
    #[must_use]
    pub fn redact(&self, error: ConfigError) -> ConfigError {
        let error = error.map_message(|m| super::urls::redact_urls(&self.scrub(m)));
        let Some(key) = error.key().map(str::to_owned) else {
            return error;
        };
        let here: Vec<&Substitution> = self.0.iter().filter(|s| covers(&key, &s.key)).collect();
        if here.is_empty() {
            return error;
        }
        let mut references: Vec<&str> = here.iter().map(|s| s.reference.as_str()).collect();
        references.dedup();
        let named = references.join(", ");
        error.map_message(|message| {
            if here.iter().any(|s| quotes_part(message, &s.value)) {
                format!(
                    "the value from {named} is refused (the reason is not shown: it would \
                     quote the value)"
                )
            } else if references.iter().all(|r| message.contains(r)) {
                message.to_owned()
            } else {
                format!("{message} (the value comes from {named})")
            }
        })
    }
}

/// Whether an error at `error_key` is about the value at `key`: the same key, or one inside
/// it (`routing.rules[0]` covers `routing.rules[0].template`).
fn covers(error_key: &str, key: &str) -> bool {
    key.strip_prefix(error_key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Whether `message` holds any run of [`SCRUB_MIN`] bytes of `value`.
fn quotes_part(message: &str, value: &str) -> bool {
    let runs: std::collections::HashSet<&[u8]> = message.as_bytes().windows(SCRUB_MIN).collect();
    value
        .as_bytes()
        .windows(SCRUB_MIN)
        .any(|run| runs.contains(run))
}

/// Expands every reference in the string values of `table`, in place, and returns what it
/// put where.
///
/// # Errors
/// `Invalid` naming the dotted key of the first value with an unset variable, an unreadable
/// file, or a malformed reference (`${` without `}`, an empty name).
pub fn expand(
    table: &mut toml::Table,
    resolver: &Resolver<'_>,
) -> Result<Substitutions, ConfigError> {
    let mut path = Vec::new();
    let mut done = Substitutions::default();
    for (key, value) in table.iter_mut() {
        path.push(key.clone());
        expand_value(value, &mut path, resolver, &mut done)?;
        path.pop();
    }
    Ok(done)
}

fn expand_value(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    resolver: &Resolver<'_>,
    done: &mut Substitutions,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) if text.contains('$') => {
            let key = dotted(path);
            let mut found = Vec::new();
            let expanded = expand_str(text, resolver, &mut found);
            // Recorded even when a later reference in the same string fails, so the error
            // cannot carry an earlier one's value.
            for (reference, value) in &found {
                done.record(&key, reference, value);
            }
            *text = expanded.map_err(|message| ConfigError::InvalidAt {
                key,
                message: done.scrub(&message),
            })?;
        }
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                path.push(key.clone());
                expand_value(value, path, resolver, done)?;
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_value(item, path, resolver, done)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// `kafka.properties."sasl.password"`, `auth.tokens[1]`.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.starts_with('[') {
            out.push_str(part);
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        if part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            out.push_str(part);
        } else {
            out.push('"');
            out.push_str(part);
            out.push('"');
        }
    }
    out
}

/// `text` with its references resolved; each `(reference, value)` is pushed on `found`.
fn expand_str(
    text: &str,
    resolver: &Resolver<'_>,
    found: &mut Vec<(String, String)>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let close = after
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
            let reference = &after[..close];
            let value = resolve(reference, resolver)?;
            out.push_str(&value);
            found.push((format!("${{{reference}}}"), value));
            rest = &after[close + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn resolve(reference: &str, resolver: &Resolver<'_>) -> Result<String, String> {
    if let Some(path) = reference.strip_prefix("file:") {
        if path.is_empty() {
            return Err("`${file:}` names no file".to_owned());
        }
        let mut text = (resolver.file)(Path::new(path))
            .map_err(|e| format!("cannot read the file `{path}` it references: {e}"))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return Ok(text);
    }
    let valid = !reference.is_empty()
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(format!(
            "`${{{reference}}}` is not a reference: use ${{NAME}} (letters, digits, _) or ${{file:PATH}}"
        ));
    }
    (resolver.env)(reference)
        .ok_or_else(|| format!("references the environment variable {reference}, which is not set"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver<'static> {
        Resolver {
            env: &|name| match name {
                "PASSWORD" => Some("s3cret".to_owned()),
                "EMPTY" => Some(String::new()),
                _ => None,
            },
            file: &|path| match path.to_str() {
                Some("/run/secrets/token") => Ok("from-file\n".to_owned()),
                _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
        }
    }

    fn expanded(text: &str) -> Result<toml::Table, String> {
        let mut table: toml::Table = text.parse().unwrap();
        expand(&mut table, &resolver()).map_err(|e| e.to_string())?;
        Ok(table)
    }

    #[test]
    fn variables_and_files_are_replaced_anywhere_in_a_string() {
        let t = expanded(
            "[kafka.properties]\n\"sasl.password\" = \"${PASSWORD}\"\n\
             [dedup]\nshared = \"redis://u:${PASSWORD}@h:6379\"\n\
             [auth]\ntokens = [\"${file:/run/secrets/token}\", \"${EMPTY}\"]\n\
             [nats]\nurl = \"nats://h:4222\"\nstream = \"$${NOT} $ \"",
        )
        .unwrap();
        assert_eq!(
            t["kafka"]["properties"]["sasl.password"].as_str(),
            Some("s3cret")
        );
        assert_eq!(
            t["dedup"]["shared"].as_str(),
            Some("redis://u:s3cret@h:6379")
        );
        assert_eq!(t["auth"]["tokens"][0].as_str(), Some("from-file"));
        assert_eq!(t["auth"]["tokens"][1].as_str(), Some(""));
        assert_eq!(t["nats"]["stream"].as_str(), Some("${NOT} $ "));
    }

    #[test]
    fn errors_name_the_key_and_never_the_secret() {
        let cases = [
            (
                "[kafka.properties]\n\"sasl.password\" = \"${UNSET}\"",
                "kafka.properties.\"sasl.password\"",
                "UNSET",
            ),
            (
                "[auth]\ntokens = [\"ok\", \"${file:/nope}\"]",
                "auth.tokens[1]",
                "/nope",
            ),
            ("[nats]\ntoken = \"${OPEN\"", "nats.token", "closing"),
            (
                "[nats]\ntoken = \"${a-b}\"",
                "nats.token",
                "not a reference",
            ),
        ];
        for (text, key, detail) in cases {
            let e = expanded(text).unwrap_err();
            assert!(e.contains(key) && e.contains(detail), "{text:?} → {e}");
            assert!(!e.contains("s3cret"));
        }
    }
}
