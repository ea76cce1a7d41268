//! The broker check before a replay on Kafka (tansu's memory engine: the broker stays up, only
//! hookbus dies): records confirmed after the last spool checkpoint are on the broker already,
//! and a restart or `hookbus drain` must not store them again. Counted by consuming the
//! `hookbus-event-id`s of 1,200 per-channel topics of 3 partitions each (so the partition of a
//! record is computed, not guessed). A broker that cannot be read during the check gets
//! everything anyway, counted in `hookbus_replay_unverified_total`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::kafka::{Reader, Record, create_topics, kafka};
use crate::common::proxy::Proxy;
use crate::common::*;
use tokio::sync::Mutex;

const LONG: Duration = Duration::from_secs(120);
const CHANNELS: usize = 1200;
const PARTITIONS: i32 = 3;
/// Over [`kafka`]: a topic per channel (all within `kafka.max_topics`), 3 partitions, short
/// timeouts. `request.timeout.ms` is
/// how long a restart waits for the dead process's produce requests before reading back.
const PER_CHANNEL: &str = "[kafka]\npartitions = 3\nmax_topics = 2000\n\
     [kafka.properties]\n\"request.timeout.ms\" = \"3000\"\n\
     [sink]\ntimeout = \"5s\"\nmax_backoff = \"200ms\"\n\
     [routing]\ntemplate = \"presence.{channel}.{action}\"";

/// A distinct G1 join on one of [`CHANNELS`] channels.
fn join(n: usize) -> Vec<u8> {
    format!(
        r#"{{"action":"join","sub_key":"sub-c-test","channel":"ch{}","uuid":"u{n}","timestamp":1718035200,"occupancy":1}}"#,
        n % CHANNELS
    )
    .into_bytes()
}

fn topics() -> Vec<String> {
    (0..CHANNELS)
        .map(|c| format!("presence.ch{c}.join"))
        .collect()
}

/// Ids answered 200.
#[derive(Clone, Default)]
struct Acked(Arc<Mutex<HashSet<String>>>);

impl Acked {
    async fn len(&self) -> usize {
        self.0.lock().await.len()
    }
}

/// Eight clients posting `join(n)` for n from `first` on until `stop` or the server goes away.
fn load(
    addr: SocketAddr,
    first: usize,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let next = Arc::new(AtomicUsize::new(first));
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (acked, stop, next) = (acked.clone(), stop.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let body = join(next.fetch_add(1, Ordering::Relaxed));
                    let Some(r) = try_post(addr, &body).await else {
                        break;
                    };
                    if r.status == 200 {
                        acked.0.lock().await.insert(g1_id(&body));
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        next.load(Ordering::Relaxed)
    })
}

async fn published(admin: SocketAddr) -> f64 {
    published_on(admin, "kafka").await
}

async fn published_on(admin: SocketAddr, sink: &str) -> f64 {
    metric(
        admin,
        &format!("hookbus_events_published_total{{action=\"join\",sink=\"{sink}\"}}"),
    )
    .await
}

/// Reads every record of the per-channel topics until each of `acked` arrived and nothing
/// new came for 3 s.
async fn read_all(brokers: &str, acked: &HashSet<String>) -> Vec<Record> {
    let brokers = brokers.to_owned();
    let acked = acked.clone();
    tokio::task::spawn_blocking(move || {
        let topics = topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let reader = Reader::new(&brokers, &names, PARTITIONS, &[]);
        let deadline = std::time::Instant::now() + LONG;
        let mut out: Vec<Record> = Vec::new();
        let mut seen = HashSet::new();
        let mut last_new = std::time::Instant::now();
        loop {
            let complete = acked.iter().all(|id| seen.contains(id));
            if complete && last_new.elapsed() >= Duration::from_secs(3) {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {} acked events arrived",
                acked.iter().filter(|id| seen.contains(*id)).count(),
                acked.len()
            );
            if let Some(record) = reader.poll() {
                seen.insert(record.event_id().to_owned());
                out.push(record);
                last_new = std::time::Instant::now();
            }
        }
    })
    .await
    .expect("consumer thread")
}

