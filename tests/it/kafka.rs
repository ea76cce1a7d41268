//! End to end through a real Kafka-compatible broker (`tansu`, started per test, no topic
//! auto-creation): topics are created by hookbus's admin client, every fixture lands on its
//! topic with the raw channel as key, the contract's headers and JSON; bad input is
//! dead-lettered byte-identical.

use std::time::Duration;

use crate::common::kafka::{consume, kafka};
use crate::common::*;

/// Over [`kafka`]: two partitions, a longer sink timeout.
const TWO_PARTITIONS: &str = "[sink]\ntimeout = \"10s\"\n[kafka]\npartitions = 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_round_trips_through_kafka() {
    let broker = Tansu::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &kafka(&broker.brokers(), "publish", TWO_PARTITIONS),
    ))
    .await;
    let expected = post_fixtures(hookbus.http_addr).await;
    let mut topics: Vec<&str> = expected.iter().map(|(_, t, _)| *t).collect();
    topics.sort();
    topics.dedup();
    let records = consume(
        &broker.brokers(),
        &topics,
        2,
        expected.len(),
        Duration::ZERO,
    )
    .await;
    assert_eq!(records.len(), expected.len());
    for (name, topic, event) in &expected {
        let id = event["id"].as_str().unwrap();
        let r = records
            .iter()
            .find(|r| r.header("hookbus-event-id") == Some(id))
            .unwrap_or_else(|| panic!("{name}: event {id} not on the broker"));
        assert_eq!(r.topic, *topic, "{name}");
        assert_eq!(
            r.key.as_deref(),
            event["channel"].as_str().map(str::as_bytes),
            "{name}"
        );
        let value: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(without_received(value), *event, "{name}");
        assert_eq!(
            r.header("hookbus-action"),
            event["action"].as_str(),
            "{name}"
        );
        assert_eq!(
            r.header("hookbus-channel"),
            event["channel"].as_str(),
            "{name}"
        );
        assert_eq!(
            r.header("hookbus-sub-key"),
            event["sub_key"].as_str(),
            "{name}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
    }
    // Same channel → same partition, in order (ena-batch has two room.1 events).
    let room1: Vec<_> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"room.1".as_slice()))
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(room1.len(), 2);
    assert_eq!(room1[0].0, room1[1].0);
    assert!(room1[0].1 < room1[1].1);
    hookbus.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_to_kafka() {
    let broker = Tansu::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &kafka(&broker.brokers(), "memory", TWO_PARTITIONS),
    ))
    .await;
    let bad = bad_inputs();
    for (name, body) in &bad {
        let response = post(hookbus.http_addr, body).await;
        assert_eq!(response.status, 400, "{name}");
        assert_eq!(response.json()["error"], "invalid_payload", "{name}");
    }
    let records = consume(
        &broker.brokers(),
        &["presence.dead-letter"],
        2,
        bad.len(),
        Duration::ZERO,
    )
    .await;
    for (name, body) in &bad {
        let r = records
            .iter()
            .find(|r| &r.payload == body)
            .unwrap_or_else(|| panic!("{name}: no byte-identical dead letter"));
        assert_eq!(
            r.header("hookbus-dead-letter-reason"),
            Some("invalid_payload"),
            "{name}"
        );
    }
    hookbus.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_channels_creates_every_topic() {
    let broker = Tansu::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(config(
        spool.path(),
        &kafka(&broker.brokers(), "spool", TWO_PARTITIONS),
    ))
    .await;
    let items: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            serde_json::json!({
                "id": format!("burst-{i}"), "channel": format!("new.room.{i}"), "userId": "u",
                "occupancy": 1, "timestamp": "2024-06-10T16:00:00.001Z", "subKey": "sub-c-1"
            })
        })
        .collect();
    let body = serde_json::json!({
        "schema": "pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0",
        "data": items,
    });
    let r = post(hookbus.http_addr, &serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r.json()["accepted"], 40);
    let topics: Vec<String> = (0..40)
        .map(|i| format!("presence.new_2Eroom_2E{i}.join"))
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let records = consume(&broker.brokers(), &topics, 2, 40, Duration::ZERO).await;
    let mut channels: Vec<_> = records
        .iter()
        .map(|r| r.header("hookbus-channel").unwrap().to_owned())
        .collect();
    channels.sort();
    channels.dedup();
    assert_eq!(channels.len(), 40);
    hookbus.stop().await.unwrap();
}

/// A G1 state change whose event JSON is just under `limit` bytes: with its key and headers
/// the record is over it.
fn just_under(limit: usize) -> Vec<u8> {
    let body = |n: usize| {
        format!(
            r#"{{"action":"state-change","sub_key":"sub-c-test","channel":"big","uuid":"u","timestamp":1718035200,"data":{{"note":"{}"}}}}"#,
            "a".repeat(n)
        )
        .into_bytes()
    };
    let payload = |b: &[u8]| {
        hookbus::normalize::normalize(b, 1_718_035_200_000).unwrap()[0]
            .to_json()
            .len()
    };
    let n = (0..limit)
        .find(|n| payload(&body(*n)) >= limit - 40)
        .unwrap();
    let b = body(n);
    assert!(payload(&b) < limit);
    b
}

/// Ingress and the sink count a record's payload, key and headers against
/// `message.max.bytes`, and the error names the configured limit; a record the broker cannot
/// take is counted once as a dead letter: `too_large` when kept on disk, `dropped` (only) when
/// the disk budget refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_message_max_bytes_with_its_headers_is_kept_and_counted_once() {
    let broker = Tansu::start();
    let limit = "[kafka.properties]\n\"message.max.bytes\" = \"2000\"";
    let body = just_under(2000);
    for (budget, kept, dropped) in [(0, 0.0, 1.0), (1_048_576, 1.0, 0.0)] {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let extra = format!("{limit}\n[spool]\ndead_letter_max_bytes = {budget}");
        let hb = Process::spawn(&spool, &kafka(&broker.brokers(), "spool", &extra)).await;
        assert_eq!(post(hb.http_addr, &body).await.status, 200);
        let admin = hb.admin_addr;
        wait_for(
            "the record refused",
            Duration::from_secs(30),
            || async move {
                (metric(
                    admin,
                    "hookbus_publish_errors_total{kind=\"too_large\",sink=\"kafka\"}",
                )
                .await
                    == 1.0)
                    .then_some(())
            },
        )
        .await;
        let series = |reason: &str| format!("hookbus_dead_letters_total{{reason=\"{reason}\"}}");
        wait_for(
            "the dead letter counted",
            Duration::from_secs(30),
            || async {
                (metric(admin, &series("too_large")).await
                    + metric(admin, &series("dropped")).await
                    >= 1.0)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(metric(admin, &series("too_large")).await, kept);
        assert_eq!(metric(admin, &series("dropped")).await, dropped);
        let files = std::fs::read_dir(spool.join("dead-letters")).map_or(0, |dir| {
            dir.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "body"))
            })
            .count()
        });
        assert_eq!(files as f64, kept);
        hb.wait_log(
            "exceeds the broker limit of 2000 bytes",
            Duration::from_secs(10),
        )
        .await;
    }
}
