//! The real binary: `--check` exit codes and refusals (tokens, files, listeners, no secret in
//! any message), the topic/unescape helpers, warnings at start, and SIGTERM draining to exit 0.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookbus");

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_accepts_the_shipped_config_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    // The shipped file has no token and does not allow anonymous webhooks: the quick start
    // passes the token in HOOKBUS_AUTH_TOKEN.
    let out = Command::new(BIN)
        .args(["--config", shipped, "--check"])
        .current_dir(dir.path())
        .env("HOOKBUS_AUTH_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["--config", shipped, "--check"])
        .current_dir(dir.path())
        .env_remove("HOOKBUS_AUTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth.allow_anonymous"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "--check created files"
    );
}

/// Valid but unused security properties pass `--check` with a warning naming each key: a CA
/// path under PLAINTEXT is ignored by librdkafka, so a typo in a config about to switch to SSL
/// would otherwise go unnoticed until the switch.
#[test]
fn check_warns_about_security_properties_the_protocol_leaves_unused() {
    let base = "[auth]\nallow_anonymous = true\n[sink]\nkind = \"kafka\"\n[kafka.properties]\n";
    let (code, text) = check(&format!(
        "{base}\"ssl.ca.location\" = \"/etc/ssl/certs/ca-certificates.crt\"\n\"sasl.username\" = \"u\""
    ));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: kafka.properties.\"ssl.ca.location\" is set but unused"),
        "{text}"
    );
    assert!(
        text.contains("warning: kafka.properties.\"sasl.username\" is set but unused"),
        "{text}"
    );
    let (code, text) = check(&format!(
        "{base}\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"/etc/ssl/certs/ca-certificates.crt\"\n\"sasl.username\" = \"u\""
    ));
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("ssl.ca.location\" is set but unused"),
        "{text}"
    );
    assert!(
        text.contains("sasl.username\" is set but unused: security.protocol is ssl"),
        "{text}"
    );
    let (code, text) = check(&format!("{base}\"linger.ms\" = \"5\""));
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("warning"), "{text}");
}

