//! Test helpers: real broker processes on loopback ports (stopped on drop; how each gets its
//! port without losing a race for it: [`ports`]), hookbus started in-process on port 0, a
//! minimal HTTP/1.1 client, and condition waits with deadlines.

/// The Here Now stand-in the client's unit tests use, shared as it is.
#[path = "../../../src/roster/here_now/test_server.rs"]
#[allow(dead_code)]
pub mod here_now;
pub mod kafka;
pub mod nats_jwt;
pub mod pki;
pub mod ports;
pub mod proxy;
pub mod roster;
pub mod stunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookbus::app::{self, Running};
use hookbus::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pubnub/fixtures"
);
pub const BAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pubnub/bad");

pub use ports::{dead_port, free_port};
use ports::{port_taken, respawn_on, spawn_on_free_port};

/// How long a broker process may take to listen.
const SERVER_START: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some` or `within` passes.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `nats-server -js` process with its own store directory, on a port it binds itself.
pub struct NatsServer {
    /// The port the server chose at its first start (`-p -1`); restarts reuse it.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra server config (TLS, authorization); `None` runs with flags only.
    conf: Option<String>,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_inner(None)
    }

    /// A server whose config file holds `conf` (e.g. a `tls {…}` or `authorization {…}` block)
    /// after the listen address and the JetStream store.
    pub fn start_with(conf: &str) -> NatsServer {
        NatsServer::start_inner(Some(conf.to_owned()))
    }

    fn start_inner(conf: Option<String>) -> NatsServer {
        let mut server = NatsServer {
            port: 0,
            dir: tempfile::tempdir().expect("tempdir"),
            conf,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log (config errors, TLS handshake failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Starts (again) on the same store. The first start lets the server bind a port of its
    /// own (`-1`); a restart binds that port again (clients were told it), and while another
    /// process holds it the start is retried until a deadline.
    pub fn restart(&mut self) {
        self.stop();
        let within = Duration::from_secs(20);
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.spawn() {
                self.port = port;
                return;
            }
            assert!(
                self.port != 0 && Instant::now() < deadline,
                "nats-server could not bind port {} (-1: any) within {within:?}:\n{}",
                self.port,
                self.log()
            );
            // Another process holds the port: give it time to let go (a retry, not a sync).
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One `nats-server` on `self.port` (`-1` before the first start). Its port, read from
    /// the ports file the server writes once it listens (`--ports_file_dir`), or `None` when it
    /// exited because the port was taken.
    fn spawn(&mut self) -> Option<u16> {
        let port = match self.port {
            0 => "-1".to_owned(),
            port => port.to_string(),
        };
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let mut command = Command::new("nats-server");
        match &self.conf {
            Some(conf) => {
                let file = self.dir.path().join("nats.conf");
                let text = format!(
                    "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?} }}\n{conf}\n",
                    self.dir.path().join("js").display().to_string()
                );
                std::fs::write(&file, text).expect("nats.conf");
                command.arg("-c").arg(file);
            }
            None => {
                command
                    .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(self.dir.path());
            }
        }
        let child = command
            .arg("--ports_file_dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server on PATH (scripts/setup installs it)");
        let pid = child.id();
        let child = self.child.insert(child);
        let ports_file = self.dir.path().join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // {"nats":["nats://127.0.0.1:PORT"]}, written whole once the server listens.
            let listening = std::fs::read(&ports_file)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|ports| {
                    let url = ports["nats"].get(0)?.as_str()?;
                    url.rsplit_once(':')?.1.parse::<u16>().ok()
                });
            if let Some(port) = listening {
                return Some(port);
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                let log = self.log();
                if port_taken(&log) {
                    return None;
                }
                panic!("nats-server exited ({status}) before it listened:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {port}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing (a stalled broker).
    pub fn pause(&self) {
        signal_child(self.child.as_ref(), SIGSTOP);
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        signal_child(self.child.as_ref(), SIGCONT);
    }
}

fn signal_child(child: Option<&Child>, signal: i32) {
    let pid = child.expect("running").id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { kill(pid, signal) }, 0, "kill({pid}, {signal})");
    if signal == SIGSTOP {
        // kill(2) returns before the process has stopped: a busy broker could still answer a
        // request sent right after. Wait until the kernel reports it stopped (state T).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            if state == Some("T") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} did not stop: {stat}"
            );
            std::thread::yield_now();
        }
    }
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` process on a free port, nothing persisted. (`--port 0` would turn TCP
/// off, not pick a port: a start that loses the port to another process retries another.)
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With extra `--name value` arguments (e.g. `--maxmemory-policy allkeys-lru`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        let (child, port) =
            spawn_on_free_port("redis-server", SERVER_START, &|| server.log(), |port| {
                server.server_command(port)
            });
        server.child = Some(child);
        server.port = port;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts again on the same port (hookbus was told it), retried while another process
    /// holds it.
    pub fn restart(&mut self) {
        self.stop();
        let child = respawn_on(
            self.port,
            "redis-server",
            SERVER_START,
            &|| self.log(),
            || self.server_command(self.port),
        );
        self.child = Some(child);
    }

    fn server_command(&self, port: u16) -> Command {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null());
        command
    }

    /// What the server logged (to stdout) since its last start.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// `redis-cli`-free: one command over the wire, the raw RESP answer.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        let mut resp = format!("*{}\r\n", args.len());
        for a in args {
            resp.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(resp.as_bytes()).expect("write");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Kafka-compatible `tansu broker` process.
pub struct Tansu {
    pub port: u16,
    advertised: Option<u16>,
    authentication: bool,
    dir: tempfile::TempDir,
    storage: String,
    child: Option<Child>,
}

impl Tansu {
    /// In-memory storage (lost on restart).
    pub fn start() -> Tansu {
        Tansu::with_storage("memory://tansu/")
    }

    /// SQLite storage in the broker's own directory (survives restart).
    pub fn start_persistent() -> Tansu {
        Tansu::with_storage("sqlite://tansu.db")
    }

    fn with_storage(storage: &str) -> Tansu {
        Tansu::advertising(storage, None)
    }

    /// In-memory storage, with clients sent to `advertised` (a proxy or TLS terminator in
    /// front of the broker) by its metadata.
    pub fn behind(advertised: u16) -> Tansu {
        Tansu::advertising("memory://tansu/", Some(advertised))
    }

    /// A broker that requires SASL SCRAM, knowing `user` with `password` (SCRAM-SHA-512):
    /// SQLite storage, the credential created through the admin API before authentication is
    /// switched on (tansu keeps SCRAM credentials only in a persistent store).
    pub fn with_scram_user(advertised: Option<u16>, user: &str, password: &str) -> Tansu {
        let mut broker = Tansu::advertising("sqlite://tansu.db", None);
        let python = python();
        let out = Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/kafka_scram_user.py"
            ))
            .args([&broker.brokers(), user, password])
            .output()
            .expect("python test client (scripts/setup makes .venv-test)");
        assert!(
            out.status.success(),
            "creating the SCRAM user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        broker.stop();
        broker.advertised = advertised;
        broker.authentication = true;
        broker.restart();
        broker
    }

    fn advertising(storage: &str, advertised: Option<u16>) -> Tansu {
        let mut broker = Tansu {
            port: 0,
            advertised,
            authentication: false,
            dir: tempfile::tempdir().expect("tempdir"),
            storage: storage.to_owned(),
            child: None,
        };
        // tansu must be told the port it advertises up front: it cannot bind port 0.
        let (child, port) = spawn_on_free_port("tansu", SERVER_START, &|| broker.log(), |port| {
            broker.server_command(port)
        });
        broker.child = Some(child);
        broker.port = port;
        broker
    }

    /// Where clients bootstrap: the advertised listener.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    /// Starts again on the same port and storage (clients were told the port), retried while
    /// another process holds it.
    pub fn restart(&mut self) {
        self.stop();
        let child = respawn_on(self.port, "tansu", SERVER_START, &|| self.log(), || {
            self.server_command(self.port)
        });
        self.child = Some(child);
    }

    /// `tansu broker` on `port`, its stdout and stderr (where a bind failure shows) to its log.
    fn server_command(&self, port: u16) -> Command {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(port));
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).expect("log file");
        let mut command = Command::new(tansu_bin());
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", &self.storage])
            .args(self.authentication.then_some("--authentication"))
            .current_dir(self.dir.path())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// SIGSTOP: the broker keeps its sockets but answers nothing.
    pub fn pause(&self) {
        signal_child(self.child.as_ref(), SIGSTOP);
    }

    pub fn resume(&self) {
        signal_child(self.child.as_ref(), SIGCONT);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Python of the test clients' venv (`scripts/setup` makes it).
pub fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python")
}

fn tansu_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let cargo = Path::new(&home).join(".cargo/bin/tansu");
    if cargo.exists() {
        cargo
    } else {
        PathBuf::from("tansu")
    }
}

