use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tokio::sync::oneshot;

use super::writer::Request;
use super::*;

mod recovery;
mod segments;
/// Format versions: old (v0) directories, mixed ones, unknown versions refused.
mod version;

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        retain: Duration::ZERO,
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("event-{i}-{}", "x".repeat((i % 7) as usize)))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads exactly `n` records (failing instead of hanging if they never come).
async fn read_n(reader: &mut SpoolReader, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(WAIT, reader.next_batch(n - out.len()))
            .await
            .expect("records did not arrive")
            .expect("read");
        out.extend(batch);
    }
    out
}

/// What [`Spool::scan_since`] visits: (append time, payload) in order.
fn scan(spool: &Spool, since: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    spool
        .scan_since(since, |appended_ms, payload| {
            out.push((appended_ms, Bytes::copy_from_slice(payload)))
        })
        .expect("scan");
    out
}

fn visited(records: &[Record]) -> Vec<(u64, Bytes)> {
    records
        .iter()
        .map(|r| (r.appended_ms, r.payload.clone()))
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

impl Spool {
    /// Stops the writer like `kill -9` would after its last commit: no checkpoint.
    async fn crash(&self) {
        let (reply, done) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Crash { reply })
            .expect("writer alive");
        done.await.expect("crash ack");
    }

    /// Blocks the writer thread until the returned sender is used or dropped.
    async fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (holding, held) = oneshot::channel();
        let (release, wait) = std::sync::mpsc::channel();
        self.inner
            .requests
            .send(Request::Hold {
                holding,
                release: wait,
            })
            .expect("writer alive");
        held.await.expect("hold ack");
        release
    }

    fn low(&self) -> u64 {
        self.inner.core.lock().low
    }

    fn reserved(&self) -> u64 {
        self.inner.core.lock().reserved_bytes
    }
}

#[test]
fn append_read_confirm_in_order() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        assert_eq!(
            spool
                .append(vec![payload(0), payload(1), payload(2)])
                .await
                .expect("append"),
            0..3
        );
        assert_eq!(spool.append(vec![payload(3)]).await.expect("append"), 3..4);
        assert!(spool.append(vec![]).await.expect("empty append").is_empty());
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 4).await;
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
        for r in &records {
            assert_eq!(r.payload, payload(r.seq));
            assert!(r.appended_ms > 0);
        }
        assert_eq!(spool.stats().pending_events, 4);
        assert!(spool.stats().oldest_unconfirmed_ms.is_some());

        spool.confirm(2);
        spool.confirm(0);
        assert_eq!(spool.stats().pending_events, 2);
        assert_eq!(spool.low(), 1);
        let mut reader = spool.reader();
        let again = read_n(&mut reader, 2).await;
        assert_eq!(
            again.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3],
            "a new reader starts at the watermark and skips what was confirmed"
        );
        spool.confirm(1);
        spool.confirm(3);
        spool.confirm(3);
        spool.confirm(99);
        let stats = spool.stats();
        assert_eq!(stats.pending_events, 0);
        assert_eq!(stats.oldest_unconfirmed_ms, None);
        assert_eq!(spool.low(), 4);

        spool.close().await.expect("close");
        spool.close().await.expect("second close is a no-op");
        assert!(matches!(
            spool.append(vec![payload(9)]).await,
            Err(SpoolError::Closed)
        ));
        assert!(matches!(
            reader.next_batch(10).await,
            Err(SpoolError::Closed)
        ));
        assert!(!spool.has_headroom(0));
    });
}

#[test]
fn concurrent_appends_get_distinct_seqs_and_are_all_read() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.segment_bytes = 4096; // several rotations on the way
        let spool = Spool::open(cfg).expect("open");
        let (tasks, per_task) = (16u64, 25u64);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let spool = spool.clone();
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..per_task {
                    let n = 1 + (i % 3);
                    let payloads = (0..n)
                        .map(|k| Bytes::from(format!("{t}/{i}/{k}")))
                        .collect();
                    let range = spool.append(payloads).await.expect("append");
                    assert_eq!(range.end - range.start, n);
                    got.push((range, t, i));
                }
                got
            }));
        }
        let mut expected = BTreeMap::new();
        let mut appends = 0;
        for h in handles {
            for (range, t, i) in h.await.expect("task") {
                appends += 1;
                for (k, seq) in range.enumerate() {
                    assert!(
                        expected.insert(seq, format!("{t}/{i}/{k}")).is_none(),
                        "seq {seq} twice"
                    );
                }
            }
        }
        let total = expected.len() as u64;
        assert_eq!(
            expected.keys().copied().collect::<Vec<_>>(),
            (0..total).collect::<Vec<_>>()
        );
        let mut reader = spool.reader();
        let records = read_n(&mut reader, total as usize).await;
        for r in &records {
            assert_eq!(r.payload, expected[&r.seq].as_bytes());
        }
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (0..total).collect::<Vec<_>>()
        );
        assert!(spool.sync_count() <= appends + segments(dir.path()).len() as u64);
        spool.close().await.expect("close");
    });
}

