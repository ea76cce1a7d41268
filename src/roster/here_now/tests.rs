//! The client against the local stand-in server (`test_server`): paging, the documented
//! shapes, errors, signing, one read per channel and the shared rate limit.

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

use super::test_server::{Answer, HereNowServer, RecordedRequest};
use super::*;

fn settings(server: &HereNowServer) -> HereNowSettings {
    HereNowSettings {
        origin: server.origin(),
        subscribe_key: "sub-c-test".into(),
        publish_key: "pub-c-test".into(),
        secret_key: String::new(),
        timeout: Duration::from_secs(10),
        max_requests_per_second: 100_000,
    }
}

async fn started() -> (HereNowServer, HereNowClient) {
    let server = HereNowServer::start().await.unwrap();
    let client = HereNowClient::new(settings(&server)).unwrap();
    (server, client)
}

/// `user-0000`… with a state on every third, as the fixtures have them.
fn members(n: usize) -> Vec<(String, Option<Value>)> {
    (0..n)
        .map(|i| {
            (
                format!("user-{i:04}"),
                (i % 3 == 0).then(|| json!({"mood": "ok"})),
            )
        })
        .collect()
}

fn as_members(list: &[(String, Option<Value>)]) -> Vec<HereNowMember> {
    list.iter()
        .map(|(uuid, state)| HereNowMember {
            uuid: uuid.clone(),
            state: state.clone(),
        })
        .collect()
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/pubnub/here-now/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn reads_2500_members_in_three_pages() {
    let (server, client) = started().await;
    let list = members(2500);
    server.answer("lobby", Answer::members(list.clone()));
    let before = crate::time::now_ms();
    let read = client.read("lobby").await.unwrap();
    let after = crate::time::now_ms();

    assert_eq!(read.occupancy, 2500);
    assert_eq!(read.members, as_members(&list));
    assert!((before..=after).contains(&read.requested_at_ms), "{read:?}");
    let requests = server.requests();
    let offsets: Vec<Option<&str>> = requests.iter().map(|r| r.param("offset")).collect();
    assert_eq!(offsets, [Some("0"), Some("1000"), Some("2000")]);
    for request in &requests {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.path,
            "/v2/presence/sub-key/sub-c-test/channel/lobby"
        );
        assert_eq!(request.param("limit"), Some("1000"));
        assert_eq!(request.param("state"), Some("1"));
        assert_eq!(request.param("uuid"), Some(ROSTER_UUID));
        // Unsigned: no secret key, so neither signature nor timestamp.
        assert_eq!(request.param("signature"), None);
        assert_eq!(request.param("timestamp"), None);
    }
}

