//! Unit tests of the config: defaults, the shipped file, every refusal naming its key, and
//! no secret in any message.

use super::*;

/// `text` after an `[auth]` section that accepts anonymous webhooks, for tests about other
/// sections (`text` must not have an `[auth]` section of its own).
fn anonymous(text: &str) -> String {
    format!("[auth]\nallow_anonymous = true\n{text}")
}

/// References resolved from these variables and files only; nothing from the process.
fn resolver() -> refs::Resolver<'static> {
    refs::Resolver {
        env: &|name| {
            let value = match name {
                "EMPTY" => "",
                "BLANK" => " \t ",
                "TOKEN" => "t0ken-from-env",
                "MODE" => "s3cret-mode",
                "WINDOW" => "s3cret-window",
                "HEADER" => "bad s3cret header",
                "PW" => "pa55word",
                "REDIS" => "redis://u:pa55word@cache:bad",
                "TABBED" => "t0k\ten",
                "SHORT" => "ab",
                _ => return None,
            };
            Some(value.to_owned())
        },
        file: &|path| {
            let text = match path.to_str() {
                Some("/run/secrets/empty") => "\n",
                Some("/run/secrets/token") => "t0ken-from-file\n",
                Some("/run/secrets/multi") => "first-line-s3cret\nsecond-line-s3cret\nx\n",
                _ => return Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            };
            Ok(text.to_owned())
        },
    }
}

/// The error `text` gives, parsed with [`resolver`] and the `HOOKBUS_*` overrides in `env`.
fn error_with(text: &str, env: &[(&str, &str)]) -> ConfigError {
    let base = resolver();
    let env = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| (base.env)(name))
    };
    let resolver = refs::Resolver {
        env: &env,
        file: base.file,
    };
    Config::parse_env(text, &resolver, &|_| Ok(())).unwrap_err()
}

#[test]
fn empty_file_gives_contract_defaults() {
    let c = Config::parse(&anonymous("")).unwrap();
    assert_eq!(c.http.listen.port(), 8080);
    assert_eq!(c.http.max_body_bytes, 8_388_608);
    assert_eq!(c.admin.listen.port(), 9090);
    assert_eq!(c.ack.mode, AckMode::Spool);
    assert_eq!(c.spool.max_bytes, 1_073_741_824);
    assert_eq!(c.dedup.window, Duration::from_secs(1200));
    assert_eq!(c.dedup.max_entries, 1_000_000);
    assert_eq!(c.routing.template, "presence.{channel}.{action}");
    assert_eq!(c.sink.kind, SinkKind::Nats);
    assert!(c.nats.jetstream);
    assert_eq!(c.shutdown.grace, Duration::from_secs(20));
    assert_eq!(c.kafka.partitions, 3);
}

/// The shipped file sets no token and keeps `allow_anonymous = false`, so on its own it is
/// refused with exactly the "no token" error; with the token from `HOOKBUS_AUTH_TOKEN` (as
/// the quick start passes it) it is valid. Parsed with a resolver that sees no `HOOKBUS_*`
/// variable of the machine running the test.
#[test]
fn shipped_config_toml_is_valid() {
    let text = include_str!("../../config.toml");
    let nothing = refs::Resolver {
        env: &|_| None,
        file: &|_| Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
    };
    let e = Config::parse_with(text, &nothing).unwrap_err();
    assert_eq!(e.key(), Some("auth.allow_anonymous"));
    assert_eq!(
        e.to_string(),
        "invalid value for `auth.allow_anonymous`: no auth.token, auth.tokens or \
         HOOKBUS_AUTH_TOKEN: set one, or auth.allow_anonymous = true to accept anonymous webhooks"
    );
    let with_token = refs::Resolver {
        env: &|name| (name == TOKEN_ENV).then(|| "t0ken".to_owned()),
        file: nothing.file,
    };
    let c = Config::parse_env(text, &with_token, &|_| Ok(())).unwrap();
    assert_eq!(c.auth.accepted(), ["t0ken"]);
    assert!(!c.auth.allow_anonymous);
}