#[test]
fn group_commit_covers_every_waiting_append_with_one_fsync() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        spool.append(vec![payload(0)]).await.expect("warm-up");
        let release = spool.hold().await;
        let before = spool.sync_count();
        let waiters = 64u64;
        let mut handles = Vec::new();
        for i in 0..waiters {
            let spool = spool.clone();
            handles.push(tokio::spawn(
                async move { spool.append(vec![payload(i)]).await },
            ));
        }
        // An append is queued once its bytes are reserved (both happen under one lock).
        let all_queued: u64 = (0..waiters)
            .map(|i| format::record_len(payload(i).len()))
            .sum();
        while spool.reserved() < all_queued {
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        let mut seqs = Vec::new();
        for h in handles {
            seqs.push(h.await.expect("task").expect("append").start);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=waiters).collect::<Vec<_>>());
        assert_eq!(
            spool.sync_count() - before,
            1,
            "one fsync for the whole group"
        );
        spool.close().await.expect("close");
    });
}

#[test]
fn reopen_replays_from_the_checkpoint() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        spool
            .append((0..10).map(payload).collect())
            .await
            .expect("append");
        let mut reader = spool.reader();
        read_n(&mut reader, 10).await;
        for seq in [5, 3, 0, 1, 2, 4] {
            spool.confirm(seq);
        }
        spool.close().await.expect("close");

        let spool = Spool::open(config(dir.path())).expect("reopen");
        assert_eq!(spool.stats().pending_events, 4);
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 4).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![6, 7, 8, 9]
        );
        assert_eq!(records[0].payload, payload(6));
        assert_eq!(
            spool.append(vec![payload(10)]).await.expect("append"),
            10..11
        );

        // Confirmations after the last checkpoint are lost in a crash: replayed, not lost.
        spool.confirm(6);
        spool.confirm(7);
        spool.checkpoint().await.expect("checkpoint");
        // Hold the writer so no periodic checkpoint can slip in before the crash.
        let release = spool.hold().await;
        spool.confirm(8);
        let (reply, crashed) = oneshot::channel();
        spool
            .inner
            .requests
            .send(Request::Crash { reply })
            .expect("writer alive");
        release.send(()).expect("release");
        crashed.await.expect("crash ack");
        let spool = Spool::open(config(dir.path())).expect("reopen after crash");
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 3).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(records[2].payload, payload(10));
        spool.close().await.expect("close");
    });
}

#[test]
fn confirmed_records_are_not_read_again_by_a_new_reader() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        for i in 0..5 {
            spool.append(vec![payload(i)]).await.expect("append");
        }
        spool.confirm(1);
        spool.confirm(3);
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 3).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 2, 4]
        );
        spool.close().await.expect("close");
    });
}

/// What a replay may send again: every unconfirmed committed record, across segments, from
/// the watermark on, with its append time; the end is the committed end.
#[test]
fn scan_unconfirmed_visits_what_a_replay_sends() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut small = config(dir.path());
        small.segment_bytes = 64;
        let spool = Spool::open(small).expect("open");
        for i in 0..8 {
            spool.append(vec![payload(i)]).await.expect("append");
        }
        assert!(segments(dir.path()).len() > 2);
        for seq in [0, 1, 4, 6] {
            spool.confirm(seq);
        }
        let mut seen = Vec::new();
        let end = spool
            .scan_unconfirmed(|r| {
                assert!(r.appended_ms > 0);
                seen.push((r.seq, r.payload.clone()));
            })
            .expect("scan");
        assert_eq!(end, 8);
        let want: Vec<(u64, Bytes)> = [2, 3, 5, 7].iter().map(|&s| (s, payload(s))).collect();
        assert_eq!(seen, want);
        spool.close().await.expect("close");
    });
}

#[test]
fn handles_and_futures_can_move_across_tasks() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>(_: &T) {}
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(config(dir.path())).expect("open");
    let mut reader = spool.reader();
    send_sync(&spool);
    send(&spool.append(vec![]));
    send(&spool.close());
    send(&reader.next_batch(1));
}