#[test]
fn check_validates_the_roster_section_naming_the_bad_key() {
    let anon = "[auth]\nallow_anonymous = true\n";
    for (text, key) in [
        (
            "[sink]\nkind = \"kafka\"\n[roster]\nstore = \"nats\"",
            "roster.store",
        ),
        ("[roster]\nstore = \"memcached://x:1\"", "roster.store"),
        ("[roster]\nbucket = \"has space\"", "roster.bucket"),
        ("[roster]\nconsumer = \"\"", "roster.consumer"),
        ("[roster]\ntombstone_ttl = \"0s\"", "roster.tombstone_ttl"),
        ("[roster]\nbatch = 0", "roster.batch"),
        ("[roster]\nlisten = \"0.0.0.0:8080\"", "roster.listen"),
        (
            "[roster]\ntemplate = \"presence.{channel}.join\"",
            "roster.template",
        ),
        ("[roster]\nsessions = \"s.{action}\"", "roster.sessions"),
        ("[roster]\nsurprise = 1", "surprise"),
        (
            "[roster.here_now]\norigin = \"ps.pndsn.com\"",
            "roster.here_now.origin",
        ),
        (
            "[roster.here_now]\norigin = \"https://ps.pndsn.com\"\nsubscribe_key = \"s\"",
            "roster.sub_key",
        ),
        (
            "[roster]\nsub_key = \"s\"\n[roster.here_now]\norigin = \"https://ps.pndsn.com\"\n\
             subscribe_key = \"s\"\nsecret_key = \"k\"",
            "roster.here_now.publish_key",
        ),
    ] {
        let (code, out) = check(&format!("{anon}{text}"));
        assert_eq!(code, 64, "{text}: {out}");
        assert!(out.contains(key), "{key} not named in: {out}");
    }
    let (code, out) = check(&format!(
        "{anon}[roster]\nstore = \"redis://127.0.0.1:6379/0\"\ntemplate = \"hookbus.roster.{{channel}}\"\n\
         sessions = \"hookbus.sessions.{{channel}}\""
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_exits_64_naming_the_bad_key() {
    for (text, key) in [
        ("[http]\nlisten = \"nowhere\"", "listen"),
        ("[ack]\nmode = \"eventually\"", "eventually"),
        ("[dedup]\nwindow = \"forever\"", "window"),
        (
            "[sink]\nkind = \"kafka\"\n[kafka]\nreplication_factor = 0",
            "kafka.replication_factor",
        ),
        ("[spool]\ndirectory = \"x\"", "directory"),
        (
            "[routing]\ntemplate = \"presence.{room}\"",
            "routing.template",
        ),
        ("not toml at all", "config"),
    ] {
        let (code, text) = check(text);
        assert_eq!(code, 64, "{text}");
        assert!(text.contains(key), "{key} not named in: {text}");
    }
    let (code, text) = check_with_env("", &[]);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("no auth.token, auth.tokens or HOOKBUS_AUTH_TOKEN: set one, or auth.allow_anonymous = true"),
        "{text}"
    );
    let (code, text) = check_with_env("[auth]\nallow_anonymous = true", &[]);
    assert_eq!(code, 0, "{text}");
    // The HOOKBUS_* overrides are held to the same rules as the file.
    for (env, key) in [
        (
            ("HOOKBUS_DEDUP_SHARED", "memcached://cache:11211"),
            "dedup.shared",
        ),
        (("HOOKBUS_NATS_TOKEN", "s3cret"), "nats.token"),
    ] {
        let (code, text) = check_with_env("[nats]\nuser = \"u\"\npassword = \"p\"", &[env]);
        assert_eq!(code, 64, "{env:?} passed --check: {text}");
        assert!(text.contains(key), "{key} not named in: {text}");
        assert!(!text.contains("s3cret"), "a secret in the output: {text}");
    }
    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/hookbus.toml", "--check"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
}

#[test]
fn topic_and_unescape_show_consumers_the_names() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let out = Command::new(BIN)
        .args([
            "--config",
            shipped,
            "topic",
            "room.lobby",
            "--action",
            "leave",
        ])
        .env("HOOKBUS_AUTH_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "presence.room_2Elobby.leave"
    );
    let out = Command::new(BIN)
        .args(["unescape", "caf_C3_A9"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "café");
    let out = Command::new(BIN)
        .args(["unescape", "a.b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = Process::spawn(
        &dir.path().join("spool"),
        &format!(
            "[nats]\nurl = \"{}\"\n[shutdown]\ngrace = \"5s\"",
            nats.url()
        ),
    )
    .await;
    let admin = hb.admin_addr;
    wait_for("hookbus ready", Duration::from_secs(20), || async move {
        (request(admin, "GET", "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
    for i in 0..50 {
        assert_eq!(post(hb.http_addr, &g1_event(0, i)).await.status, 200);
    }
    hb.signal(SIGTERM);
    let mut hb = hb;
    let status = tokio::time::timeout(Duration::from_secs(10), hb.child.wait())
        .await
        .expect("exit within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream("PRESENCE").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        50,
        "every acked event published"
    );
}

/// `--check` with environment variables set for the references.
fn check_with_env(text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--check"])
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_knows_what_the_broker_clients_will_refuse() {
    let kafka =
        |properties: &str| format!("[sink]\nkind = \"kafka\"\n[kafka.properties]\n{properties}");
    for (text, key) in [
        (
            kafka("\"securty.protocol\" = \"SSL\""),
            "kafka.properties.\"securty.protocol\"",
        ),
        (
            kafka("\"security.protocol\" = \"SASL_SSL\""),
            "kafka.properties.\"sasl.mechanisms\"",
        ),
        (
            kafka("\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\""),
            "kafka.properties.\"ssl.ca.location\"",
        ),
        (
            kafka("\"sasl.password\" = \"${UNSET_FOR_HOOKBUS_TEST}\""),
            "kafka.properties.\"sasl.password\"",
        ),
        (
            kafka("\"enable.idempotence\" = \"false\""),
            "kafka.properties.\"enable.idempotence\"",
        ),
        (
            kafka("\"message.timeout.ms\" = \"30000\""),
            "kafka.properties.\"message.timeout.ms\"",
        ),
        (
            kafka("\"compression.type\" = \"brotli\""),
            "kafka.properties.\"compression.type\"",
        ),
        (
            "[nats]\ntls_ca_file = \"/nonexistent/ca.pem\"".to_owned(),
            "nats.tls_ca_file",
        ),
        (
            "[nats]\nnkey_seed_file = \"/nonexistent/seed\"".to_owned(),
            "nats.nkey_seed_file",
        ),
        (
            "[nats]\ncredentials_file = \"/etc/hostname\"".to_owned(),
            "nats.credentials_file",
        ),
        (
            "[nats]\ntls_cert_file = \"/etc/hostname\"".to_owned(),
            "nats.tls_key_file",
        ),
        (
            "[nats]\nurl = \"nats://a:4222,:::bad\"".to_owned(),
            "nats.url",
        ),
        (
            "[nats]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"".to_owned(),
            "nats.credentials_file",
        ),
        (
            "[auth]\ntoken = \"${file:/nonexistent/token}\"".to_owned(),
            "auth.token",
        ),
        (
            "[ack]\nmode = \"publish\"\npublish_timeout = \"3s\"\n[sink]\ntimeout = \"2s\""
                .to_owned(),
            "sink.timeout",
        ),
    ] {
        let (code, out) = check_with_env(&text, &[("HOOKBUS_AUTH_TOKEN", "t0ken")]);
        assert_eq!(code, 64, "{text}\n→ {out}");
        assert!(
            out.contains(&format!("`{key}`")),
            "{key} not named in: {out}"
        );
    }
}

/// A directory standing in for `/etc/hookbus/secrets/`: a CA, a client certificate and key,
/// an NKey seed and a `.creds` file, all real.
fn secrets_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
        "-keyout", "ca.key", "-out", "ca.crt",
    ]);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=client",
        "-keyout",
        "client.key",
        "-out",
        "client.crt",
    ]);
    let user = nkeys::KeyPair::new_user();
    std::fs::write(dir.path().join("hookbus.nk"), user.seed().unwrap()).unwrap();
    std::fs::write(
        dir.path().join("hookbus.creds"),
        crate::common::nats_jwt::Decentralized::new().creds,
    )
    .unwrap();
    dir
}

/// The ```toml blocks of `docs/brokers.md` ("Connecting to your brokers"), the whole page:
/// every block on it is a broker example.
fn readme_broker_examples() -> Vec<String> {
    let page = include_str!("../../docs/brokers.md");
    page.split("```toml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_broker_example_in_the_readme_passes_check() {
    let secrets = secrets_dir();
    let examples = readme_broker_examples();
    assert!(examples.len() >= 7, "{} examples", examples.len());
    let env = [
        ("KAFKA_API_KEY", "key"),
        ("KAFKA_API_SECRET", "secret"),
        ("KAFKA_SASL_PASSWORD", "password"),
        ("OIDC_CLIENT_SECRET", "secret"),
        ("NATS_TOKEN", "token"),
        ("HOOKBUS_AUTH_TOKEN", "t0ken"),
    ];
    for example in examples {
        let text = example.replace(
            "/etc/hookbus/secrets",
            &secrets.path().display().to_string(),
        );
        let (code, out) = check_with_env(&text, &env);
        assert_eq!(code, 0, "{example}\n→ {out}");
        // Every reference must be resolved by the environment above: unset, it fails.
        if text.contains("${") {
            let (code, out) = check_with_env(&text, &[]);
            assert_eq!(code, 64, "{example}\n→ {out}");
            assert!(out.contains("is not set"), "{out}");
        }
    }
}

#[test]
fn topic_names_the_rule_that_matched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[auth]\nallow_anonymous = true\n\
         [[routing.rules]]\nchannel = \"chat.vip.*\"\ntemplate = \"presence.vip.{channel}.{action}\"\n\
         [[routing.rules]]\nchannel = \"chat.*\"\ntemplate = \"presence.chat.{action}\"\n",
    )
    .unwrap();
    let topic = |channel: &str| {
        let out = Command::new(BIN)
            .args([
                "--config",
                path.to_str().unwrap(),
                "topic",
                channel,
                "--action",
                "leave",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (name, rule) = topic("chat.room.9");
    assert_eq!(name, "presence.chat.leave");
    assert!(
        rule.contains("routing.rules[1]") && rule.contains("chat.*"),
        "{rule}"
    );
    let (name, rule) = topic("chat.vip.gold");
    assert_eq!(name, "presence.vip.chat_2Evip_2Egold.leave");
    assert!(rule.contains("routing.rules[0]"), "{rule}");
    let (name, rule) = topic("lobby");
    assert_eq!(name, "presence.lobby.leave");
    assert!(rule.contains("no rule matched"), "{rule}");
    // A rule whose template cannot render a valid name is refused by --check.
    std::fs::write(
        &path,
        "[auth]\nallow_anonymous = true\n[[routing.rules]]\nchannel = \"x*\"\ntemplate = \"bad..{action}\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routing.rules[0]"));
}

/// `--check` with `env` (and nothing else) in the environment, killed and failed if it has not
/// exited within `within`: a config naming `/dev/zero` must fail at once, not hang.
fn check_within(text: &str, env: &[(&str, &str)], within: Duration) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--check"])
        .env_clear()
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let Ok(out) = result.recv_timeout(within) else {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("--check still running after {within:?} on:\n{text}");
    };
    let out = out.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_refuses_blank_and_malformed_tokens_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    let long = "T".repeat(5000);
    let long_file = dir.path().join("long-token");
    std::fs::write(&long_file, &long).unwrap();
    let long_file = long_file.display().to_string();
    for (text, env, named) in [
        (
            "[auth]\ntoken = \"${HB_TEST_TOKEN}\"".to_owned(),
            vec![("HB_TEST_TOKEN", "")],
            vec!["`auth.token`", "${HB_TEST_TOKEN}"],
        ),
        (
            "[auth]\ntoken = \"${HB_TEST_TOKEN}\"\nallow_anonymous = true".to_owned(),
            vec![("HB_TEST_TOKEN", " \t ")],
            vec!["`auth.token`", "${HB_TEST_TOKEN}"],
        ),
        (
            format!("[auth]\ntokens = [\"t0ken\", \"${{file:{empty}}}\"]"),
            vec![],
            vec!["`auth.tokens[1]`", "${file:"],
        ),
        (
            "[auth]\ntoken = \"t0ken\"".to_owned(),
            vec![("HOOKBUS_AUTH_TOKEN", "")],
            vec!["`auth.token`", "HOOKBUS_AUTH_TOKEN is set but blank"],
        ),
        (
            "[auth]\nallow_anonymous = true".to_owned(),
            vec![("HOOKBUS_AUTH_TOKEN", "  ")],
            vec!["HOOKBUS_AUTH_TOKEN is set but blank"],
        ),
        (
            format!("[auth]\ntoken = \"t0ken\"\ntokens = [\"${{file:{long_file}}}\"]"),
            vec![],
            vec!["`auth.tokens[0]`", "4096 bytes"],
        ),
        (
            "[auth]\ntoken = \"${HB_TEST_TOKEN}\"".to_owned(),
            vec![("HB_TEST_TOKEN", "t0k\nen")],
            vec!["`auth.token`", "whitespace"],
        ),
    ] {
        let (code, out) = check_with_env(&text, &env);
        assert_eq!(code, 64, "{text} {env:?}\n→ {out}");
        for named in named {
            assert!(out.contains(named), "{named} not in: {out}");
        }
        assert!(!out.contains("TTTT") && !out.contains("t0k\nen"), "{out}");
    }
    // A literal "" is no token, which takes allow_anonymous; a set token is enough.
    let (code, out) = check_with_env("[auth]\ntoken = \"\"", &[]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("`auth.allow_anonymous`"), "{out}");
    for (text, env) in [
        ("[auth]\ntoken = \"\"\nallow_anonymous = true", vec![]),
        ("", vec![("HOOKBUS_AUTH_TOKEN", "t0ken")]),
        (
            "[auth]\ntoken = \"${HB_TEST_TOKEN}\"",
            vec![("HB_TEST_TOKEN", "t0ken")],
        ),
    ] {
        let (code, out) = check_with_env(text, &env);
        assert_eq!(code, 0, "{text} {env:?}\n→ {out}");
    }
}

/// Bad configs whose values come from environment variables and files, and URLs with
/// passwords: whatever stage refuses them, the output shows no secret.
#[test]
fn check_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let shadow = write(
        "shadow",
        "root:$6$Shadow1Secret:19000:0:99999:7:::\ndaemon:Shadow2Secret:19000\n",
    );
    let window = write("window", "Win-Secret-File\n");
    let secrets = [
        ("HB_MODE", "Mode-Secret-Env"),
        ("HB_NATS_PW", "Nats-Secret-Pw"),
        ("HB_REDIS_PW", "Redis-Secret-Pw"),
        ("HB_TOKEN", "Token Secret With Spaces"),
        ("HB_KAFKA_PW", "Kafka-Secret-Pw"),
        ("HB_LISTEN", "Listen-Secret"),
    ];
    let leaks = [
        "Secret-Env",
        "Nats-Secret",
        "Redis-Secret",
        "Token Secret",
        "Kafka-Secret",
        "Listen-Secret",
        "Shadow1Secret",
        "Shadow2Secret",
        "Win-Secret",
        "Literal-Pw",
        "Env-Secret",
    ];
    let cases: Vec<(String, Vec<(&str, &str)>)> =
        vec![
        ("[ack]\nmode = \"${HB_MODE}\"".to_owned(), vec![]),
        (format!("[nats]\nurl = \"${{file:{shadow}}}\""), vec![]),
        (
            "[nats]\nurl = \"nats://hookbus:${HB_NATS_PW}@127.0.0.1:notaport\"".to_owned(),
            vec![],
        ),
        (
            "[nats]\nurl = \"nats://a:4222,nats://hookbus:Literal-Pw@b:bad\"".to_owned(),
            vec![],
        ),
        (
            "[dedup]\nshared = \"redis://:${HB_REDIS_PW}@cache:99999\"".to_owned(),
            vec![],
        ),
        (
            String::new(),
            vec![("HOOKBUS_DEDUP_SHARED", "redis://u:Env-Secret@:6379")],
        ),
        ("[auth]\ntoken = \"${HB_TOKEN}\"".to_owned(), vec![]),
        (
            "[auth]\nallow_anonymous = true".to_owned(),
            vec![("HOOKBUS_AUTH_TOKEN", "Env-Secret\tTab")],
        ),
        (format!("[dedup]\nwindow = \"${{file:{window}}}\""), vec![]),
        ("[http]\nlisten = \"${HB_LISTEN}\"".to_owned(), vec![]),
        (
            "[sink]\nkind = \"kafka\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\
             \"sasl.password\" = \"${HB_KAFKA_PW}\""
                .to_owned(),
            vec![],
        ),
        (
            "[nats]\ntoken = \"t\"\nuser = \"u\"\npassword = \"${HB_NATS_PW}\"".to_owned(),
            vec![],
        ),
        (
            format!("[nats]\nurl = \"nats://127.0.0.1:4222\"\ntls_ca_file = \"{window}\""),
            vec![("HOOKBUS_NATS_PASSWORD", "Nats-Secret-Env"), ("HOOKBUS_NATS_USER", "u")],
        ),
    ];
    for (text, extra) in cases {
        let text = if text.contains("[auth]") {
            text
        } else {
            format!("{text}\n[auth]\ntoken = \"t0ken\"")
        };
        let env: Vec<(&str, &str)> = secrets.iter().copied().chain(extra).collect();
        let (code, out) = check_with_env(&text, &env);
        assert_eq!(code, 64, "{text}\n→ {out}");
        for leak in leaks {
            assert!(!out.contains(leak), "{leak} shown for\n{text}\n→ {out}");
        }
    }
}

#[test]
fn check_refuses_files_that_are_not_small_regular_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 2 << 20]).unwrap();
    let (fifo, big, here) = (
        fifo.display().to_string(),
        big.display().to_string(),
        dir.path().display().to_string(),
    );
    let token = "\n[auth]\ntoken = \"t0ken\"";
    for (text, key) in [
        (
            "[auth]\ntoken = \"${file:/dev/zero}\"".to_owned(),
            "auth.token",
        ),
        (
            "[auth]\ntoken = \"${file:/dev/urandom}\"".to_owned(),
            "auth.token",
        ),
        (
            format!("[auth]\ntokens = [\"${{file:{fifo}}}\"]"),
            "auth.tokens[0]",
        ),
        (
            format!("[kafka]\nbrokers = \"${{file:{big}}}\"{token}"),
            "kafka.brokers",
        ),
        (
            format!("[nats]\ntls_ca_file = \"/dev/zero\"{token}"),
            "nats.tls_ca_file",
        ),
        (
            format!("[nats]\nnkey_seed_file = \"{fifo}\"{token}"),
            "nats.nkey_seed_file",
        ),
        (
            format!("[nats]\ncredentials_file = \"{here}\"{token}"),
            "nats.credentials_file",
        ),
        (
            format!("[nats]\ntls_cert_file = \"/dev/urandom\"\ntls_key_file = \"{big}\"{token}"),
            "nats.tls_cert_file",
        ),
    ] {
        let (code, out) = check_within(&text, &[], Duration::from_secs(20));
        assert_eq!(code, 64, "{text}\n→ {out}");
        assert!(out.contains(&format!("`{key}`")), "{key} not named: {out}");
    }
}

