//! Durability in `spool` mode with real brokers and the real binary: SIGKILL mid-stream (with
//! and without a torn tail record), broker outages under load (NATS and Kafka), a full spool,
//! and SIGTERM under load. Every event answered 200 must reach the broker, none twice on
//! JetStream, none corrupted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::kafka::{Reader, kafka};
use crate::common::*;
use async_nats::jetstream;
use tokio::sync::Mutex;

const LONG: Duration = Duration::from_secs(60);

/// Ids acknowledged with 200, shared by the load clients.
#[derive(Clone, Default)]
struct Acked(Arc<Mutex<HashSet<String>>>);

impl Acked {
    async fn len(&self) -> usize {
        self.0.lock().await.len()
    }
    async fn ids(&self) -> HashSet<String> {
        self.0.lock().await.clone()
    }
    /// Waits until at least `count` events were acknowledged.
    async fn wait_for(&self, count: usize, what: &str) {
        let acked = self.clone();
        wait_for(what, LONG, || {
            let acked = acked.clone();
            async move { (acked.len().await >= count).then_some(()) }
        })
        .await;
    }
}

/// `clients` tasks posting distinct events to `addr` until `stop` is set, `limit` events were
/// sent in total, or the server goes away. Returns the number of requests sent.
fn load(
    addr: SocketAddr,
    clients: usize,
    first: usize,
    limit: usize,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let sent = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for client in 0..clients {
            let (acked, stop, sent) = (acked.clone(), stop.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= limit || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = g1_event(client, first + n);
                    // The server going away (SIGKILL) ends this client.
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
        sent.load(Ordering::Relaxed).min(limit)
    })
}

/// Every message of stream PRESENCE: id → (count, payload).
async fn stream_contents(url: &str) -> HashMap<String, (usize, Vec<u8>)> {
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let mut stream = js.get_stream("PRESENCE").await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let mut out: HashMap<String, (usize, Vec<u8>)> = HashMap::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .expect("Nats-Msg-Id");
        let entry = out.entry(id).or_insert((0, Vec::new()));
        entry.0 += 1;
        entry.1 = m.payload.to_vec();
    }
    out
}

