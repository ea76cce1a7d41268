//! The real binary: `--check` exit codes, the topic/unescape helpers, and SIGTERM draining to
//! exit 0.

mod common;

use std::process::{Command, Stdio};
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
    let (http, admin) = (free_port(), free_port());
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [spool]\ndir = {:?}\n[nats]\nurl = \"{}\"\n[shutdown]\ngrace = \"5s\"\n",
            dir.path().join("spool").display().to_string(),
            nats.url()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    wait_for("hookbus ready", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(admin_addr).await.ok()?;
        (request(admin_addr, "GET", "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
    for i in 0..50 {
        let body =
            format!(r#"{{"action":"join","channel":"c{i}","uuid":"u","timestamp":1718035200}}"#);
        assert_eq!(post(http_addr, body.as_bytes()).await.status, 200);
    }
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc_kill(pid, 15) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
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

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
