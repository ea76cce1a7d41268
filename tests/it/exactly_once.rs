//! Exactly once at the edges, asserted on Kafka (tansu), which has no broker-side dedup: a
//! client that leaves mid-request, a broker that stalls past the publish timeout, a publisher
//! that hits a read error or a panic, a topic creation the cluster refuses, a connection cut in
//! the middle of a channel's burst, a corrupt record in the spool, and the memory a restart
//! needs to rebuild the dedup set. NATS variants also assert that JetStream's own dedup
//! (`hookbus_broker_duplicates_total`) never had to hide a second publish.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::kafka::{Record, assert_exactly_once, consume, create_topics, kafka};
use crate::common::proxy::Proxy;
use crate::common::*;
use hookbus::faults::Faults;

const SECS: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(2);
const TOPIC: &str = "presence.all.join";

/// Over [`kafka`]: short timeouts, one topic for every join (one partition, so order is easy
/// to read back).
const FAST: &str = "[ack]\npublish_timeout = \"2s\"\n\
     [sink]\ntimeout = \"5s\"\nmax_backoff = \"200ms\"\n\
     [routing]\ntemplate = \"presence.all.{action}\"";

async fn start_faulty(dir: &std::path::Path, toml: &str, faults: &Faults) -> hookbus::app::Running {
    hookbus::app::start_with(config(dir, toml), faults.clone())
        .await
        .expect("hookbus starts")
}

/// Posts `body` and gives up after `after`, as PubNub does when the answer is slow.
async fn post_and_leave(addr: SocketAddr, body: &[u8], after: Duration) {
    let answer = tokio::time::timeout(after, try_post(addr, body)).await;
    assert!(
        answer.is_err(),
        "answered before the client left: {answer:?}"
    );
}

/// PubNub's retries: the same body again until it is answered 200.
async fn retry_until_ok(addr: SocketAddr, body: &[u8]) -> serde_json::Value {
    wait_for("a 200 for the retry", SECS, || async move {
        let r = try_post(addr, body).await?;
        (r.status == 200).then(|| r.json())
    })
    .await
}

async fn wait_metric(admin: SocketAddr, series: &str, at_least: f64) {
    wait_for(&format!("{series} >= {at_least}"), SECS, || async move {
        (metric(admin, series).await >= at_least).then_some(())
    })
    .await;
}

fn once(r: &serde_json::Value) {
    assert_eq!(
        r["accepted"].as_u64().unwrap() + r["duplicates"].as_u64().unwrap(),
        1,
        "{r}"
    );
}

