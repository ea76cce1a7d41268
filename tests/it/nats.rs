//! End to end through a real `nats-server -js` started per test: every fixture lands on its
//! subject with the contract's headers and JSON; bad input is dead-lettered byte-identical;
//! PubNub retries are published once.

use std::time::Duration;

use crate::common::*;
use async_nats::jetstream;

const SECS: Duration = Duration::from_secs(20);

struct Stored {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
}

async fn stream_messages(url: &str, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(url)
        .await
        .expect("connect to test nats");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    let info = stream.info().await.expect("stream info").clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.expect("stored message");
        out.push(Stored {
            subject: m.subject.to_string(),
            headers: m.headers,
            payload: m.payload.to_vec(),
        });
    }
    out
}

async fn wait_messages(url: &str, count: usize) -> Vec<Stored> {
    wait_stream_messages(url, "PRESENCE", count).await
}

/// The messages of `stream` once it holds at least `count`.
async fn wait_stream_messages(url: &str, stream: &str, count: usize) -> Vec<Stored> {
    let url = url.to_owned();
    wait_for(&format!("messages in the stream {stream}"), SECS, || {
        let url = url.clone();
        async move {
            let client = async_nats::connect(&url).await.ok()?;
            let js = jetstream::new(client);
            let mut stream = js.get_stream(stream).await.ok()?;
            let n = stream.info().await.ok()?.state.messages as usize;
            (n >= count).then_some(())
        }
    })
    .await;
    stream_messages(&url, stream).await
}

fn header<'a>(m: &'a Stored, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

async fn round_trip(mode: &str) {
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &format!(
            "[ack]\nmode = \"{mode}\"\n[sink]\nkind = \"nats\"\n[nats]\nurl = \"{}\"",
            nats.url()
        ),
    ))
    .await;
    let expected = post_fixtures(hookbus.http_addr).await;
    let stored = wait_messages(&nats.url(), expected.len()).await;
    assert_eq!(stored.len(), expected.len());
    let now = hookbus::publisher::now_ms();
    for (m, (name, subject, event)) in stored.iter().zip(&expected) {
        assert_eq!(m.subject, *subject, "{name}");
        let value: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON payload");
        let received = value["received_at_ms"].as_u64().expect("received_at_ms");
        assert!(
            now.abs_diff(received) < 120_000,
            "{name}: received_at_ms {received}"
        );
        assert_eq!(without_received(value), *event, "{name}");
        let id = event["id"].as_str().unwrap();
        assert_eq!(header(m, "Nats-Msg-Id"), Some(id), "{name}");
        assert_eq!(header(m, "hookbus-event-id"), Some(id), "{name}");
        assert_eq!(
            header(m, "hookbus-action"),
            event["action"].as_str(),
            "{name}"
        );
        assert_eq!(
            header(m, "hookbus-channel"),
            event["channel"].as_str(),
            "{name}"
        );
        assert_eq!(
            header(m, "hookbus-sub-key"),
            event["sub_key"].as_str(),
            "{name}"
        );
        assert_eq!(
            header(m, "content-type"),
            Some("application/json"),
            "{name}"
        );
    }
    hookbus.stop().await.unwrap();
}

#[tokio::test]
async fn every_fixture_round_trips_in_publish_mode() {
    round_trip("publish").await;
}

#[tokio::test]
async fn every_fixture_round_trips_in_memory_mode() {
    round_trip("memory").await;
}

#[tokio::test]
async fn every_fixture_round_trips_in_spool_mode() {
    round_trip("spool").await;
}

