//! Hostile clients against the running service: slow headers, slow bodies, floods of idle
//! connections, many large bodies at once, oversized batches, bad tokens, dead letters that
//! would fill the disk, and mutated or random bodies. Loopback only, every wait bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECS: Duration = Duration::from_secs(30);
const JOIN: &[u8] = br#"{"action":"join","sub_key":"sub-c-1","channel":"lobby","uuid":"u1","timestamp":1718035200,"occupancy":1}"#;

/// No reachable broker: memory mode accepts into the queue, nothing is published.
fn offline(extra: &str) -> String {
    format!(
        "[ack]\nmode = \"memory\"\n[nats]\nurl = \"nats://127.0.0.1:{}\"\n\
         [shutdown]\ngrace = \"2s\"\n{extra}",
        dead_port()
    )
}

/// Whether the server closed `stream` (reads EOF or an error) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A fresh client's answer and how long it took.
async fn timed_post(addr: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let r = post(addr, JOIN).await;
    (r.status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &offline("[http]\nheader_timeout = \"1s\""),
    ))
    .await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(hb.http_addr).await.unwrap();
        s.write_all(b"POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    // One header byte every 200 ms: never a complete head within the timeout.
    let dribble = tokio::spawn(async move {
        let mut closed = 0;
        let mut open = slow;
        while !open.is_empty() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut still = Vec::new();
            for mut s in open {
                if s.write_all(b"X").await.is_err() || closed_within(&mut s, Duration::ZERO).await {
                    closed += 1;
                } else {
                    still.push(s);
                }
            }
            open = still;
        }
        (closed, started.elapsed())
    });
    let (status, took) = timed_post(hb.http_addr).await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a fresh client waited {took:?}"
    );
    let (closed, elapsed) = dribble.await.unwrap();
    assert_eq!(closed, 50, "every slow connection was closed");
    assert!(elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
    let admin = hb.admin_addr;
    assert!(
        metric(
            admin,
            "hookbus_connections_closed_total{listener=\"webhook\",reason=\"header_timeout\"}"
        )
        .await
            >= 50.0
    );
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_gets_408_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &offline("[http]\nrequest_timeout = \"1s\""),
    ))
    .await;
    let mut s = TcpStream::connect(hb.http_addr).await.unwrap();
    // Content-Length larger than what is sent: the rest never comes.
    s.write_all(b"POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"act")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the connection was closed");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let admin = hb.admin_addr;
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"408\"}").await,
        1.0
    );
    wait_for("the close to be counted", SECS, || async move {
        (metric(
            admin,
            "hookbus_connections_closed_total{listener=\"webhook\",reason=\"body_timeout\"}",
        )
        .await
            == 1.0)
            .then_some(())
    })
    .await;
    hb.stop().await.unwrap();
}

/// Opens `n` connections that each send one request and then stay open, idle.
async fn idle_keep_alive(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            JOIN.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(JOIN).await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        out.push(s);
    }
    out
}

