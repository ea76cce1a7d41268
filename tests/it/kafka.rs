//! End to end through a real Kafka-compatible broker (`tansu`, started per test, no topic
//! auto-creation): topics are created by hookbus's admin client, every fixture lands on its
//! topic with the raw channel as key, the contract's headers and JSON; bad input is
//! dead-lettered byte-identical.

use std::time::Duration;

use crate::common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

struct Record {
    topic: String,
    key: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    timestamp_order: (i32, i64),
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads every record of `topics` (all partitions) until `count` are seen.
fn consume(brokers: &str, topics: &[&str], partitions: i32, count: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "hookbus-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {count} records arrived",
            out.len()
        );
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(m) = result else { continue };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_owned(),
                            String::from_utf8(x.value.unwrap_or_default().to_vec()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            topic: m.topic().to_owned(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
            timestamp_order: (m.partition(), m.offset()),
        });
    }
    out
}

fn kafka_config(spool: &std::path::Path, broker: &Tansu, mode: &str) -> hookbus::config::Config {
    config(
        spool,
        &format!(
            "[ack]\nmode = \"{mode}\"\n[sink]\nkind = \"kafka\"\ntimeout = \"10s\"\n\
             [kafka]\nbrokers = \"{}\"\npartitions = 2",
            broker.brokers()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_round_trips_through_kafka() {
    let broker = Tansu::start();
    let spool = tempfile::tempdir().unwrap();
    let hookbus = start(kafka_config(spool.path(), &broker, "publish")).await;
    let expected = post_fixtures(hookbus.http_addr).await;
    let mut topics: Vec<&str> = expected.iter().map(|(_, t, _)| *t).collect();
    topics.sort();
    topics.dedup();
    let brokers = broker.brokers();
    let count = expected.len();
    let records = tokio::task::spawn_blocking(move || consume(&brokers, &topics, 2, count))
        .await
        .unwrap();
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
        .map(|r| r.timestamp_order)
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
    let hookbus = start(kafka_config(spool.path(), &broker, "memory")).await;
    let bad = bad_inputs();
    for (name, body) in &bad {
        let response = post(hookbus.http_addr, body).await;
        assert_eq!(response.status, 400, "{name}");
        assert_eq!(response.json()["error"], "invalid_payload", "{name}");
    }
    let brokers = broker.brokers();
    let count = bad.len();
    let records =
        tokio::task::spawn_blocking(move || consume(&brokers, &["presence.dead-letter"], 2, count))
            .await
            .unwrap();
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
    let hookbus = start(kafka_config(spool.path(), &broker, "spool")).await;
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
    let brokers = broker.brokers();
    let records = tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consume(&brokers, &topics, 2, 40)
    })
    .await
    .unwrap();
    let mut channels: Vec<_> = records
        .iter()
        .map(|r| r.header("hookbus-channel").unwrap().to_owned())
        .collect();
    channels.sort();
    channels.dedup();
    assert_eq!(channels.len(), 40);
    hookbus.stop().await.unwrap();
}
