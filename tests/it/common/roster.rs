//! `hookbus roster` as a process, and the events it reads: Events & Actions webhook bodies
//! for the bridge, normalized event JSON for publishing straight to the roster's input, and
//! the reference model the roster's state must equal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ports::{free_port, listens};
use super::{config_text, request};

pub struct RosterProcess {
    pub child: tokio::process::Child,
    pub api: SocketAddr,
    pub config_path: PathBuf,
}

impl RosterProcess {
    /// Starts `hookbus roster` with `extra` TOML merged over free ports, a private spool dir
    /// under `dir` and `[roster] listen`; returns once the API listens.
    pub async fn spawn(dir: &Path, name: &str, extra: &str) -> RosterProcess {
        let port = free_port();
        let roster = format!("[roster]\nlisten = \"127.0.0.1:{port}\"\n");
        let text = config_text(
            &dir.join(format!("{name}-spool")),
            &format!("127.0.0.1:{}", free_port()),
            &format!("127.0.0.1:{}", free_port()),
            &[extra, &roster],
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, text).expect("config");
        RosterProcess::start(config_path, port).await
    }

    async fn start(config_path: PathBuf, port: u16) -> RosterProcess {
        let log = std::fs::File::create(config_path.with_extension("log")).expect("log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
            .arg("roster")
            .arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("ROSTER_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("hookbus binary");
        let pid = child.id().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listens(pid, port) {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "hookbus roster exited ({status}):\n{}",
                    std::fs::read_to_string(config_path.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "hookbus roster did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RosterProcess {
            child,
            api: SocketAddr::from(([127, 0, 0, 1], port)),
            config_path,
        }
    }

    /// Kills the process (SIGKILL) and starts it again on the same config and port.
    pub async fn kill_and_restart(&mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
        let port = self.api.port();
        *self = RosterProcess::start(self.config_path.clone(), port).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config_path.with_extension("log")).unwrap_or_default()
    }

    /// `GET path` on the API: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = request(self.api, "GET", path, &[], b"").await;
        let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, body)
    }

    /// Every present member of `channel` through the paged API: uuid → (state, since_ms).
    pub async fn members(&self, channel: &str) -> Option<BTreeMap<String, Value>> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/roster/{}?limit=1000", encode(channel));
            if let Some(after) = &after {
                path.push_str(&format!("&after={}", encode(after)));
            }
            let (status, body) = self.get(&path).await;
            if status == 404 {
                return None;
            }
            assert_eq!(status, 200, "{path}: {body}");
            for m in body["members"].as_array().expect("members") {
                out.insert(m["uuid"].as_str().expect("uuid").to_owned(), m.clone());
            }
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return Some(out),
            }
        }
    }

    /// The value of a series in the roster's `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric(self.api, series).await
    }

    /// Waits (up to a minute) until `series` in the roster's `/metrics` satisfies `ok`.
    pub async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) {
        super::wait_for(series, Duration::from_secs(60), || async {
            ok(self.metric(series).await).then_some(())
        })
        .await;
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Events & Actions schema name of `action`.
fn schema(action: &str) -> &'static str {
    match action {
        "join" => "presence.user.channel.joined",
        "leave" => "presence.user.channel.left",
        "timeout" => "presence.user.timedout.in.channel",
        "state-change" => "presence.channel.user.state.in.changed",
        "inactive" => "presence.channel.state.inactive",
        "active" => "presence.channel.state.active",
        _ => "presence.channel.occupancy.counted",
    }
}

/// One Events & Actions webhook body with one member event, at `time_ms`.
pub fn ena(
    id: &str,
    action: &str,
    channel: &str,
    uuid: &str,
    time_ms: i64,
    state: Option<Value>,
) -> Vec<u8> {
    let mut inner = json!({"action": action, "uuid": uuid, "timestamp": (time_ms / 1000).to_string(),
        "precise_timestamp": time_ms.to_string()});
    if let Some(state) = state {
        inner["data"] = Value::String(state.to_string());
    }
    let body = json!({
        "schema": format!("pubnub.com/schemas/events/{}?v=1.0.0", schema(action)),
        "data": [{"id": id, "channel": channel, "userId": uuid, "data": inner, "subKey": "sub-c-1"}],
    });
    serde_json::to_vec(&body).expect("json")
}

/// A normalized event (the bridge's message value) for publishing straight to the input.
pub fn event(
    id: &str,
    action: &str,
    channel: &str,
    uuid: Option<&str>,
    time_ms: i64,
    state: Option<Value>,
) -> Value {
    json!({
        "schema": "hookbus.presence.v1", "id": id, "source": "pubnub", "format": "events-and-actions",
        "sub_key": "sub-c-1", "channel": channel, "action": action, "uuid": uuid, "occupancy": null,
        "timestamp": time_ms / 1000, "timestamp_ms": time_ms, "received_at_ms": time_ms,
        "state": state, "delta": null, "here_now_refresh": false,
    })
}

/// A deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Joins of uuids `u<i>` (zero-padded to `width` digits) to `channel`, one per `i` in
/// `range`, with ids `<id><i>` and times `t + i`.
pub fn joins(
    id: &str,
    channel: &str,
    range: std::ops::Range<i64>,
    t: i64,
    width: usize,
) -> Vec<Value> {
    range
        .map(|i| {
            let uuid = format!("u{i:0width$}");
            event(
                &format!("{id}{i}"),
                "join",
                channel,
                Some(&uuid),
                t + i,
                None,
            )
        })
        .collect()
}

/// `count` member events (join, state-change, leave, timeout) over `channels` channels and
/// `uuids` uuids, each at a distinct time, shuffled, then a tenth of them repeated.
pub fn workload(
    seed: u64,
    count: usize,
    channels: usize,
    uuids: usize,
) -> (Vec<Value>, Vec<Value>) {
    let mut rng = Rng(seed);
    let actions = ["join", "join", "state-change", "leave", "timeout"];
    let distinct: Vec<Value> = (0..count)
        .map(|i| {
            let action = actions[rng.below(actions.len())];
            let state = (action == "state-change").then(|| json!({"n": i}));
            event(
                &format!("e{seed}-{i}"),
                action,
                &format!("ch.{}", rng.below(channels)),
                Some(&format!("u{}", rng.below(uuids))),
                1_700_000_000_000 + i as i64 * 10,
                state,
            )
        })
        .collect();
    let mut delivered = distinct.clone();
    for _ in 0..count / 10 {
        let copy = distinct[rng.below(count)].clone();
        delivered.push(copy);
    }
    for i in (1..delivered.len()).rev() {
        delivered.swap(i, rng.below(i + 1));
    }
    (distinct, delivered)
}

/// What the roster must show for `events` (distinct times, member events only): per channel,
/// the uuids whose latest event is a join or state-change, with the latest non-null state
/// since their latest absence.
pub fn model(events: &[Value]) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut sorted: Vec<&Value> = events.iter().collect();
    sorted.sort_by_key(|e| e["timestamp_ms"].as_i64());
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for e in sorted {
        let channel = e["channel"].as_str().expect("channel").to_owned();
        let uuid = e["uuid"].as_str().expect("uuid").to_owned();
        let members = out.entry(channel).or_default();
        match e["action"].as_str() {
            Some("join" | "state-change") => {
                let previous = members.get(&uuid).cloned();
                let state = if e["state"].is_null() {
                    previous.unwrap_or(Value::Null)
                } else {
                    e["state"].clone()
                };
                members.insert(uuid, state);
            }
            _ => {
                members.remove(&uuid);
            }
        }
    }
    out
}