/// Every key of every section appears in the shipped `config.toml` (set, or commented out
/// with its explanation): the file is the user documentation. The keys are read from the
/// parser's own "expected one of" list.
#[test]
fn shipped_config_toml_shows_every_key() {
    let shipped = include_str!("../../config.toml");
    let sections = [
        "http", "admin", "auth", "ack", "spool", "dedup", "routing", "sink", "nats", "kafka",
        "shutdown",
    ];
    for section in sections {
        let e = Config::parse(&format!("[{section}]\nzz_not_a_key = 1"))
            .unwrap_err()
            .to_string();
        let expected = e
            .split("expected ")
            .nth(1)
            .unwrap_or_else(|| panic!("{section}: {e}"));
        let keys: Vec<&str> = expected
            .lines()
            .next()
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        assert!(!keys.is_empty(), "{section}: {e}");
        for key in keys {
            let shown = shipped.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[{section}.{key}]"))
                    || l.starts_with(&format!("[[{section}.{key}]]"))
            });
            assert!(shown, "config.toml does not show {section}.{key}");
        }
    }
}

#[test]
fn durations_accept_units() {
    let c = Config::parse(&anonymous(
        "[dedup]\nwindow = \"500ms\"\n[shutdown]\ngrace = \"5s\"",
    ))
    .unwrap();
    assert_eq!(c.dedup.window, Duration::from_millis(500));
    assert_eq!(c.shutdown.grace, Duration::from_secs(5));
    let e = Config::parse("[dedup]\nwindow = \"soon\"").unwrap_err();
    assert!(e.to_string().contains("window"), "{e}");
}

#[test]
fn errors_name_the_bad_key() {
    let cases = [
        ("[http]\nlisten = 5", "listen"),
        ("[http]\nlisten_addr = \"0.0.0.0:1\"", "listen_addr"),
        ("[surprise]\nx = 1", "surprise"),
        ("[ack]\nmode = \"fast\"", "fast"),
        ("[sink]\nkind = \"redis\"", "redis"),
        (
            "[kafka]\npartitions = 0\n[sink]\nkind = \"kafka\"",
            "kafka.partitions",
        ),
        ("[ack]\npublish_timeout = \"6s\"", "ack.publish_timeout"),
        ("[nats]\nstream = \"a.b\"", "nats.stream"),
    ];
    for (text, key) in cases {
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(e.contains(key), "{text:?} → {e}");
    }
}

#[test]
fn kafka_properties_pass_through() {
    let c = Config::parse(&anonymous("[kafka.properties]\n\"linger.ms\" = \"5\"")).unwrap();
    assert_eq!(c.kafka.properties["linger.ms"], "5");
    assert_eq!(
        c.kafka.for_ack_mode(AckMode::Publish).properties["linger.ms"],
        "5",
        "an explicit linger wins"
    );
    let d = Config::parse(&anonymous("")).unwrap();
    assert_eq!(
        d.kafka.for_ack_mode(AckMode::Publish).properties["linger.ms"],
        "0"
    );
    assert!(
        !d.kafka
            .for_ack_mode(AckMode::Spool)
            .properties
            .contains_key("linger.ms")
    );
}

#[test]
fn no_token_needs_allow_anonymous() {
    let e = Config::parse("").unwrap_err().to_string();
    assert!(
        e.contains("no auth.token, auth.tokens or HOOKBUS_AUTH_TOKEN: set one, or")
            && e.contains("auth.allow_anonymous = true to accept anonymous webhooks"),
        "{e}"
    );
    // A literal "" is no token.
    let e = error_with("[auth]\ntoken = \"\"\ntokens = [\"\"]", &[]);
    assert_eq!(e.key(), Some("auth.allow_anonymous"));
    let c = Config::parse("[auth]\ntoken = \"\"\nallow_anonymous = true").unwrap();
    assert!(c.auth.anonymous());
    // A set token wins over allow_anonymous.
    let c = Config::parse("[auth]\ntoken = \"t0ken\"\nallow_anonymous = true").unwrap();
    assert!(!c.auth.anonymous() && c.auth.allow_anonymous);
    let c = Config::parse("[auth]\ntokens = [\"\", \"t0ken\"]").unwrap();
    assert_eq!(c.auth.accepted(), ["t0ken"]);
    // The token may come from the environment alone.
    let resolver = refs::Resolver {
        env: &|name| (name == TOKEN_ENV).then(|| "t0ken".to_owned()),
        file: resolver().file,
    };
    let c = Config::parse_env("", &resolver, &|_| Ok(())).unwrap();
    assert_eq!(c.auth.accepted(), ["t0ken"]);
}

