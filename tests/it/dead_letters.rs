//! `hookbus dead-letters list|replay` against a real broker (tansu, nats-server): dead letters
//! on the broker and on disk, some as an older hookbus left them (bodies today's normalize
//! accepts: the upgrade case), some still invalid. Replayed once, the valid ones are published
//! once; replayed again, nothing is published twice (counted on Kafka by consuming: no
//! broker-side dedup hides a repeat); `--dry-run` publishes nothing; the invalid ones stay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::kafka::{Reader, assert_exactly_once, kafka};
use crate::common::*;

const SCHEMA: &str = "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0";

/// What a `hookbus dead-letters …` run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(config: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .arg("--config")
        .arg(config)
        .arg("dead-letters")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("hookbus binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The summary line of a replay.
fn summary(run: &Run) -> &str {
    assert_eq!(run.code, 0, "replay failed:\n{}{}", run.stdout, run.stderr);
    run.stdout
        .lines()
        .find(|l| l.starts_with("replayed="))
        .unwrap_or_else(|| panic!("no summary line:\n{}{}", run.stdout, run.stderr))
}

/// Dead letters an older hookbus left on disk (no meta file): a body today's normalize
/// accepts, and one that is still not JSON.
fn old_files(spool: &Path, valid: &[u8]) -> (PathBuf, PathBuf) {
    let dir = spool.join("dead-letters");
    std::fs::create_dir_all(&dir).unwrap();
    let valid_path = dir.join("1764950000000-invalid_payload-00112233aabbccdd.body");
    std::fs::write(&valid_path, valid).unwrap();
    let invalid_path = dir.join("1764950000001-invalid_payload-44556677eeff0011.body");
    std::fs::write(&invalid_path, b"{still not json").unwrap();
    (valid_path, invalid_path)
}

/// The bridge's own dead letters: a body that is not JSON, and the invalid item of a batch
/// (no channel; its valid sibling is published as usual).
async fn post_invalid(http: std::net::SocketAddr) {
    assert_eq!(post(http, b"{not json").await.status, 400);
    let batch = serde_json::json!({
        "schema": SCHEMA,
        "data": [
            {"id": "ok-1", "channel": "room.a", "userId": "u", "timestamp": "2024-06-10T16:00:00Z"},
            {"id": "bad-1", "userId": "u", "timestamp": "2024-06-10T16:00:00Z"},
        ],
    });
    let response = post(http, &serde_json::to_vec(&batch).unwrap()).await;
    assert!(response.status < 300, "{response:?}");
}

/// An item a fixed hookbus accepts, dead-lettered by one that kept the batch schema.
fn fixed_item() -> (String, Vec<(&'static str, String)>) {
    let item =
        r#"{"id":"it-1","channel":"room.b","userId":"u9","timestamp":"2024-06-10T16:00:01Z"}"#;
    let headers = vec![
        ("hookbus-dead-letter-reason", "invalid_item".to_owned()),
        (
            "hookbus-dead-letter-error",
            "data[3]: an old bug".to_owned(),
        ),
        ("hookbus-dead-letter-index", "3".to_owned()),
        ("hookbus-dead-letter-schema", SCHEMA.to_owned()),
        ("hookbus-dead-letter-batch", "ab".repeat(32)),
    ];
    (item.to_owned(), headers)
}

/// An item dead letter as hookbus left it before items carried their batch schema.
fn schemaless_item() -> (String, Vec<(&'static str, String)>) {
    let item =
        r#"{"id":"it-2","channel":"room.c","userId":"u8","timestamp":"2024-06-10T16:00:02Z"}"#;
    let headers = vec![
        ("hookbus-dead-letter-reason", "invalid_item".to_owned()),
        (
            "hookbus-dead-letter-error",
            "data[0]: an old bug".to_owned(),
        ),
        ("hookbus-dead-letter-index", "0".to_owned()),
    ];
    (item.to_owned(), headers)
}

/// A whole body an older hookbus refused and today's accepts.
fn upgraded_body() -> (Vec<u8>, Vec<(&'static str, String)>) {
    let headers = vec![
        ("hookbus-dead-letter-reason", "invalid_payload".to_owned()),
        ("hookbus-dead-letter-error", "unknown format".to_owned()),
    ];
    (g1_event(41, 1), headers)
}

async fn produce_kafka(brokers: &str, payload: &[u8], headers: &[(&str, String)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let record: FutureRecord<'_, (), [u8]> = FutureRecord::to("presence.dead-letter")
        .payload(payload)
        .headers(owned);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dead_letters_are_listed_and_replayed_once() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hookbus = Process::spawn(&spool, &kafka(&broker.brokers(), "memory", "")).await;
    post_invalid(hookbus.http_addr).await;
    let (body, headers) = upgraded_body();
    produce_kafka(&broker.brokers(), &body, &headers).await;
    let (item, headers) = fixed_item();
    produce_kafka(&broker.brokers(), item.as_bytes(), &headers).await;
    let (item, headers) = schemaless_item();
    produce_kafka(&broker.brokers(), item.as_bytes(), &headers).await;
    let on_disk = g1_event(42, 2);
    let (valid_file, invalid_file) = old_files(&spool, &on_disk);
    let config = hookbus.config_path.clone();

    // list: five on the broker (two from the bridge, three as produced), two on disk.
    let listed = wait_for(
        "all dead letters listed",
        Duration::from_secs(30),
        || async {
            let run = cli(&config, &["list", "--json"]).await;
            (run.code == 0 && run.stdout.lines().count() == 7).then_some(run)
        },
    )
    .await;
    let lines: Vec<serde_json::Value> = listed
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for line in &lines {
        for key in ["time", "reason", "error", "size", "index", "source", "ref"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
    assert_eq!(lines.iter().filter(|l| l["source"] == "disk").count(), 2);
    let item = lines
        .iter()
        .find(|l| l["reason"] == "invalid_item" && l["error"].as_str().unwrap().contains("channel"))
        .expect("the bridge's item dead letter");
    assert_eq!(item["index"], 1);
    let text = cli(&config, &["list"]).await;
    assert_eq!(text.code, 0);
    assert_eq!(text.stdout.lines().count(), 7, "{}", text.stdout);

    // A dry run publishes, records and removes nothing.
    let dry = cli(&config, &["replay", "--dry-run"]).await;
    assert!(
        summary(&dry).starts_with("replayed=3 duplicates=0 still_invalid=4"),
        "{}",
        dry.stdout
    );
    assert!(valid_file.exists());
    assert!(!spool.join("dead-letters/replayed.log").exists());
    // --since: the files were written a year ago, the broker's just now.
    let recent = cli(&config, &["replay", "--dry-run", "--since", "1h"]).await;
    assert!(summary(&recent).starts_with("replayed=2 duplicates=0 still_invalid=3"));
    let future = cli(
        &config,
        &["replay", "--dry-run", "--since", "2999-01-01T00:00:00Z"],
    )
    .await;
    assert!(summary(&future).starts_with("replayed=0 duplicates=0 still_invalid=0"));
    let items = cli(
        &config,
        &["replay", "--dry-run", "--reason", "invalid_item"],
    )
    .await;
    assert!(summary(&items).starts_with("replayed=1 duplicates=0 still_invalid=2"));

    let first = cli(&config, &["replay"]).await;
    assert_eq!(
        summary(&first),
        "replayed=3 duplicates=0 still_invalid=4",
        "{}",
        first.stderr
    );
    assert_eq!(
        first.stderr.matches("still invalid:").count(),
        4,
        "{}",
        first.stderr
    );
    assert!(first.stderr.contains("schema unknown"), "{}", first.stderr);
    assert!(
        first.stderr.contains("3 events published"),
        "{}",
        first.stderr
    );
    assert!(!valid_file.exists(), "a replayed file is removed");
    assert!(invalid_file.exists(), "what still fails is kept");

    let again = cli(&config, &["replay"]).await;
    assert_eq!(summary(&again), "replayed=0 duplicates=2 still_invalid=4");

    // On the event topics: each replayed event exactly once, and the bridge's own once.
    let ids = [
        g1_id(&body),
        g1_id(&on_disk),
        "it-1".to_owned(),
        "ok-1".to_owned(),
    ];
    // The channels' dots are escaped in topic names (`hookbus topic room.1`).
    let topics = [
        "presence.room_2E1.join",
        "presence.room_2E2.join",
        "presence.room_2Ea.join",
        "presence.room_2Eb.join",
    ];
    let brokers = broker.brokers();
    let records = tokio::task::spawn_blocking(move || {
        Reader::new(&brokers, &topics, 1, &[]).read(
            4,
            Duration::from_secs(3),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    let it = records.iter().find(|r| r.event_id() == "it-1").unwrap();
    assert_eq!(
        it.header("hookbus-action"),
        Some("join"),
        "the action from the schema"
    );
    assert_eq!(it.key.as_deref(), Some(b"room.b".as_slice()));

    // Usage errors exit 64; an unreachable broker exits 1 and touches nothing.
    assert_eq!(
        cli(&config, &["replay", "--since", "yesterday"]).await.code,
        64
    );
    assert_eq!(cli(&config, &["replay", "--bogus"]).await.code, 64);
    drop(hookbus);
    drop(broker);
    let down = cli(&config, &["replay", "--timeout", "3s"]).await;
    assert_eq!(down.code, 1, "{}{}", down.stdout, down.stderr);
    assert!(invalid_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_dead_letters_are_replayed_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let extra = format!(
        "[sink]\nkind = \"nats\"\ntimeout = \"500ms\"\n\
         [nats]\nurl = \"{}\"\nduplicate_window = \"1s\"",
        nats.url()
    );
    let hookbus = Process::spawn(&spool, &extra).await;
    post_invalid(hookbus.http_addr).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for (payload, headers) in [
        (upgraded_body().0, upgraded_body().1),
        (fixed_item().0.into_bytes(), fixed_item().1),
        (schemaless_item().0.into_bytes(), schemaless_item().1),
    ] {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(k, v.as_str());
        }
        js.publish_with_headers("presence.dead-letter", map, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let on_disk = g1_event(43, 3);
    let (valid_file, _) = old_files(&spool, &on_disk);
    let config = hookbus.config_path.clone();
    wait_for(
        "all dead letters listed",
        Duration::from_secs(30),
        || async {
            let run = cli(&config, &["list"]).await;
            (run.code == 0 && run.stdout.lines().count() == 7).then_some(())
        },
    )
    .await;
    let first = cli(&config, &["replay"]).await;
    assert_eq!(
        summary(&first),
        "replayed=3 duplicates=0 still_invalid=4",
        "{}",
        first.stderr
    );
    assert!(!valid_file.exists());
    // The second replay comes past the stream's duplicate window, so JetStream's own dedup
    // cannot be what holds.
    let stream = js.get_stream("PRESENCE").await.unwrap();
    let after_first = wait_for("replayed events stored", Duration::from_secs(10), || {
        let mut stream = stream.clone();
        async move {
            let n = stream.info().await.unwrap().state.messages;
            (n >= 4).then_some(n)
        }
    })
    .await;
    assert_eq!(after_first, 4, "ok-1, and the three replayed events");
    wait_for(
        "the stream's last message to leave the window",
        Duration::from_secs(30),
        || {
            let mut stream = stream.clone();
            async move {
                let last = stream.info().await.ok()?.state.last_timestamp;
                let age = time::OffsetDateTime::now_utc() - last;
                (age > time::Duration::milliseconds(1_100)).then_some(())
            }
        },
    )
    .await;
    let again = cli(&config, &["replay"]).await;
    assert_eq!(summary(&again), "replayed=0 duplicates=2 still_invalid=4");
    let mut stream = stream.clone();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        4,
        "nothing published twice"
    );
    drop(hookbus);
}