/// Spool and memory mode: the request waits on its accept (held by a fault), the client
/// leaves, the accept still completes, and the retry learns it: a duplicate, published once.
async fn client_leaves_while_the_accept_waits(mode: &str) {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::none();
    let hb = start_faulty(dir.path(), &kafka(&broker.brokers(), mode, FAST), &faults).await;
    let body = g1_event(1, 1);
    faults.hold_accepts();
    post_and_leave(hb.http_addr, &body, Duration::from_millis(500)).await;
    wait_metric(
        hb.admin_addr,
        "hookbus_http_requests_total{code=\"499\"}",
        1.0,
    )
    .await;
    faults.open_accepts();
    let retry = retry_until_ok(hb.http_addr, &body).await;
    assert_eq!(retry, serde_json::json!({"accepted": 0, "duplicates": 1}));
    let records = consume(&broker.brokers(), &[TOPIC], 1, 1, QUIET).await;
    assert_exactly_once(&records, [g1_id(&body).as_str()]);
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_mode_client_leaves_mid_accept() {
    client_leaves_while_the_accept_waits("spool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_mode_client_leaves_mid_accept() {
    client_leaves_while_the_accept_waits("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_client_leaves_while_kafka_stalls() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(&broker.brokers(), "publish", FAST),
    ))
    .await;
    // The topic exists and the path works before the stall.
    let warmup = g1_event(0, 0);
    assert_eq!(post(hb.http_addr, &warmup).await.status, 200);
    let body = g1_event(1, 1);
    broker.pause();
    post_and_leave(hb.http_addr, &body, Duration::from_secs(1)).await;
    wait_metric(
        hb.admin_addr,
        "hookbus_http_requests_total{code=\"499\"}",
        1.0,
    )
    .await;
    broker.resume();
    once(&retry_until_ok(hb.http_addr, &body).await);
    let records = consume(&broker.brokers(), &[TOPIC], 1, 2, QUIET).await;
    assert_exactly_once(&records, [g1_id(&warmup).as_str(), g1_id(&body).as_str()]);
    hb.stop().await.unwrap();
}

/// Publish mode on Kafka: the publisher loop panics while a message it sent waits in the
/// producer (the broker stalls). The id stays pending until the broker stores it, so
/// PubNub's retry meanwhile is not published a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_a_lost_ticket_keeps_its_id_while_the_producer_holds_the_message() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::none();
    let hb = start_faulty(
        dir.path(),
        &kafka(&broker.brokers(), "publish", FAST),
        &faults,
    )
    .await;
    let warmup = g1_event(0, 0);
    assert_eq!(post(hb.http_addr, &warmup).await.status, 200);
    let body = g1_event(1, 1);
    broker.pause();
    let addr = hb.http_addr;
    let first = tokio::spawn({
        let body = body.clone();
        async move { post(addr, &body).await }
    });
    // The next message's send panics, which fails it and then panics the loop, while the
    // first waits in librdkafka.
    wait_metric(hb.admin_addr, "hookbus_queue_events", 0.0).await;
    faults.panic_sends(1);
    faults.panic_publisher(1);
    let other = g1_event(2, 2);
    let _ = try_post(addr, &other).await;
    wait_metric(hb.admin_addr, "hookbus_publisher_restarts_total", 1.0).await;
    assert_eq!(first.await.unwrap().status, 503);
    // PubNub's retry while the broker still stalls: the first delivery is undecided.
    let retry = post(addr, &body).await;
    assert_eq!(retry.status, 503, "{:?}", retry.json());
    broker.resume();
    once(&retry_until_ok(addr, &body).await);
    retry_until_ok(addr, &other).await;
    let ids = [g1_id(&warmup), g1_id(&body), g1_id(&other)];
    let records = consume(&broker.brokers(), &[TOPIC], 1, 3, QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_client_leaves_while_jetstream_stalls() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &format!(
            "[ack]\nmode = \"publish\"\npublish_timeout = \"2s\"\n[sink]\ntimeout = \"10s\"\n\
             [nats]\nurl = \"{}\"",
            nats.url()
        ),
    ))
    .await;
    let warmup = g1_event(0, 0);
    assert_eq!(post(hb.http_addr, &warmup).await.status, 200);
    let body = g1_event(1, 1);
    nats.pause();
    post_and_leave(hb.http_addr, &body, Duration::from_secs(1)).await;
    wait_metric(
        hb.admin_addr,
        "hookbus_http_requests_total{code=\"499\"}",
        1.0,
    )
    .await;
    nats.resume();
    once(&retry_until_ok(hb.http_addr, &body).await);
    let admin = hb.admin_addr;
    wait_metric(
        admin,
        "hookbus_events_published_total{action=\"join\",sink=\"nats\"}",
        2.0,
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("PRESENCE")
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    assert_eq!(
        metric(admin, "hookbus_broker_duplicates_total{sink=\"nats\"}").await,
        0.0,
        "JetStream's dedup never had to drop a second publish"
    );
    hb.stop().await.unwrap();
}

