//! Several replicas, one memory: `dedup.shared` with real `redis-server` processes and a real
//! Kafka-compatible broker (no broker-side dedup). A retry that lands on another replica is a
//! duplicate there; a claim left by a killed replica expires; the store going away never fails
//! a request, and coming back restores shared dedup without a restart.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::kafka::{assert_exactly_once, consume, create_topics, kafka};
use crate::common::proxy::Proxy;
use crate::common::*;

const SECS: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_secs(2);
const TOPIC: &str = "presence.all.join";

/// A replica's config: [`kafka`] with short timeouts, every join on [`TOPIC`], dedup shared
/// through `redis`.
fn replica(brokers: &str, redis: &str, mode: &str) -> String {
    kafka(
        brokers,
        mode,
        &format!(
            "[ack]\npublish_timeout = \"1s\"\n\
             [sink]\ntimeout = \"2s\"\nmax_backoff = \"200ms\"\n\
             [routing]\ntemplate = \"presence.all.{{action}}\"\n\
             [dedup]\nshared = \"{redis}\"\nshared_timeout = \"200ms\""
        ),
    )
}

async fn store_up(admin: SocketAddr) {
    wait_for("the dedup store up", SECS, || async move {
        (metric(admin, "hookbus_dedup_store_up").await == 1.0).then_some(())
    })
    .await;
}

/// Two spool-mode replicas sharing `redis`, each with its own spool, once both reach the store.
async fn two_replicas(
    broker: &Tansu,
    redis: &RedisServer,
) -> (
    [tempfile::TempDir; 2],
    hookbus::app::Running,
    hookbus::app::Running,
) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let toml = replica(&broker.brokers(), &redis.url(), "spool");
    let a = start(config(dirs[0].path(), &toml)).await;
    let b = start(config(dirs[1].path(), &toml)).await;
    store_up(a.admin_addr).await;
    store_up(b.admin_addr).await;
    (dirs, a, b)
}