/// A keep-alive connection that answered a request and then starts a head it never
/// finishes is cut at the header timeout, counted from that first byte, not left to the
/// longer idle timeout it was waiting under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_head_after_an_idle_spell_is_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &offline("[http]\nheader_timeout = \"1s\"\nidle_timeout = \"60s\""),
    ))
    .await;
    let mut conns = idle_keep_alive(hb.http_addr, 1).await;
    let mut s = conns.pop().unwrap();
    // Idle for a while, then a head that never ends.
    assert!(!closed_within(&mut s, Duration::from_millis(300)).await);
    s.write_all(b"POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(10)).await,
        "a stalled head was not cut"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "cut early: {took:?}");
    assert!(took < Duration::from_secs(5), "cut late: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_close_at_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &offline("[http]\nidle_timeout = \"3s\""),
    ))
    .await;
    let mut idle = idle_keep_alive(hb.http_addr, 2000).await;
    let (status, took) = timed_post(hb.http_addr).await;
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a fresh client waited {took:?}"
    );
    let mut closed = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_secs(8)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 2000);
    assert!(
        metric(
            hb.admin_addr,
            "hookbus_connections_closed_total{listener=\"webhook\",reason=\"idle_timeout\"}"
        )
        .await
            >= 2000.0
    );
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_longest_idle_makes_room_and_readiness_holds() {
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &offline("[http]\nmax_connections = 100\n[admin]\nmax_connections = 10"),
    ))
    .await;
    let mut idle = idle_keep_alive(hb.http_addr, 100).await;
    let (status, took) = timed_post(hb.http_addr).await;
    assert_eq!(status, 200, "a new client is admitted at the cap");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(2)).await,
        "the oldest idle one went"
    );
    let admin = hb.admin_addr;
    assert_eq!(request(admin, "GET", "/readyz", &[], b"").await.status, 200);
    assert!(
        metric(
            admin,
            "hookbus_connections_closed_total{listener=\"webhook\",reason=\"evicted\"}"
        )
        .await
            >= 1.0
    );
    // The admin port has a cap of its own.
    let mut admin_idle = Vec::new();
    for _ in 0..10 {
        admin_idle.push(TcpStream::connect(admin).await.unwrap());
    }
    assert_eq!(
        request(admin, "GET", "/healthz", &[], b"").await.status,
        200
    );
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_refusals_are_counted_and_a_stalled_client_does_not_hold_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &offline("[http]\nrequest_timeout = \"60s\""),
    ))
    .await;
    let mut s = TcpStream::connect(hb.http_addr).await.unwrap();
    s.write_all(b"GET /webhooks/pubnub HTTP/1.1\r\nno colon in this header\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let huge = format!(
        "POST /webhooks/pubnub HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(600_000)
    );
    let mut s = TcpStream::connect(hb.http_addr).await.unwrap();
    let _ = s.write_all(huge.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(100)])
    );
    let admin = hb.admin_addr;
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"400\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"431\"}").await,
        1.0
    );

    // A client stuck in the middle of its body: the stop does not wait the 60 s for it.
    let mut stuck = TcpStream::connect(hb.http_addr).await.unwrap();
    stuck
        .write_all(b"POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // let the server take the request
    let started = Instant::now();
    hb.stop().await.unwrap();
    // shutdown.grace is 2 s (plus up to 1 s to flush the producer); the body's 60 s never count.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_bodies_at_once_get_503_beyond_the_budget_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let hb = Process::spawn(
        &dir.path().join("spool"),
        &offline("[http]\nmax_body_bytes = 4194304\nmax_inflight_bytes = 16777216"),
    )
    .await;
    let pid = hb.child.id().unwrap();
    let baseline = peak_rss_kib(pid);
    let body = vec![b'x'; 4 << 20];
    let mut clients = Vec::new();
    for _ in 0..40 {
        let addr = hb.http_addr;
        let body = body.clone();
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            // The body comes slowly, so the requests are in flight together.
            for chunk in body.chunks(512 << 10) {
                if s.write_all(chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut raw = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
            String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned()
        }));
    }
    let mut codes = std::collections::HashMap::<String, usize>::new();
    for c in clients {
        *codes.entry(c.await.unwrap()).or_default() += 1;
    }
    // At most 4 bodies of 4 MiB fit the 16 MiB budget at once; the others were refused.
    let refused = codes.get("HTTP/1.1 503").copied().unwrap_or(0);
    let rejected = codes.get("HTTP/1.1 400").copied().unwrap_or(0);
    assert!(
        refused >= 20 && rejected >= 4 && refused + rejected == 40,
        "{codes:?}"
    );
    let grown = peak_rss_kib(pid).saturating_sub(baseline);
    assert!(grown < 160 * 1024, "peak RSS grew by {grown} KiB");
}