/// Kubernetes mounts a Secret as `name → ..data/name`, `..data → ..<timestamp>/`.
#[test]
fn check_follows_secret_volume_symlinks() {
    let secrets = secrets_dir();
    let volume = tempfile::tempdir().unwrap();
    let data = volume.path().join("..2024_05_01_12_00_00.1");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("token"), "t0ken-from-a-volume\n").unwrap();
    std::fs::copy(secrets.path().join("ca.crt"), data.join("ca.crt")).unwrap();
    std::fs::copy(secrets.path().join("hookbus.nk"), data.join("hookbus.nk")).unwrap();
    std::os::unix::fs::symlink(&data, volume.path().join("..data")).unwrap();
    for name in ["token", "ca.crt", "hookbus.nk"] {
        std::os::unix::fs::symlink(Path::new("..data").join(name), volume.path().join(name))
            .unwrap();
    }
    let at = |name: &str| volume.path().join(name).display().to_string();
    let text = format!(
        "[auth]\ntoken = \"${{file:{}}}\"\n[nats]\ntls_ca_file = \"{}\"\nnkey_seed_file = \"{}\"",
        at("token"),
        at("ca.crt"),
        at("hookbus.nk")
    );
    let (code, out) = check_within(&text, &[], Duration::from_secs(20));
    assert_eq!(code, 0, "{text}\n→ {out}");
}

