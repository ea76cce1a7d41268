//! Kafka at scale, on a real broker (tansu): `kafka.max_topics` bounds the topics end users'
//! channel names can make hookbus create (the rest go to the overflow topics, counted), topics
//! that existed at start never count against it, and routing rules send whole channel
//! families to one topic keyed by channel.

use std::time::Duration;

use crate::common::kafka::{assert_exactly_once, consume, create_topics, kafka};
use crate::common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

const QUIET: Duration = Duration::from_secs(2);

/// Every topic on the broker.
fn topics(brokers: &str) -> Vec<String> {
    let client: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = client
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect()
}

/// One Events & Actions join batch, one item per channel.
fn joins(channels: &[String]) -> Vec<u8> {
    let ids: Vec<String> = channels.iter().map(|c| format!("join-{c}")).collect();
    ea_joins(
        ids.iter()
            .map(String::as_str)
            .zip(channels.iter().map(String::as_str)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_cap_sends_the_rest_to_the_overflow_topic_exactly_once() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(&broker.brokers(), "spool", "[kafka]\nmax_topics = 20"),
    ))
    .await;
    let channels: Vec<String> = (0..200).map(|i| format!("ch{i}")).collect();
    let r = post(hb.http_addr, &joins(&channels)).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 200, "duplicates": 0})
    );
    let admin = hb.admin_addr;
    wait_for(
        "every event published",
        Duration::from_secs(30),
        || async move {
            (metric(
                admin,
                "hookbus_events_published_total{action=\"join\",sink=\"kafka\"}",
            )
            .await
                == 200.0)
                .then_some(())
        },
    )
    .await;

    let all = topics(&broker.brokers());
    let per_channel: Vec<&String> = all
        .iter()
        .filter(|t| t.starts_with("presence.ch"))
        .collect();
    assert_eq!(per_channel.len(), 20, "{per_channel:?}");
    assert!(
        all.iter().any(|t| t == "presence._overflow.join"),
        "{all:?}"
    );
    let mut read: Vec<&str> = per_channel.iter().map(|t| t.as_str()).collect();
    read.push("presence._overflow.join");
    let records = consume(&broker.brokers(), &read, 1, 200, QUIET).await;
    let ids: Vec<String> = channels.iter().map(|c| format!("join-{c}")).collect();
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    let overflowed: Vec<_> = records
        .iter()
        .filter(|r| r.topic == "presence._overflow.join")
        .collect();
    assert_eq!(overflowed.len(), 180);
    for r in &overflowed {
        assert_eq!(
            r.key.as_deref(),
            r.header("hookbus-channel").map(str::as_bytes),
            "keyed by the raw channel, with the normal headers"
        );
    }
    // What the HookbusKafkaTopicOverflow alert watches counts exactly these.
    assert_eq!(
        metric(admin, "hookbus_overflow_events_total{action=\"join\"}").await,
        180.0
    );
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_that_existed_at_start_never_count_against_the_cap() {
    let broker = Tansu::start();
    create_topics(
        &broker.brokers(),
        &["presence.old1.join", "presence.old2.join"],
        1,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(&broker.brokers(), "spool", "[kafka]\nmax_topics = 1"),
    ))
    .await;
    let admin = hb.admin_addr;
    wait_for("the sink to connect", Duration::from_secs(30), || async move {
        (metric(admin, "hookbus_sink_up{sink=\"kafka\"}").await == 1.0).then_some(())
    })
    .await;
    let channels: Vec<String> = ["new1", "new2", "old1", "old2"].map(str::to_owned).to_vec();
    let r = post(hb.http_addr, &joins(&channels)).await;
    assert_eq!(r.json()["accepted"], 4);
    let records = consume(
        &broker.brokers(),
        &[
            "presence.new1.join",
            "presence._overflow.join",
            "presence.old1.join",
            "presence.old2.join",
        ],
        1,
        4,
        QUIET,
    )
    .await;
    let topic_of = |id: &str| {
        records
            .iter()
            .find(|r| r.event_id() == id)
            .map(|r| r.topic.as_str())
            .unwrap_or_else(|| panic!("{id} not published"))
    };
    assert_eq!(
        topic_of("join-new1"),
        "presence.new1.join",
        "the one admitted topic"
    );
    assert_eq!(
        topic_of("join-new2"),
        "presence._overflow.join",
        "over the cap"
    );
    assert_eq!(topic_of("join-old1"), "presence.old1.join");
    assert_eq!(topic_of("join-old2"), "presence.old2.join");
    assert!(
        !topics(&broker.brokers())
            .iter()
            .any(|t| t == "presence.new2.join")
    );
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_sends_a_channel_family_to_one_topic_keyed_by_channel() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &kafka(
            &broker.brokers(),
            "spool",
            "[[routing.rules]]\nchannel = \"chat.*\"\ntemplate = \"presence.chat.{action}\"",
        ),
    ))
    .await;
    let channels: Vec<String> = ["chat.a", "chat.b", "chat.a", "lobby"]
        .map(str::to_owned)
        .to_vec();
    let body = joins(&channels[..2]);
    assert_eq!(post(hb.http_addr, &body).await.status, 200);
    let body = joins(&channels[2..]);
    let r = post(hb.http_addr, &body).await;
    // chat.a again has the same item id: a duplicate.
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "duplicates": 1})
    );
    let records = consume(
        &broker.brokers(),
        &["presence.chat.join", "presence.lobby.join"],
        1,
        3,
        QUIET,
    )
    .await;
    assert_exactly_once(&records, ["join-chat.a", "join-chat.b", "join-lobby"]);
    for r in &records {
        let channel = r.header("hookbus-channel").unwrap();
        assert_eq!(r.key.as_deref(), Some(channel.as_bytes()));
        let want = if channel.starts_with("chat.") {
            "presence.chat.join"
        } else {
            "presence.lobby.join"
        };
        assert_eq!(r.topic, want, "{channel}");
    }
    hb.stop().await.unwrap();
}
