//! `hookbus roster` against real brokers and stores: the bridge and the roster end to end on
//! NATS (KV store) and on Kafka (Redis store), replicas and redeliveries converging on the
//! reference model, a SIGKILLed replica, sessions published once, and the API's errors.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};

use crate::common::roster::{RosterProcess, ena, encode, event, joins, model, workload};
use crate::common::{NatsServer, RedisServer, Tansu, post, start, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn nats_fragment(nats: &NatsServer) -> String {
    format!("[nats]\nurl = \"{}\"\n", nats.url())
}

/// Creates the bridge's stream (as the bridge would) so events can be published straight in.
async fn stream(nats: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    js.get_or_create_stream(jetstream::stream::Config {
        name: "PRESENCE".to_owned(),
        subjects: vec!["presence.*.*".to_owned()],
        ..Default::default()
    })
    .await
    .expect("stream");
    js
}

/// Publishes normalized events as the bridge would (no Nats-Msg-Id: repeats stay repeats).
async fn publish(js: &jetstream::Context, events: &[Value]) {
    // Acks are awaited 500 at a time: the client holds a bounded number in flight.
    for chunk in events.chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            let subject = format!(
                "presence.{}.{}",
                hookbus::route::escape(e["channel"].as_str().unwrap()),
                e["action"].as_str().unwrap()
            );
            let payload = serde_json::to_vec(e).unwrap();
            acks.push(js.publish(subject, payload.into()).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("stored");
        }
    }
}

/// Every channel's present members as the roster serves them: channel → uuid → state.
async fn served(
    roster: &RosterProcess,
    channels: &[String],
) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for channel in channels {
        let members = roster.members(channel).await.unwrap_or_default();
        if !members.is_empty() {
            out.insert(
                channel.clone(),
                members
                    .into_iter()
                    .map(|(u, m)| (u, m["state"].clone()))
                    .collect(),
            );
        }
    }
    out
}

