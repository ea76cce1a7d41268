//! Formats in and out: an Events & Actions batch is handled item by item (each invalid item
//! dead-lettered alone, byte-identical), every envelope version yields the events of its
//! unenveloped twin on NATS and Kafka, and with `routing.cloudevents` a CloudEvents SDK in
//! another language (Python) reads every message as a valid CloudEvent.

use std::time::Duration;

use crate::common::kafka::{Record, assert_exactly_once, consume, kafka};
use crate::common::*;

const QUIET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_invalid_items_publishes_the_valid_ones_and_dead_letters_each_bad_one() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(
            &broker.brokers(),
            "spool",
            "[routing]\ntemplate = \"presence.all.{action}\"",
        ),
    ))
    .await;
    let valid = |n: u32| {
        format!(
            r#"{{"id":"mixed-{n}","channel":"room.{n}","userId":"u{n}","occupancy":1,"timestamp":"2024-06-10T16:00:0{n}Z","subKey":"sub-c-1"}}"#
        )
    };
    let bad = [
        r#"{"id":"bad-1","channel":"","userId":"u","timestamp":"2024-06-10T16:00:00Z"}"#,
        r#"{"id":"bad-2","channel":"room\u0001x","userId":"u","timestamp":"2024-06-10T16:00:00Z"}"#,
        r#"{"id":"bad-3","userId":"u","timestamp":"2024-06-10T16:00:00Z"}"#,
        r#"42"#,
    ];
    let items = [
        valid(0),
        bad[0].to_owned(),
        valid(1),
        bad[1].to_owned(),
        bad[2].to_owned(),
        bad[3].to_owned(),
        valid(2),
    ];
    let body = format!(
        r#"{{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[{}]}}"#,
        items.join(", ")
    );
    let r = post(hb.http_addr, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 3, "duplicates": 0, "rejected": 4})
    );

    // PubNub retries the whole batch: the valid items are duplicates, the invalid ones are
    // answered as rejected again but not dead-lettered twice.
    let again = post(hb.http_addr, body.as_bytes()).await;
    assert_eq!(
        again.json(),
        serde_json::json!({"accepted": 0, "duplicates": 3, "rejected": 4})
    );

    let events = consume(&broker.brokers(), &["presence.all.join"], 1, 3, QUIET).await;
    assert_exactly_once(&events, ["mixed-0", "mixed-1", "mixed-2"]);
    let dead: Vec<Record> =
        consume(&broker.brokers(), &["presence.dead-letter"], 1, 4, QUIET).await;
    assert_eq!(dead.len(), 4, "each invalid item once");
    for (index, text) in [(1, bad[0]), (3, bad[1]), (4, bad[2]), (5, bad[3])] {
        let r = dead
            .iter()
            .find(|r| r.header("hookbus-dead-letter-index") == Some(index.to_string().as_str()))
            .unwrap_or_else(|| panic!("no dead letter for item {index}"));
        assert_eq!(r.payload, text.as_bytes(), "item {index} byte-identical");
        assert_eq!(r.header("hookbus-dead-letter-reason"), Some("invalid_item"));
        assert!(
            r.header("hookbus-dead-letter-error")
                .is_some_and(|e| e.starts_with(&format!("data[{index}]: "))),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        metric(
            hb.admin_addr,
            "hookbus_dead_letters_total{reason=\"invalid_item\"}"
        )
        .await,
        4.0
    );
    hb.stop().await.unwrap();
}

/// Every envelope fixture with the twin (unenveloped corpus file) whose events it must yield.
fn envelopes() -> Vec<(String, Vec<u8>, Vec<serde_json::Value>)> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hookbus/envelopes"
    );
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let twin = if name.contains("-batch") {
                "ena-batch.json"
            } else {
                "ena-join.json"
            };
            let twin = std::fs::read(format!("{FIXTURES}/{twin}")).unwrap();
            (name, std::fs::read(&path).unwrap(), expected_events(&twin))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 8);
    out
}