#[test]
fn token_references_that_resolve_blank_are_errors() {
    for (text, key, reference) in [
        ("[auth]\ntoken = \"${EMPTY}\"", "auth.token", "${EMPTY}"),
        ("[auth]\ntoken = \"${BLANK}\"", "auth.token", "${BLANK}"),
        (
            "[auth]\ntoken = \"t0ken\"\ntokens = [\"${TOKEN}\", \"${file:/run/secrets/empty}\"]",
            "auth.tokens[1]",
            "${file:/run/secrets/empty}",
        ),
        // Blank even where the rest of the string is not, and even with anonymous allowed.
        (
            "[auth]\nallow_anonymous = true\ntoken = \"x${EMPTY}\"",
            "auth.token",
            "${EMPTY}",
        ),
    ] {
        let e = error_with(text, &[]);
        assert_eq!(e.key(), Some(key), "{text}: {e}");
        assert!(e.to_string().contains(reference), "{text}: {e}");
    }
    // HOOKBUS_AUTH_TOKEN set but blank is an error, not "no override".
    for blank in ["", "  "] {
        let e = error_with("[auth]\ntoken = \"t0ken\"", &[(TOKEN_ENV, blank)]);
        assert_eq!(e.key(), Some("auth.token"));
        assert!(
            e.to_string()
                .contains("HOOKBUS_AUTH_TOKEN is set but blank"),
            "{e}"
        );
    }
    // References that resolve to a token are fine.
    let resolver = resolver();
    let c = Config::parse_with(
        "[auth]\ntoken = \"${TOKEN}\"\ntokens = [\"${file:/run/secrets/token}\"]",
        &resolver,
    )
    .unwrap();
    assert_eq!(c.auth.accepted(), ["t0ken-from-env", "t0ken-from-file"]);
}

#[test]
fn malformed_tokens_are_errors_that_do_not_quote_them() {
    let long = "a".repeat(MAX_TOKEN_BYTES + 1);
    let exact = "a".repeat(MAX_TOKEN_BYTES);
    for (text, key) in [
        (format!("[auth]\ntoken = \"{long}\""), "auth.token"),
        (
            format!("[auth]\ntoken = \"t\"\ntokens = [\"ok\", \"{long}\"]"),
            "auth.tokens[1]",
        ),
        ("[auth]\ntoken = \"t0k en\"".to_owned(), "auth.token"),
        ("[auth]\ntoken = \" t0ken\"".to_owned(), "auth.token"),
        (
            "[auth]\ntokens = [\"t0k\\nen\"]".to_owned(),
            "auth.tokens[0]",
        ),
        (
            "[auth]\ntokens = [\"t0k\\u0007en\"]".to_owned(),
            "auth.tokens[0]",
        ),
        ("[auth]\ntoken = \"${TABBED}\"".to_owned(), "auth.token"),
    ] {
        let e = error_with(&text, &[]);
        assert_eq!(e.key(), Some(key), "{e}");
        let shown = e.to_string();
        assert!(!shown.contains("aaaa") && !shown.contains("t0k"), "{shown}");
    }
    let e = error_with("[auth]\ntoken = \"${TABBED}\"", &[]).to_string();
    assert!(e.contains("${TABBED}"), "{e}");
    let e = error_with("[auth]\ntoken = \"ok\"", &[(TOKEN_ENV, "t0k en")]).to_string();
    assert!(
        e.contains("HOOKBUS_AUTH_TOKEN") && !e.contains("t0k"),
        "{e}"
    );
    Config::parse(&format!("[auth]\ntoken = \"{exact}\"")).unwrap();
}

