//! The Redis store against a real `redis-server` per test (so tests run in parallel): the
//! compare-and-set, consistent reads, tombstones, paging, the channel index, the epoch, error
//! reporting, and no lost update under concurrent writers.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::test_server::RedisServer;
use super::*;

async fn open(server: &RedisServer) -> RedisStore {
    RedisStore::open(&server.url(), "PRESENCE_ROSTER")
        .await
        .expect("open the store")
}

fn change(expected: u64, summary: &[u8], members: Vec<(&str, MemberOp)>) -> Commit {
    Commit {
        expected,
        summary: Some(summary.to_vec()),
        members: members
            .into_iter()
            .map(|(uuid, op)| (uuid.to_owned(), op))
            .collect(),
    }
}

fn present(value: &str) -> MemberOp {
    MemberOp::Present(value.as_bytes().to_vec())
}

fn entry(value: &[u8], rev: u64) -> Option<Entry> {
    Some(Entry {
        value: value.to_vec(),
        rev,
    })
}

/// The values of a page, as text.
fn texts(page: &Page) -> Vec<String> {
    page.members
        .iter()
        .map(|v| String::from_utf8(v.clone()).expect("utf8"))
        .collect()
}

#[tokio::test]
async fn a_commit_creates_a_channel_that_read_returns() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let empty = store.read("room.1", &["a"]).await.expect("read");
    assert_eq!(empty.summary, None);
    assert_eq!(empty.members, vec![("a".to_owned(), None)]);
    assert_eq!(store.page("room.1", None, 10).await.expect("page"), None);

    let summary = b"\x00\xffsummary";
    let commit = change(0, summary, vec![("a", present("A")), ("b", present("B"))]);
    let rev = store.commit("room.1", commit).await.expect("commit");
    assert!(rev > 0);
    let read = store.read("room.1", &["b", "zz", "a"]).await.expect("read");
    assert_eq!(read.summary, entry(summary, rev));
    assert_eq!(
        read.members,
        vec![
            ("b".to_owned(), entry(b"B", rev)),
            ("zz".to_owned(), None),
            ("a".to_owned(), entry(b"A", rev)),
        ]
    );
    assert!(store.is_up());
}

#[tokio::test]
async fn a_stale_expected_revision_conflicts_and_changes_nothing() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let rev = store
        .commit("c", change(0, b"one", vec![("a", present("A"))]))
        .await
        .expect("create");
    for stale in [0, rev - 1, rev + 1] {
        let commit = change(stale, b"two", vec![("a", MemberOp::Delete)]);
        let answer = store.commit("c", commit).await;
        assert!(
            matches!(answer, Err(CommitError::Conflict)),
            "{stale}: {answer:?}"
        );
    }
    let removal = Commit {
        expected: rev + 1,
        summary: None,
        members: Vec::new(),
    };
    assert!(matches!(
        store.commit("c", removal).await,
        Err(CommitError::Conflict)
    ));
    let read = store.read("c", &["a"]).await.expect("read");
    assert_eq!(read.summary, entry(b"one", rev));
    assert_eq!(read.members[0].1, entry(b"A", rev));

    let next = store
        .commit("c", change(rev, b"two", vec![]))
        .await
        .expect("commit");
    assert!(next > rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_mixes_two_commits() {
    let server = RedisServer::start();
    let writer = open(&server).await;
    let reader = open(&server).await;
    let rounds = 300u32;
    let write = tokio::spawn(async move {
        let mut rev = 0;
        for n in 1..=rounds {
            let value = n.to_string();
            let commit = change(
                rev,
                value.as_bytes(),
                vec![("a", present(&value)), ("b", present(&value))],
            );
            rev = writer.commit("hot", commit).await.expect("commit");
        }
    });
    let mut seen = 0;
    while !write.is_finished() {
        let read = reader.read("hot", &["a", "b"]).await.expect("read");
        let Some(summary) = read.summary else {
            continue;
        };
        for (uuid, member) in &read.members {
            assert_eq!(
                member.as_ref(),
                Some(&summary),
                "{uuid} mixed in another commit"
            );
        }
        seen += 1;
    }
    write.await.expect("writer");
    assert!(seen > 0, "the reader never saw the channel");
}

#[tokio::test]
async fn absent_members_are_read_but_not_paged() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let members = vec![
        ("a", present("A")),
        ("b", present("B")),
        ("c", present("C")),
    ];
    let rev = store
        .commit("ch", change(0, b"s", members))
        .await
        .expect("create");
    let tombstone = MemberOp::Absent(b"gone at 5".to_vec());
    let rev = store
        .commit("ch", change(rev, b"s", vec![("b", tombstone)]))
        .await
        .expect("tombstone");
    let read = store.read("ch", &["b"]).await.expect("read");
    assert_eq!(read.members[0].1, entry(b"gone at 5", rev));
    let page = store
        .page("ch", None, 10)
        .await
        .expect("page")
        .expect("exists");
    assert_eq!(texts(&page), ["A", "C"]);
    assert_eq!(page.summary, b"s");
    let all = store.read_all("ch").await.expect("read_all");
    let uuids: Vec<&str> = all.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uuids, ["a", "b", "c"]);
    assert_eq!(all.members[1].1, entry(b"gone at 5", rev));

    // Present again: listed again.
    store
        .commit("ch", change(rev, b"s", vec![("b", present("B2"))]))
        .await
        .expect("back");
    let page = store
        .page("ch", None, 10)
        .await
        .expect("page")
        .expect("exists");
    assert_eq!(texts(&page), ["A", "B2", "C"]);
}

