//! The store against a real `nats-server -js` per test: reads, commits, conflicts, deletes,
//! removals, pages, channel listings and the epoch.

use super::io::Kind;
use super::test_server::{Server, absent, commit, delete, present, removal, value};
use super::wire;
use crate::roster::store::{CommitError, Entry, MemberOp};

#[tokio::test]
async fn a_commit_creates_a_channel_with_the_callers_bytes() {
    let server = Server::start();
    let store = server.store("roster").await;
    let summary = r#"{"occupancy":1}"#;
    let rev = store
        .commit(
            "room.1",
            commit(0, summary, vec![present("alice"), absent("bob")]),
        )
        .await
        .unwrap();
    assert!(rev > 0);

    let snap = store
        .read("room.1", &["alice", "bob", "carol"])
        .await
        .unwrap();
    let expected_summary = Entry {
        value: summary.as_bytes().to_vec(),
        rev,
    };
    assert_eq!(snap.summary, Some(expected_summary));
    let uuids: Vec<&str> = snap.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uuids, ["alice", "bob", "carol"]);
    let alice = snap.members[0].1.as_ref().unwrap();
    assert_eq!(alice.value, value("alice", "here"));
    assert!(alice.rev > rev, "members are written after the summary");
    assert_eq!(
        snap.members[1].1.as_ref().unwrap().value,
        value("bob", "gone")
    );
    assert_eq!(snap.members[2].1, None);

    // The documented layout, read with the plain KV API (as `nats kv get` would).
    let kv = server.js().await.get_key_value("roster").await.unwrap();
    let member = kv.get("room_2E1.m.alice").await.unwrap().unwrap();
    assert_eq!(member.as_ref(), value("alice", "here").as_slice());
    let wrapped = kv.get("room_2E1").await.unwrap().unwrap();
    let text = std::str::from_utf8(&wrapped).unwrap();
    assert!(
        text.starts_with(r#"{"_pending":[{"uuid":"#) && text.ends_with(r#"}],"occupancy":1}"#),
        "{text}"
    );
    let intent = wire::decode(&wrapped).unwrap();
    assert_eq!(intent.pending.len(), 2);
    assert!(intent.pending.iter().all(|p| p.rev == 0), "new member keys");
    // The present/absent flag is a header, not part of the value.
    let bob = store.get("room_2E1.m.bob").await.unwrap().unwrap();
    assert_eq!(bob.kind, Kind::Absent);
    assert_eq!(
        store.get("room_2E1.m.alice").await.unwrap().unwrap().kind,
        Kind::Present
    );
    assert!(store.is_up());
}