fn same_events(name: &str, got: Vec<serde_json::Value>, want: &[serde_json::Value]) {
    let mut got: Vec<_> = got.into_iter().map(without_received).collect();
    let mut want = want.to_vec();
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap_or_default().to_owned();
    got.sort_by_key(id);
    want.sort_by_key(id);
    assert_eq!(got, want, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_round_trips_through_nats() {
    let nats = NatsServer::start();
    for (n, (name, body, want)) in envelopes().into_iter().enumerate() {
        // A stream and prefix of its own: the envelopes share their twins' event ids.
        let dir = tempfile::tempdir().unwrap();
        let hb = start(config(
            dir.path(),
            &format!(
                "[ack]\nmode = \"publish\"\n[nats]\nurl = \"{}\"\nstream = \"ENV{n}\"\n\
                 [routing]\ntemplate = \"env{n}.{{channel}}.{{action}}\"\ndead_letter = \"env{n}.dead\"",
                nats.url()
            ),
        ))
        .await;
        let r = post(hb.http_addr, &body).await;
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(format!("ENV{n}")).await.unwrap();
        let count = stream.info().await.unwrap().state.messages;
        assert_eq!(count as usize, want.len(), "{name}");
        let mut got = Vec::new();
        for seq in 1..=count {
            let m = stream.get_raw_message(seq).await.unwrap();
            assert!(
                m.subject.starts_with(&format!("env{n}.room_2E")),
                "{name}: {}",
                m.subject
            );
            got.push(serde_json::from_slice(&m.payload).unwrap());
        }
        same_events(&name, got, &want);
        hb.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_round_trips_through_kafka() {
    let broker = Tansu::start();
    for (n, (name, body, want)) in envelopes().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let hb = start(config(
            dir.path(),
            &kafka(
                &broker.brokers(),
                "spool",
                &format!(
                    "[routing]\ntemplate = \"env{n}.all.{{action}}\"\ndead_letter = \"env{n}.dead\""
                ),
            ),
        ))
        .await;
        let r = post(hb.http_addr, &body).await;
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let topic = format!("env{n}.all.join");
        let records = consume(&broker.brokers(), &[&topic], 1, want.len(), QUIET).await;
        assert_exactly_once(&records, want.iter().map(|e| e["id"].as_str().unwrap()));
        let got = records
            .iter()
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect();
        same_events(&name, got, &want);
        hb.stop().await.unwrap();
    }
}

/// Runs the Python CloudEvents consumer; one parsed event per line.
async fn python_cloudevents(args: Vec<String>) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/cloudevents_consumer.py"
        ))
        .args(&args)
        .output()
        .await
        .expect("python test client (scripts/setup makes .venv-test)");
    assert!(
        out.status.success(),
        "cloudevents consumer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every fixture event read back as a CloudEvent has the attributes hookbus documents.
fn check_cloudevents(
    expected: &[(String, &'static str, serde_json::Value)],
    got: &[serde_json::Value],
) {
    assert_eq!(got.len(), expected.len());
    for (fixture, _, event) in expected {
        let id = event["id"].as_str().unwrap();
        let ce = got
            .iter()
            .find(|ce| ce["id"] == id)
            .unwrap_or_else(|| panic!("{fixture}: no CloudEvent with id {id}"));
        let ms = event["timestamp_ms"]
            .as_i64()
            .unwrap_or_else(|| event["timestamp"].as_i64().unwrap() * 1000);
        let sub_key = event["sub_key"].as_str().unwrap_or("unknown");
        assert_eq!(
            *ce,
            serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": format!("urn:pubnub:keyset:{sub_key}"),
                "type": format!("com.pubnub.presence.{}", event["action"].as_str().unwrap()),
                "time_ms": ms,
                "subject": event["channel"],
                "datacontenttype": "application/json",
                "dataschema": "urn:hookbus:schema:hookbus.presence.v1",
                "data_id": id,
            }),
            "{fixture}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_on_kafka_read_by_the_python_sdk() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(&broker.brokers(), "spool", "[routing]\ncloudevents = true"),
    ))
    .await;
    let expected = post_fixtures(hb.http_addr).await;
    let mut topics: Vec<&str> = expected.iter().map(|(_, t, _)| *t).collect();
    topics.sort();
    topics.dedup();
    let got = python_cloudevents(vec![
        "kafka".into(),
        broker.brokers(),
        topics.join(","),
        "1".into(),
        expected.len().to_string(),
    ])
    .await;
    check_cloudevents(&expected, &got);
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_on_nats_read_by_the_python_sdk() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &format!(
            "[ack]\nmode = \"publish\"\n[nats]\nurl = \"{}\"\n[routing]\ncloudevents = true",
            nats.url()
        ),
    ))
    .await;
    let expected = post_fixtures(hb.http_addr).await;
    let got = python_cloudevents(vec![
        "nats".into(),
        nats.url(),
        "PRESENCE".into(),
        expected.len().to_string(),
    ])
    .await;
    check_cloudevents(&expected, &got);
    hb.stop().await.unwrap();
}