#[tokio::test]
async fn exactly_one_full_page_takes_one_request() {
    let (server, client) = started().await;
    server.answer("lobby", Answer::members(members(1000)));
    let read = client.read("lobby").await.unwrap();
    assert_eq!((read.occupancy, read.members.len()), (1000, 1000));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn untracked_channel_reads_as_empty() {
    let (server, client) = started().await;
    let read = client.read("never-configured").await.unwrap();
    assert_eq!((read.occupancy, read.members), (0, Vec::new()));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_total_that_differs_from_the_occupancy_is_inconsistent() {
    let (server, client) = started().await;
    let list = members(3);
    server.answer(
        "few",
        Answer::Members {
            occupancy: 5,
            members: list,
        },
    );
    let err = client.read("few").await.unwrap_err();
    assert_eq!(
        err,
        HereNowError::Inconsistent {
            occupancy: 5,
            listed: 3
        }
    );

    // Over pages: the second page comes back short of the occupancy.
    let list = members(1000);
    server.answer(
        "paged",
        Answer::Members {
            occupancy: 1500,
            members: list,
        },
    );
    let err = client.read("paged").await.unwrap_err();
    assert_eq!(
        err,
        HereNowError::Inconsistent {
            occupancy: 1500,
            listed: 1000
        }
    );
    assert!(err.retriable());
    assert_eq!(server.requests().len(), 1 + 2);
}

#[tokio::test]
async fn the_documented_answers_are_read() {
    let (server, client) = started().await;
    let raw = |name: &str| Answer::Raw {
        status: 200,
        body: fixture(name),
    };
    server.answer("strings", raw("uuids-as-strings.json"));
    server.answer("empty", raw("untracked-or-empty.json"));
    server.answer("count", raw("count-only.json"));

    let read = client.read("strings").await.unwrap();
    assert_eq!(read.occupancy, 2);
    let uuids: Vec<&str> = read.members.iter().map(|m| m.uuid.as_str()).collect();
    assert_eq!(uuids, ["user-a", "user-b"]);
    let read = client.read("empty").await.unwrap();
    assert_eq!((read.occupancy, read.members.len()), (0, 0));
    // A count without the list cannot replace a member set.
    let err = client.read("count").await.unwrap_err();
    assert_eq!(
        err,
        HereNowError::Inconsistent {
            occupancy: 3,
            listed: 0
        }
    );
}

#[tokio::test]
async fn error_answers_map_to_their_errors() {
    let (server, client) = started().await;
    server.answer("forbidden", Answer::error(403, "Forbidden"));
    server.answer("down", Answer::error(500, "Internal Server Error"));
    server.answer(
        "gateway",
        Answer::Raw {
            status: 502,
            body: "<html>bad gateway</html>".into(),
        },
    );
    server.answer("bad", Answer::error(400, "Invalid Subscribe Key"));
    server.answer(
        "garbled",
        Answer::Raw {
            status: 200,
            body: "{\"occupancy\": 3, \"uuids\": [".into(),
        },
    );
    server.answer(
        "html",
        Answer::Raw {
            status: 200,
            body: "<html>hi</html>".into(),
        },
    );

    let cases = [
        ("forbidden", HereNowError::Forbidden("Forbidden".into())),
        ("down", HereNowError::Server(500)),
        ("gateway", HereNowError::Server(502)),
        (
            "bad",
            HereNowError::Status(400, "Invalid Subscribe Key".into()),
        ),
    ];
    for (channel, want) in cases {
        assert_eq!(client.read(channel).await.unwrap_err(), want, "{channel}");
    }
    for channel in ["garbled", "html"] {
        let err = client.read(channel).await.unwrap_err();
        assert!(
            matches!(err, HereNowError::Malformed(_)),
            "{channel}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let server = HereNowServer::start().await.unwrap();
    server.answer("lobby", Answer::Silence);
    let timeout = Duration::from_millis(200);
    let client = HereNowClient::new(HereNowSettings {
        timeout,
        ..settings(&server)
    })
    .unwrap();
    let start = Instant::now();
    let err = client.read("lobby").await.unwrap_err();
    assert_eq!(err, HereNowError::Timeout);
    assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
    assert_eq!(
        server.requests().len(),
        1,
        "the request arrived; the answer never did"
    );
}

#[tokio::test]
async fn an_unreachable_origin_is_a_transport_error() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = HereNowServer::start().await.unwrap();
    let client = HereNowClient::new(HereNowSettings {
        origin,
        ..settings(&server)
    })
    .unwrap();
    let err = client.read("lobby").await.unwrap_err();
    assert!(matches!(err, HereNowError::Transport(_)), "{err:?}");
    assert!(err.retriable());
}

/// The signature v2 of `request` computed here from scratch (HMAC-SHA256, URL-safe base64).
fn expected_signature(request: &RecordedRequest, publish_key: &str, secret_key: &str) -> String {
    let (signed_query, _) = request.query.split_once("&signature=").unwrap();
    let text = format!("GET\n{publish_key}\n{}\n{signed_query}\n", request.path);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret_key.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!(
        "v2.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

#[tokio::test]
async fn signed_requests_carry_a_timestamp_and_a_valid_signature() {
    let server = HereNowServer::start().await.unwrap();
    server.answer("room.lobby 1", Answer::members(members(1500)));
    let signed = HereNowSettings {
        secret_key: "sec-c-test".into(),
        ..settings(&server)
    };
    let client = HereNowClient::new(signed).unwrap();
    let before = crate::time::now_ms() / 1000;
    let read = client.read("room.lobby 1").await.unwrap();
    let after = crate::time::now_ms() / 1000;
    assert_eq!(read.members.len(), 1500);

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(
            request.path,
            "/v2/presence/sub-key/sub-c-test/channel/room.lobby%201"
        );
        assert_eq!(request.channel.as_deref(), Some("room.lobby 1"));
        let timestamp: u64 = request.param("timestamp").unwrap().parse().unwrap();
        assert!((before..=after).contains(&timestamp), "{timestamp}");
        // Signed parameters in name order, the signature last.
        let names: Vec<&str> = request.params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["limit", "offset", "state", "timestamp", "uuid", "signature"]
        );
        let want = expected_signature(request, "pub-c-test", "sec-c-test");
        assert_eq!(request.param("signature"), Some(want.as_str()));
    }
}

#[tokio::test]
async fn channel_names_are_percent_encoded_in_the_path() {
    let (server, client) = started().await;
    let channel = "a/b?c&d=e#f+g ü!~*'()";
    server.answer(channel, Answer::members(members(2)));
    let read = client.read(channel).await.unwrap();
    assert_eq!(read.members.len(), 2);
    let request = &server.requests()[0];
    assert_eq!(
        request.path,
        "/v2/presence/sub-key/sub-c-test/channel/a%2Fb%3Fc%26d%3De%23f%2Bg%20%C3%BC%21%7E%2A%27%28%29"
    );
    assert_eq!(request.channel.as_deref(), Some(channel));
    assert_eq!(
        client.read("").await.unwrap_err(),
        HereNowError::InvalidChannel
    );
}

#[tokio::test]
async fn a_second_read_of_the_same_channel_is_busy() {
    let (server, client) = started().await;
    server.answer("lobby", Answer::Silence);
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.read("lobby").await }
    });
    server.wait_for_requests(1).await;

    assert_eq!(client.read("lobby").await.unwrap_err(), HereNowError::Busy);
    assert_eq!(server.requests().len(), 1, "a busy read sends nothing");
    // Other channels are not held up.
    assert_eq!(client.read("other").await.unwrap().occupancy, 0);

    // Cancelling the first read frees the channel.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    server.answer("lobby", Answer::members(members(2)));
    assert_eq!(client.read("lobby").await.unwrap().members.len(), 2);
}