fn joins(ids: &[&str]) -> Vec<u8> {
    ea_joins(ids.iter().map(|id| (*id, "lobby")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_replica_is_a_duplicate_and_published_once() {
    let broker = Tansu::start();
    let redis = RedisServer::start();
    let (_dirs, a, b) = two_replicas(&broker, &redis).await;

    let g1 = g1_event(7, 1);
    assert_eq!(
        post(a.http_addr, &g1).await.json(),
        serde_json::json!({"accepted": 1, "duplicates": 0})
    );
    let retry = wait_for("B to see A's commit", SECS, || {
        let g1 = g1.clone();
        async move {
            let r = post(b.http_addr, &g1).await;
            (r.status == 200).then(|| r.json())
        }
    })
    .await;
    assert_eq!(retry, serde_json::json!({"accepted": 0, "duplicates": 1}));

    // An Events & Actions batch split across retries: the retry to B carries one new item.
    let first = joins(&["ena-1", "ena-2", "ena-3"]);
    assert_eq!(post(a.http_addr, &first).await.json()["accepted"], 3);
    let again = joins(&["ena-1", "ena-2", "ena-3", "ena-4"]);
    let r = post(b.http_addr, &again).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "duplicates": 3})
    );

    let ids = [
        g1_id(&g1),
        "ena-1".into(),
        "ena-2".into(),
        "ena-3".into(),
        "ena-4".into(),
    ];
    let records = consume(&broker.brokers(), &[TOPIC], 1, ids.len(), QUIET).await;
    assert_exactly_once(&records, ids.iter().map(String::as_str));
    // A repeat on the same replica is answered from its own set (no round trip needed).
    assert_eq!(post(b.http_addr, &again).await.json()["duplicates"], 4);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_killed_replica_expires_and_the_retry_is_published() {
    let proxy = Proxy::start();
    let broker = Tansu::behind(proxy.port);
    proxy.target(broker.port);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Replica A loses the broker after connecting: its publish-mode request claims the id and
    // hands the event to the producer (the topic exists), which cannot deliver it.
    create_topics(&broker.brokers(), &[TOPIC], 1).await;
    let mut a = Process::spawn(
        &dir.path().join("a"),
        &replica(&broker.brokers(), &redis.url(), "publish"),
    )
    .await;
    store_up(a.admin_addr).await;
    let admin = a.admin_addr;
    wait_for("A connected to the broker", SECS, || async move {
        (metric(admin, "hookbus_sink_up{sink=\"kafka\"}").await == 1.0).then_some(())
    })
    .await;
    proxy.cut();
    let body = g1_event(8, 1);
    let r = post(a.http_addr, &body).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        redis.command(&["KEYS", "*"]).starts_with("*1"),
        "A's claim is in the store"
    );
    a.signal(SIGKILL);
    let _ = a.child.wait().await;
    proxy.restore();

    let b = start(config(
        &dir.path().join("b"),
        &replica(&broker.brokers(), &redis.url(), "publish"),
    ))
    .await;
    store_up(b.admin_addr).await;
    let started = std::time::Instant::now();
    let first = post(b.http_addr, &body).await;
    assert_eq!(
        first.status,
        503,
        "A's claim is still alive: {}",
        String::from_utf8_lossy(&first.body)
    );
    let addr = b.http_addr;
    let r = wait_for("A's claim to expire", SECS, || {
        let body = body.clone();
        async move {
            let r = post(addr, &body).await;
            (r.status == 200).then(|| r.json())
        }
    })
    .await;
    assert_eq!(r, serde_json::json!({"accepted": 1, "duplicates": 0}));
    // Claim expiry: sink.timeout + publish_timeout + 2 s = 5 s after A's last renewal.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let records = consume(&broker.brokers(), &[TOPIC], 1, 1, QUIET).await;
    assert_exactly_once(&records, [g1_id(&body).as_str()]);
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_going_away_never_fails_a_request_and_coming_back_needs_no_restart() {
    let broker = Tansu::start();
    let mut redis = RedisServer::start();
    let (_dirs, a, b) = two_replicas(&broker, &redis).await;

    let load = |addr: SocketAddr, from: usize| async move {
        for n in from..from + 50 {
            let r = post(addr, &g1_event(9, n)).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    };
    load(a.http_addr, 0).await;
    redis.stop();
    load(a.http_addr, 50).await;
    load(b.http_addr, 100).await;
    let admin = a.admin_addr;
    assert!(metric(admin, "hookbus_dedup_store_errors_total").await >= 1.0);
    assert_eq!(metric(admin, "hookbus_dedup_store_up").await, 0.0);
    for code in ["500", "503"] {
        assert_eq!(
            metric(
                admin,
                &format!("hookbus_http_requests_total{{code=\"{code}\"}}")
            )
            .await,
            0.0
        );
    }

    redis.restart();
    store_up(a.admin_addr).await;
    store_up(b.admin_addr).await;
    let body = g1_event(9, 1000);
    assert_eq!(post(a.http_addr, &body).await.json()["accepted"], 1);
    let retry = wait_for("B to see A's commit again", SECS, || {
        let body = body.clone();
        async move { Some(post(b.http_addr, &body).await.json()).filter(|r| r["duplicates"] == 1) }
    })
    .await;
    assert_eq!(retry, serde_json::json!({"accepted": 0, "duplicates": 1}));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_that_can_drop_claims_is_warned_about() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &format!(
            "[ack]\nmode = \"memory\"\n[nats]\nurl = \"nats://127.0.0.1:{}\"\n[dedup]\nshared = \"{}\"",
            dead_port(),
            redis.url()
        ),
    ))
    .await;
    let admin = hb.admin_addr;
    wait_for("the policy warning", SECS, || async move {
        (metric(admin, "hookbus_config_warnings_total").await >= 1.0).then_some(())
    })
    .await;
    hb.stop().await.unwrap();
}