#[tokio::test]
async fn delete_forgets_a_member() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let members = vec![("a", present("A")), ("b", MemberOp::Absent(b"t".to_vec()))];
    let rev = store
        .commit("ch", change(0, b"s", members))
        .await
        .expect("create");
    let gone = vec![("a", MemberOp::Delete), ("b", MemberOp::Delete)];
    store
        .commit("ch", change(rev, b"s", gone))
        .await
        .expect("delete");
    let read = store.read("ch", &["a", "b"]).await.expect("read");
    assert_eq!(
        read.members,
        [("a".to_owned(), None), ("b".to_owned(), None)]
    );
    assert!(read.summary.is_some());
    let page = store
        .page("ch", None, 10)
        .await
        .expect("page")
        .expect("exists");
    assert!(page.members.is_empty());
    assert_eq!(page.next, None);
    assert!(
        store
            .read_all("ch")
            .await
            .expect("read_all")
            .members
            .is_empty()
    );
}

#[tokio::test]
async fn removal_drops_the_members_and_recreation_keeps_revisions_climbing() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let r1 = store
        .commit("ch", change(0, b"s1", vec![("a", present("A"))]))
        .await
        .expect("create");
    let r2 = store
        .commit(
            "ch",
            change(r1, b"s2", vec![("b", MemberOp::Absent(b"t".to_vec()))]),
        )
        .await
        .expect("update");
    assert!(r2 > r1);
    let removal = Commit {
        expected: r2,
        summary: None,
        members: vec![("c".to_owned(), present("C"))],
    };
    assert_eq!(store.commit("ch", removal).await.expect("remove"), 0);
    let read = store.read("ch", &["a", "b", "c"]).await.expect("read");
    assert_eq!(read.summary, None);
    assert!(read.members.iter().all(|(_, m)| m.is_none()));
    assert_eq!(
        store.read_all("ch").await.expect("read_all"),
        Snapshot::default()
    );
    assert_eq!(store.page("ch", None, 10).await.expect("page"), None);
    assert!(
        store
            .channels("", None, 10)
            .await
            .expect("channels")
            .0
            .is_empty()
    );
    // Nothing of the channel is left in Redis but the store-wide keys.
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.connection())
        .expect("keys");
    assert_eq!(keys, ["{PRESENCE_ROSTER}:revision"]);

    let stale = store.commit("ch", change(r2, b"x", vec![])).await;
    assert!(matches!(stale, Err(CommitError::Conflict)), "{stale:?}");
    let r3 = store
        .commit("ch", change(0, b"s3", vec![("d", present("D"))]))
        .await
        .expect("re-create");
    assert!(r3 > r2, "{r3} after {r2}");
    let read = store.read("ch", &["a", "d"]).await.expect("read");
    assert_eq!(read.summary, entry(b"s3", r3));
    assert_eq!(read.members[0].1, None);
    assert_eq!(read.members[1].1, entry(b"D", r3));
}