#[tokio::test]
async fn a_stale_expected_revision_conflicts() {
    let server = Server::start();
    let store = server.store("roster").await;
    assert!(matches!(
        store.commit("room", commit(7, "{}", vec![])).await,
        Err(CommitError::Conflict)
    ));
    let first = store
        .commit("room", commit(0, r#"{"n":1}"#, vec![]))
        .await
        .unwrap();
    assert!(matches!(
        store.commit("room", commit(0, r#"{"n":1}"#, vec![])).await,
        Err(CommitError::Conflict)
    ));
    let second = store
        .commit("room", commit(first, r#"{"n":2}"#, vec![present("a")]))
        .await
        .unwrap();
    assert!(second > first);
    let stale = store
        .commit("room", commit(first, r#"{"n":3}"#, vec![present("b")]))
        .await;
    assert!(matches!(stale, Err(CommitError::Conflict)), "{stale:?}");
    // The refused commit wrote nothing.
    let snap = store.read("room", &["b"]).await.unwrap();
    assert_eq!(snap.summary.unwrap().value, br#"{"n":2}"#);
    assert_eq!(snap.members[0].1, None);
}

#[tokio::test]
async fn tombstones_are_read_but_not_paged() {
    let server = Server::start();
    let store = server.store("roster").await;
    let members = vec![present("a"), absent("b"), present("c")];
    let rev = store.commit("ch", commit(0, "{}", members)).await.unwrap();
    let page = store.page("ch", None, 10).await.unwrap().unwrap();
    assert_eq!(page.members, [value("a", "here"), value("c", "here")]);
    assert_eq!(page.next, None);
    assert_eq!(page.summary, b"{}");
    let all = store.read_all("ch").await.unwrap();
    let uuids: Vec<&str> = all.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uuids, ["a", "b", "c"]);

    // A moves out, b comes back: one key each, its flag flipped in the same commit.
    store
        .commit("ch", commit(rev, "{}", vec![absent("a"), present("b")]))
        .await
        .unwrap();
    let page = store.page("ch", None, 10).await.unwrap().unwrap();
    assert_eq!(page.members, [value("b", "here"), value("c", "here")]);
    assert_eq!(store.page("nowhere", None, 10).await.unwrap(), None);
}

#[tokio::test]
async fn a_deleted_member_is_gone_and_can_come_back() {
    let server = Server::start();
    let store = server.store("roster").await;
    let rev = store
        .commit("ch", commit(0, "{}", vec![absent("a"), present("b")]))
        .await
        .unwrap();
    let before = server.last_sequence("roster").await;
    // Deleting a member that never existed writes nothing for it.
    let rev = store
        .commit("ch", commit(rev, "{}", vec![delete("a"), delete("never")]))
        .await
        .unwrap();
    assert_eq!(
        server.last_sequence("roster").await,
        before + 2,
        "summary + one delete"
    );
    let snap = store.read("ch", &["a", "b", "never"]).await.unwrap();
    assert_eq!(snap.members[0].1, None);
    assert!(snap.members[1].1.is_some());
    assert_eq!(snap.members[2].1, None);
    assert_eq!(store.read_all("ch").await.unwrap().members.len(), 1);
    let kv = server.js().await.get_key_value("roster").await.unwrap();
    let marker = kv.entry("ch.m.a").await.unwrap().unwrap();
    assert_eq!(
        marker.operation,
        async_nats::jetstream::kv::Operation::Delete
    );

    // Written again on top of its delete marker.
    store
        .commit("ch", commit(rev, "{}", vec![present("a")]))
        .await
        .unwrap();
    let snap = store.read("ch", &["a"]).await.unwrap();
    let a = snap.members[0].1.as_ref().unwrap();
    assert_eq!(a.value, value("a", "here"));
    assert!(a.rev > marker.revision);
}

#[tokio::test]
async fn a_removed_channel_is_gone_and_can_be_created_again() {
    let server = Server::start();
    let store = server.store("roster").await;
    let members = vec![present("a"), absent("b")];
    let rev = store
        .commit("ch", commit(0, r#"{"v":1}"#, members))
        .await
        .unwrap();
    assert!(matches!(
        store.commit("ch", removal(rev + 100)).await,
        Err(CommitError::Conflict)
    ));
    assert_eq!(store.commit("ch", removal(rev)).await.unwrap(), 0);

    let snap = store.read("ch", &["a", "b"]).await.unwrap();
    assert_eq!(snap.summary, None);
    assert!(snap.members.iter().all(|(_, m)| m.is_none()));
    assert_eq!(store.read_all("ch").await.unwrap(), Default::default());
    assert_eq!(store.page("ch", None, 10).await.unwrap(), None);
    assert!(store.channels("", None, 10).await.unwrap().0.is_empty());
    for key in ["ch", "ch.m.a", "ch.m.b"] {
        let record = store.get(key).await.unwrap().unwrap();
        assert_eq!(record.kind, Kind::Deleted, "{key}");
    }
    // Removing a channel that has none is a no-op.
    assert_eq!(store.commit("ch", removal(0)).await.unwrap(), 0);

    let again = store
        .commit("ch", commit(0, r#"{"v":2}"#, vec![present("c")]))
        .await
        .unwrap();
    let snap = store.read_all("ch").await.unwrap();
    assert_eq!(
        snap.summary.unwrap(),
        Entry {
            value: br#"{"v":2}"#.to_vec(),
            rev: again
        }
    );
    let uuids: Vec<&str> = snap.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uuids, ["c"], "the old members stay removed");
}

/// Uuids whose byte order differs from their escaped keys' order and from insertion order.
fn odd_uuid(i: usize) -> String {
    let stems = ["", " ", ".", "é", "Z", "a.b ", "日本", "~", "-"];
    format!("{}{}", stems[i % stems.len()], 7919 * i % 2500)
}

#[tokio::test]
async fn pages_walk_2500_members_in_uuid_byte_order() {
    let server = Server::start();
    let store = server.store("roster").await;
    let mut rev = 0;
    let uuids: Vec<String> = (0..2500).map(odd_uuid).collect();
    for (batch, chunk) in uuids.chunks(500).enumerate() {
        let members = chunk
            .iter()
            .enumerate()
            .map(|(i, u)| {
                if (batch * 500 + i) % 25 == 0 {
                    absent(u)
                } else {
                    present(u)
                }
            })
            .collect();
        rev = store
            .commit("big", commit(rev, "{}", members))
            .await
            .unwrap();
    }
    let mut expected: Vec<&String> = uuids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 25 != 0)
        .map(|(_, u)| u)
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 2400);

    let mut walked = Vec::new();
    let mut nexts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .page("big", after.as_deref(), 1000)
            .await
            .unwrap()
            .unwrap();
        assert!(page.members.len() <= 1000);
        walked.extend(page.members);
        nexts.push(page.next.clone());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected_values: Vec<Vec<u8>> = expected.iter().map(|u| value(u, "here")).collect();
    assert_eq!(walked.len(), expected_values.len());
    assert!(walked == expected_values, "pages out of uuid byte order");
    let cut = |i: usize| Some(expected[i].clone());
    assert_eq!(nexts, [cut(999), cut(1999), None]);
    // Strictly after: a page after the last uuid is empty.
    let last = expected.last().unwrap().as_str();
    let tail = store.page("big", Some(last), 1000).await.unwrap().unwrap();
    assert_eq!((tail.members.len(), tail.next), (0, None));
    assert_eq!(store.read_all("big").await.unwrap().members.len(), 2500);
}

#[tokio::test]
async fn channels_are_listed_by_prefix_after_and_next() {
    let server = Server::start();
    let store = server.store("roster").await;
    store.epoch(true).await.unwrap();
    let names = ["ab", "a.b", "b", "a", "ä", "a é", "x/y"];
    for name in names {
        let summary = serde_json::json!({ "ch": name }).to_string();
        store
            .commit(name, commit(0, &summary, vec![present("u")]))
            .await
            .unwrap();
    }
    let gone = store
        .commit("a.gone", commit(0, "{}", vec![]))
        .await
        .unwrap();
    store.commit("a.gone", removal(gone)).await.unwrap();
    let summary = |name: &str| serde_json::json!({ "ch": name }).to_string().into_bytes();

    let (first, next) = store.channels("a", None, 2).await.unwrap();
    assert_eq!(first, [summary("a"), summary("a é")]);
    assert_eq!(next.as_deref(), Some("a é"));
    let (rest, next) = store.channels("a", next.as_deref(), 2).await.unwrap();
    assert_eq!(rest, [summary("a.b"), summary("ab")]);
    assert_eq!(next, None);

    let (all, next) = store.channels("", None, 100).await.unwrap();
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    assert_eq!(all, sorted.iter().map(|&n| summary(n)).collect::<Vec<_>>());
    assert_eq!(next, None);
    let (after_b, _) = store.channels("", Some("b"), 100).await.unwrap();
    assert_eq!(after_b, [summary("x/y"), summary("ä")]);
}

#[tokio::test]
async fn the_epoch_is_created_once_and_missing_after_the_bucket_is_lost() {
    let server = Server::start();
    let store = server.store("roster").await;
    assert_eq!(store.epoch(false).await.unwrap(), None);
    let epoch = store.epoch(true).await.unwrap().unwrap();
    assert_eq!(epoch.len(), 32);
    assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(store.epoch(true).await.unwrap().as_ref(), Some(&epoch));
    let other = server.store("roster").await;
    assert_eq!(other.epoch(false).await.unwrap().as_ref(), Some(&epoch));

    server.js().await.delete_key_value("roster").await.unwrap();
    let reopened = server.store("roster").await;
    assert_eq!(reopened.epoch(false).await.unwrap(), None);
    let fresh = reopened.epoch(true).await.unwrap().unwrap();
    assert_ne!(fresh, epoch);
}

#[tokio::test]
async fn a_commit_over_the_max_payload_is_refused_whole() {
    let server = Server::start();
    let store = server.store("roster").await;
    let huge = format!("\"{}\"", "x".repeat(600 * 1024));
    let members = vec![("a".to_owned(), MemberOp::Present(huge.clone().into_bytes()))];
    let refused = store.commit("ch", commit(0, &huge, members)).await;
    match refused {
        Err(CommitError::TooLarge(message)) => {
            assert!(message.contains("max payload"), "{message}");
            assert!(message.contains("MAX_COMMIT_BYTES"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.read("ch", &["a"]).await.unwrap().summary, None);
    // Within the budget: fine.
    let fits = format!("\"{}\"", "y".repeat(super::MAX_COMMIT_BYTES - 1024));
    let members = vec![("a".to_owned(), MemberOp::Present(fits.clone().into_bytes()))];
    store.commit("ch", commit(0, "{}", members)).await.unwrap();
    let snap = store.read("ch", &["a"]).await.unwrap();
    assert_eq!(snap.members[0].1.as_ref().unwrap().value, fits.as_bytes());
}

#[tokio::test]
async fn a_foreign_summary_value_is_an_error_not_a_guess() {
    let server = Server::start();
    let store = server.store("roster").await;
    let kv = server.js().await.get_key_value("roster").await.unwrap();
    kv.put("weird", "hello".into()).await.unwrap();
    let err = store.read("weird", &[]).await.unwrap_err();
    assert!(err.0.contains("not a roster summary"), "{err}");
    assert!(err.0.contains("`roster`"), "{err}");
}

#[tokio::test]
async fn a_dead_server_is_reported_down() {
    let mut server = Server::start();
    let store = server.store("roster").await;
    store.commit("ch", commit(0, "{}", vec![])).await.unwrap();
    assert!(store.is_up());
    server.stop();
    let started = std::time::Instant::now();
    let err = store.read("ch", &[]).await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "bounded wait"
    );
    assert!(err.0.contains("`roster`"), "{err}");
    assert!(!store.is_up());
}

/// A burst of joins whose one commit would exceed the server's max payload (1 MiB) is applied
/// in halves by the writer: every member lands, none is lost to a commit retried forever.
#[tokio::test]
async fn a_change_too_large_for_one_commit_is_applied_in_parts() {
    use crate::normalize::{Action, Event, Format, State};

    let server = Server::start();
    let writer = writer(&server).await;
    let now = crate::time::now_ms() as i64;
    let blob = "x".repeat(40 * 1024);
    // 40 members of ~40 KiB each: 1.6 MB in one commit, 0.8 MB in each half.
    let events: Vec<Event> = (0..40)
        .map(|i| Event {
            id: format!("join-{i}"),
            format: Format::EventsAndActions,
            sub_key: Some("sub-c-1".to_owned()),
            channel: "hot".to_owned(),
            action: Action::Join,
            uuid: Some(format!("user-{i:02}")),
            occupancy: None,
            timestamp: now / 1000,
            timestamp_ms: Some(now - 1000 + i),
            received_at_ms: 0,
            state: Some(State::from_value(&serde_json::json!({ "blob": blob }))),
            delta: None,
            here_now_refresh: false,
        })
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    let outcome = writer.apply("hot", &refs).await.unwrap();
    assert_eq!(outcome.applied.len(), 40);
    let page = writer.store.page("hot", None, 100).await.unwrap().unwrap();
    assert_eq!(page.members.len(), 40, "every member of both halves");
    assert!(
        page.members
            .iter()
            .all(|m| std::str::from_utf8(m).unwrap().contains(&blob)),
        "with its state"
    );
}

/// Without `roster.sessions` the stay a leave ends is recorded as published in the commit
/// that ends it: the leave costs the summary and the member write, not a second commit per
/// member to mark its session published.
#[tokio::test]
async fn without_sessions_a_leave_is_one_commit() {
    use crate::normalize::{Action, Event, Format};
    use crate::roster::state::Summary;

    let server = Server::start();
    let writer = writer(&server).await;
    let now = crate::time::now_ms() as i64;
    let event = |id: &str, action: Action, uuid: &str, at: i64| Event {
        id: id.to_owned(),
        format: Format::EventsAndActions,
        sub_key: Some("sub-c-1".to_owned()),
        channel: "room".to_owned(),
        action,
        uuid: Some(uuid.to_owned()),
        occupancy: None,
        timestamp: at / 1000,
        timestamp_ms: Some(at),
        received_at_ms: 0,
        state: None,
        delta: None,
        here_now_refresh: false,
    };
    let joins = [
        event("j1", Action::Join, "a", now - 5000),
        event("j2", Action::Join, "b", now - 5000),
    ];
    writer
        .apply("room", &joins.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let before = server.last_sequence("roster").await;
    let leave = event("l1", Action::Leave, "a", now - 1000);
    writer.apply("room", &[&leave]).await.unwrap();
    assert_eq!(
        server.last_sequence("roster").await - before,
        2,
        "the summary and a's tombstone, nothing else"
    );
    let snap = writer.store.read("room", &["a"]).await.unwrap();
    let summary: Summary = serde_json::from_slice(&snap.summary.unwrap().value).unwrap();
    assert_eq!(summary.unpublished, 0);
    let member: serde_json::Value =
        serde_json::from_slice(&snap.members[0].1.as_ref().unwrap().value).unwrap();
    assert_eq!(member["ended"]["published"], true, "{member}");
}

/// A writer on the bucket `roster` of `server`, without change or session events.
async fn writer(server: &Server) -> crate::roster::writer::Writer {
    use std::sync::Arc;

    use crate::roster::outputs::{Outputs, Publisher};

    let metrics = crate::roster::metrics::RosterMetrics::new(&prometheus::Registry::new()).unwrap();
    crate::roster::writer::Writer {
        store: Arc::new(crate::roster::store::Store::Nats(
            server.store("roster").await,
        )),
        rules: crate::roster::state::Rules {
            tombstone_ttl_ms: 30 * 60_000,
        },
        metrics: metrics.clone(),
        outputs: Arc::new(Outputs {
            changes: None,
            sessions: None,
            publisher: Publisher::None,
            metrics,
        }),
    }
}

/// A Here Now read whose whole change is over the server's max payload (40 members with
/// 40 KiB states: 1.6 MB) is stored in parts, each a whole state: every member lands, the
/// counters match, and the read is not refused again and again.
#[tokio::test]
async fn a_here_now_read_too_large_for_one_commit_is_stored_in_parts() {
    use crate::normalize::State;
    use crate::roster::state::{self, Snapshot, Summary};

    let server = Server::start();
    let writer = writer(&server).await;
    let blob = "x".repeat(40 * 1024);
    let members: Vec<(String, Option<State>)> = (0..40)
        .map(|i| {
            let state = State::from_value(&serde_json::json!({ "blob": blob }));
            (format!("user-{i:02}"), Some(state))
        })
        .collect();
    let read = Snapshot {
        time_ms: crate::time::now_ms() as i64 - 3000,
        members: &members,
    };
    let rules = writer.rules;
    let stored = writer
        .apply_all("big", |loaded, now| {
            let outcome = state::reconcile(loaded, "big", &read, rules, now);
            outcome.dirty.then_some(outcome.changed)
        })
        .await
        .expect("stored in parts")
        .expect("a change");
    let page = writer.store.page("big", None, 100).await.unwrap().unwrap();
    assert_eq!(page.members.len(), 40, "every member of every part");
    let summary: Summary = serde_json::from_slice(&page.summary).unwrap();
    assert_eq!(summary.members, 40);
    assert_eq!(summary.occupancy, Some(40));
    assert_eq!(
        stored.summary.as_ref().map(|s| s.version),
        Some(summary.version),
        "the state returned is the one the last part stored"
    );
    // Read again: nothing left to change.
    let again = writer
        .apply_all("big", |loaded, now| {
            let outcome = state::reconcile(loaded, "big", &read, rules, now);
            outcome.dirty.then_some(outcome.changed)
        })
        .await
        .unwrap();
    assert!(again.is_none());
}
