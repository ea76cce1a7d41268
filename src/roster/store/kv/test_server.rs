//! A `nats-server -js` per test: its own store directory, a port it picks itself (read from
//! its ports file), killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::KvStore;
use crate::roster::store::{Commit, MemberOp};

pub(super) struct Server {
    child: Child,
    dir: tempfile::TempDir,
    pub url: String,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let binary = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} (nats-server on PATH): {e}"));
        let mut server = Server {
            url: String::new(),
            child,
            dir,
        };
        server.url = server.wait_listening();
        server
    }

    /// The URL from the ports file, written once the server listens; then a TCP connect
    /// succeeds. Polled until a deadline.
    fn wait_listening(&mut self) -> String {
        let ports = self
            .dir
            .path()
            .join(format!("nats-server_{}.ports", self.child.id()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = std::fs::read(&ports)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|ports| ports["nats"].get(0)?.as_str().map(str::to_owned));
            if let Some(url) = url {
                let address = url.trim_start_matches("nats://");
                if std::net::TcpStream::connect(address).is_ok() {
                    return url;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nats-server exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    pub async fn js(&self) -> jetstream::Context {
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            async_nats::connect(self.url.as_str()),
        )
        .await
        .expect("connect within 10 s")
        .unwrap();
        jetstream::new(client)
    }

    /// A store on `bucket` over a connection of its own.
    pub async fn store(&self, bucket: &str) -> KvStore {
        KvStore::open(self.js().await, bucket).await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Kills the server (the store's requests then time out).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The bucket stream's last sequence: moves with every write, none else.
    pub async fn last_sequence(&self, bucket: &str) -> u64 {
        let mut stream = self
            .js()
            .await
            .get_stream(format!("KV_{bucket}"))
            .await
            .unwrap();
        stream.info().await.unwrap().state.last_sequence
    }
}

/// `{"uuid":<uuid>,"note":<note>}`: a member value naming its member.
pub(super) fn value(uuid: &str, note: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "uuid": uuid, "note": note })).unwrap()
}

pub(super) fn present(uuid: &str) -> (String, MemberOp) {
    (uuid.to_owned(), MemberOp::Present(value(uuid, "here")))
}

pub(super) fn absent(uuid: &str) -> (String, MemberOp) {
    (uuid.to_owned(), MemberOp::Absent(value(uuid, "gone")))
}

pub(super) fn delete(uuid: &str) -> (String, MemberOp) {
    (uuid.to_owned(), MemberOp::Delete)
}

pub(super) fn commit(expected: u64, summary: &str, members: Vec<(String, MemberOp)>) -> Commit {
    Commit {
        expected,
        summary: Some(summary.as_bytes().to_vec()),
        members,
    }
}

pub(super) fn removal(expected: u64) -> Commit {
    Commit {
        expected,
        summary: None,
        members: Vec::new(),
    }
}
