//! Broker URLs in the config: `dedup.shared` parsed and checked, and the password (or NATS
//! token) in any URL's userinfo replaced by `***` before a message shows it.

/// `url` with the password of its userinfo replaced by `***`: `redis://u:p@h:6379/0` →
/// `redis://u:***@h:6379/0`. In a `nats://`, `tls://` or `ws(s)://` URL a user part without a
/// password is a token (`nats://TOKEN@host`) and is replaced as a whole. Anything that is not
/// `scheme://…` is returned as it is.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let scheme = &url[..scheme_end];
    let rest = &url[scheme_end + 3..];
    // The last `@` before any query or fragment ends the userinfo: a password with an
    // unescaped `/` or `@` is still hidden whole (a path holding `@` is hidden too).
    let before_query = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..before_query].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None if matches!(scheme, "nats" | "tls" | "ws" | "wss") => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{shown}{}", &rest[at..])
}

/// `text` with every `scheme://…` in it passed through [`redact_url`]. A URL ends at
/// whitespace, a quote, a backtick, a comma or a backslash (as in a Debug-escaped string).
#[must_use]
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let start = rest[..found]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let after = &rest[found + 3..];
        let end = found
            + 3
            + after
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ',' | '\\' | '<' | '>')
                })
                .unwrap_or(after.len());
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Checks a `dedup.shared` value: empty, or `redis://[user:pass@]host[:port][/db]` (or
/// `rediss://`), with a host, a port from 1 to 65535 (6379 when left out) and a numeric db.
/// The message describes the fault without quoting the URL, which may hold a password.
pub(super) fn check_redis_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err("must be empty or a redis:// or rediss:// URL".to_owned());
    };
    let before_query = rest.find(['?', '#']).unwrap_or(rest.len());
    let (query, rest) = (&rest[before_query..], &rest[..before_query]);
    if query.starts_with('#') {
        return Err("the URL must not have a #fragment".to_owned());
    }
    let after_userinfo = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let (authority, db) = match after_userinfo.find('/') {
        Some(slash) => (&after_userinfo[..slash], &after_userinfo[slash + 1..]),
        None => (after_userinfo, ""),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("the IPv6 host has no closing `]`".to_owned());
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the host in `[…]` is not an IPv6 address".to_owned());
        }
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err("unexpected text after the IPv6 host".to_owned()),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = authority.starts_with('[')
        || !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !host_ok {
        return Err("names no host (redis://[user:pass@]host:port[/db])".to_owned());
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err("the port must be a number from 1 to 65535".to_owned());
        }
    }
    let db_ok =
        db.is_empty() || db.bytes().all(|b| b.is_ascii_digit()) && db.parse::<u32>().is_ok();
    if !db_ok {
        return Err("the database after `/` must be a number".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden() {
        for (url, shown) in [
            ("redis://u:p4ss@h:6379/0", "redis://u:***@h:6379/0"),
            ("rediss://:p4ss@h", "rediss://:***@h"),
            ("redis://u:p/a@ss@h:1", "redis://u:***@h:1"),
            ("nats://T0KEN@h:4222", "nats://***@h:4222"),
            ("tls://u:p@h", "tls://u:***@h"),
            ("redis://user@h", "redis://user@h"),
            ("nats://h:4222", "nats://h:4222"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        assert_eq!(
            redact_urls("\"nats://a:4222,nats://u:pw@b:x\" is not a URL: `redis://:pw@c`."),
            "\"nats://a:4222,nats://u:***@b:x\" is not a URL: `redis://:***@c`."
        );
        assert_eq!(redact_urls("no urls here"), "no urls here");
    }

    #[test]
    fn redis_urls_need_a_host_and_a_valid_port() {
        for ok in [
            "",
            "redis://h",
            "redis://h:6379",
            "rediss://u:p@h:6380/2",
            "redis://:p@10.0.0.1:1/0?protocol=resp3",
            "redis://[::1]:6379",
        ] {
            assert_eq!(check_redis_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("memcached://h:11211", "redis://"),
            ("redis://", "no host"),
            ("redis://:6379", "no host"),
            ("redis://u:p@:6379", "no host"),
            ("redis://h:port", "port"),
            ("redis://h:70000", "port"),
            ("redis://h:0", "port"),
            ("redis://h:", "port"),
            ("redis://h:+1", "port"),
            ("redis://h/x", "database"),
            ("redis://[::1", "IPv6"),
        ] {
            let e = check_redis_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // The message never quotes the URL, whose userinfo may hold a password.
        let e = check_redis_url("redis://u:s3cret@h:bad").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
