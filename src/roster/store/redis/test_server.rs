//! A throwaway `redis-server` for the store's tests: started on a free port with nothing
//! persisted, ready once it answers as itself (its `INFO` names its own pid, so a server of
//! another test that won the port race is never taken for it), killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How many ports a start tries (another process may bind the picked one first).
const PORT_ATTEMPTS: usize = 5;

pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let dir = tempfile::tempdir().expect("tempdir");
            let child = Command::new("/usr/bin/redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(dir.path().join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn /usr/bin/redis-server");
            let mut server = RedisServer { port, child, dir };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server: each of {PORT_ATTEMPTS} free ports was taken before it bound it");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the store then sees a refused connection).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A plain connection for the test's own commands (e.g. `FLUSHALL`).
    pub fn connection(&self) -> ::redis::Connection {
        let connection = ::redis::Client::open(self.url())
            .expect("url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis-server");
        connection
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        connection
    }

    /// `true` once the server answers as itself; `false` when it exited (its port was taken);
    /// panics when it does neither before the deadline.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if self.answers_as_itself() {
                return true;
            }
            if Instant::now() >= deadline {
                self.kill();
                let log = std::fs::read_to_string(self.dir.path().join("redis.log"));
                panic!(
                    "redis-server on port {} did not answer within {START_DEADLINE:?}:\n{}",
                    self.port,
                    log.unwrap_or_default()
                );
            }
            // Poll interval only: readiness is the answer above, never this wait.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_as_itself(&self) -> bool {
        let Ok(client) = ::redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(500))
        else {
            return false;
        };
        if connection
            .set_read_timeout(Some(Duration::from_millis(500)))
            .is_err()
        {
            return false;
        }
        let info: ::redis::RedisResult<String> =
            ::redis::cmd("INFO").arg("server").query(&mut connection);
        let pid = format!("process_id:{}", self.child.id());
        info.is_ok_and(|info| info.lines().any(|line| line.trim() == pid))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