/// Values from references never appear in an error, whichever stage raises it: the TOML
/// deserializer, `validate`, or a check of the sink run on the parsed config.
#[test]
fn errors_never_show_a_referenced_value() {
    let cases = [
        ("[ack]\nmode = \"${MODE}\"", "${MODE}"),
        ("[dedup]\nwindow = \"${WINDOW}\"", "${WINDOW}"),
        (
            "[http]\n[auth]\nheader = \"${HEADER}\"\ntoken = \"t\"",
            "auth.header",
        ),
        ("[http]\nlisten = \"${file:/run/secrets/multi}\"", "listen"),
        (
            "[dedup]\nshared = \"redis://u:${PW}@cache:bad\"",
            "dedup.shared",
        ),
        ("[dedup]\nshared = \"${REDIS}\"", "${REDIS}"),
        ("[ack]\nmode = \"${SHORT}\"", "${SHORT}"),
        (
            "[spool]\ndir = \"${file:/run/secrets/multi}\"\nmax_bytes = \"${PW}\"",
            "max_bytes",
        ),
    ];
    for (text, named) in cases {
        let text = if text.contains("[auth]") {
            text.to_owned()
        } else {
            anonymous(text)
        };
        let e = error_with(&text, &[]).to_string();
        assert!(e.contains(named), "{text}: {named} not named in {e}");
        for secret in [
            "s3cret",
            "pa55word",
            "first-line",
            "second-line",
            "`ab`",
            "cache:bad",
        ] {
            assert!(!e.contains(secret), "{text}: {secret} shown in {e}");
        }
    }
    // Errors raised after parsing (the sink's checks) are scrubbed by the config too.
    let c = Config::parse_with(
        &anonymous("[nats]\nuser = \"u\"\npassword = \"${PW}\""),
        &resolver(),
    )
    .unwrap();
    let e = c.redact_error(ConfigError::Invalid {
        key: "nats.url",
        message: "\"nats://u:pa55word@h:x,nats://v:literal-pw@h2\" is not a NATS server URL"
            .to_owned(),
    });
    let shown = e.to_string();
    assert!(
        !shown.contains("pa55word") && !shown.contains("literal-pw"),
        "{shown}"
    );
    assert!(shown.contains("nats://v:***@h2"), "{shown}");
    // A multi-line value quoted in part, Debug-escaped, is scrubbed line by line.
    let c = Config::parse_with(
        &anonymous("[nats]\ntoken = \"${file:/run/secrets/multi}\""),
        &resolver(),
    )
    .unwrap();
    let e = c.redact_error(ConfigError::Invalid {
        key: "nats.url",
        message: format!(
            "{:?} and {:?}",
            "first-line-s3cret\nsecond-line-s3cret", "second-line-s3cret\""
        ),
    });
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

#[test]
fn environment_overrides_are_scrubbed_too() {
    let e = error_with(
        "",
        &[
            (TOKEN_ENV, "t0ken"),
            ("HOOKBUS_DEDUP_SHARED", "redis://u:env-pa55@cache:99999"),
        ],
    );
    assert_eq!(e.key(), Some("dedup.shared"));
    let shown = e.to_string();
    assert!(
        shown.contains("HOOKBUS_DEDUP_SHARED") && !shown.contains("env-pa55"),
        "{shown}"
    );
}

#[test]
fn spool_dir_must_be_a_directory_if_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    for path in [file.as_path(), Path::new("/dev/null")] {
        let e = Config::parse(&anonymous(&format!(
            "[spool]\ndir = {:?}",
            path.display().to_string()
        )))
        .unwrap_err();
        assert_eq!(e.key(), Some("spool.dir"), "{path:?}: {e}");
    }
    for path in [dir.path().to_owned(), dir.path().join("not-yet")] {
        Config::parse(&anonymous(&format!(
            "[spool]\ndir = {:?}",
            path.display().to_string()
        )))
        .unwrap();
    }
    assert!(
        !dir.path().join("not-yet").exists(),
        "validate creates nothing"
    );
}

