//! Unit tests of the config: defaults, the shipped file, refusals naming their key.

use super::*;

#[test]
fn empty_file_gives_contract_defaults() {
    let c = Config::parse("").unwrap();
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

#[test]
fn shipped_config_toml_is_valid() {
    let text = include_str!("../../config.toml");
    Config::parse(text).unwrap();
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
    let c = Config::parse("[dedup]\nwindow = \"500ms\"\n[shutdown]\ngrace = \"5s\"").unwrap();
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
            "[routing]\ntemplate = \"presence.{chanel}\"",
            "routing.template",
        ),
        (
            "[routing]\ndead_letter = \"bad subject\"",
            "routing.dead_letter",
        ),
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
    let c = Config::parse("[kafka.properties]\n\"linger.ms\" = \"5\"").unwrap();
    assert_eq!(c.kafka.properties["linger.ms"], "5");
    assert_eq!(
        c.kafka.for_ack_mode(AckMode::Publish).properties["linger.ms"],
        "5",
        "an explicit linger wins"
    );
    let d = Config::parse("").unwrap();
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