#[test]
fn check_refuses_what_could_never_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let token = "[auth]\ntoken = \"t0ken\"\n";
    for (text, key) in [
        (
            format!("{token}[spool]\ndir = {:?}", file.display().to_string()),
            "spool.dir",
        ),
        (format!("{token}[spool]\ndir = \"/dev/null\""), "spool.dir"),
        (
            format!(
                "{token}[http]\nlisten = \"127.0.0.1:9090\"\n[admin]\nlisten = \"127.0.0.1:9090\""
            ),
            "admin.listen",
        ),
        (
            format!(
                "{token}[http]\nlisten = \"0.0.0.0:9090\"\n[admin]\nlisten = \"127.0.0.1:9090\""
            ),
            "admin.listen",
        ),
        (
            format!("{token}[http]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"[::]:8080\""),
            "admin.listen",
        ),
        (
            format!("{token}[dedup]\nshared = \"redis://cache:port\""),
            "dedup.shared",
        ),
        (
            format!("{token}[dedup]\nshared = \"redis://cache:65536\""),
            "dedup.shared",
        ),
        (
            format!("{token}[dedup]\nshared = \"redis://:6379/0\""),
            "dedup.shared",
        ),
        (
            format!("[auth]\ntoken = \"{}\"", "x".repeat(4097)),
            "auth.token",
        ),
    ] {
        let (code, out) = check_with_env(&text, &[]);
        assert_eq!(code, 64, "{text}\n→ {out}");
        assert!(out.contains(&format!("`{key}`")), "{key} not named: {out}");
    }
    let (code, out) = check_with_env(
        &format!(
            "{token}[http]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n\
             [dedup]\nshared = \"redis://cache:6379/0\""
        ),
        &[],
    );
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn every_start_warns_about_anonymous_ingress() {
    let dir = tempfile::tempdir().unwrap();
    // The test config base allows anonymous webhooks.
    let hb = Process::spawn(&dir.path().join("anonymous"), "[sink]\nkind = \"stdout\"").await;
    let log = hb
        .wait_log(
            "anonymous ingress is on: any client that reaches http.listen can publish",
            Duration::from_secs(10),
        )
        .await;
    assert!(log.contains("WARN"), "{log}");
    drop(hb);
    let hb = Process::spawn(
        &dir.path().join("token"),
        "[sink]\nkind = \"stdout\"\n[auth]\ntoken = \"t0ken\"",
    )
    .await;
    let log = hb
        .wait_log("auth.allow_anonymous is ignored", Duration::from_secs(10))
        .await;
    assert!(!log.contains("anonymous ingress is on"), "{log}");
    // --check says nothing of the kind.
    let (code, out) = check_with_env("[auth]\nallow_anonymous = true", &[]);
    assert_eq!(code, 0);
    assert!(!out.contains("anonymous ingress"), "{out}");
}