#[tokio::test]
async fn every_request_waits_for_the_shared_rate_limiter() {
    let server = HereNowServer::start().await.unwrap();
    server.answer("a", Answer::members(members(2500)));
    server.answer("b", Answer::members(members(2001)));
    let slow = HereNowSettings {
        max_requests_per_second: 20,
        ..settings(&server)
    };
    let client = HereNowClient::new(slow).unwrap();
    let start = Instant::now();
    let (a, b) = tokio::join!(client.read("a"), client.read("b"));
    let elapsed = start.elapsed();
    assert_eq!((a.unwrap().occupancy, b.unwrap().occupancy), (2500, 2001));
    // Six requests, one at once and then one every 50 ms, whichever channel asks.
    assert_eq!(server.requests().len(), 6);
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
}

#[test]
fn settings_are_checked() {
    let good = HereNowSettings {
        origin: "http://127.0.0.1:1".into(),
        subscribe_key: "sub-c-test".into(),
        publish_key: String::new(),
        secret_key: String::new(),
        timeout: Duration::from_secs(5),
        max_requests_per_second: 10,
    };
    assert!(HereNowClient::new(good.clone()).is_ok());
    let with_slash = HereNowSettings {
        origin: "http://127.0.0.1:1/".into(),
        ..good.clone()
    };
    assert!(HereNowClient::new(with_slash).is_ok());
    let bad = [
        HereNowSettings {
            origin: String::new(),
            ..good.clone()
        },
        HereNowSettings {
            origin: "ps.pndsn.com".into(),
            ..good.clone()
        },
        HereNowSettings {
            origin: "ftp://ps.pndsn.com".into(),
            ..good.clone()
        },
        HereNowSettings {
            origin: "https://ps.pndsn.com/v2".into(),
            ..good.clone()
        },
        HereNowSettings {
            origin: "https://ps.pndsn.com?x=1".into(),
            ..good.clone()
        },
        HereNowSettings {
            subscribe_key: String::new(),
            ..good.clone()
        },
        HereNowSettings {
            secret_key: "sec".into(),
            ..good.clone()
        },
        HereNowSettings {
            timeout: Duration::ZERO,
            ..good.clone()
        },
        HereNowSettings {
            max_requests_per_second: 0,
            ..good.clone()
        },
    ];
    for settings in bad {
        let shown = format!("{settings:?}");
        let err = HereNowClient::new(settings).unwrap_err();
        assert!(matches!(err, HereNowError::Config(_)), "{shown}: {err:?}");
        assert!(!err.retriable());
    }
}

#[test]
fn debug_output_never_shows_the_secret_key() {
    let settings = HereNowSettings {
        origin: "http://127.0.0.1:1".into(),
        subscribe_key: "sub-c-test".into(),
        publish_key: "pub-c-test".into(),
        secret_key: "sec-c-very-secret".into(),
        timeout: Duration::from_secs(5),
        max_requests_per_second: 10,
    };
    let shown = format!("{settings:?}");
    assert!(
        shown.contains("<set>") && !shown.contains("very-secret"),
        "{shown}"
    );
    let client = HereNowClient::new(settings).unwrap();
    let shown = format!("{client:?}");
    assert!(
        shown.contains("signed: true") && !shown.contains("very-secret"),
        "{shown}"
    );
}