fn batch(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"item-{i:05}","channel":"room.{}","userId":"user-{i}","occupancy":{},"data":{{"action":"join","uuid":"user-{i}","occupancy":"1","timestamp":"1718035200","precise_timestamp":"1718035200123"}},"timestamp":"2024-06-10T16:00:00.123Z","subKey":"sub-c-7d1e0c2a-0000-4000-8000-000000000001"}}"#,
                i % 500,
                i % 100
            )
        })
        .collect();
    format!(
        r#"{{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_item_cap_is_413_and_one_at_the_cap_is_answered_fast() {
    let dir = tempfile::tempdir().unwrap();
    let hb = Process::spawn(
        &dir.path().join("spool"),
        "[ack]\nmode = \"spool\"\n[sink]\nkind = \"stdout\"",
    )
    .await;
    let r = post(hb.http_addr, &batch(10_001)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    assert!(
        r.json()["message"].as_str().unwrap().contains("10001"),
        "{}",
        r.json()
    );
    let full = batch(10_000);
    let started = Instant::now();
    let r = post(hb.http_addr, &full).await;
    let took = started.elapsed();
    assert_eq!(
        r.json(),
        serde_json::json!({"accepted": 10000, "duplicates": 0})
    );
    // PubNub waits 5 s; a third of that leaves room for a busy machine.
    assert!(took <= Duration::from_millis(1600), "{took:?}");
}

#[test]
fn hostile_configs_are_refused_by_check_naming_the_key() {
    for (text, key) in [
        (
            "[http]\nmax_connections = 9223372036854775807",
            "http.max_connections",
        ),
        (
            "[sink]\nmax_in_flight = 9223372036854775807",
            "sink.max_in_flight",
        ),
        (
            "[ack]\nqueue_capacity = 9223372036854775807",
            "ack.queue_capacity",
        ),
        ("[shutdown]\ngrace = \"300000000000y\"", "shutdown.grace"),
        ("[dedup]\nwindow = \"100y\"", "dedup.window"),
        ("[http]\nheader_timeout = \"0s\"", "http.header_timeout"),
        ("[http]\nmax_inflight_bytes = 1", "http.max_inflight_bytes"),
        (
            "[dedup]\nmax_entries = 9223372036854775807",
            "dedup.max_entries",
        ),
        ("[spool]\nmax_bytes = 1", "spool.max_bytes"),
        ("[auth]\nheader = \"X Bad\"", "auth.header"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
            .args(["--config", path.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {err}");
        assert!(err.contains(key), "{key} not named: {err}");
    }
    // A huge line is not echoed back whole.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[http]\nlisten = \"{}\"", "x".repeat(10 << 20)),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["--config", path.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        out.stderr.len() < 8192,
        "{} bytes of error",
        out.stderr.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_too_large_for_the_broker_stop_at_their_disk_budget() {
    let nats = NatsServer::start_with("max_payload: 65536");
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hb = start(config(
        &spool,
        &format!(
            "[ack]\nmode = \"spool\"\n[spool]\ndead_letter_max_bytes = 1048576\n[nats]\nurl = \"{}\"",
            nats.url()
        ),
    ))
    .await;
    let admin = hb.admin_addr;
    wait_for("the sink to connect", SECS, || async move {
        (metric(admin, "hookbus_sink_up{sink=\"nats\"}").await == 1.0).then_some(())
    })
    .await;
    for n in 0..10 {
        // Invalid (not JSON), 200 KiB, different each time.
        let body = format!("{n}{}", "!".repeat(200 * 1024)).into_bytes();
        let r = post(hb.http_addr, &body).await;
        assert_eq!(
            r.status, 400,
            "the 400 goes out whether the body is kept or not"
        );
    }
    let dead_letters = spool.join("dead-letters");
    let files: Vec<(bool, u64)> = std::fs::read_dir(&dead_letters)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let body = e.path().extension().is_some_and(|x| x == "body");
            (body, e.metadata().unwrap().len())
        })
        .collect();
    let bodies = files.iter().filter(|(body, _)| *body).count();
    assert_eq!(
        bodies, 5,
        "five 200 KiB bodies (and their meta files) fit 1 MiB"
    );
    assert_eq!(files.len(), 10, "each body has its meta file");
    assert!(files.iter().map(|(_, len)| len).sum::<u64>() <= 1 << 20);
    assert_eq!(
        metric(admin, "hookbus_dead_letters_total{reason=\"too_large\"}").await,
        5.0
    );
    assert_eq!(
        metric(admin, "hookbus_dead_letters_total{reason=\"dropped\"}").await,
        5.0
    );
    assert!(
        !std::fs::read_dir(&dead_letters).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "tmp")),
        "no partial file left behind"
    );
    hb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_header_query_and_nothing_secret_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hb = Process::spawn_with_env(
        &spool,
        &offline(
            "[auth]\ntoken = \"new-T0KEN\"\ntokens = [\"old-T0KEN\"]\nheader = \"X-PubNub-Secret\"",
        ),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let addr = hb.http_addr;
    let with = |headers: &'static [(&'static str, &'static str)], path: &'static str| async move {
        request(addr, "POST", path, headers, JOIN).await
    };
    let r = with(&[], "/webhooks/pubnub").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(
        with(&[("X-PubNub-Secret", "wrong")], "/webhooks/pubnub")
            .await
            .status,
        401
    );
    assert_eq!(
        with(&[("X-Hookbus-Token", "new-T0KEN")], "/webhooks/pubnub")
            .await
            .status,
        401,
        "only the configured header counts"
    );
    assert_eq!(
        with(&[("X-PubNub-Secret", "old-T0KEN")], "/webhooks/pubnub")
            .await
            .status,
        200
    );
    assert_eq!(
        with(&[("X-PubNub-Secret", "new-T0KEN")], "/webhooks/pubnub")
            .await
            .status,
        200
    );
    assert_eq!(
        with(&[], "/webhooks/pubnub?token=new%2DT0KEN").await.status,
        200
    );
    assert_eq!(
        with(&[], "/webhooks/pubnub/join?x=1&token=old-T0KEN")
            .await
            .status,
        200
    );
    assert_eq!(
        with(&[], "/webhooks/pubnub?token=old-T0KENx").await.status,
        401
    );
    let admin = hb.admin_addr;
    assert_eq!(
        metric(
            admin,
            "hookbus_auth_failures_total{reason=\"missing_token\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(admin, "hookbus_auth_failures_total{reason=\"wrong_token\"}").await,
        2.0
    );
    assert_eq!(
        metric(admin, "hookbus_http_requests_total{code=\"401\"}").await,
        4.0
    );
    let log = hb.log();
    assert!(log.contains("webhook unauthorized"), "401s are logged");
    for secret in ["T0KEN", "token="] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_fixtures_and_random_bytes_get_2xx_or_4xx_and_every_400_is_dead_lettered_verbatim()
{
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hb = start(config(
        dir.path(),
        &format!("[ack]\nmode = \"memory\"\n[nats]\nurl = \"{}\"", nats.url()),
    ))
    .await;
    let fixtures: Vec<Vec<u8>> = fixtures().into_iter().map(|(_, b)| b).collect();
    let mutated = (
        0..fixtures.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    )
        .prop_map(move |(i, edits)| {
            let mut body = fixtures[i].clone();
            for (at, byte) in edits {
                let at = at.index(body.len());
                body[at] = byte;
            }
            body
        });
    let strategy = prop_oneof![
        mutated,
        proptest::collection::vec(any::<u8>(), 0..400),
        "\\PC{0,200}".prop_map(String::into_bytes),
    ];
    let mut runner = TestRunner::deterministic();
    let mut rejected = Vec::new();
    for _ in 0..200 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let r = post(hb.http_addr, &body).await;
        assert!(
            r.status == 200 || r.status == 400 || r.status == 403,
            "{} for {:?}",
            r.status,
            String::from_utf8_lossy(&body)
        );
        if r.status == 400 {
            rejected.push(body);
        }
    }
    assert!(rejected.len() > 50, "{} rejected", rejected.len());
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let dead = wait_for("every rejected body dead-lettered", SECS, || {
        let js = js.clone();
        let rejected = &rejected;
        async move {
            let mut stream = js.get_stream("PRESENCE_DEAD_LETTERS").await.ok()?;
            let info = stream.info().await.ok()?.clone();
            let mut bodies = Vec::new();
            for seq in info.state.first_sequence..=info.state.last_sequence {
                let m = stream.get_raw_message(seq).await.ok()?;
                if m.subject.as_str() == "presence.dead-letter" {
                    bodies.push(m.payload.to_vec());
                }
            }
            rejected
                .iter()
                .all(|b| bodies.contains(b))
                .then_some(bodies)
        }
    })
    .await;
    for body in &rejected {
        assert!(
            dead.contains(body),
            "no byte-identical dead letter for {:?}",
            String::from_utf8_lossy(body)
        );
    }
    hb.stop().await.unwrap();
}

/// An 8 MiB body (at most) made of `head`, `unit` repeated, and `tail`.
fn padded(head: &str, unit: &str, tail: &str) -> Vec<u8> {
    let room = (8 << 20) - head.len() - tail.len() - 64;
    let mut body = String::with_capacity(8 << 20);
    body.push_str(head);
    // Each unit takes a comma too.
    let n = room / (unit.len() + 1);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(unit.trim_end_matches(','));
    }
    body.push_str(tail);
    body.into_bytes()
}

/// POSTs `body` on a connection of its own; the status, or 0 when the connection ended
/// without an answer.
async fn post_raw(addr: SocketAddr, body: Vec<u8>) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let head = format!(
        "POST /webhooks/pubnub HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let _ = s.write_all(&body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw)).await;
    String::from_utf8_lossy(&raw[..raw.len().min(12)])
        .strip_prefix("HTTP/1.1 ")
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_bodies_in_parallel_parse_within_bounded_memory_and_all_get_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 8 MiB bodies, 64 MiB of bodies in flight.
    let hb = Process::spawn(&dir.path().join("spool"), &offline("")).await;
    let pid = hb.child.id().unwrap();
    let join = r#"{"action":"join","sub_key":"sub-c-1","channel":"lobby","uuid":"u1","timestamp":1718035200,"occupancy":1"#;
    let ena =
        r#"{"schema":"pubnub.com/schemas/events/presence.user.channel.joined?v=1.0.0","data":["#;
    let item = r#"{"id":"i","channel":"c","timestamp":"2024-06-10T16:00:00Z","data":{"data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}"#;
    let bodies = vec![
        // A state (`data`) of four million numbers.
        padded(&format!("{join},\"data\":["), "0", "]}"),
        // A state-change whose state is four million numbers.
        padded(
            r#"{"action":"state-change","channel":"lobby","uuid":"u1","timestamp":1718035200,"data":["#,
            "0",
            "]}",
        ),
        // An unknown member of millions of empty objects.
        padded(&format!("{join},\"x\":["), "{}", "]}"),
        // An unknown member of millions of numbers.
        padded(&format!("{join},\"y\":["), "0", "]}"),
        // A batch of millions of empty items.
        padded(ena, "{}", "]}"),
        // A batch at the item cap whose items each carry a long state.
        {
            let mut b = ena.to_owned();
            for i in 0..10_000 {
                if i > 0 {
                    b.push(',');
                }
                b.push_str(item);
            }
            b.push_str("]}");
            assert!(b.len() <= 8 << 20, "{}", b.len());
            b.into_bytes()
        },
        // An interval with millions of empty user ids.
        padded(
            r#"{"action":"interval","channel":"lobby","timestamp":1718035200,"occupancy":1,"join":["#,
            r#""""#,
            "]}",
        ),
        // Millions of distinct unknown members.
        {
            let mut b = String::from(join);
            let mut i = 0u64;
            while b.len() < (8 << 20) - 32 {
                b.push_str(&format!(",\"k{i}\":0"));
                i += 1;
            }
            b.push('}');
            b.into_bytes()
        },
    ];
    let mut clients = Vec::new();
    for body in bodies {
        let addr = hb.http_addr;
        clients.push(tokio::spawn(async move { post_raw(addr, body).await }));
    }
    let mut codes = Vec::new();
    for c in clients {
        codes.push(c.await.unwrap());
    }
    for code in &codes {
        assert!(
            [200, 400, 413, 503].contains(code),
            "every body gets an answer: {codes:?}"
        );
    }
    // The states and the delta beyond the parse budget are refused, the batch of millions
    // of items is over the item cap, and the rest (unknown members dropped unstored, a full
    // batch of modest states) are accepted.
    assert_eq!(
        codes,
        vec![400, 400, 200, 200, 413, 200, 400, 200],
        "answers in body order"
    );
    let peak = peak_rss_kib(pid);
    eprintln!("peak RSS after 8 adversarial 8 MiB bodies: {peak} KiB");
    assert!(
        peak < 256 * 1024,
        "peak RSS {peak} KiB for 8 adversarial 8 MiB bodies ({codes:?})"
    );
    // Still serving.
    assert_eq!(post(hb.http_addr, JOIN).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_refused_webhooks_are_logged_at_a_bounded_rate_and_counted_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let hb = Process::spawn_with_env(
        &dir.path().join("spool"),
        &offline("[auth]\ntoken = \"flood-token\"\nallow_anonymous = false"),
        &[("RUST_LOG", "info")],
    )
    .await;
    let started = Instant::now();
    let n = 1500;
    for _ in 0..n {
        assert_eq!(post(hb.http_addr, JOIN).await.status, 401);
    }
    let headers = [("X-Hookbus-Token", "flood-token")];
    for i in 0..n {
        let r = request(
            hb.http_addr,
            "POST",
            "/webhooks/pubnub",
            &headers,
            format!("not json {i}").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400);
    }
    let seconds = started.elapsed().as_secs() + 2;
    assert_eq!(
        metric(
            hb.admin_addr,
            "hookbus_auth_failures_total{reason=\"missing_token\"}"
        )
        .await,
        n as f64
    );
    assert_eq!(
        metric(hb.admin_addr, "hookbus_http_requests_total{code=\"400\"}").await,
        n as f64
    );
    let log = hb.log();
    let unauthorized = log.matches("webhook unauthorized").count() as u64;
    let rejected = log.matches("webhook rejected").count() as u64;
    assert!(
        (1..=seconds).contains(&unauthorized) && (1..=seconds).contains(&rejected),
        "{unauthorized} and {rejected} lines in {seconds} s"
    );
    assert!(
        log.contains("suppressed="),
        "a line says how many it stands for"
    );
    assert!(!log.contains("flood-token"), "the token is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_backlog_follows_the_connection_cap_and_admin_errors_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let hb = Process::spawn(
        &dir.path().join("spool"),
        &offline("[http]\nmax_connections = 3000\n[admin]\nmax_connections = 300"),
    )
    .await;
    for (addr, backlog) in [(hb.http_addr, "3000"), (hb.admin_addr, "300")] {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout);
        // State Recv-Q Send-Q Local Peer: Send-Q of a listening socket is its backlog.
        let send_q = text.split_whitespace().nth(2);
        assert_eq!(send_q, Some(backlog), "{text}");
    }
    let r = request(hb.admin_addr, "GET", "/nope", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = request(hb.admin_addr, "POST", "/metrics", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"], "method_not_allowed");
}