/// 2,500 uuids with bytes that mean something to Redis lex ranges, key names or UTF-8.
fn odd_uuids() -> Vec<String> {
    let odd = [
        "", " ", "(", "[", "-", "+", "{x}", "a:b", "é", "🙂", "\u{7f}", "z.z", "\\", "*",
    ];
    (0..2500)
        .map(|i| format!("{}{i}{}", odd[i % odd.len()], odd[(i / 7) % odd.len()]))
        .collect()
}

#[tokio::test]
async fn pages_walk_every_present_member_in_byte_order() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let uuids = odd_uuids();
    let mut members: Vec<(&str, MemberOp)> = uuids
        .iter()
        .map(|u| (u.as_str(), present(&format!("v:{u}"))))
        .collect();
    members.push(("(absent", MemberOp::Absent(b"t".to_vec())));
    store
        .commit("big", change(0, b"s", members))
        .await
        .expect("create");
    let mut sorted = uuids.clone();
    sorted.sort();
    let expected: Vec<String> = sorted.iter().map(|u| format!("v:{u}")).collect();

    for limit in [1000, 500] {
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store
                .page("big", after.as_deref(), limit)
                .await
                .expect("page")
                .expect("exists");
            assert!(page.members.len() <= limit);
            got.extend(texts(&page));
            pages += 1;
            match page.next {
                Some(next) => {
                    assert_eq!(
                        got.last(),
                        Some(&format!("v:{next}")),
                        "next = last returned"
                    );
                    after = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(pages, 2500usize.div_ceil(limit), "limit {limit}");
        assert_eq!(got, expected, "limit {limit}");
    }
    // After a uuid that is not a member: from the next one on.
    let page = store
        .page("big", Some("z"), 3)
        .await
        .expect("page")
        .expect("exists");
    let first = sorted
        .iter()
        .find(|u| u.as_str() > "z")
        .expect("some uuid after z");
    assert_eq!(texts(&page)[0], format!("v:{first}"));
}

#[tokio::test]
async fn channels_are_listed_by_prefix_after_and_next() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let names = [
        "room.1", "room.2", "room.10", "room:x", "roomy", "lobby", "room", "roo", "room.3",
        "room.{a}", "é",
    ];
    for name in names {
        store
            .commit(name, change(0, name.as_bytes(), vec![]))
            .await
            .expect("create");
    }
    let rev = store
        .read("room.3", &[])
        .await
        .expect("read")
        .summary
        .expect("exists")
        .rev;
    let removal = Commit {
        expected: rev,
        summary: None,
        members: Vec::new(),
    };
    store.commit("room.3", removal).await.expect("remove");
    let list = |prefix: &'static str, after: Option<&'static str>, limit: usize| {
        let store = &store;
        async move {
            let (summaries, next) = store
                .channels(prefix, after, limit)
                .await
                .expect("channels");
            let names: Vec<String> = summaries
                .into_iter()
                .map(|s| String::from_utf8(s).expect("utf8"))
                .collect();
            (names, next)
        }
    };
    let (all, next) = list("", None, 100).await;
    let mut expected: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    expected.retain(|n| n != "room.3");
    expected.sort();
    assert_eq!((all, next), (expected, None));

    let (first, next) = list("room.", None, 2).await;
    assert_eq!(first, ["room.1", "room.10"]);
    assert_eq!(next.as_deref(), Some("room.10"));
    let (rest, next) = list("room.", Some("room.10"), 2).await;
    assert_eq!(rest, ["room.2", "room.{a}"]);
    assert_eq!(next, None, "exactly the limit left: nothing follows");
    assert_eq!(
        list("room.", Some("a"), 10).await.0.len(),
        4,
        "after before the prefix"
    );
    assert_eq!(list("room.", Some("roomz"), 10).await, (vec![], None));
    assert_eq!(
        list("room", Some("room.2"), 10).await.0,
        ["room.{a}", "room:x", "roomy"]
    );
    assert_eq!(list("nothing", None, 10).await, (vec![], None));
}

#[tokio::test]
async fn channels_that_escape_alike_keep_their_own_keys() {
    let server = RedisServer::start();
    let store = open(&server).await;
    // `a.b` escapes to `a_2Eb`; `a_2Eb` escapes to `a_5F2Eb`.
    for name in ["a.b", "a_2Eb", "a:s:b", "{a}"] {
        let members = vec![("u", present(name))];
        store
            .commit(name, change(0, name.as_bytes(), members))
            .await
            .expect("create");
    }
    for name in ["a.b", "a_2Eb", "a:s:b", "{a}"] {
        let read = store.read(name, &["u"]).await.expect("read");
        assert_eq!(read.summary.expect("exists").value, name.as_bytes());
        assert_eq!(
            read.members[0].1.as_ref().expect("member").value,
            name.as_bytes()
        );
    }
}