/// Every acked id stored exactly once, and no id (acked or not: a request cut by the kill may
/// have been stored) more than once.
fn assert_once(records: &[Record], acked: &HashSet<String>) {
    let mut counts = HashMap::<&str, usize>::new();
    for r in records {
        *counts.entry(r.event_id()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        repeated.is_empty() && missing.is_empty(),
        "{} repeated (e.g. {:?}), {} missing (e.g. {:?}) of {} acked, {} stored",
        repeated.len(),
        repeated.iter().take(5).collect::<Vec<_>>(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        acked.len(),
        records.len()
    );
}

/// `hookbus drain` of `spool` (with the config `Process::spawn` wrote beside it, logging at
/// info): asserts it emptied the directory; returns its log.
async fn drain_to_the_end(spool: &Path) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .arg("--config")
        .arg(spool.with_extension("toml"))
        .args(["drain", "--spool-dir"])
        .arg(spool)
        .args(["--timeout", "100s"])
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(", 0 left"), "{stdout}");
    stderr
}

/// Runs the load against a fresh process on `spool` until it acked `acks` more events and
/// published `published_at_least`, then SIGKILLs it mid-stream. Returns the next event number.
async fn run_and_kill(
    spool: &Path,
    toml: &str,
    first: usize,
    acked: &Acked,
    acks: usize,
    published_at_least: f64,
) -> usize {
    let mut hb = Process::spawn(spool, toml).await;
    let before = acked.len().await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(hb.http_addr, first, acked.clone(), stop.clone());
    let admin = hb.admin_addr;
    let sink = if toml.contains("kind = \"nats\"") {
        "nats"
    } else {
        "kafka"
    };
    wait_for("acks and publishing under load", LONG, || async {
        (acked.len().await >= before + acks
            && published_on(admin, sink).await >= published_at_least)
            .then_some(())
    })
    .await;
    hb.signal(SIGKILL);
    let _ = hb.child.wait().await;
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_three_times_stores_every_acked_event_once() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let toml = kafka(&broker.brokers(), "spool", PER_CHANNEL);
    let acked = Acked::default();
    let mut next = 0;
    for round in 0..3 {
        next = run_and_kill(&spool, &toml, next, &acked, 1000, 500.0).await;
        assert!(acked.len().await >= 1000 * (round + 1));
    }
    // The last start replays what the third process left; it takes no new events.
    let hb = Process::spawn_with_env(&spool, &toml, &[("RUST_LOG", "info")]).await;
    let admin = hb.admin_addr;
    let (started, deadline) = (
        std::time::Instant::now(),
        std::time::Instant::now() + 3 * LONG,
    );
    loop {
        let pending = metric(admin, "hookbus_spool_pending_events").await;
        if pending == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spool did not drain ({pending} pending):\n{}",
            hb.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("replay drained in {:?}", started.elapsed());
    let acked = acked.0.lock().await.clone();
    let records = read_all(&broker.brokers(), &acked).await;
    assert_once(&records, &acked);
    // The check ran, and could read everything it needed.
    assert!(hb.log().contains("replay check: read back"), "{}", hb.log());
    assert_eq!(
        metric(admin, "hookbus_replay_unverified_total").await,
        0.0,
        "{}",
        hb.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_a_killed_instances_spool_stores_every_acked_event_once() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let toml = kafka(&broker.brokers(), "spool", PER_CHANNEL);
    let acked = Acked::default();
    run_and_kill(&spool, &toml, 0, &acked, 1500, 1000.0).await;
    let stderr = drain_to_the_end(&spool).await;
    let acked = acked.0.lock().await.clone();
    let records = read_all(&broker.brokers(), &acked).await;
    assert_once(&records, &acked);
    assert!(
        stderr.contains("replay check: read back"),
        "the drain checked the broker first:\n{stderr}"
    );
    assert!(!stderr.contains("replay check incomplete"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_cannot_be_read_during_the_check_gets_everything_counted() {
    const LIST_OFFSETS: i16 = 2;
    let proxy = Proxy::start();
    let broker = Tansu::behind(proxy.port);
    proxy.target(broker.port);
    let names: Vec<String> = (0..20).map(|c| format!("presence.ch{c}.join")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    create_topics(&broker.brokers(), &names, PARTITIONS).await;
    proxy.cut(); // nothing reaches the broker: all 20 stay in the spool
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let toml = kafka(&broker.brokers(), "spool", PER_CHANNEL);
    let mut hb = Process::spawn(&spool, &toml).await;
    let bodies: Vec<Vec<u8>> = (0..20).map(join).collect();
    for body in &bodies {
        assert_eq!(post(hb.http_addr, body).await.status, 200);
    }
    hb.signal(SIGKILL);
    let _ = hb.child.wait().await;

    // The broker takes records again but answers no offset lookup: the check cannot read.
    proxy.refuse_kafka_requests(LIST_OFFSETS);
    proxy.restore();
    let hb = Process::spawn(&spool, &toml).await;
    let admin = hb.admin_addr;
    wait_for("the unverified replay counted", LONG, || async move {
        (metric(admin, "hookbus_replay_unverified_total").await >= 20.0).then_some(())
    })
    .await;
    proxy.refuse_kafka_requests(-1);
    wait_for("everything published", LONG, || async move {
        (published(admin).await >= 20.0).then_some(())
    })
    .await;
    let ids: HashSet<String> = bodies.iter().map(|b| g1_id(b)).collect();
    let records = read_all(&broker.brokers(), &ids).await;
    assert_once(&records, &ids);
    assert_eq!(records.len(), 20);
    assert_eq!(metric(admin, "hookbus_replay_unverified_total").await, 20.0);
    hb.wait_log("replay check incomplete: 20 replayed records", LONG)
        .await;
}

/// Every `Nats-Msg-Id` in the stream `PRESENCE`, one entry per stored message.
async fn stream_ids(url: &str) -> Vec<String> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream("PRESENCE").await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(OrderedConfig {
            headers_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    while (ids.len() as u64) < total {
        let message = tokio::time::timeout(LONG, messages.next())
            .await
            .expect("the stream read in time")
            .unwrap()
            .unwrap();
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
        ids.push(id.map(|v| v.as_str().to_owned()).unwrap_or_default());
    }
    ids
}

/// Past the stream's duplicate window (3 s here) JetStream drops no repeat either: `hookbus
/// drain` of an old volume (a node lost for longer than the window) reads the stream back
/// first, as on Kafka, and every acked event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_drain_past_the_duplicate_window_stores_every_acked_event_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let toml = format!(
        "[ack]\nmode = \"spool\"\n[sink]\nkind = \"nats\"\ntimeout = \"2s\"\n\
         [nats]\nurl = \"{}\"\nduplicate_window = \"3s\"",
        nats.url()
    );
    let acked = Acked::default();
    run_and_kill(&spool, &toml, 0, &acked, 1500, 1000.0).await;
    // The node comes back after the window: every message in the stream is older than it, so
    // JetStream would store a repeat.
    let url = nats.url();
    wait_for(
        "the stream's last message to leave the window",
        LONG,
        || {
            let url = url.clone();
            async move {
                let js = async_nats::jetstream::new(async_nats::connect(url).await.ok()?);
                let mut stream = js.get_stream("PRESENCE").await.ok()?;
                let info = stream.info().await.ok()?;
                let last = info.state.last_timestamp.unix_timestamp_nanos() / 1_000_000;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i128;
                (now - last > 3_100).then_some(())
            }
        },
    )
    .await;
    let stderr = drain_to_the_end(&spool).await;
    assert!(
        stderr.contains("replay check: read back"),
        "the drain checked the stream first:\n{stderr}"
    );
    assert!(!stderr.contains("replay check incomplete"), "{stderr}");
    let acked = acked.0.lock().await.clone();
    let ids = stream_ids(&nats.url()).await;
    let mut counts = HashMap::<&str, usize>::new();
    for id in &ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeated = counts.values().filter(|n| **n > 1).count();
    let missing = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count();
    assert!(
        repeated == 0 && missing == 0,
        "{repeated} repeated, {missing} missing of {} acked, {} stored",
        acked.len(),
        ids.len()
    );
}
