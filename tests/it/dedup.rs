//! PubNub retries against a real `nats-server -js` (and one with no Kafka broker at all): a retried G1 body is published once, a
//! re-posted Events & Actions batch only for its new items, a failed accept releases the ids
//! so the retry goes through, and replicas sharing a stream are deduplicated by the broker.

use std::time::Duration;

use crate::common::*;
use async_nats::jetstream;

const SECS: Duration = Duration::from_secs(20);

async fn stream_count(url: &str) -> Option<u64> {
    let js = jetstream::new(async_nats::connect(url).await.ok()?);
    let mut stream = js.get_stream("PRESENCE").await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

async fn wait_count(url: &str, count: u64) {
    let url = url.to_owned();
    wait_for(&format!("{count} messages"), SECS, || {
        let url = url.clone();
        async move { (stream_count(&url).await? == count).then_some(()) }
    })
    .await;
}

fn nats_config(spool: &std::path::Path, nats: &NatsServer, mode: &str) -> hookbus::config::Config {
    config(
        spool,
        &format!("[ack]\nmode = \"{mode}\"\n[nats]\nurl = \"{}\"", nats.url()),
    )
}

#[tokio::test]
async fn g1_retried_four_times_is_published_once() {
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hb = start(nats_config(spool.path(), &nats, "spool")).await;
    let body = std::fs::read(format!("{FIXTURES}/g1-join.json")).unwrap();
    let mut answers = Vec::new();
    // PubNub's 4 attempts, 5 s apart; the spacing does not matter inside the 20 min window,
    // so they are sent back to back (each after the previous answer).
    for _ in 0..4 {
        let r = post(hb.http_addr, &body).await;
        assert_eq!(r.status, 200);
        answers.push(r.json());
    }
    assert_eq!(
        answers[0],
        serde_json::json!({"accepted": 1, "duplicates": 0})
    );
    for a in &answers[1..] {
        assert_eq!(*a, serde_json::json!({"accepted": 0, "duplicates": 1}));
    }
    wait_count(&nats.url(), 1).await;
    assert_eq!(
        metric(hb.admin_addr, "hookbus_duplicates_total{action=\"join\"}").await,
        3.0
    );
    assert_eq!(
        metric(
            hb.admin_addr,
            "hookbus_events_received_total{action=\"join\",format=\"g1\"}"
        )
        .await,
        4.0
    );
    // A legitimate repeat (same user, new occupancy) is a new event.
    let again = String::from_utf8(body)
        .unwrap()
        .replace("\"occupancy\":1", "\"occupancy\":2");
    let r = post(hb.http_addr, again.as_bytes()).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "duplicates": 0})
    );
    wait_count(&nats.url(), 2).await;
    hb.stop().await.unwrap();
    assert_eq!(stream_count(&nats.url()).await, Some(2));
}

#[tokio::test]
async fn events_and_actions_batch_reposted_publishes_only_new_items() {
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hb = start(nats_config(spool.path(), &nats, "memory")).await;
    let batch = std::fs::read(format!("{FIXTURES}/ena-batch.json")).unwrap();
    assert_eq!(post(hb.http_addr, &batch).await.json()["accepted"], 3);
    let r = post(hb.http_addr, &batch).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 0, "duplicates": 3})
    );
    let mut value: serde_json::Value = serde_json::from_slice(&batch).unwrap();
    let mut extra = value["data"][0].clone();
    extra["id"] = "b0000004-0000-4000-8000-000000000004".into();
    extra["userId"] = "u-4".into();
    value["data"].as_array_mut().unwrap().push(extra);
    let r = post(hb.http_addr, &serde_json::to_vec(&value).unwrap()).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "duplicates": 3})
    );
    wait_count(&nats.url(), 4).await;
    assert_eq!(
        metric(hb.admin_addr, "hookbus_duplicates_total{action=\"join\"}").await,
        6.0
    );
    hb.stop().await.unwrap();
    assert_eq!(stream_count(&nats.url()).await, Some(4));
}