#[tokio::test]
async fn bad_input_gets_400_and_a_byte_identical_dead_letter() {
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &format!(
            "[ack]\nmode = \"publish\"\n[nats]\nurl = \"{}\"",
            nats.url()
        ),
    ))
    .await;
    let bad = bad_inputs();
    for (name, body) in &bad {
        let response = post(hookbus.http_addr, body).await;
        assert_eq!(response.status, 400, "{name}");
        let json = response.json();
        assert_eq!(json["error"], "invalid_payload", "{name}");
        assert!(!json["message"].as_str().unwrap().is_empty(), "{name}");
    }
    // Dead letters have a stream of their own.
    let stored = wait_stream_messages(&nats.url(), "PRESENCE_DEAD_LETTERS", bad.len()).await;
    assert_eq!(stored.len(), bad.len());
    for (m, (name, body)) in stored.iter().zip(&bad) {
        assert_eq!(m.subject, "presence.dead-letter", "{name}");
        assert_eq!(
            &m.payload, body,
            "{name}: dead letter must be byte-identical"
        );
        assert_eq!(
            header(m, "hookbus-dead-letter-reason"),
            Some("invalid_payload"),
            "{name}"
        );
        assert!(header(m, "hookbus-dead-letter-error").is_some(), "{name}");
    }
    assert_eq!(
        metric(
            hookbus.admin_addr,
            "hookbus_dead_letters_total{reason=\"invalid_payload\"}"
        )
        .await,
        bad.len() as f64
    );
    assert_eq!(
        metric(
            hookbus.admin_addr,
            "hookbus_http_requests_total{code=\"400\"}"
        )
        .await,
        bad.len() as f64
    );
    hookbus.stop().await.unwrap();
}

#[tokio::test]
async fn stream_is_created_with_the_configured_retention_and_subjects() {
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &format!(
            "[ack]\nmode = \"memory\"\n[nats]\nurl = \"{}\"\nstream = \"PN_TEST\"\n\
             duplicate_window = \"7m\"\nmax_age = \"3h\"\nmax_bytes = 123456789\nstorage = \"memory\"",
            nats.url()
        ),
    ))
    .await;
    let url = nats.url();
    let info = wait_for("stream PN_TEST", SECS, || {
        let url = url.clone();
        async move {
            let js = jetstream::new(async_nats::connect(&url).await.ok()?);
            let mut stream = js.get_stream("PN_TEST").await.ok()?;
            stream.info().await.ok().cloned()
        }
    })
    .await;
    assert_eq!(info.config.duplicate_window, Duration::from_secs(420));
    assert_eq!(info.config.max_age, Duration::from_secs(3 * 3600));
    assert_eq!(info.config.max_bytes, 123_456_789);
    assert_eq!(info.config.storage, jetstream::stream::StorageType::Memory);
    assert_eq!(info.config.num_replicas, 1);
    assert_eq!(
        info.config.subjects,
        vec!["presence.*.*".to_owned()],
        "the event names and nothing else: dead letters have a stream of their own"
    );
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let dead = wait_for("stream PN_TEST_DEAD_LETTERS", SECS, || {
        let js = js.clone();
        async move {
            js.get_stream("PN_TEST_DEAD_LETTERS")
                .await
                .ok()?
                .info()
                .await
                .ok()
                .cloned()
        }
    })
    .await;
    assert_eq!(
        dead.config.subjects,
        vec!["presence.dead-letter".to_owned()]
    );
    assert_eq!(dead.config.max_bytes, 268_435_456, "limits of its own");
    assert_eq!(dead.config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(
        metric(hookbus.admin_addr, "hookbus_config_warnings_total").await,
        0.0
    );
    hookbus.stop().await.unwrap();
}

