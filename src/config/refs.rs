//! References to secrets outside `config.toml`: in any string value, `${NAME}` is replaced by
//! the environment variable `NAME` and `${file:PATH}` by the contents of the file at `PATH`
//! (one trailing newline dropped, as editors and `kubectl create secret --from-file` add one),
//! read through [`files`](super::files). `$${` stands for a literal `${`. An unset variable or
//! an unreadable file is an error naming the key; the secret's value never appears in an error.

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

/// Expands every reference in the string values of `table`, in place.
///
/// # Errors
/// `Invalid` naming the dotted key of the first value with an unset variable, an unreadable
/// file, or a malformed reference (`${` without `}`, an empty name).
pub fn expand(table: &mut toml::Table, resolver: &Resolver<'_>) -> Result<(), ConfigError> {
    let mut path = Vec::new();
    for (key, value) in table.iter_mut() {
        path.push(key.clone());
        expand_value(value, &mut path, resolver)?;
        path.pop();
    }
    Ok(())
}

fn expand_value(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    resolver: &Resolver<'_>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) if text.contains('$') => {
            *text = expand_str(text, resolver).map_err(|message| ConfigError::InvalidAt {
                key: dotted(path),
                message,
            })?;
        }
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                path.push(key.clone());
                expand_value(value, path, resolver)?;
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_value(item, path, resolver)?;
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

fn expand_str(text: &str, resolver: &Resolver<'_>) -> Result<String, String> {
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
            out.push_str(&resolve(reference, resolver)?);
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