/// Many events posted while Kafka is stalled for `stall`, each retried the way PubNub does
/// until answered 200: every one is on the topic once.
async fn stall_then_retries(stall: Duration) {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(&broker.brokers(), "publish", FAST),
    ))
    .await;
    let warmup = g1_event(0, 0);
    assert_eq!(post(hb.http_addr, &warmup).await.status, 200);
    broker.pause();
    let addr = hb.http_addr;
    let senders: Vec<_> = (1..=20)
        .map(|n| {
            tokio::spawn(async move {
                let body = g1_event(2, n);
                // First attempts give up at 5 s like PubNub; later ones wait for the answer.
                let first =
                    tokio::time::timeout(Duration::from_secs(5), try_post(addr, &body)).await;
                if !matches!(&first, Ok(Some(r)) if r.status == 200) {
                    retry_until_ok(addr, &body).await;
                }
                g1_id(&body)
            })
        })
        .collect();
    tokio::time::sleep(stall).await; // the stall itself: what is being tested, not a sync
    broker.resume();
    let mut ids = vec![g1_id(&warmup)];
    for sender in senders {
        ids.push(sender.await.unwrap());
    }
    let records = consume(&broker.brokers(), &[TOPIC], 1, ids.len(), QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_stall_past_the_publish_timeout() {
    stall_then_retries(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_stall_past_the_sink_timeout() {
    stall_then_retries(Duration::from_secs(7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_permanent_refusal_is_dead_lettered() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // The event stream refuses messages over 1 KiB; dead letters have a stream of their own.
    for (name, subject, max) in [("PRESENCE", "presence.>", 1024), ("DEAD", "dead.>", -1)] {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            max_message_size: max,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &format!(
            "[ack]\nmode = \"publish\"\n[nats]\nurl = \"{}\"\n[routing]\ndead_letter = \"dead.presence\"",
            nats.url()
        ),
    ))
    .await;
    let big = serde_json::json!({
        "action": "state-change", "sub_key": "sub-c-1", "channel": "lobby", "uuid": "u1",
        "timestamp": 1718035200, "data": {"bio": "x".repeat(2000)}
    });
    let body = serde_json::to_vec(&big).unwrap();
    let r = post(hb.http_addr, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "duplicates": 0})
    );
    let mut dead = js.get_stream("DEAD").await.unwrap();
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
    let m = dead.get_raw_message(1).await.unwrap();
    assert_eq!(
        m.headers
            .get("hookbus-dead-letter-reason")
            .map(|v| v.as_str()),
        Some("publish_failed")
    );
    let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(event["id"], g1_id(&body));
    let mut presence = js.get_stream("PRESENCE").await.unwrap();
    assert_eq!(presence.info().await.unwrap().state.messages, 0);
    assert_eq!(
        metric(
            hb.admin_addr,
            "hookbus_dead_letters_total{reason=\"publish_failed\"}"
        )
        .await,
        1.0
    );
    // PubNub's retry of it is a duplicate: not dead-lettered again.
    assert_eq!(
        post(hb.http_addr, &body).await.json(),
        serde_json::json!({"accepted": 0, "duplicates": 1})
    );
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
    hb.stop().await.unwrap();
}

/// Posts `count` distinct events one at a time, each once published before the next.
async fn publish_one_by_one(hb: &hookbus::app::Running, from: usize, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in from..from + count {
        let body = g1_event(3, n);
        assert_eq!(post(hb.http_addr, &body).await.status, 200);
        ids.push(g1_id(&body));
        let published = (n + 1) as f64;
        wait_metric(
            hb.admin_addr,
            "hookbus_events_published_total{action=\"join\",sink=\"kafka\"}",
            published,
        )
        .await;
    }
    ids
}

async fn healthz(admin: SocketAddr) -> u16 {
    request(admin, "GET", "/healthz", &[], b"").await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_read_errors_are_retried_and_a_lasting_one_fails_health() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::none();
    let hb = start_faulty(
        dir.path(),
        &kafka(&broker.brokers(), "spool", FAST),
        &faults,
    )
    .await;
    let admin = hb.admin_addr;
    faults.fail_spool_reads(3);
    let mut ids = publish_one_by_one(&hb, 0, 2).await;
    assert!(metric(admin, "hookbus_publisher_errors_total{kind=\"spool_read\"}").await >= 3.0);
    assert_eq!(
        healthz(admin).await,
        200,
        "a passing read error is not a failure"
    );

    faults.break_spool_reads();
    let body = g1_event(3, 2);
    assert_eq!(
        post(hb.http_addr, &body).await.status,
        200,
        "still accepting into the spool"
    );
    wait_for("/healthz to fail", SECS, || async move {
        (healthz(admin).await == 503).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            admin,
            "hookbus_events_published_total{action=\"join\",sink=\"kafka\"}"
        )
        .await,
        2.0,
        "the record cannot be read while reads fail"
    );
    faults.repair_spool_reads();
    ids.push(g1_id(&body));
    wait_metric(
        admin,
        "hookbus_events_published_total{action=\"join\",sink=\"kafka\"}",
        3.0,
    )
    .await;
    wait_for("/healthz to recover", SECS, || async move {
        (healthz(admin).await == 200).then_some(())
    })
    .await;
    let records = consume(&broker.brokers(), &[TOPIC], 1, ids.len(), QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_the_sink_and_the_publisher_are_recovered_from() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::none();
    let hb = start_faulty(
        dir.path(),
        &kafka(&broker.brokers(), "spool", FAST),
        &faults,
    )
    .await;
    let admin = hb.admin_addr;
    faults.panic_sends(1);
    let mut ids = publish_one_by_one(&hb, 0, 2).await;
    assert_eq!(
        metric(admin, "hookbus_publisher_errors_total{kind=\"panic\"}").await,
        1.0
    );
    faults.panic_publisher(1);
    ids.extend(publish_one_by_one(&hb, 2, 2).await);
    assert_eq!(metric(admin, "hookbus_publisher_restarts_total").await, 1.0);
    assert_eq!(healthz(admin).await, 200);
    let records = consume(&broker.brokers(), &[TOPIC], 1, ids.len(), QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));

    // A publisher that keeps panicking cannot recover by itself: the orchestrator restarts it.
    // Each event panics the loop once it is confirmed (a restart does not send it again: the
    // broker check before the replay finds it), so they come one per restart.
    faults.panic_publisher(100);
    for n in 10..20 {
        assert_eq!(post(hb.http_addr, &g1_event(3, n)).await.status, 200);
        wait_metric(admin, "hookbus_publisher_restarts_total", (n - 8) as f64).await;
    }
    wait_for("/healthz to fail", SECS, || async move {
        (healthz(admin).await == 503).then_some(())
    })
    .await;
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_topic_creation_does_not_divert_events_of_an_existing_topic() {
    let proxy = Proxy::start();
    let broker = Tansu::behind(proxy.port);
    proxy.target(broker.port);
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(dir.path(), &kafka(&broker.brokers(), "spool", FAST))).await;
    // The topic appears after hookbus looked at the cluster, so hookbus will try to create
    // it; the cluster refuses CreateTopics (the connection asking is dropped).
    let admin = hb.admin_addr;
    wait_for("the sink to connect", SECS, || async move {
        (metric(admin, "hookbus_sink_up{sink=\"kafka\"}").await == 1.0).then_some(())
    })
    .await;
    create_topics(&broker.brokers(), &[TOPIC], 1).await;
    proxy.refuse_kafka_requests(19);
    let ids = publish_one_by_one(&hb, 0, 3).await;
    assert_eq!(
        metric(
            admin,
            "hookbus_dead_letters_total{reason=\"publish_failed\"}"
        )
        .await,
        0.0
    );
    let records = consume(&broker.brokers(), &[TOPIC], 1, ids.len(), QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_burst_keeps_the_channel_in_order() {
    let proxy = Proxy::start();
    let broker = Tansu::behind(proxy.port);
    proxy.target(broker.port);
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(dir.path(), &kafka(&broker.brokers(), "spool", FAST))).await;
    let body = |n: usize| {
        format!(
            r#"{{"action":"join","sub_key":"sub-c-1","channel":"one.channel","uuid":"u-{n:04}","timestamp":1718035200}}"#
        )
        .into_bytes()
    };
    let mut ids = Vec::new();
    for n in 0..300 {
        if n == 100 {
            proxy.cut();
        }
        if n == 200 {
            proxy.restore();
        }
        assert_eq!(post(hb.http_addr, &body(n)).await.status, 200);
        ids.push(g1_id(&body(n)));
    }
    let records: Vec<Record> = consume(&broker.brokers(), &[TOPIC], 1, ids.len(), QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    let mut in_partition = records;
    in_partition.sort_by_key(|r| r.offset);
    let order: Vec<&str> = in_partition.iter().map(Record::event_id).collect();
    let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        order, expected,
        "the channel's events are stored in accept order"
    );
    hb.stop().await.unwrap();
}

/// Record offsets in a spool segment file (24-byte headers: crc, len, seq, ms).
fn record_offsets(segment: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    // Records follow the 16-byte segment header (spool format v1); a v0 file has none.
    let mut at = if segment.starts_with(b"HBSPSEG\0") {
        16
    } else {
        0
    };
    while at + 24 <= segment.len() {
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().unwrap()) as usize;
        if segment[at..at + 24].iter().all(|&b| b == 0) {
            break;
        }
        offsets.push(at);
        at += 24 + len;
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_of_the_last_segment_keeps_the_records_after_it() {
    let proxy = Proxy::start();
    let broker = Tansu::behind(proxy.port);
    proxy.target(broker.port);
    proxy.cut(); // the broker is unreachable: everything stays in the spool
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let toml = kafka(&broker.brokers(), "spool", FAST);
    let mut hb = Process::spawn(&spool, &toml).await;
    let bodies: Vec<Vec<u8>> = (0..10).map(|n| g1_event(4, n)).collect();
    for body in &bodies {
        assert_eq!(post(hb.http_addr, body).await.status, 200);
    }
    hb.signal(SIGKILL);
    let _ = hb.child.wait().await;

    let segment = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 10);
    bytes[offsets[4] + 30] ^= 0xFF; // inside record 4's payload
    std::fs::write(&segment, &bytes).unwrap();

    proxy.restore();
    let hb = Process::spawn(&spool, &toml).await;
    let expected: Vec<String> = bodies
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != 4)
        .map(|(_, b)| g1_id(b))
        .collect();
    let records = consume(&broker.brokers(), &[TOPIC], 1, expected.len(), QUIET).await;
    assert_exactly_once(&records, expected.iter().map(String::as_str));
    assert_eq!(
        metric(hb.admin_addr, "hookbus_spool_corrupt_records_total").await,
        1.0
    );
    let kept = std::fs::read_dir(spool.join("corrupt")).unwrap().count();
    assert_eq!(kept, 1, "the damaged bytes are kept for inspection");
    assert!(hb.log().contains("corrupt records"), "{}", hb.log());
}

/// Starts the binary on `spool` (broker unreachable) and returns its peak RSS once it has
/// rebuilt the dedup set.
async fn peak_after_start(spool: &std::path::Path, toml: &str, restored: Option<usize>) -> u64 {
    let hb = Process::spawn_with_env(spool, toml, &[("RUST_LOG", "info")]).await;
    if let Some(n) = restored {
        hb.wait_log(&format!("restored={n}"), SECS).await;
    }
    let pid = hb.child.id().unwrap();
    let peak = peak_rss_kib(pid);
    drop(hb);
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_dedup_set_within_the_tables_memory() {
    const RECORDS: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[ack]\nmode = \"spool\"\n[spool]\nmax_bytes = 1073741824\n[nats]\nurl = \"nats://127.0.0.1:{}\"",
        dead_port()
    );
    // A full window of spooled events (~500-byte records), written with the spool's own API.
    let full = dir.path().join("full");
    {
        let spool = hookbus::spool::Spool::open(hookbus::spool::SpoolConfig {
            dir: full.clone(),
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            retain: Duration::from_secs(1200),
        })
        .unwrap();
        let mut n = 0;
        while n < RECORDS {
            let batch: Vec<bytes::Bytes> = (n..n + 1000)
                .map(|i| {
                    let body = g1_event(5, i);
                    let event = &hookbus::normalize::normalize(&body, 1).unwrap()[0];
                    let job = hookbus::publisher::Job {
                        message: hookbus::message::Message {
                            topic: "presence.all.join".to_owned(),
                            key: Some(event.channel.clone()),
                            headers: vec![(hookbus::message::HEADER_EVENT_ID, event.id.clone())],
                            payload: bytes::Bytes::from(event.to_json()),
                            msg_id: Some(event.id.clone()),
                            is_event: true,
                        },
                        action: Some(event.action),
                        received_ms: 1,
                        event_ms: None,
                        done: hookbus::publisher::Done::Nobody,
                        charge: None,
                    };
                    job.encode()
                })
                .collect();
            spool.append(batch).await.unwrap();
            n += 1000;
        }
        spool.close().await.unwrap();
    }
    let empty = dir.path().join("empty");
    let baseline = peak_after_start(&empty, &toml, None).await;
    let peak = peak_after_start(&full, &toml, Some(RECORDS)).await;
    // The dedup table's documented size is ≤ 64 bytes per id; allow three times that.
    let table_kib = (RECORDS * 64 / 1024) as u64;
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown <= 3 * table_kib + 16 * 1024,
        "peak RSS grew by {grown} KiB for {RECORDS} ids (table ≈ {table_kib} KiB; baseline {baseline} KiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_publishes_a_killed_instances_spool_exactly_once() {
    let proxy = Proxy::start();
    let broker = Tansu::behind(proxy.port);
    proxy.target(broker.port);
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut hb = Process::spawn(&spool, &kafka(&broker.brokers(), "spool", FAST)).await;
    let ids: Vec<String> = (0..20).map(|n| g1_id(&g1_event(6, n))).collect();
    for n in 0..20 {
        assert_eq!(post(hb.http_addr, &g1_event(6, n)).await.status, 200);
    }
    hb.signal(SIGKILL);
    let _ = hb.child.wait().await;
    proxy.restore();

    let drain = |config: std::path::PathBuf, spool: std::path::PathBuf| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
            .arg("--config")
            .arg(&config)
            .args(["drain", "--spool-dir"])
            .arg(&spool)
            .args(["--timeout", "60s"])
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = drain(hb.config_path.clone(), spool.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("20 records published, 0 left"), "{out}");
    let records = consume(&broker.brokers(), &[TOPIC], 1, 20, QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    // Nothing is left, so a second drain publishes nothing.
    let (code, out) = drain(hb.config_path.clone(), spool.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 records published, 0 left"), "{out}");
    let records = consume(&broker.brokers(), &[TOPIC], 1, 20, QUIET).await;
    assert_eq!(records.len(), 20);
}