async fn stream_len(url: &str) -> Option<u64> {
    let js = jetstream::new(async_nats::connect(url).await.ok()?);
    let mut stream = js.get_stream("PRESENCE").await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

/// Waits until every acked id is in the stream, then checks none is there twice or corrupted.
async fn assert_all_published_once(url: &str, acked: &HashSet<String>) {
    let url_owned = url.to_owned();
    let need = acked.len() as u64;
    wait_for("all acked events in the stream", LONG, || {
        let url = url_owned.clone();
        async move { (stream_len(&url).await? >= need).then_some(()) }
    })
    .await;
    let contents = wait_for("every acked id present", LONG, || {
        let url = url_owned.clone();
        async move {
            let contents = stream_contents(&url).await;
            acked
                .iter()
                .all(|id| contents.contains_key(id))
                .then_some(contents)
        }
    })
    .await;
    for (id, (count, payload)) in &contents {
        assert_eq!(*count, 1, "event {id} stored {count} times");
        let event: serde_json::Value = serde_json::from_slice(payload).expect("intact JSON");
        assert_eq!(event["id"], id.as_str(), "payload matches its id");
        assert_eq!(event["schema"], "hookbus.presence.v1");
    }
}

fn spool_mode(nats: &NatsServer) -> String {
    format!(
        "[ack]\nmode = \"spool\"\n[nats]\nurl = \"{}\"\n[sink]\nmax_backoff = \"200ms\"",
        nats.url()
    )
}

async fn crash_and_recover(tear_tail: bool) {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let acked = Acked::default();
    let first = Process::spawn(&spool, &spool_mode(&nats)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(first.http_addr, 8, 0, 3000, acked.clone(), stop.clone());
    acked.wait_for(1500, "1500 acks before the crash").await;
    first.signal(SIGKILL);
    let sent_before = clients.await.unwrap();
    let mut first = first;
    let _ = first.child.wait().await;
    if tear_tail {
        tear_last_segment(&spool);
    }
    let acked_before = acked.len().await;
    assert!(acked_before >= 1500 && sent_before >= acked_before);

    let second = Process::spawn(&spool, &spool_mode(&nats)).await;
    // The rest of the ≥ 3,000 distinct events go to the restarted process.
    let rest = load(
        second.http_addr,
        8,
        10_000,
        1500,
        acked.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(rest.await.unwrap(), 1500);
    let ids = acked.ids().await;
    assert!(ids.len() >= 3000, "only {} events acked", ids.len());
    assert_all_published_once(&nats.url(), &ids).await;
    second.signal(SIGTERM);
    let mut second = second;
    let status = tokio::time::timeout(LONG, second.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Leaves a torn record right after the last complete one in the newest spool segment, as a
/// crash in the middle of a write would: a plausible header announcing more payload than
/// follows. Segments are preallocated with zeros, so the record goes where the zeros start.
fn tear_last_segment(spool: &std::path::Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut segments: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a spool segment");
    let bytes = std::fs::read(last).unwrap();
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .expect("records in the segment")
        + 1;
    let mut torn = Vec::new();
    torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes()); // checksum
    torn.extend_from_slice(&300u32.to_le_bytes()); // payload length
    torn.extend_from_slice(&u64::MAX.to_le_bytes()); // seq
    torn.extend_from_slice(&1u64.to_le_bytes()); // appended_ms
    torn.extend_from_slice(br#"{"half a pay"#);
    let mut f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.seek(SeekFrom::Start(end as u64)).unwrap();
    f.write_all(&torn).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acked() {
    crash_and_recover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_after_sigkill_is_dropped_not_published() {
    crash_and_recover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_under_load_loses_nothing_acked() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(dir.path(), &spool_mode(&nats))).await;
    let acked = Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(hb.http_addr, 4, 0, usize::MAX, acked.clone(), stop.clone());
    acked.wait_for(200, "steady load").await;
    nats.stop();
    let admin = hb.admin_addr;
    wait_for("sink down", LONG, || async move {
        (metric(admin, "hookbus_sink_up{sink=\"nats\"}").await == 0.0).then_some(())
    })
    .await;
    // Still acking into the spool while the broker is gone.
    let during = acked.len().await;
    acked.wait_for(during + 200, "acks during the outage").await;
    assert!(metric(admin, "hookbus_spool_pending_events").await > 0.0);
    nats.restart();
    let after = acked.len().await;
    acked.wait_for(after + 200, "acks after the outage").await;
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap();
    assert_all_published_once(&nats.url(), &acked.ids().await).await;
    wait_for("spool drained", LONG, || async move {
        (metric(admin, "hookbus_spool_pending_events").await == 0.0).then_some(())
    })
    .await;
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_under_load_loses_nothing_acked() {
    let mut broker = Tansu::start_persistent();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(
            &broker.brokers(),
            "spool",
            "[sink]\ntimeout = \"5s\"\nmax_backoff = \"500ms\"\n\
             [routing]\ntemplate = \"presence.all.{action}\"",
        ),
    ))
    .await;
    let acked = Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(hb.http_addr, 4, 0, usize::MAX, acked.clone(), stop.clone());
    acked.wait_for(200, "steady load").await;
    broker.stop();
    let during = acked.len().await;
    acked.wait_for(during + 300, "acks during the outage").await;
    broker.restart();
    let after = acked.len().await;
    acked.wait_for(after + 200, "acks after the outage").await;
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap();
    let admin = hb.admin_addr;
    wait_for("spool drained", LONG, || async move {
        (metric(admin, "hookbus_spool_pending_events").await == 0.0).then_some(())
    })
    .await;
    let ids = acked.ids().await;
    let brokers = broker.brokers();
    let seen = tokio::task::spawn_blocking(move || {
        let reader = Reader::new(&brokers, &["presence.all.join"], 1, &[]);
        let mut seen = HashSet::new();
        let deadline = std::time::Instant::now() + LONG;
        while !ids.iter().all(|id| seen.contains(id)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {} acked events consumed",
                ids.iter().filter(|id| seen.contains(*id)).count(),
                ids.len()
            );
            if let Some(record) = reader.poll() {
                let id = record.event_id().to_owned();
                let event: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
                assert_eq!(event["id"], id.as_str());
                seen.insert(id);
            }
        }
        seen.len()
    })
    .await
    .unwrap();
    assert!(seen > 0);
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_is_503_and_recovers_once_drained() {
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &format!(
            "{}\n[spool]\nmax_bytes = 65536\nsegment_bytes = 8192",
            spool_mode(&nats)
        ),
    ))
    .await;
    nats.stop();
    let (addr, admin) = (hb.http_addr, hb.admin_addr);
    let mut accepted = 0;
    let refused = loop {
        let r = post(addr, &g1_event(0, accepted)).await;
        if r.status != 200 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 10_000, "the spool never filled");
    };
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(request(admin, "GET", "/readyz", &[], b"").await.status, 503);
    nats.restart();
    let n = accepted;
    wait_for("accepting again after the drain", LONG, || async move {
        (post(addr, &g1_event(1, n)).await.status == 200).then_some(())
    })
    .await;
    wait_for("ready again", LONG, || async move {
        (request(admin, "GET", "/readyz", &[], b"").await.status == 200).then_some(())
    })
    .await;
    assert!(stream_len(&nats.url()).await.unwrap() as usize >= accepted);
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hb = Process::spawn(
        &spool,
        &format!("{}\n[shutdown]\ngrace = \"10s\"", spool_mode(&nats)),
    )
    .await;
    let acked = Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(hb.http_addr, 4, 0, usize::MAX, acked.clone(), stop.clone());
    acked.wait_for(300, "steady load").await;
    hb.signal(SIGTERM);
    let admin = hb.admin_addr;
    // Readiness turns 503 at once.
    wait_for("readiness 503", Duration::from_secs(2), || async move {
        // The admin port closes at the very end of the drain: that counts as not ready too.
        let status = try_request(admin, "GET", "/readyz", &[], b"")
            .await
            .map(|r| r.status);
        matches!(status, None | Some(503)).then_some(())
    })
    .await;
    let mut hb = hb;
    let status = tokio::time::timeout(Duration::from_secs(15), hb.child.wait())
        .await
        .expect("exit within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    stop.store(true, Ordering::Relaxed);
    clients.await.unwrap();
    assert_all_published_once(&nats.url(), &acked.ids().await).await;
}