/// async-nats logs each server address with `?` at DEBUG, which prints a URL's password;
/// hookbus holds that crate at INFO whatever RUST_LOG asks for.
#[tokio::test]
async fn nats_client_debug_logs_stay_out_even_with_rust_log_trace() {
    let password = "Nats-Url-Secret-Pw";
    let nats = NatsServer::start_with(&format!(
        "authorization {{ user: hookbus, password: \"{password}\" }}"
    ));
    let url = nats
        .url()
        .replace("nats://", "nats://hookbus:${HB_NATS_PW}@");
    let dir = tempfile::tempdir().unwrap();
    let hb = Process::spawn_with_env(
        &dir.path().join("spool"),
        &format!("[nats]\nurl = \"{url}\""),
        &[
            ("HB_NATS_PW", password),
            (
                "RUST_LOG",
                "debug,async_nats=trace,async_nats::connector=trace",
            ),
        ],
    )
    .await;
    let admin = hb.admin_addr;
    wait_for("hookbus ready", Duration::from_secs(20), || async move {
        (request(admin, "GET", "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
    // Ready means connected: every connection attempt has been logged, or filtered out.
    let log = hb.log();
    assert!(!log.contains(password), "the password in the log:\n{log}");
    assert!(
        !log.contains("attempting connection"),
        "an async-nats DEBUG event in the log:\n{log}"
    );
}

/// Comments cite the repository's own docs, never a section number of a document outside it
/// (a reader of the repository cannot follow a section number of a file it does not hold).
#[test]
fn no_comment_cites_a_section_of_an_outside_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    let mut dirs = vec![
        root.join("src"),
        root.join("tests/it"),
        root.join("scripts"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (n, line) in text.lines().enumerate() {
                let cites = line.contains('\u{a7}') || line.contains(concat!("DESIGN", ".md"));
                if cites && !line.contains("no_comment_cites") {
                    offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}
