//! `/metrics` against real Prometheus tooling: `promtool check metrics` accepts the exposition,
//! and a real Prometheus server scraping hookbus answers queries for duplicates and an ack
//! latency quantile.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::ports::spawn_on_free_port;
use crate::common::*;

fn offline(spool: &std::path::Path) -> hookbus::config::Config {
    let dead = dead_port();
    config(
        spool,
        &format!(
            "[ack]\nmode = \"memory\"\n[nats]\nurl = \"nats://127.0.0.1:{dead}\"\n[shutdown]\ngrace = \"1s\""
        ),
    )
}

async fn traffic(addr: std::net::SocketAddr) {
    for i in 0..20 {
        let body = format!(
            r#"{{"action":"join","channel":"room.{i}","uuid":"u{i}","timestamp":1718035200}}"#
        );
        assert_eq!(post(addr, body.as_bytes()).await.status, 200);
    }
    let retry = br#"{"action":"leave","channel":"room.1","uuid":"u1","timestamp":1718035300}"#;
    for _ in 0..4 {
        assert_eq!(post(addr, retry).await.status, 200);
    }
    assert_eq!(post(addr, b"{not json").await.status, 400);
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path())).await;
    traffic(hb.http_addr).await;
    let text = request(hb.admin_addr, "GET", "/metrics", &[], b"")
        .await
        .body;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (scripts/setup installs prometheus)");
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    hb.stop().await.unwrap();
}

struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: hookbus\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    // Its log (stderr) says when a lost race took the port first: then another one is tried.
    let log = dir.path().join("prometheus.log");
    let (child, port) = spawn_on_free_port(
        "prometheus",
        Duration::from_secs(30),
        &|| std::fs::read_to_string(&log).unwrap_or_default(),
        |port| {
            let mut command = Command::new("prometheus");
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"));
            command
        },
    );
    Prometheus {
        port,
        child,
        _dir: dir,
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first sample value of an instant query, once it has one.
async fn query(port: u16, promql: &str) -> Option<f64> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let path = format!("/api/v1/query?query={}", urlencode(promql));
    // Prometheus may still be starting.
    let r = try_request(addr, "GET", &path, &[], b"").await?;
    if r.status != 200 {
        return None;
    }
    let json = r.json();
    assert_eq!(json["status"], "success", "{promql}: {json}");
    let value = json["data"]["result"].get(0)?["value"][1]
        .as_str()?
        .parse::<f64>()
        .ok()?;
    value.is_finite().then_some(value)
}

#[tokio::test]
async fn a_real_prometheus_scrapes_duplicates_and_latency() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path())).await;
    let prom = prometheus(hb.admin_addr);
    let port = prom.port;
    traffic(hb.http_addr).await;
    let duplicates = wait_for(
        "duplicates in Prometheus",
        Duration::from_secs(60),
        || async move {
            query(port, "sum(hookbus_duplicates_total)")
                .await
                .filter(|v| *v >= 3.0)
        },
    )
    .await;
    assert_eq!(duplicates, 3.0);
    // A rate needs two scrapes that saw requests: keep a trickle going while waiting.
    let addr = hb.http_addr;
    let p99 = wait_for("ack latency p99 in Prometheus", Duration::from_secs(60), || async move {
        let _ = post(addr, b"{}").await;
        query(
            port,
            "histogram_quantile(0.99, sum by (le) (rate(hookbus_ack_duration_seconds_bucket[30s])))",
        )
        .await
    })
    .await;
    assert!(p99 > 0.0 && p99 < 10.0, "p99 {p99}");
    let up = query(port, "up{job=\"hookbus\"}").await;
    assert_eq!(up, Some(1.0));
    hb.stop().await.unwrap();
}