/// Config for a test hookbus: ports 0, a private spool dir, with `extra` TOML merged over it
/// (sections may repeat: later keys win).
pub fn config(spool_dir: &Path, extra: &str) -> Config {
    config_with(spool_dir, &[extra])
}

/// [`config`] with several TOML fragments merged in order.
pub fn config_with(spool_dir: &Path, fragments: &[&str]) -> Config {
    let text = config_text(spool_dir, "127.0.0.1:0", "127.0.0.1:0", fragments);
    Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// TOML text: the listeners, anonymous webhooks allowed (a fragment that sets a token wins),
/// a private spool dir and a short grace, then `fragments` merged over it section by section
/// (later keys win).
pub fn config_text(spool_dir: &Path, http: &str, admin: &str, fragments: &[&str]) -> String {
    let base = format!(
        "[http]\nlisten = \"{http}\"\n[admin]\nlisten = \"{admin}\"\n\
         [auth]\nallow_anonymous = true\n\
         [spool]\ndir = {:?}\nsegment_bytes = 1048576\n[shutdown]\ngrace = \"10s\"\n",
        spool_dir.display().to_string()
    );
    let mut all = vec![base.as_str()];
    all.extend_from_slice(fragments);
    toml::to_string(&merge_toml(&all)).expect("serialize config")
}

/// TOML `fragments` merged in order, section by section: a later fragment's keys replace
/// those of the same section (sections may repeat across fragments, unlike in one file).
pub fn merge_toml(fragments: &[&str]) -> toml::Table {
    let mut merged = toml::Table::new();
    for fragment in fragments {
        let fragment: toml::Table = fragment
            .parse()
            .unwrap_or_else(|e| panic!("test config fragment: {e}\n{fragment}"));
        for (section, value) in fragment {
            match (merged.get_mut(&section), value) {
                (Some(toml::Value::Table(into)), toml::Value::Table(from)) => into.extend(from),
                (_, value) => {
                    merged.insert(section, value);
                }
            }
        }
    }
    merged
}

pub async fn start(config: Config) -> Running {
    app::start(config).await.expect("hookbus starts")
}

/// A response from [`request`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on a fresh connection; panics if the server is not there.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|| panic!("no HTTP response from {addr}{path}"))
}

