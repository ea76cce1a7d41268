//! The routing rules: names, escaping, cuts, rules, subjects.

use super::*;
use proptest::prelude::*;

fn router(template: &str) -> Router {
    Router::new(&RoutingConfig {
        template: template.to_owned(),
        ..RoutingConfig::default()
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
    crate::text::push_hex(&digest[..8], &mut hex);
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
        ..RoutingConfig::default()
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
        vec!["presence.*.*"]
    );
    assert_eq!(
        router("presence.{channel}.{action}").dead_letter_overlap(),
        None
    );
    let r = Router::new(&RoutingConfig {
        template: "pn.events.{channel}".to_owned(),
        dead_letter: "dlq.presence".to_owned(),
        overflow: "pn.events._overflow.{action}".to_owned(),
        ..RoutingConfig::default()
    })
    .unwrap();
    assert_eq!(r.stream_subjects(), vec!["pn.events.*"]);
    let r = Router::new(&RoutingConfig {
        template: "pn.events.{channel}".to_owned(),
        rules: vec![
            crate::config::RoutingRule {
                channel: "chat.*".to_owned(),
                template: "chat.presence.{action}".to_owned(),
            },
            crate::config::RoutingRule {
                channel: "vip.*".to_owned(),
                template: "pn.events.vip.{channel}".to_owned(),
            },
        ],
        ..RoutingConfig::default()
    })
    .unwrap();
    assert_eq!(
        r.stream_subjects(),
        vec!["pn.events.*", "chat.presence.*", "pn.events.vip.*"]
    );
    assert!(router("{channel}.{action}").stream_subjects().is_empty());
    // A rule inside the default's subjects is covered by them.
    let r = Router::new(&RoutingConfig {
        rules: vec![crate::config::RoutingRule {
            channel: "chat.*".to_owned(),
            template: "presence.chat.{action}".to_owned(),
        }],
        ..RoutingConfig::default()
    })
    .unwrap();
    assert_eq!(r.stream_subjects(), vec!["presence.*.*"]);
    // Two tokens would take `presence.dead-letter` too.
    assert_eq!(
        router("presence.{channel}")
            .dead_letter_overlap()
            .as_deref(),
        Some("presence.*")
    );
    assert_eq!(
        router("presence.{sub_key}-{channel}.{action}").stream_subjects(),
        vec!["presence.*.*"]
    );
}

#[test]
fn subjects_cover_by_token() {
    for (wide, narrow, covers) in [
        ("presence.>", "presence.dead-letter", true),
        ("presence.>", "presence", false),
        ("presence.*.*", "presence.dead-letter", false),
        ("presence.*.*", "presence.a.join", true),
        ("presence.*.*", "presence.chat.*", true),
        ("presence.chat.*", "presence.*.*", false),
        ("presence.*", "presence.>", false),
        (">", "a.b", true),
        ("a.b", "a.b", true),
        ("a.b", "a.c", false),
    ] {
        assert_eq!(subject_covers(wide, narrow), covers, "{wide} ⊇ {narrow}");
    }
}

#[test]
fn globs_match_any_run_and_one_character() {
    for (pattern, text, matches) in [
        ("chat.*", "chat.room.1", true),
        ("chat.*", "chat.", true),
        ("chat.*", "chat", false),
        ("*.vip", "a.b.vip", true),
        ("*.vip", "a.b.vip2", false),
        ("room.?", "room.1", true),
        ("room.?", "room.é", true),
        ("room.?", "room.12", false),
        ("room.?", "room.", false),
        ("a*b*c", "aXXbYYbc", true),
        ("a*b*c", "aXXbYY", false),
        ("*", "", true),
        ("**", "anything", true),
        ("lobby", "lobby", true),
        ("lobby", "Lobby", false),
    ] {
        assert_eq!(
            Glob::new(pattern).matches(text),
            matches,
            "{pattern} ~ {text}"
        );
    }
}

#[test]
fn rules_match_in_order_and_fall_back_to_the_template() {
    let rule = |channel: &str, template: &str| crate::config::RoutingRule {
        channel: channel.to_owned(),
        template: template.to_owned(),
    };
    let r = Router::new(&RoutingConfig {
        rules: vec![
            rule("chat.vip.*", "presence.vip.{channel}.{action}"),
            rule("chat.*", "presence.chat.{action}"),
            rule("chat.vip.gold", "never.{action}"),
        ],
        ..RoutingConfig::default()
    })
    .unwrap();
    let name = |channel: &str| {
        let mut out = String::new();
        r.render(channel, "join", None, &mut out).unwrap();
        (r.matched(channel), out)
    };
    assert_eq!(
        name("chat.vip.gold"),
        (
            Matched::Rule(0),
            "presence.vip.chat_2Evip_2Egold.join".to_owned()
        )
    );
    assert_eq!(
        name("chat.room.7"),
        (Matched::Rule(1), "presence.chat.join".to_owned())
    );
    assert_eq!(
        name("lobby"),
        (Matched::Default, "presence.lobby.join".to_owned())
    );
    assert_eq!(
        r.overflow(Action::StateChange),
        "presence._overflow.state-change"
    );
}

#[test]
fn bad_rules_and_overflow_templates_are_rejected() {
    let rule = |channel: &str, template: &str| RoutingConfig {
        rules: vec![crate::config::RoutingRule {
            channel: channel.to_owned(),
            template: template.to_owned(),
        }],
        ..RoutingConfig::default()
    };
    assert!(matches!(
        Router::new(&rule("", "p.{action}")),
        Err(TemplateError::Rule(0, _))
    ));
    assert!(matches!(
        Router::new(&rule("a*", "p..{action}")),
        Err(TemplateError::Rule(0, _))
    ));
    assert!(matches!(
        Router::new(&rule("a*", "p.{chan}")),
        Err(TemplateError::Rule(0, _))
    ));
    let overflow = |t: &str| RoutingConfig {
        overflow: t.to_owned(),
        ..RoutingConfig::default()
    };
    assert!(matches!(
        Router::new(&overflow("o.{channel}")),
        Err(TemplateError::Overflow(_))
    ));
    assert!(matches!(
        Router::new(&overflow("o.{sub_key}")),
        Err(TemplateError::Overflow(_))
    ));
    assert!(Router::new(&overflow("o.{source}.{action}")).is_ok());
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

/// `route::check` is what `--check` and every start run on `[routing]`: it names the key at
/// fault, and under JetStream refuses templates no stream can capture apart from the dead
/// letters.
#[test]
fn check_names_the_routing_key_at_fault() {
    use crate::config::Config;
    let config =
        |text: &str| Config::parse(&format!("[auth]\nallow_anonymous = true\n{text}")).unwrap();
    let cases = [
        (
            "[routing]\ntemplate = \"presence.{chanel}\"",
            "routing.template",
        ),
        (
            "[routing]\ndead_letter = \"bad subject\"",
            "routing.dead_letter",
        ),
        ("[routing]\noverflow = \"x.{channel}\"", "routing.overflow"),
        (
            "[[routing.rules]]\nchannel = \"x*\"\ntemplate = \"bad..{action}\"",
            "routing.rules[0]",
        ),
        (
            "[routing]\ntemplate = \"{channel}.{action}\"",
            "routing.template",
        ),
        (
            "[routing]\ndead_letter = \"presence.dl.x\"",
            "routing.dead_letter",
        ),
    ];
    for (text, key) in cases {
        let e = check(&config(text)).unwrap_err();
        assert_eq!(e.key(), Some(key), "{text:?} → {e}");
    }
    // The JetStream rules hold only where JetStream is the sink.
    let kafka = config("[sink]\nkind = \"kafka\"\n[routing]\ntemplate = \"{channel}.{action}\"");
    assert!(check(&kafka).is_ok());
    assert!(check(&config("")).is_ok());
}