#[tokio::test]
async fn publish_timeout_then_retries_publish_the_event_once() {
    let mut nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hb = start(config_with(
        spool.path(),
        &[
            &format!(
                "[ack]\nmode = \"publish\"\npublish_timeout = \"1s\"\n[nats]\nurl = \"{}\"",
                nats.url()
            ),
            "[sink]\ntimeout = \"2s\"\nmax_backoff = \"200ms\"",
        ],
    ))
    .await;
    // Prove the path works, then take the broker away.
    let warmup = br#"{"action":"join","channel":"warm","uuid":"w","timestamp":1718035200}"#;
    assert_eq!(post(hb.http_addr, warmup).await.status, 200);
    nats.stop();
    let body = std::fs::read(format!("{FIXTURES}/g1-leave.json")).unwrap();
    let first = post(hb.http_addr, &body).await;
    assert_eq!(
        first.status,
        503,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(first.header("retry-after").is_some());
    nats.restart();
    // The first attempt was handed to the client before the broker went away, so it stays
    // with the publisher and is published when the broker is back: PubNub's retries get a
    // 200 (a duplicate once it is stored), never a second publish.
    let addr = hb.http_addr;
    let retry = wait_for("the retry to be accepted", SECS, || {
        let body = body.clone();
        async move {
            let r = post(addr, &body).await;
            (r.status == 200).then(|| r.json())
        }
    })
    .await;
    assert_eq!(
        retry["accepted"].as_u64().unwrap() + retry["duplicates"].as_u64().unwrap(),
        1,
        "{retry}"
    );
    wait_count(&nats.url(), 2).await;
    assert_eq!(
        metric(
            hb.admin_addr,
            "hookbus_events_published_total{action=\"leave\",sink=\"nats\"}"
        )
        .await,
        1.0
    );
    hb.stop().await.unwrap();
    assert_eq!(stream_count(&nats.url()).await, Some(2));
}

#[tokio::test]
async fn a_retry_of_an_undecided_event_waits_for_it_then_503s_never_publishing_twice() {
    let mut nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let hb = start(config_with(
        spool.path(),
        &[
            &format!(
                "[ack]\nmode = \"publish\"\npublish_timeout = \"3s\"\n[nats]\nurl = \"{}\"",
                nats.url()
            ),
            "[sink]\ntimeout = \"4s\"",
        ],
    ))
    .await;
    let warmup = br#"{"action":"join","channel":"warm","uuid":"w","timestamp":1718035200}"#;
    assert_eq!(post(hb.http_addr, warmup).await.status, 200);
    nats.stop();
    let body = std::fs::read(format!("{FIXTURES}/g1-timeout.json")).unwrap();
    let addr = hb.http_addr;
    let first = tokio::spawn({
        let body = body.clone();
        async move { post(addr, &body).await }
    });
    // While the first attempt waits for the broker, the same body arrives again.
    let admin = hb.admin_addr;
    wait_for("the first attempt to be pending", SECS, || async move {
        (metric(
            admin,
            "hookbus_events_received_total{action=\"timeout\",format=\"g1\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    let second = post(addr, &body).await;
    assert_eq!(second.status, 503);
    assert!(
        second.json()["message"]
            .as_str()
            .unwrap()
            .contains("still being accepted")
    );
    assert_eq!(first.await.unwrap().status, 503);
    hb.stop().await.unwrap();
}

/// A retry that waited on an undecided first delivery and then became the owner (the first
/// gave up: its event was never sent) has one `ack.publish_timeout` in all, counted from its
/// own arrival, not a second one for its publish: PubNub stops waiting after 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_becomes_the_owner_keeps_one_deadline() {
    // No Kafka broker answers: the first delivery's event waits for its topic to be created
    // (up to `sink.timeout`, 10 s), never sent, so at its 2 s timeout it is withdrawn and its
    // id released while the retry waits on it.
    let spool = tempfile::tempdir().unwrap();
    let hb = start(config_with(
        spool.path(),
        &[&format!(
            "[ack]\nmode = \"publish\"\npublish_timeout = \"2s\"\n\
             [sink]\nkind = \"kafka\"\ntimeout = \"10s\"\n\
             [kafka]\nbrokers = \"127.0.0.1:{}\"",
            dead_port()
        )],
    ))
    .await;
    let body = std::fs::read(format!("{FIXTURES}/g1-leave.json")).unwrap();
    let addr = hb.http_addr;
    let first = tokio::spawn({
        let body = body.clone();
        async move { post(addr, &body).await }
    });
    let admin = hb.admin_addr;
    wait_for("the first delivery to be pending", SECS, || async move {
        (metric(
            admin,
            "hookbus_events_received_total{action=\"leave\",format=\"g1\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // PubNub's retry comes 5 s later; here half a second, clearly after the first's deadline
    // began (not a synchronization: the retry's own deadline is what is measured).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let retry = post(addr, &body).await;
    let took = started.elapsed();
    let first = first.await.unwrap();
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(retry.status, 503, "{retry:?}");
    let message = retry.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("broker did not confirm"),
        "the retry became the owner and waited for the broker: {message}"
    );
    assert!(
        took < Duration::from_millis(2_900),
        "the retry answered after {took:?}: more than its one 2 s deadline"
    );
    hb.stop().await.unwrap();
}

#[tokio::test]
async fn replicas_sharing_a_stream_store_an_event_once() {
    let nats = NatsServer::start();
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(nats_config(s1.path(), &nats, "publish")).await;
    let b = start(nats_config(s2.path(), &nats, "publish")).await;
    let body = std::fs::read(format!("{FIXTURES}/ena-join.json")).unwrap();
    assert_eq!(post(a.http_addr, &body).await.json()["accepted"], 1);
    // A retry load-balanced to the other replica: new to it, a duplicate to the broker.
    assert_eq!(post(b.http_addr, &body).await.json()["accepted"], 1);
    wait_count(&nats.url(), 1).await;
    assert_eq!(
        metric(
            b.admin_addr,
            "hookbus_broker_duplicates_total{sink=\"nats\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            b.admin_addr,
            "hookbus_events_published_total{action=\"join\",sink=\"nats\"}"
        )
        .await,
        0.0
    );
    for hb in [a, b] {
        hb.stop().await.unwrap();
    }
    assert_eq!(stream_count(&nats.url()).await, Some(1));
}

#[tokio::test]
async fn a_retry_after_a_restart_is_still_a_duplicate() {
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let body = std::fs::read(format!("{FIXTURES}/g1-state-change.json")).unwrap();
    let first = start(nats_config(spool.path(), &nats, "spool")).await;
    assert_eq!(post(first.http_addr, &body).await.json()["accepted"], 1);
    first.stop().await.unwrap();
    // Same spool directory: the ids spooled within the window are read back at start.
    let second = start(nats_config(spool.path(), &nats, "spool")).await;
    let r = post(second.http_addr, &body).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 0, "duplicates": 1})
    );
    second.stop().await.unwrap();
    assert_eq!(stream_count(&nats.url()).await, Some(1));
}

#[tokio::test]
async fn core_nats_mode_publishes_without_jetstream() {
    use futures::StreamExt;
    let nats = NatsServer::start();
    let spool = tempfile::tempdir().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("presence.>").await.unwrap();
    client.flush().await.unwrap();
    let hb = start(config(
        spool.path(),
        &format!(
            "[ack]\nmode = \"memory\"\n[nats]\nurl = \"{}\"\njetstream = false",
            nats.url()
        ),
    ))
    .await;
    let body = std::fs::read(format!("{FIXTURES}/g1-join.json")).unwrap();
    assert_eq!(post(hb.http_addr, &body).await.status, 200);
    let m = tokio::time::timeout(SECS, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject.as_str(), "presence.lacrosse.join");
    let headers = m.headers.unwrap();
    assert_eq!(
        headers.get("hookbus-event-id").unwrap().as_str(),
        g1_id(&body)
    );
    assert!(
        headers.get("Nats-Msg-Id").is_none(),
        "no JetStream header in core mode"
    );
    let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(without_received(event), expected_events(&body)[0]);
    hb.stop().await.unwrap();
}