#[tokio::test]
async fn the_epoch_is_created_once_and_missing_after_a_flush() {
    let server = RedisServer::start();
    let store = open(&server).await;
    let other = open(&server).await;
    assert_eq!(store.epoch(false).await.expect("epoch"), None);
    let epoch = store.epoch(true).await.expect("epoch").expect("created");
    assert_eq!(epoch.len(), 32);
    assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(store.epoch(true).await.expect("epoch"), Some(epoch.clone()));
    assert_eq!(other.epoch(true).await.expect("epoch"), Some(epoch.clone()));
    assert_eq!(
        other.epoch(false).await.expect("epoch"),
        Some(epoch.clone())
    );

    let _: () = ::redis::cmd("FLUSHALL")
        .query(&mut server.connection())
        .expect("flushall");
    assert_eq!(store.epoch(false).await.expect("epoch"), None);
    let fresh = store.epoch(true).await.expect("epoch").expect("created");
    assert_ne!(fresh, epoch);
}

#[tokio::test]
async fn errors_hide_the_password_and_mark_the_store_down() {
    let refused = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = refused.local_addr().expect("addr").port();
    drop(refused);
    let url = format!("redis://user:s3cret-pw@127.0.0.1:{port}/0");
    let started = Instant::now();
    let error = RedisStore::open(&url, "P")
        .await
        .err()
        .expect("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!error.0.contains("s3cret"), "{error}");
    let bad = RedisStore::open("redis://u:s3cret@[::1", "P")
        .await
        .err()
        .expect("bad url");
    assert!(!bad.0.contains("s3cret"), "{bad}");
    let braces = RedisStore::open("redis://127.0.0.1:1", "a{b}")
        .await
        .err()
        .expect("prefix");
    assert!(braces.0.contains("prefix"), "{braces}");

    let mut server = RedisServer::start();
    let store = open(&server).await;
    store
        .commit("c", change(0, b"s", vec![]))
        .await
        .expect("commit");
    assert!(store.is_up());
    server.kill();
    let started = Instant::now();
    assert!(store.read("c", &[]).await.is_err());
    let failed = store.commit("c", change(1, b"s", vec![])).await;
    assert!(matches!(failed, Err(CommitError::Store(_))), "{failed:?}");
    assert!(started.elapsed() < 2 * REQUEST_TIMEOUT + Duration::from_secs(1));
    assert!(!store.is_up());
}

/// Adds one to the counter in the channel's summary: read, compute, commit, again on a
/// conflict. Returns how many conflicts it met.
async fn increment(store: &RedisStore, channel: &str, writer: &str) -> u32 {
    let mut conflicts = 0;
    loop {
        let read = store.read(channel, &[writer]).await.expect("read");
        let (expected, count) = match read.summary {
            None => (0, 0u64),
            Some(summary) => {
                let text = String::from_utf8(summary.value).expect("utf8");
                (summary.rev, text.parse().expect("a counter"))
            }
        };
        let next = (count + 1).to_string();
        let commit = change(expected, next.as_bytes(), vec![(writer, present(&next))]);
        match store.commit(channel, commit).await {
            Ok(rev) => {
                assert!(rev > expected);
                return conflicts;
            }
            Err(CommitError::Conflict) => conflicts += 1,
            Err(CommitError::Store(error) | CommitError::TooLarge(error)) => panic!("{error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_no_update() {
    const WRITERS: usize = 4;
    const EACH: u64 = 200;
    let server = RedisServer::start();
    // Two stores (two connections, as two replicas), two writers on each.
    let stores = [Arc::new(open(&server).await), Arc::new(open(&server).await)];
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..EACH {
                    conflicts += increment(&store, "counter", &format!("w{i}")).await;
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("writer");
    }
    let read = stores[0].read("counter", &[]).await.expect("read");
    let total = String::from_utf8(read.summary.expect("exists").value).expect("utf8");
    assert_eq!(
        total,
        (EACH * WRITERS as u64).to_string(),
        "{conflicts} conflicts retried"
    );
}
