//! What a process remembers of the channels it changed (`kv/cache.rs`), against a real
//! `nats-server -js`: answered without a request, overtaken by another replica (a conflict,
//! then a real read), and no update lost when several replicas change from what they remember.

use super::test_server::{Server, commit, present, value};
use super::tests_protocol::count;
use crate::roster::store::{CommitError, MemberOp};

#[tokio::test]
async fn a_change_after_its_own_commit_is_computed_without_a_request() {
    let mut server = Server::start();
    let store = server.store("roster").await;
    let rev = store
        .commit("room", commit(0, r#"{"n":1}"#, vec![present("alice")]))
        .await
        .unwrap();
    // Another member joins from what the commit left: the channel was created from nothing,
    // so a uuid never written has no key.
    let (snap, remembered) = store
        .read_for_change("room", &["bob", "alice"])
        .await
        .unwrap();
    assert!(remembered);
    assert_eq!(snap.summary.as_ref().map(|s| s.rev), Some(rev));
    assert_eq!(snap.members[0], ("bob".to_owned(), None));
    assert_eq!(
        snap.members[1].1.as_ref().map(|e| e.value.clone()),
        Some(value("alice", "here"))
    );
    assert_eq!(snap, store.read("room", &["bob", "alice"]).await.unwrap());
    let rev = store
        .commit("room", commit(rev, r#"{"n":2}"#, vec![present("bob")]))
        .await
        .unwrap();

    // With the server gone, any request fails: the answer is what the process remembers.
    server.stop();
    let (snap, remembered) = store
        .read_for_change("room", &["alice", "bob", "carol"])
        .await
        .unwrap();
    assert!(remembered);
    assert_eq!(snap.summary.as_ref().unwrap().value, br#"{"n":2}"#);
    assert_eq!(snap.summary.as_ref().unwrap().rev, rev);
    let known: Vec<bool> = snap.members.iter().map(|(_, m)| m.is_some()).collect();
    assert_eq!(known, [true, true, false]);
    // A failed request forgets it all: the bucket may come back counting from 1.
    assert!(store.read("room", &["alice"]).await.is_err());
    assert!(store.read_for_change("room", &["alice"]).await.is_err());
}

#[tokio::test]
async fn a_remembered_channel_another_replica_changed_conflicts_then_is_read() {
    let server = Server::start();
    let (mine, theirs) = (server.store("roster").await, server.store("roster").await);
    let first = mine
        .commit("room", commit(0, r#"{"n":1}"#, vec![present("a")]))
        .await
        .unwrap();
    let snap = theirs.read("room", &["x"]).await.unwrap();
    assert_eq!(snap.summary.as_ref().unwrap().rev, first);
    let second = theirs
        .commit("room", commit(first, r#"{"n":2}"#, vec![present("x")]))
        .await
        .unwrap();

    // `mine` still remembers its own commit: x unknown to it, the summary at `first`.
    let (stale, remembered) = mine.read_for_change("room", &["x"]).await.unwrap();
    assert!(remembered);
    assert_eq!(stale.summary.as_ref().unwrap().rev, first);
    assert_eq!(stale.members[0].1, None);
    assert!(matches!(
        mine.commit("room", commit(first, r#"{"n":2}"#, vec![present("x")]))
            .await,
        Err(CommitError::Conflict)
    ));
    // The conflict forgot it: the next answer is the store's.
    let (fresh, remembered) = mine.read_for_change("room", &["x"]).await.unwrap();
    assert!(!remembered);
    assert_eq!(fresh.summary.as_ref().unwrap().rev, second);
    assert!(fresh.members[0].1.is_some());
}

#[tokio::test]
async fn a_member_written_after_the_remembered_summary_makes_it_read_again() {
    let server = Server::start();
    let (mine, theirs) = (server.store("roster").await, server.store("roster").await);
    let first = theirs
        .commit("room", commit(0, r#"{"n":1}"#, vec![present("a")]))
        .await
        .unwrap();
    // `mine` remembers what it read at `first`: a, and nothing of b.
    mine.read("room", &["a"]).await.unwrap();
    let second = theirs
        .commit("room", commit(first, r#"{"n":2}"#, vec![present("b")]))
        .await
        .unwrap();
    // b's key is newer than `first`: the channel moved on, so the answer is not a mix of
    // `first` and a later commit but a consistent read at `second`.
    let (snap, remembered) = mine.read_for_change("room", &["a", "b"]).await.unwrap();
    assert!(!remembered);
    assert_eq!(snap.summary.as_ref().unwrap().rev, second);
    assert!(snap.members.iter().all(|(_, m)| m.is_some()));

    // A member unknown to the remembered read but unchanged since is read and kept.
    let third = theirs.read("room", &["c"]).await.unwrap();
    assert_eq!(third.summary.unwrap().rev, second);
    let (snap, remembered) = mine.read_for_change("room", &["c", "a"]).await.unwrap();
    assert!(remembered);
    assert_eq!(snap.members[0], ("c".to_owned(), None));
    assert_eq!(snap.members[1].0, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_changing_from_what_they_remember_lose_no_update() {
    const WRITERS: usize = 6;
    const EACH: usize = 20;
    let server = Server::start();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = server.store("roster").await;
        writers.spawn(async move {
            let (mut conflicts, mut remembered_commits) = (0, 0);
            for i in 0..EACH {
                let uuid = format!("w{writer}-{i}");
                // Each change also rewrites this writer's first member, so remembered
                // member revisions matter to the owed writes.
                let first = format!("w{writer}-0");
                loop {
                    let uuids = [uuid.as_str(), first.as_str()];
                    let (snap, remembered) = store.read_for_change("hot", &uuids).await.unwrap();
                    let n = count(snap.summary.as_ref().map(|s| s.value.as_slice()));
                    let expected = snap.summary.as_ref().map_or(0, |s| s.rev);
                    let mut members = vec![(
                        uuid.clone(),
                        MemberOp::Present(value(&uuid, &n.to_string())),
                    )];
                    if i > 0 {
                        members.push((first.clone(), MemberOp::Present(value(&first, "0"))));
                    }
                    let next = format!(r#"{{"n":{}}}"#, n + 1);
                    match store.commit("hot", commit(expected, &next, members)).await {
                        Ok(_) => {
                            remembered_commits += usize::from(remembered);
                            break;
                        }
                        Err(CommitError::Conflict) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            (conflicts, remembered_commits)
        });
    }
    let results = writers.join_all().await;
    let conflicts: usize = results.iter().map(|r| r.0).sum();
    let remembered: usize = results.iter().map(|r| r.1).sum();
    assert!(conflicts > 0, "the writers never raced: nothing was tested");
    assert!(remembered > 0, "no commit came from a remembered answer");

    let all = server.store("roster").await.read_all("hot").await.unwrap();
    let total = WRITERS * EACH;
    assert_eq!(
        count(all.summary.as_ref().map(|s| s.value.as_slice())),
        total as u64
    );
    assert_eq!(all.members.len(), total);
    let mut seen: Vec<u64> = all
        .members
        .iter()
        .filter(|(uuid, _)| !uuid.ends_with("-0"))
        .map(|(_, entry)| {
            let json: serde_json::Value =
                serde_json::from_slice(&entry.as_ref().unwrap().value).unwrap();
            json["note"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        total - WRITERS,
        "two commits saw the same count"
    );
}
