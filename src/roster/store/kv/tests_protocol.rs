//! The intent protocol against a real `nats-server -js`: a writer that crashes after its
//! summary compare-and-set loses nothing and its writes land once; a late applier cannot undo a
//! newer write; concurrent read-modify-commit loops lose no update.

use super::io::Kind;
use super::protocol::{Step, fingerprint};
use super::test_server::{Server, absent, commit, present, removal, value};
use super::wire;
use crate::roster::store::{CommitError, MemberOp};

#[tokio::test]
async fn a_crash_after_the_summary_cas_loses_nothing_and_applies_once() {
    let server = Server::start();
    let crashed = server.store("roster").await;
    let members = vec![present("alice"), absent("bob")];
    let rev = crashed
        .commit_step("room", commit(0, r#"{"n":1}"#, members), Step::IntentOnly)
        .await
        .unwrap();
    // Only the summary (with its owed writes) was written.
    assert!(crashed.get("room.m.alice").await.unwrap().is_none());
    assert_eq!(server.last_sequence("roster").await, rev);

    let reader = server.store("roster").await;
    let snap = reader.read("room", &["alice", "bob"]).await.unwrap();
    assert_eq!(snap.summary.as_ref().unwrap().rev, rev);
    assert_eq!(
        snap.members[0].1.as_ref().unwrap().value,
        value("alice", "here")
    );
    assert_eq!(
        snap.members[1].1.as_ref().unwrap().value,
        value("bob", "gone")
    );
    assert_eq!(
        reader.get("room.m.bob").await.unwrap().unwrap().kind,
        Kind::Absent
    );
    assert_eq!(
        server.last_sequence("roster").await,
        rev + 2,
        "two member writes"
    );

    // Applied once: more readers, each a process of its own, write nothing more.
    for _ in 0..3 {
        let again = server.store("roster").await.read_all("room").await.unwrap();
        assert_eq!(again, reader.read_all("room").await.unwrap());
    }
    assert_eq!(server.last_sequence("roster").await, rev + 2);

    // The next commit's summary owes only its own writes.
    let next = reader
        .commit("room", commit(rev, r#"{"n":2}"#, vec![present("carol")]))
        .await
        .unwrap();
    let intent = wire::decode(&reader.get("room").await.unwrap().unwrap().value).unwrap();
    let owed: Vec<&str> = intent.pending.iter().map(|p| p.uuid.as_str()).collect();
    assert_eq!(owed, ["carol"]);
    assert_eq!(
        reader.read_all("room").await.unwrap().summary.unwrap().rev,
        next
    );
}

#[tokio::test]
async fn a_crashed_intent_is_paid_by_the_next_commit() {
    let server = Server::start();
    let crashed = server.store("roster").await;
    let rev = crashed
        .commit_step(
            "room",
            commit(0, "{}", vec![present("a")]),
            Step::IntentOnly,
        )
        .await
        .unwrap();
    let writer = server.store("roster").await;
    writer
        .commit("room", commit(rev, "{}", vec![present("b")]))
        .await
        .unwrap();
    let all = writer.read_all("room").await.unwrap();
    let uuids: Vec<&str> = all.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uuids, ["a", "b"]);
}

#[tokio::test]
async fn a_late_applier_cannot_overwrite_a_newer_write() {
    let server = Server::start();
    let slow = server.store("roster").await;
    let rev = slow
        .commit_step(
            "room",
            commit(0, "{}", vec![present("a")]),
            Step::IntentOnly,
        )
        .await
        .unwrap();
    let intent = slow.get("room").await.unwrap().unwrap();
    let owed = wire::decode(&intent.value).unwrap().pending;

    let other = server.store("roster").await;
    let rev = other
        .commit("room", commit(rev, "{}", vec![absent("a")]))
        .await
        .unwrap();
    let before = server.last_sequence("roster").await;
    // The crashed writer wakes up and pays its old intent: every write is refused.
    slow.apply("room", (intent.rev, fingerprint(&intent.value)), &owed)
        .await
        .unwrap();
    assert_eq!(server.last_sequence("roster").await, before);
    let snap = other.read("room", &["a"]).await.unwrap();
    assert_eq!(snap.summary.unwrap().rev, rev);
    assert_eq!(
        snap.members[0].1.as_ref().unwrap().value,
        value("a", "gone")
    );
}

#[tokio::test]
async fn an_interrupted_removal_is_finished_by_the_next_reader() {
    let server = Server::start();
    let store = server.store("roster").await;
    let rev = store
        .commit("room", commit(0, "{}", vec![present("a"), absent("b")]))
        .await
        .unwrap();
    store
        .commit_step("room", removal(rev), Step::IntentOnly)
        .await
        .unwrap();
    // Only the removal marker was written: the members are still there, the channel is not
    // listed any more.
    assert_eq!(
        store.get("room.m.a").await.unwrap().unwrap().kind,
        Kind::Present
    );
    assert!(store.channels("", None, 10).await.unwrap().0.is_empty());

    let reader = server.store("roster").await;
    assert_eq!(reader.read("room", &["a"]).await.unwrap().summary, None);
    for key in ["room", "room.m.a", "room.m.b"] {
        assert_eq!(
            store.get(key).await.unwrap().unwrap().kind,
            Kind::Deleted,
            "{key}"
        );
    }
    // A writer still holding the old revision is refused; a create goes through.
    let late = store
        .commit("room", commit(rev, "{}", vec![present("c")]))
        .await;
    assert!(matches!(late, Err(CommitError::Conflict)), "{late:?}");
    store
        .commit("room", commit(0, "{}", vec![present("c")]))
        .await
        .unwrap();
    let all = reader.read_all("room").await.unwrap();
    let uuids: Vec<&str> = all.members.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uuids, ["c"]);
}

/// `{"n":<count>}`.
pub(super) fn count(summary: Option<&[u8]>) -> u64 {
    summary.map_or(0, |bytes| {
        let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        json["n"].as_u64().unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_commit_loses_no_update() {
    const WRITERS: usize = 6;
    const EACH: usize = 15;
    let server = Server::start();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        // A store (and connection) each, as separate processes would have.
        let store = server.store("roster").await;
        writers.spawn(async move {
            let mut conflicts = 0;
            for i in 0..EACH {
                let uuid = format!("w{writer}-{i}");
                // Some writers "crash" after the summary CAS now and then.
                let step = if writer % 2 == 0 && i % 3 == 0 {
                    Step::IntentOnly
                } else {
                    Step::Full
                };
                loop {
                    let snap = store.read("hot", &[uuid.as_str()]).await.unwrap();
                    assert_eq!(snap.members[0].1, None, "{uuid} written before its commit");
                    let summary = snap.summary.as_ref();
                    let n = count(summary.map(|s| s.value.as_slice()));
                    let expected = summary.map_or(0, |s| s.rev);
                    let op = MemberOp::Present(value(&uuid, &n.to_string()));
                    let next = format!(r#"{{"n":{}}}"#, n + 1);
                    let change = commit(expected, &next, vec![(uuid.clone(), op)]);
                    match store.commit_step("hot", change, step).await {
                        Ok(_) => break,
                        Err(CommitError::Conflict) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        });
    }
    // Meanwhile a reader: every snapshot it gets is one commit's state (n == members).
    let reader = server.store("roster").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut snapshots, mut busy) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                match reader.read_all("hot").await {
                    Ok(all) => {
                        let n = count(all.summary.as_ref().map(|s| s.value.as_slice()));
                        assert_eq!(n as usize, all.members.len(), "a torn snapshot");
                        snapshots += 1;
                    }
                    // Written by other commits during every attempt: allowed, counted.
                    Err(e) if e.0.contains("written by other commits") => busy += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (snapshots, busy)
        }
    });
    let conflicts: usize = writers.join_all().await.into_iter().sum();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (snapshots, busy) = reading.await.unwrap();
    assert!(snapshots > 0, "no snapshot in {busy} reads");
    assert!(conflicts > 0, "the writers never raced: nothing was tested");

    let check = server.store("roster").await;
    let all = check.read_all("hot").await.unwrap();
    let total = WRITERS * EACH;
    assert_eq!(
        count(all.summary.as_ref().map(|s| s.value.as_slice())),
        total as u64
    );
    assert_eq!(all.members.len(), total);
    // Each member carries the count it saw, and every count from 0 to total-1 was seen once.
    let mut seen: Vec<u64> = all
        .members
        .iter()
        .map(|(uuid, entry)| {
            let json: serde_json::Value =
                serde_json::from_slice(&entry.as_ref().unwrap().value).unwrap();
            assert_eq!(json["uuid"], uuid.as_str());
            json["note"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..total as u64).collect::<Vec<_>>());
}