/// [`request`], or `None` when nothing listens or the connection ends without a response
/// (a server being killed or still starting).
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    // The server may answer (413) before reading the whole body and close.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

pub async fn post(addr: SocketAddr, body: &[u8]) -> Response {
    request(addr, "POST", "/webhooks/pubnub", JSON, body).await
}

/// [`post`] that tolerates a server that is gone.
pub async fn try_post(addr: SocketAddr, body: &[u8]) -> Option<Response> {
    try_request(addr, "POST", "/webhooks/pubnub", JSON, body).await
}

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

/// The value of one sample line of `/metrics`, e.g. `hookbus_duplicates_total{action="join"}`.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let response = request(admin, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(response.body).expect("metrics text");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("series {series} not in /metrics"))
}

/// Every fixture file: (name, bytes).
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    read_dir(FIXTURES)
}

pub fn bad_inputs() -> Vec<(String, Vec<u8>)> {
    read_dir(BAD)
}

fn read_dir(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("fixture"))
        })
        .collect();
    out.sort();
    out
}

/// The subject/topic each fixture's events must land on, with the default template.
pub fn expected_names(fixture: &str) -> Vec<&'static str> {
    match fixture {
        "ena-active.json" => vec!["presence.room_2Elobby.active"],
        "ena-batch.json" => vec![
            "presence.room_2E1.join",
            "presence.room_2E2.join",
            "presence.room_2E1.join",
        ],
        "ena-inactive.json" => vec!["presence.room_2Elobby.inactive"],
        "ena-interval.json" => vec!["presence.stadium_2Emain.interval"],
        "ena-join.json" => vec!["presence.room_2Elobby.join"],
        "ena-left.json" => vec!["presence.room_2Elobby.leave"],
        "ena-state-change.json" => vec!["presence.room_2Elobby.state-change"],
        "ena-timeout.json" => vec!["presence.room_2Elobby.timeout"],
        "g1-active.json" => vec!["presence.room_2Elobby.active"],
        "g1-inactive.json" => vec!["presence.room_2Elobby.inactive"],
        "g1-interval-deltas.json" => vec!["presence.stadium.interval"],
        "g1-interval-refresh.json" => vec!["presence.stadium.interval"],
        "g1-join.json" => vec!["presence.lacrosse.join"],
        "g1-leave.json" => vec!["presence.lacrosse.leave"],
        "g1-state-change.json" => vec!["presence.room_2Elobby.state-change"],
        "g1-timeout.json" => vec!["presence.room_2Elobby.timeout"],
        other => panic!("no expectation for fixture {other}; add one"),
    }
}