/// Waits until `roster` serves `want` (every channel of `channels`); on timeout shows the
/// difference.
async fn converges(
    roster: &RosterProcess,
    channels: &[String],
    want: &BTreeMap<String, BTreeMap<String, Value>>,
) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = served(roster, channels).await;
        if &got == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            let wrong: Vec<_> = channels
                .iter()
                .filter(|c| got.get(*c) != want.get(*c))
                .map(|c| (c, got.get(c), want.get(c)))
                .take(3)
                .collect();
            panic!(
                "the roster did not reach the model; first channels that differ (got, want): {wrong:#?}\n{}",
                roster.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn expected(events: &[Value]) -> BTreeMap<String, BTreeMap<String, Value>> {
    model(events)
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .collect()
}

fn channels_of(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .map(|e| e["channel"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_and_the_roster_on_nats_keep_who_is_there_and_refuse_a_late_join() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = start(crate::common::config(
        &dir.path().join("spool"),
        &nats_fragment(&nats),
    ))
    .await;
    let roster_config = format!(
        "{}[roster]\ntemplate = \"hookbus.roster.{{channel}}\"\n",
        nats_fragment(&nats)
    );
    let roster = RosterProcess::spawn(dir.path(), "roster", &roster_config).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut changes = client.subscribe("hookbus.roster.>").await.unwrap();
    client.flush().await.unwrap();
    let t = 1_718_035_200_000;
    for body in [
        ena("j1", "join", "room.a", "u1", t, None),
        ena("j2", "join", "room.a", "u2", t + 1_000, None),
        ena(
            "s1",
            "state-change",
            "room.a",
            "u1",
            t + 2_000,
            Some(json!({"mood": "busy"})),
        ),
        ena("l2", "leave", "room.a", "u2", t + 3_000, None),
    ] {
        assert_eq!(post(bridge.http_addr, &body).await.status, 200);
    }
    let members = wait_for("u1 alone in room.a", WAIT, || async {
        let members = roster.members("room.a").await?;
        (members.keys().collect::<Vec<_>>() == ["u1"]
            && members["u1"]["state"] == json!({"mood": "busy"}))
        .then_some(members)
    })
    .await;
    assert_eq!(members["u1"]["since_ms"], json!(t));
    // A retry PubNub sends late, of a join older than the leave (another id: the bridge
    // publishes it): the member stays absent and the event is counted stale.
    assert_eq!(
        post(
            bridge.http_addr,
            &ena("j2-late", "join", "room.a", "u2", t + 1_500, None)
        )
        .await
        .status,
        200
    );
    roster
        .wait_metric("hookbus_roster_events_stale_total", |v| v >= 1.0)
        .await;
    assert_eq!(
        roster
            .members("room.a")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["u1"]
    );
    // The KV entries say the same as the API.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = js.get_key_value("PRESENCE_ROSTER").await.expect("bucket");
    let summary: Value =
        serde_json::from_slice(&kv.get("room_2Ea").await.unwrap().expect("summary")).unwrap();
    assert_eq!(summary["members"], json!(1));
    let (_, api) = roster.get("/roster/room.a").await;
    assert_eq!(summary["version"], api["version"]);
    let u1: Value =
        serde_json::from_slice(&kv.get("room_2Ea.m.u1").await.unwrap().expect("member")).unwrap();
    assert_eq!(
        (u1["uuid"].clone(), u1["state"].clone()),
        (json!("u1"), json!({"mood": "busy"}))
    );
    // Change events: one per member change; the latest per uuid has the highest version.
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    while latest
        .get("u2")
        .is_none_or(|c| c["present"] != json!(false))
    {
        let message = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut changes))
            .await
            .expect("a change event")
            .expect("subscribed");
        assert_eq!(message.subject.as_str(), "hookbus.roster.room_2Ea");
        let change: Value = serde_json::from_slice(&message.payload).unwrap();
        let uuid = change["uuid"].as_str().unwrap().to_owned();
        if latest
            .get(&uuid)
            .is_none_or(|c| c["version"].as_u64() < change["version"].as_u64())
        {
            latest.insert(uuid, change);
        }
    }
    assert_eq!(latest["u1"]["present"], json!(true));
    assert_eq!(latest["u1"]["state"], json!({"mood": "busy"}));
    assert_eq!(latest["u2"]["channel"], json!("room.a"));
    bridge.shutdown();
}

async fn replicas_converge(store: &str, redis: Option<&RedisServer>) {
    let nats = NatsServer::start();
    let js = stream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let store = match redis {
        Some(redis) => format!("[roster]\nstore = \"{}\"\n", redis.url()),
        None => format!("[roster]\nstore = \"{store}\"\n"),
    };
    let config = format!("{}{store}", nats_fragment(&nats));
    let (distinct, delivered) = workload(7, 2_000, 50, 300);
    let (first, second) = delivered.split_at(delivered.len() / 2);
    publish(&js, first).await;
    let a = RosterProcess::spawn(dir.path(), "a", &config).await;
    let b = RosterProcess::spawn(dir.path(), "b", &config).await;
    publish(&js, second).await;
    let want = expected(&distinct);
    let channels = channels_of(&distinct);
    converges(&a, &channels, &want).await;
    converges(&b, &channels, &want).await;
    let applied = a
        .metric("hookbus_roster_events_applied_total{action=\"join\"}")
        .await
        + b.metric("hookbus_roster_events_applied_total{action=\"join\"}")
            .await;
    assert!(applied > 0.0, "the replicas counted the joins they applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_shuffled_repeated_events_reach_the_model_in_nats_kv() {
    replicas_converge("nats", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_shuffled_repeated_events_reach_the_model_in_redis() {
    let redis = RedisServer::start();
    replicas_converge("", Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_no_update() {
    let nats = NatsServer::start();
    let js = stream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let (distinct, delivered) = workload(11, 10_000, 40, 200);
    // The whole backlog first, so the kill lands while most of it is still to apply.
    publish(&js, &delivered).await;
    let mut roster = RosterProcess::spawn(dir.path(), "r", &nats_fragment(&nats)).await;
    roster
        .wait_metric(
            "hookbus_roster_events_applied_total{action=\"join\"}",
            |v| v >= 100.0,
        )
        .await;
    let backlog = roster.metric("hookbus_roster_pending_events").await;
    roster.kill_and_restart().await;
    assert!(
        backlog > 0.0,
        "the kill came after the backlog was applied: nothing was tested"
    );
    converges(&roster, &channels_of(&distinct), &expected(&distinct)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_redis_a_session_is_published_once_also_when_its_end_is_redelivered() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let tansu = Tansu::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let topics = [
        "presence.room_2Eb.join",
        "presence.room_2Eb.timeout",
        "presence.room_2Eb.leave",
        "hookbus.sessions.room_2Eb",
    ];
    crate::common::kafka::create_topics(&tansu.brokers(), &topics, 1).await;
    let kafka = crate::common::kafka::kafka(&tansu.brokers(), "publish", "");
    let bridge = start(crate::common::config(&dir.path().join("spool"), &kafka)).await;
    let roster_config = format!(
        "{kafka}\n[roster]\nstore = \"{}\"\nsessions = \"hookbus.sessions.{{channel}}\"\n",
        redis.url()
    );
    let roster = RosterProcess::spawn(dir.path(), "roster", &roster_config).await;
    let t = 1_718_035_200_000;
    assert_eq!(
        post(bridge.http_addr, &ena("j", "join", "room.b", "u1", t, None))
            .await
            .status,
        200
    );
    assert_eq!(
        post(
            bridge.http_addr,
            &ena("x", "timeout", "room.b", "u1", t + 90_000, None)
        )
        .await
        .status,
        200
    );
    // The same timeout delivered to the roster a second time (Kafka keeps both copies), then
    // a join of another member behind it on the same partition.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .create()
        .unwrap();
    let copy = event("x", "timeout", "room.b", Some("u1"), t + 90_000, None);
    let later = event("j9", "join", "room.b", Some("u9"), t + 95_000, None);
    for (topic, e) in [
        ("presence.room_2Eb.timeout", &copy),
        ("presence.room_2Eb.join", &later),
    ] {
        let payload = serde_json::to_vec(e).unwrap();
        producer
            .send(
                FutureRecord::to(topic).key("room.b").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }
    wait_for("u9 in room.b", WAIT, || async {
        let members = roster.members("room.b").await?;
        members.contains_key("u9").then_some(())
    })
    .await;
    let reader =
        crate::common::kafka::Reader::new(&tansu.brokers(), &["hookbus.sessions.room_2Eb"], 1, &[]);
    let sessions = reader.read(1, Duration::from_secs(3), WAIT);
    assert_eq!(sessions.len(), 1, "one session event: {sessions:?}");
    let session: Value = serde_json::from_slice(&sessions[0].payload).unwrap();
    assert_eq!(session["schema"], json!("hookbus.presence.session.v1"));
    assert_eq!(
        (session["since_ms"].clone(), session["until_ms"].clone()),
        (json!(t), json!(t + 90_000))
    );
    assert_eq!(session["duration_ms"], json!(90_000));
    assert_eq!(session["reason"], json!("timeout"));
    assert_eq!(
        session["id"],
        json!(hookbus::roster::outputs::session_id("room.b", "u1", t))
    );
    // A late PubNub retry of a join older than the timeout, under another id (the bridge
    // publishes it): u1 stays absent, the event is counted stale, and no second session.
    let late = ena("j-late", "join", "room.b", "u1", t + 30_000, None);
    assert_eq!(post(bridge.http_addr, &late).await.status, 200);
    roster
        .wait_metric("hookbus_roster_events_stale_total", |v| v >= 1.0)
        .await;
    let members = roster.members("room.b").await.unwrap();
    assert_eq!(members.keys().collect::<Vec<_>>(), ["u9"]);
    assert_eq!(
        reader.read(0, Duration::from_secs(2), WAIT).len(),
        0,
        "no second session"
    );
    // The store's entry says what the API says.
    let stored = redis.command(&["HGET", "{PRESENCE_ROSTER}:m:room_2Eb", "u9"]);
    let stored: Value =
        serde_json::from_str(stored.lines().nth(1).expect("a bulk string")).unwrap();
    assert_eq!(stored["uuid"], members["u9"]["uuid"]);
    assert_eq!(stored["since_ms"], members["u9"]["since_ms"]);
    // Every offset of every partition came in order: no input gap was claimed (the roster
    // checks once a second; the reader above waited 2 s of quiet after the last record).
    assert_eq!(
        roster
            .metric("hookbus_roster_rebuilds_total{reason=\"input_gap\"}")
            .await,
        0.0,
        "a gap claimed on contiguous offsets"
    );
    bridge.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_bad_requests_with_json_errors_and_requires_the_token() {
    let nats = NatsServer::start();
    let js = stream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[auth]\nallow_anonymous = false\ntoken = \"s3cret-token-0123456789\"\n",
        nats_fragment(&nats)
    );
    let roster = RosterProcess::spawn(dir.path(), "r", &config).await;
    publish(
        &js,
        &[event("a", "join", "café lobby", Some("u1"), 1_000, None)],
    )
    .await;
    let token = "token=s3cret-token-0123456789";
    let (status, body) = roster
        .get(&format!("/roster/{}", encode("café lobby")))
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("unauthorized"))
    );
    wait_for("the channel", WAIT, || async {
        (roster
            .get(&format!("/roster/{}?{token}", encode("café lobby")))
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    for (path, status, error) in [
        (format!("/roster/nope?{token}"), 404, "not_found"),
        (format!("/roster/bad%zz?{token}"), 400, "invalid_request"),
        (format!("/roster/%FF?{token}"), 400, "invalid_request"),
        (format!("/roster/x?limit=0&{token}"), 400, "invalid_request"),
        (
            format!("/roster/x?limit=100000&{token}"),
            400,
            "invalid_request",
        ),
        (format!("/roster?limit=-1&{token}"), 400, "invalid_request"),
    ] {
        let (got, body) = roster.get(&path).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{path}: {body}"
        );
    }
    let (status, body) = roster.get(&format!("/roster?prefix=caf&{token}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["channels"][0]["channel"], json!("café lobby"));
    assert_eq!(body["channels"][0]["members"], json!(1));
    // Probes and metrics need no token.
    assert_eq!(roster.get("/healthz").await.0, 200);
    let metrics = crate::common::request(roster.api, "GET", "/metrics", &[], b"").await;
    assert_eq!(metrics.status, 200, "/metrics without a token");
    assert!(String::from_utf8_lossy(&metrics.body).contains("hookbus_roster_channels"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn here_now_refresh_and_drift_reconcile_against_paged_reads_and_errors_are_counted() {
    use crate::common::here_now::{Answer, HereNowServer};
    let nats = NatsServer::start();
    let js = stream(&nats).await;
    let here_now = HereNowServer::start().await.expect("here now server");
    let listed: Vec<(String, Option<Value>)> = (0..2_500)
        .map(|i| (format!("m{i:04}"), (i % 2 == 0).then(|| json!({"i": i}))))
        .collect();
    here_now.answer("big.room", Answer::members(listed.clone()));
    here_now.answer("bad.room", Answer::error(500, "Internal Server Error"));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[roster]\nsub_key = \"sub-c-1\"\n[roster.here_now]\norigin = \"{}\"\n\
         subscribe_key = \"sub-c-1\"\ninterval = \"1h\"\nmax_requests_per_second = 200\n",
        nats_fragment(&nats),
        here_now.origin()
    );
    let roster = RosterProcess::spawn(dir.path(), "r", &config).await;
    // A member the events know and Here Now does not, then an interval whose delta was too
    // large to send (here_now_refresh): the read replaces the member set.
    let t = 1_718_035_200_000;
    let mut interval = event("iv", "interval", "big.room", None, t + 10_000, None);
    interval["occupancy"] = json!(2_500);
    interval["here_now_refresh"] = json!(true);
    interval["delta"] = json!({"join": ["d1"], "leave": [], "timeout": []});
    // On bad.room an occupancy that disagrees with the members: drift, and a read that fails.
    let mut drifting = event("bj", "join", "bad.room", Some("b1"), t, None);
    drifting["occupancy"] = json!(7);
    publish(
        &js,
        &[
            event("g", "join", "big.room", Some("ghost"), t, None),
            interval,
            drifting,
        ],
    )
    .await;
    let members = wait_for("the Here Now members", WAIT, || async {
        let members = roster.members("big.room").await?;
        (members.len() == 2_500).then_some(members)
    })
    .await;
    assert!(
        !members.contains_key("ghost") && !members.contains_key("d1"),
        "older than the read"
    );
    assert_eq!(members["m0002"]["state"], json!({"i": 2}));
    assert_eq!(members["m0003"]["state"], Value::Null);
    let pages: Vec<String> = here_now
        .requests()
        .iter()
        .filter(|r| r.path.contains("big.room"))
        .filter_map(|r| r.param("offset").map(str::to_owned))
        .collect();
    assert_eq!(pages, ["0", "1000", "2000"], "paged by 1,000");
    assert!(
        roster
            .metric("hookbus_roster_reconciliations_total{result=\"replaced\"}")
            .await
            >= 1.0
    );
    assert!(roster.metric("hookbus_roster_drift_members_count").await >= 1.0);
    roster
        .wait_metric(
            "hookbus_roster_reconciliations_total{result=\"server_error\"}",
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(
        roster.get("/readyz").await.0,
        200,
        "a failing Here Now is no reason to be unready"
    );
    assert_eq!(roster.members("bad.room").await.unwrap().len(), 1);
}

/// Here Now reading a channel as empty (occupancy 0, no members) while the roster holds
/// members: when the channel's last event is within `tombstone_ttl` of now, Presence most
/// likely does not track it (or the read raced the events), so nothing is replaced and the
/// read counts as `untracked`; when the last event is older, the read is believed and the
/// members go. The rule compares the event time of the channel's summary with this clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_read_replaces_only_a_channel_whose_events_are_older_than_the_ttl() {
    use crate::common::here_now::{Answer, HereNowServer};
    let nats = NatsServer::start();
    let js = stream(&nats).await;
    let here_now = HereNowServer::start().await.expect("here now server");
    here_now.answer("fresh.room", Answer::members(Vec::new()));
    here_now.answer("stale.room", Answer::members(Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[roster]\nsub_key = \"sub-c-1\"\ntombstone_ttl = \"10m\"\n[roster.here_now]\n\
         origin = \"{}\"\nsubscribe_key = \"sub-c-1\"\ninterval = \"1h\"\n",
        nats_fragment(&nats),
        here_now.origin()
    );
    let roster = RosterProcess::spawn(dir.path(), "r", &config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // An occupancy that disagrees with the one member: drift asks Here Now for each channel.
    let mut fresh = event("f", "join", "fresh.room", Some("u1"), now - 1_000, None);
    fresh["occupancy"] = json!(7);
    let mut stale = event("s", "join", "stale.room", Some("u2"), now - 3_600_000, None);
    stale["occupancy"] = json!(7);
    publish(&js, &[fresh, stale]).await;
    wait_for("the stale channel cleared by the read", WAIT, || async {
        roster
            .members("stale.room")
            .await
            .is_some_and(|m| m.is_empty())
            .then_some(())
    })
    .await;
    roster
        .wait_metric(
            "hookbus_roster_reconciliations_total{result=\"untracked\"}",
            |v| v >= 1.0,
        )
        .await;
    let fresh = roster.members("fresh.room").await.expect("fresh.room");
    assert!(fresh.contains_key("u1"), "kept: {fresh:?}");
    let read: Vec<_> = here_now
        .requests()
        .iter()
        .filter(|r| r.path.contains("fresh.room"))
        .map(|r| r.path.clone())
        .collect();
    assert!(!read.is_empty(), "fresh.room was read from Here Now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uuid_on_two_devices_follows_its_latest_event_and_other_sub_keys_are_skipped() {
    let nats = NatsServer::start();
    let js = stream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}[roster]\nsub_key = \"sub-c-1\"\n", nats_fragment(&nats));
    let roster = RosterProcess::spawn(dir.path(), "r", &config).await;
    let t = 1_718_035_200_000;
    let mut other = event("o1", "join", "room.d", Some("u2"), t, None);
    other["sub_key"] = json!("sub-c-2");
    publish(
        &js,
        &[
            // u1 joins from a phone, then from a laptop; the phone leaves. PubNub reports
            // presence per uuid, and so does the roster: the latest event (the leave) decides.
            event("p1", "join", "room.d", Some("u1"), t, None),
            event("l1", "join", "room.d", Some("u1"), t + 1_000, None),
            event("p2", "leave", "room.d", Some("u1"), t + 2_000, None),
            event("k1", "join", "room.d", Some("u3"), t + 3_000, None),
            other,
        ],
    )
    .await;
    let members = wait_for("u3 in room.d", WAIT, || async {
        let members = roster.members("room.d").await?;
        members.contains_key("u3").then_some(members)
    })
    .await;
    assert_eq!(
        members.keys().collect::<Vec<_>>(),
        ["u3"],
        "u1 left, u2 is another sub_key's"
    );
    roster
        .wait_metric(
            "hookbus_roster_events_skipped_total{reason=\"sub_key\"}",
            |v| v == 1.0,
        )
        .await;
    // SIGTERM: a clean exit.
    let mut roster = roster;
    crate::common::signal_pid(roster.child.id().expect("running"), crate::common::SIGTERM);
    let status = tokio::time::timeout(WAIT, roster.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}: {}", roster.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_of_100000_members_over_two_replicas_is_whole_through_the_paged_api() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let js = stream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[roster]\nstore = \"{}\"\n",
        nats_fragment(&nats),
        redis.url()
    );
    let a = RosterProcess::spawn(dir.path(), "a", &config).await;
    let b = RosterProcess::spawn(dir.path(), "b", &config).await;
    let t = 1_718_035_200_000;
    let joins = joins("h", "hot.room", 0..100_000, t, 6);
    publish(&js, &joins).await;
    let members = wait_for("100,000 members", Duration::from_secs(240), || async {
        let (status, body) = a.get("/roster/hot.room?limit=1").await;
        (status == 200 && body["members"].as_array()?.len() == 1).then_some(())?;
        let members = a.members("hot.room").await?;
        (members.len() == 100_000).then_some(members)
    })
    .await;
    assert_eq!(members.keys().next().map(String::as_str), Some("u000000"));
    assert_eq!(members.keys().last().map(String::as_str), Some("u099999"));
    let (_, list) = b.get("/roster?prefix=hot").await;
    assert_eq!(list["channels"][0]["members"], json!(100_000));
    // The summary stays small: the members are entries of their own.
    let summary = redis.command(&["HSTRLEN", "{PRESENCE_ROSTER}:s:hot_2Eroom", "v"]);
    let bytes: usize = summary
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("a length");
    assert!(bytes < 4_096, "summary of {bytes} bytes");
    for roster in [&a, &b] {
        let pid = roster.child.id().expect("running");
        let rss_kib = crate::common::peak_rss_kib(pid);
        assert!(
            rss_kib < 100 * 1024,
            "a roster replica peaked at {rss_kib} KiB"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_data_is_detected_counted_and_rebuilt_from_the_input() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let js = stream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[roster]\nstore = \"{}\"\n",
        nats_fragment(&nats),
        redis.url()
    );
    let roster = RosterProcess::spawn(dir.path(), "r", &config).await;
    let (distinct, delivered) = workload(5, 500, 10, 50);
    publish(&js, &delivered).await;
    let want = expected(&distinct);
    let channels = channels_of(&distinct);
    converges(&roster, &channels, &want).await;
    assert_eq!(redis.command(&["FLUSHALL"]).trim(), "+OK");
    roster
        .wait_metric(
            "hookbus_roster_rebuilds_total{reason=\"store_lost\"}",
            |v| v == 1.0,
        )
        .await;
    // Replayed from the input's beginning: the same state again.
    converges(&roster, &channels, &want).await;
    wait_for("ready again", WAIT, || async {
        (roster.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_gap_is_counted_and_every_channel_is_read_from_here_now() {
    use crate::common::here_now::{Answer, HereNowServer};
    let nats = NatsServer::start();
    // A stream that keeps 100 messages: what the roster has not applied can be dropped.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_or_create_stream(jetstream::stream::Config {
        name: "PRESENCE".to_owned(),
        subjects: vec!["presence.*.*".to_owned()],
        max_messages: 100,
        ..Default::default()
    })
    .await
    .expect("stream");
    let here_now = HereNowServer::start().await.expect("here now server");
    // Here Now fails at first: the gap stays unreconciled until a read succeeds.
    here_now.answer("g.room", Answer::error(500, "internal error"));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[roster]\nsub_key = \"sub-c-1\"\n[roster.here_now]\norigin = \"{}\"\n\
         subscribe_key = \"sub-c-1\"\ninterval = \"1h\"\n",
        nats_fragment(&nats),
        here_now.origin()
    );
    let roster = RosterProcess::spawn(dir.path(), "r", &config).await;
    let t = 1_718_035_200_000;
    let first = joins("a", "g.room", 0..10, t, 0);
    publish(&js, &first).await;
    wait_for("the first events applied", WAIT, || async {
        (roster.members("g.room").await?.len() == 10).then_some(())
    })
    .await;
    // The roster stalls while 300 more arrive: the stream drops 200 it never applied.
    let pid = roster.child.id().expect("running");
    crate::common::signal_pid(pid, crate::common::SIGSTOP);
    let stopped = tokio::time::Instant::now();
    // Until its last pull request has expired (else the server would hand it the new ones).
    let stream = js.get_stream("PRESENCE").await.unwrap();
    wait_for("no pull request waiting", WAIT, || async {
        let info = stream.consumer_info("hookbus-roster").await.ok()?;
        (info.num_waiting == 0).then_some(())
    })
    .await;
    let more = joins("b", "g.room", 100..400, t, 0);
    publish(&js, &more).await;
    // The roster checks for gaps once a second: a stall shorter than that (with a retention
    // shorter than a second of traffic) can slip between two checks (docs/roster.md), so the
    // stall lasts longer than one interval.
    tokio::time::sleep_until(stopped + Duration::from_millis(1_200)).await;
    crate::common::signal_pid(pid, crate::common::SIGCONT);
    roster
        .wait_metric("hookbus_roster_rebuilds_total{reason=\"input_gap\"}", |v| {
            v == 1.0
        })
        .await;
    // The read after the gap failed: the roster still says it is incomplete.
    roster
        .wait_metric(
            "hookbus_roster_reconciliations_total{result=\"server_error\"}",
            |v| v >= 1.0,
        )
        .await;
    let ready = crate::common::request(roster.api, "GET", "/readyz", &[], b"").await;
    let body = String::from_utf8_lossy(&ready.body);
    assert_eq!(
        ready.status, 503,
        "incomplete while no read succeeded: {body}"
    );
    assert!(body.starts_with("incomplete"), "{body}");
    here_now.answer("g.room", Answer::members(vec![("x1".to_owned(), None)]));
    // Every channel read from Here Now after the gap (the failed one again after its
    // backoff): its member set replaces what the events (all older than the read) said, and
    // the roster is ready again.
    let members = wait_for("g.room replaced by the read", WAIT, || async {
        let members = roster.members("g.room").await?;
        (members.len() == 1).then_some(members)
    })
    .await;
    assert!(members.contains_key("x1"));
    wait_for("ready after the pass", WAIT, || async {
        (roster.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
}