#[test]
fn second_open_of_a_live_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _spool = Spool::open(config(dir.path())).expect("open");
    let err = Spool::open(config(dir.path())).expect_err("locked");
    assert!(matches!(err, SpoolError::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    /// Read up to n; confirm those whose bit is set in the mask, in reverse order.
    ReadConfirm(usize, u32),
    NewReader,
    Checkpoint,
    Reopen {
        crash: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..300, 1..4).prop_map(Op::Append),
        4 => (1usize..6, any::<u32>()).prop_map(|(n, m)| Op::ReadConfirm(n, m)),
        1 => Just(Op::NewReader),
        1 => Just(Op::Checkpoint),
        1 => any::<bool>().prop_map(|crash| Op::Reopen { crash }),
    ]
}

fn body(seq: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (seq as usize * 31 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the interleaving of appends, out-of-order confirms, new readers and clean or
    /// crashing restarts: every acknowledged unconfirmed record is read back exactly once per
    /// pass, in order, with its bytes; seqs are never reused.
    #[test]
    fn no_record_is_lost_or_duplicated(ops in prop::collection::vec(op(), 1..30)) {
        rt().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = SpoolConfig {
                dir: dir.path().to_path_buf(),
                max_bytes: 1 << 20,
                segment_bytes: 512,
                retain: Duration::ZERO,
            };
            let mut spool = Spool::open(cfg.clone()).expect("open");
            let mut reader = spool.reader();
            let mut acked: BTreeMap<u64, Bytes> = BTreeMap::new();
            let mut confirmed = std::collections::BTreeSet::new();
            let mut next_seq = 0u64;
            let mut next_read = 0u64;
            let model_low = |acked: &BTreeMap<u64, Bytes>, confirmed: &std::collections::BTreeSet<u64>, next_seq: u64| {
                acked.keys().find(|s| !confirmed.contains(s)).copied().unwrap_or(next_seq)
            };
            for op in ops {
                match op {
                    Op::Append(lens) => {
                        let bodies: Vec<Bytes> = lens.iter().enumerate().map(|(k, &len)| body(next_seq + k as u64, len)).collect();
                        let range = spool.append(bodies.clone()).await.expect("append");
                        assert_eq!(range, next_seq..next_seq + bodies.len() as u64);
                        for (seq, b) in range.zip(bodies) {
                            acked.insert(seq, b);
                        }
                        next_seq += lens.len() as u64;
                    }
                    Op::ReadConfirm(n, mask) => {
                        // A reader yields the unconfirmed records from where it stands.
                        let unread: Vec<u64> = acked
                            .range(next_read..)
                            .map(|(s, _)| *s)
                            .filter(|s| !confirmed.contains(s))
                            .collect();
                        if unread.is_empty() {
                            continue;
                        }
                        let batch = tokio::time::timeout(WAIT, reader.next_batch(n)).await.expect("no hang").expect("read");
                        assert!(!batch.is_empty() && batch.len() <= n);
                        let want: Vec<u64> = unread.iter().take(batch.len()).copied().collect();
                        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
                        for r in &batch {
                            assert_eq!(&r.payload, &acked[&r.seq]);
                        }
                        next_read = batch.last().map_or(next_read, |r| r.seq + 1);
                        for (i, r) in batch.iter().enumerate().rev() {
                            if mask & (1 << i) != 0 {
                                spool.confirm(r.seq);
                                confirmed.insert(r.seq);
                            }
                        }
                    }
                    Op::NewReader => {
                        reader = spool.reader();
                        next_read = model_low(&acked, &confirmed, next_seq);
                        assert_eq!(spool.low(), next_read);
                    }
                    Op::Checkpoint => spool.checkpoint().await.expect("checkpoint"),
                    Op::Reopen { crash } => {
                        let low_before = model_low(&acked, &confirmed, next_seq);
                        if crash { spool.crash().await } else { spool.close().await.expect("close") }
                        spool = Spool::open(cfg.clone()).expect("reopen");
                        reader = spool.reader();
                        let low = spool.low();
                        if crash {
                            assert!(low <= low_before, "checkpoint ahead of confirmations");
                        } else {
                            assert_eq!(low, low_before);
                        }
                        // Confirmations past the durable checkpoint are forgotten: replayed.
                        confirmed.retain(|s| *s < low);
                        next_read = low;
                        let pending = acked.range(low..).count() as u64;
                        assert_eq!(spool.stats().pending_events, pending);
                    }
                }
            }
            // Drain what is left: exactly the acked records at or after the watermark.
            let low = spool.low();
            let mut reader = spool.reader();
            let rest: Vec<u64> = acked
                .range(low..)
                .map(|(s, _)| *s)
                .filter(|s| !confirmed.contains(s))
                .collect();
            let records = read_n(&mut reader, rest.len()).await;
            assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), rest);
            assert!(records.iter().all(|r| r.payload == acked[&r.seq]));
            spool.close().await.expect("close");
        });
    }
}