#[tokio::test]
async fn existing_stream_with_other_settings_is_left_alone_and_warned_about() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "PRESENCE".to_owned(),
        subjects: vec!["presence.>".to_owned()],
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &format!("[ack]\nmode = \"memory\"\n[nats]\nurl = \"{}\"", nats.url()),
    ))
    .await;
    let admin = hookbus.admin_addr;
    // duplicate_window, max_age and max_bytes differ from the configuration.
    wait_for("config warnings", SECS, || async move {
        (metric(admin, "hookbus_config_warnings_total").await >= 3.0).then_some(())
    })
    .await;
    let mut stream = js.get_stream("PRESENCE").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.config.duplicate_window,
        Duration::from_secs(60),
        "left as it was"
    );
    hookbus.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_items_leaves_every_event_in_the_presence_stream() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // A small event stream, a small dead-letter budget per window and a small disk budget.
    let hookbus = start(config(
        &spool,
        &format!(
            "[ack]\nmode = \"publish\"\n[nats]\nurl = \"{}\"\nmax_bytes = 1048576\n\
             dead_letter_max_bytes = 1048576\n[routing]\ndead_letter_budget_bytes = 262144\n\
             [spool]\ndead_letter_max_bytes = 1048576",
            nats.url()
        ),
    ))
    .await;
    let admin = hookbus.admin_addr;
    wait_for("the sink to connect", SECS, || async move {
        (metric(admin, "hookbus_sink_up{sink=\"nats\"}").await == 1.0).then_some(())
    })
    .await;
    let events = 200;
    for i in 0..events {
        let body = format!(
            r#"{{"action":"join","sub_key":"sub-c-1","channel":"room-{i}","uuid":"u{i}","timestamp":1718035200,"occupancy":1}}"#
        );
        assert_eq!(post(hookbus.http_addr, body.as_bytes()).await.status, 200);
    }
    // 30 batches of 10,000 invalid items (no channel), each distinct.
    for r in 0..30 {
        let items: Vec<String> = (0..10_000)
            .map(|i| format!(r#"{{"id":"{r}-{i}"}}"#))
            .collect();
        let body = format!(
            r#"{{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[{}]}}"#,
            items.join(",")
        );
        let response = post(hookbus.http_addr, body.as_bytes()).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.json()["rejected"], 10_000);
    }
    let stored = stream_messages(&nats.url(), "PRESENCE").await;
    assert_eq!(
        stored.len(),
        events,
        "every real event is still in the stream"
    );
    assert!(stored.iter().all(|m| m.subject.ends_with(".join")));
    let dead = stream_messages(&nats.url(), "PRESENCE_DEAD_LETTERS").await;
    // 262,144 bytes per window at ~530 bytes a dead letter (payload and overhead).
    assert!(
        !dead.is_empty() && dead.len() < 600,
        "{} dead letters on the broker",
        dead.len()
    );
    assert!(metric(admin, "hookbus_dead_letters_spilled_total").await > 0.0);
    assert!(
        metric(admin, "hookbus_dead_letters_total{reason=\"dropped\"}").await > 0.0,
        "past the disk budget, dead letters are dropped and counted"
    );
    let files = std::fs::read_dir(spool.join("dead-letters"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "body")
        })
        .count();
    // Each spilled batch is kept whole, one file of ~150 KB: a few fit 1 MiB.
    assert!((1..=8).contains(&files), "{files} files within 1 MiB");
    hookbus.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_took_the_dead_letter_subject_is_narrowed_at_start() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // As hookbus created it before dead letters had a stream of their own.
    js.create_stream(jetstream::stream::Config {
        name: "PRESENCE".to_owned(),
        subjects: vec!["presence.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("presence.dead-letter", "old".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &format!(
            "[ack]\nmode = \"publish\"\n[nats]\nurl = \"{}\"",
            nats.url()
        ),
    ))
    .await;
    assert_eq!(post(hookbus.http_addr, b"not json").await.status, 400);
    assert_eq!(
        post(
            hookbus.http_addr,
            br#"{"action":"join","channel":"lobby","uuid":"u1","timestamp":1718035200}"#
        )
        .await
        .status,
        200
    );
    let mut events = js.get_stream("PRESENCE").await.unwrap();
    let info = events.info().await.unwrap().clone();
    assert_eq!(info.config.subjects, vec!["presence.*.*".to_owned()]);
    assert_eq!(
        info.state.messages, 2,
        "the old dead letter stays, the join is added"
    );
    let dead = stream_messages(&nats.url(), "PRESENCE_DEAD_LETTERS").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"not json");
    assert!(
        metric(hookbus.admin_addr, "hookbus_config_warnings_total").await >= 1.0,
        "the narrowing is reported"
    );
    hookbus.stop().await.unwrap();
}
