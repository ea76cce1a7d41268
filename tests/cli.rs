//! The real binary: `--check` exit codes, the topic/unescape helpers, and SIGTERM draining to
//! exit 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

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
        common::nats_jwt::Decentralized::new().creds,
    )
    .unwrap();
    dir
}

/// The ```toml blocks of the README's "Connecting to your brokers" section.
fn readme_broker_examples() -> Vec<String> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Connecting to your brokers\n")
        .nth(1)
        .expect("README has the section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .split("```toml\n")
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