#[test]
fn http_and_admin_listeners_cannot_share_a_port() {
    let text = |http: &str, admin: &str| {
        anonymous(&format!(
            "[http]\nlisten = \"{http}\"\n[admin]\nlisten = \"{admin}\""
        ))
    };
    for (http, admin) in [
        ("127.0.0.1:9090", "127.0.0.1:9090"),
        ("0.0.0.0:9090", "127.0.0.1:9090"),
        ("127.0.0.1:9090", "0.0.0.0:9090"),
        ("0.0.0.0:8080", "0.0.0.0:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::]:8080"),
    ] {
        let e = Config::parse(&text(http, admin)).unwrap_err();
        assert_eq!(e.key(), Some("admin.listen"), "{http} {admin}: {e}");
    }
    for (http, admin) in [
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:9090", "127.0.0.2:9090"),
        ("0.0.0.0:8080", "[::1]:8080"),
        ("0.0.0.0:8080", "0.0.0.0:9090"),
    ] {
        Config::parse(&text(http, admin)).unwrap();
    }
}

#[test]
fn dedup_shared_is_a_redis_url_with_a_host_and_a_port() {
    for bad in [
        "redis://cache:port",
        "redis://cache:65536",
        "redis://cache:0",
        "redis://:6379",
        "redis://u:p@",
        "memcached://cache:11211",
    ] {
        let e = Config::parse(&anonymous(&format!("[dedup]\nshared = \"{bad}\""))).unwrap_err();
        assert_eq!(e.key(), Some("dedup.shared"), "{bad}: {e}");
    }
    for good in [
        "",
        "redis://cache:6379/0",
        "rediss://u:p@cache",
        "redis://[::1]:6380",
    ] {
        Config::parse(&anonymous(&format!("[dedup]\nshared = \"{good}\""))).unwrap();
    }
}

#[test]
fn dead_letter_keys_have_defaults_and_bounds() {
    let c = Config::parse(&anonymous("")).unwrap();
    assert_eq!(
        c.nats.dead_letter_stream, "",
        "empty: named after nats.stream"
    );
    assert_eq!(c.nats.dead_letter_stream_name(), "PRESENCE_DEAD_LETTERS");
    assert_eq!(c.nats.dead_letter_max_bytes, 268_435_456);
    assert_eq!(c.nats.dead_letter_max_age, Duration::from_secs(168 * 3600));
    assert_eq!(c.routing.dead_letter_budget_bytes, 16_777_216);
    assert_eq!(c.routing.dead_letter_budget_window, Duration::from_secs(60));
    let c = Config::parse(&anonymous(
        "[nats]\ndead_letter_max_bytes = 0\ndead_letter_max_age = \"0s\"\n\
         [routing]\ndead_letter_budget_bytes = 0\ndead_letter_budget_window = \"1h\"",
    ))
    .unwrap();
    assert_eq!(c.routing.dead_letter_budget_bytes, 0);
    for (text, key) in [
        (
            "[nats]\ndead_letter_stream = \"PRESENCE\"",
            "nats.dead_letter_stream",
        ),
        (
            "[nats]\nstream = \"S\"\ndead_letter_stream = \"S\"",
            "nats.dead_letter_stream",
        ),
        (
            "[nats]\ndead_letter_stream = \"a.b\"",
            "nats.dead_letter_stream",
        ),
        // Empty is the default: named after nats.stream.
        ("[nats]\ndead_letter_stream = \"\"", ""),
        (
            "[nats]\ndead_letter_max_bytes = 9223372036854775807\n[sink]\nkind = \"stdout\"",
            "",
        ),
        (
            "[nats]\ndead_letter_max_age = \"20y\"",
            "nats.dead_letter_max_age",
        ),
        (
            "[routing]\ndead_letter_budget_window = \"500ms\"",
            "routing.dead_letter_budget_window",
        ),
        (
            "[routing]\ndead_letter_budget_window = \"2h\"",
            "routing.dead_letter_budget_window",
        ),
        (
            "[routing]\ndead_letter_budget_bytes = 9223372036854775807",
            "routing.dead_letter_budget_bytes",
        ),
    ] {
        let result = Config::parse(&anonymous(text));
        if key.is_empty() {
            result.unwrap();
        } else {
            let e = result.unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
        }
    }
}
