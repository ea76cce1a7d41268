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
    let out = Command::new(BIN)
        .args(["--config", shipped, "--check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
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
    let (code, _) = check("");
    assert_eq!(code, 0);
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
