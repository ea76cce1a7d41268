//! The webhook listener's HTTP contract (docs/events.md) without a reachable broker: `memory`
//! mode accepts into the queue while the NATS client keeps trying a port nobody listens on.

use crate::common::*;

fn offline(spool: &std::path::Path, extra: &str) -> hookbus::config::Config {
    let dead = dead_port();
    // Nothing can be published, so a drain can only time out: keep it short.
    let base = format!(
        "[ack]\nmode = \"memory\"\n[nats]\nurl = \"nats://127.0.0.1:{dead}\"\n[shutdown]\ngrace = \"1s\""
    );
    config_with(spool, &[&base, extra])
}

const JOIN: &[u8] = br#"{"action":"join","sub_key":"sub-c-1","channel":"lobby","uuid":"u1","timestamp":1718035200,"occupancy":1}"#;

#[tokio::test]
async fn paths_methods_and_json_errors() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path(), "")).await;
    let addr = hb.http_addr;

    let r = request(addr, "POST", "/nope", &[], JOIN).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");

    let r = request(addr, "GET", "/webhooks/pubnub", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));

    let r = request(addr, "POST", "/webhooks/pubnubx", &[], JOIN).await;
    assert_eq!(r.status, 404);

    // G1 used one URL per event type; Content-Type is not trusted.
    let r = request(
        addr,
        "POST",
        "/webhooks/pubnub/join",
        &[("Content-Type", "text/plain")],
        JOIN,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 1, "duplicates": 0})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = post(
        addr,
        br#"{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[]}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 0, "duplicates": 0})
    );

    let r = post(
        addr,
        br#"{"action":"join","channel":"a\u0007b","timestamp":1}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_payload");

    // Every ingress response is counted and timed; admin requests are not.
    let admin = hb.admin_addr;
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"404\"}").await,
        2.0
    );
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"405\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"200\"}").await,
        2.0
    );
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"400\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "hookbus_ack_duration_seconds_count").await,
        6.0
    );
    hb.stop().await.unwrap();
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path(), "[http]\nmax_body_bytes = 1000")).await;
    let big = format!(
        r#"{{"action":"join","channel":"x","timestamp":1,"pad":"{}"}}"#,
        "p".repeat(2000)
    );
    let r = post(hb.http_addr, big.as_bytes()).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    let r = post(hb.http_addr, JOIN).await;
    assert_eq!(r.status, 200);
    hb.stop().await.unwrap();
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path(), "[auth]\ntoken = \"s3cret/x\"")).await;
    let addr = hb.http_addr;
    let r = post(addr, JOIN).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = request(
        addr,
        "POST",
        "/webhooks/pubnub",
        &[("X-Hookbus-Token", "s3cret/y")],
        JOIN,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(
        addr,
        "POST",
        "/webhooks/pubnub",
        &[("X-Hookbus-Token", "s3cret")],
        JOIN,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(
        addr,
        "POST",
        "/webhooks/pubnub",
        &[("X-Hookbus-Token", "s3cret/x")],
        JOIN,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request(addr, "POST", "/webhooks/pubnub?token=s3cret%2Fx", &[], JOIN).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["duplicates"], 1);
    hb.stop().await.unwrap();
}

#[tokio::test]
async fn unlisted_sub_key_is_403() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(
        spool.path(),
        "[auth]\nallowed_sub_keys = [\"sub-c-ok\"]",
    ))
    .await;
    let r = post(hb.http_addr, JOIN).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    let ok = br#"{"action":"join","sub_key":"sub-c-ok","channel":"lobby","uuid":"u1","timestamp":1718035200}"#;
    assert_eq!(post(hb.http_addr, ok).await.status, 200);
    hb.stop().await.unwrap();
}

#[tokio::test]
async fn full_queue_is_503_with_retry_after_and_unready() {
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path(), "[ack]\nqueue_capacity = 20")).await;
    let admin = hb.admin_addr;
    assert_eq!(request(admin, "GET", "/readyz", &[], b"").await.status, 200);
    for i in 0..20 {
        let body =
            format!(r#"{{"action":"join","channel":"c","uuid":"u{i}","timestamp":1718035200}}"#);
        assert_eq!(
            post(hb.http_addr, body.as_bytes()).await.status,
            200,
            "event {i}"
        );
    }
    let r = post(hb.http_addr, JOIN).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(request(admin, "GET", "/readyz", &[], b"").await.status, 503);
    assert_eq!(
        request(admin, "GET", "/healthz", &[], b"").await.status,
        200
    );
    // The refused event was released, not remembered: it is not a duplicate later.
    assert_eq!(
        metric(admin, "hookbus_duplicates_total{action=\"join\"}").await,
        0.0
    );
    assert_eq!(
        metric(admin, "hookbus_acks_before_durable_total").await,
        20.0
    );
    hb.stop().await.unwrap();
}

#[tokio::test]
async fn arbitrary_bytes_never_get_a_500() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let spool = tempfile::tempdir().unwrap();
    let hb = start(offline(spool.path(), "[ack]\nqueue_capacity = 100000")).await;
    let mut runner = TestRunner::deterministic();
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "\\PC{0,200}".prop_map(String::into_bytes),
        r#"\{"(action|status|schema|data|channel|timestamp)":("[a-z.]{0,12}"|[0-9]{1,25}|\[\]|null|\{\}),"channel":"[^"]{0,8}","timestamp":[0-9e.+-]{1,22}\}"#
            .prop_map(String::into_bytes),
    ];
    for _ in 0..150 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let r = post(hb.http_addr, &body).await;
        assert!(
            r.status == 200 || r.status == 400,
            "{} for {:?}",
            r.status,
            String::from_utf8_lossy(&body)
        );
        let json = r.json();
        if r.status == 400 {
            assert_eq!(json["error"], "invalid_payload");
        }
    }
    hb.stop().await.unwrap();
}