/// Posts every fixture to `addr` (each must be answered 200 with all its events accepted) and
/// returns, in order, (fixture, expected topic/subject, expected event JSON) per event.
pub async fn post_fixtures(addr: SocketAddr) -> Vec<(String, &'static str, serde_json::Value)> {
    let mut expected = Vec::new();
    for (name, body) in fixtures() {
        let response = post(addr, &body).await;
        assert_eq!(
            response.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let events = expected_events(&body);
        assert_eq!(
            response.json(),
            serde_json::json!({"accepted": events.len(), "duplicates": 0}),
            "{name}"
        );
        for (event, name_on_broker) in events.into_iter().zip(expected_names(&name)) {
            expected.push((name.clone(), name_on_broker, event));
        }
    }
    expected
}

/// The normalized events a fixture must produce, as JSON without `received_at_ms`.
pub fn expected_events(body: &[u8]) -> Vec<serde_json::Value> {
    hookbus::normalize::normalize(body, 0)
        .expect("fixture normalizes")
        .iter()
        .map(|e| without_received(serde_json::from_slice(&e.to_json()).expect("event JSON")))
        .collect()
}

pub fn without_received(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        map.remove("received_at_ms");
    }
    value
}

/// The real `hookbus` binary, for tests that kill it.
pub struct Process {
    pub child: tokio::process::Child,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub config_path: PathBuf,
}

impl Process {
    /// Writes `extra` TOML (merged over free ports and `spool_dir`) and starts the binary;
    /// returns once it listens on both ports. Its stderr goes to [`Process::log`]. A port
    /// another process took before hookbus bound it is retried with new ports.
    pub async fn spawn(spool_dir: &Path, extra: &str) -> Process {
        Process::spawn_with_env(spool_dir, extra, &[]).await
    }

    /// [`Process::spawn`] with extra environment variables.
    pub async fn spawn_with_env(spool_dir: &Path, extra: &str, envs: &[(&str, &str)]) -> Process {
        let config_path = spool_dir.with_extension("toml");
        let log_path = spool_dir.with_extension("log");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        'ports: for _ in 0..ports::PORT_ATTEMPTS {
            let (http, admin) = (free_port(), free_port());
            let text = config_text(
                spool_dir,
                &format!("127.0.0.1:{http}"),
                &format!("127.0.0.1:{admin}"),
                &[extra],
            );
            std::fs::write(&config_path, text).expect("config");
            let log_file = std::fs::File::create(&log_path).expect("log file");
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
                .arg("--config")
                .arg(&config_path)
                .env("RUST_LOG", "warn")
                .envs(envs.iter().copied())
                .stdout(Stdio::null())
                .stderr(log_file)
                .kill_on_drop(true)
                .spawn()
                .expect("hookbus binary");
            let pid = child.id().expect("running");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !(ports::listens(pid, http) && ports::listens(pid, admin)) {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    if port_taken(&log()) {
                        continue 'ports;
                    }
                    panic!("hookbus exited ({status}) before it listened:\n{}", log());
                }
                assert!(
                    Instant::now() < deadline,
                    "hookbus did not listen on ports {http} and {admin}:\n{}",
                    log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Process {
                child,
                http_addr: SocketAddr::from(([127, 0, 0, 1], http)),
                admin_addr: SocketAddr::from(([127, 0, 0, 1], admin)),
                config_path,
            };
        }
        panic!(
            "hookbus: the ports of each of {} starts were taken before it could bind them:\n{}",
            ports::PORT_ATTEMPTS,
            log()
        );
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config_path.with_extension("log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> String {
        wait_for(
            &format!("{needle:?} in the hookbus log"),
            within,
            || async {
                let log = self.log();
                log.contains(needle).then_some(log)
            },
        )
        .await
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }
}

/// Sends `sig` to the process `pid` (a child of this test).
pub fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { kill(pid as i32, sig) }, 0, "kill({pid}, {sig})");
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// A distinct G1 join for client `client`, sequence `n`.
pub fn g1_event(client: usize, n: usize) -> Vec<u8> {
    format!(
        r#"{{"action":"join","sub_key":"sub-c-test","channel":"room.{}","uuid":"c{client}-{n}","timestamp":1718035200,"occupancy":{}}}"#,
        n % 7,
        n % 50 + 1
    )
    .into_bytes()
}

/// The event id hookbus derives for a G1 body.
pub fn g1_id(body: &[u8]) -> String {
    hookbus::normalize::normalize(body, 0).expect("valid")[0]
        .id
        .clone()
}

/// An Events & Actions join batch: one item per `(id, channel)`.
pub fn ea_joins<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let data: Vec<serde_json::Value> = items
        .into_iter()
        .map(|(id, channel)| {
            serde_json::json!({"id": id, "channel": channel, "userId": "u", "occupancy": 1,
                "timestamp": "2024-06-10T16:00:00Z", "subKey": "sub-c-1"})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schema": "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
        "data": data,
    }))
    .unwrap()
}

/// Peak resident memory of a process, from `/proc/PID/status`.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
