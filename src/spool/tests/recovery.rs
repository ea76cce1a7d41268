//! Recovery after a crash or damage: torn tails, preallocated space, corruption before,
//! inside and after committed records.

use super::*;

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        for i in 0..5 {
            spool.append(vec![payload(i)]).await.expect("append");
        }
        spool.close().await.expect("close");
        let seg = segments(dir.path()).pop().expect("segment");
        let len = fs::metadata(&seg).expect("meta").len();
        let complete = len - format::record_len(payload(4).len());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open seg");
        file.set_len(len - 7).expect("truncate mid-record");
        drop(file);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        file.write_all(&[0xA5; 61]).expect("garbage");
        drop(file);

        let spool = Spool::open(config(dir.path())).expect("reopen");
        assert_eq!(spool.stats().bytes, complete - format::SEGMENT_HEADER_LEN);
        assert_eq!(spool.stats().pending_events, 4);
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 4).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(records.iter().all(|r| r.payload == payload(r.seq)));
        assert_eq!(
            spool
                .append(vec![Bytes::from_static(b"after")])
                .await
                .expect("append"),
            4..5
        );
        let next = read_n(&mut reader, 1).await;
        assert_eq!(next[0].payload, Bytes::from_static(b"after"));
        spool.close().await.expect("close");
        let after = format::record_len(b"after".len());
        assert_eq!(fs::metadata(&seg).expect("meta").len(), complete + after);

        // Garbage alone after complete records (a torn header) is cut too.
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        file.write_all(&[0xFF; 10]).expect("garbage");
        drop(file);
        let spool = Spool::open(config(dir.path())).expect("reopen");
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 5).await;
        assert_eq!(records[4].payload, Bytes::from_static(b"after"));
        spool.close().await.expect("close");
    });
}

#[test]
fn crash_leaves_a_preallocated_tail_that_recovery_reads_as_unwritten() {
    use std::os::unix::fs::FileExt;
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        spool
            .append((0..3).map(payload).collect())
            .await
            .expect("append");
        let committed = spool.stats().bytes;
        spool.crash().await;
        let seg = segments(dir.path()).pop().expect("segment");
        assert_eq!(
            fs::metadata(&seg).expect("meta").len(),
            1 << 20,
            "preallocated"
        );

        // Clean zero tail: all three records, appends continue.
        let spool = Spool::open(config(dir.path())).expect("reopen");
        assert_eq!(spool.stats().pending_events, 3);
        assert_eq!(spool.append(vec![payload(3)]).await.expect("append"), 3..4);
        let committed_4 = spool.stats().bytes;
        spool.crash().await;

        // A torn write into the preallocated space (a header, no payload) is cut off.
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open seg");
        let mut torn = Vec::new();
        format::encode_record(&mut torn, 4, 1, b"never acknowledged");
        file.write_all_at(&torn[..30], format::SEGMENT_HEADER_LEN + committed_4)
            .expect("torn write");
        drop(file);
        let spool = Spool::open(config(dir.path())).expect("reopen");
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 4).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(records.iter().all(|r| r.payload == payload(r.seq)));
        assert!(committed < committed_4);
        assert_eq!(spool.append(vec![payload(4)]).await.expect("append"), 4..5);
        assert_eq!(read_n(&mut reader, 1).await[0].payload, payload(4));
        spool.close().await.expect("close");
    });
}

#[test]
fn corruption_followed_by_valid_records_keeps_them_and_the_damaged_bytes() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        for i in 0..5 {
            spool.append(vec![payload(i)]).await.expect("append");
        }
        spool.close().await.expect("close");
        let seg = segments(dir.path()).pop().expect("segment");
        let mut bytes = fs::read(&seg).expect("read");
        let third: u64 = (0..2).map(|i| format::record_len(payload(i).len())).sum();
        // inside record 2's payload
        let at = (format::SEGMENT_HEADER_LEN + third + format::HEADER_LEN + 2) as usize;
        bytes[at] ^= 0x01;
        fs::write(&seg, &bytes).expect("write");

        let spool = Spool::open(config(dir.path())).expect("reopen");
        let stats = spool.stats();
        assert_eq!((stats.pending_events, stats.corrupt_records), (4, 1));
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 4).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 3, 4],
            "the records after the damage are kept"
        );
        for r in &records {
            assert_eq!(r.payload, payload(r.seq));
            spool.confirm(r.seq);
        }
        assert_eq!(spool.stats().pending_events, 0);
        let kept: Vec<_> = fs::read_dir(dir.path().join(format::CORRUPT_DIR))
            .expect("corrupt dir")
            .map(|e| fs::read(e.expect("entry").path()).expect("kept bytes"))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].len() as u64, format::record_len(payload(2).len()));
        assert_eq!(spool.append(vec![payload(5)]).await.expect("append"), 5..6);
        spool.close().await.expect("close");

        // Opening again finds a clean log: nothing is counted twice or replayed.
        let spool = Spool::open(config(dir.path())).expect("third open");
        assert_eq!(spool.stats().corrupt_records, 0);
        assert_eq!(spool.stats().pending_events, 1);
        spool.close().await.expect("close");
    });
}

#[test]
fn corruption_inside_an_older_segment_loses_only_the_damaged_record() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        let body = |i: u64| Bytes::from(format!("p{i}-{}", "z".repeat(20)));
        cfg.segment_bytes = format::SEGMENT_HEADER_LEN + 3 * format::record_len(body(0).len());
        let spool = Spool::open(cfg.clone()).expect("open");
        for i in 0..9 {
            spool.append(vec![body(i)]).await.expect("append");
        }
        spool.close().await.expect("close");
        let segs = segments(dir.path());
        assert_eq!(segs.len(), 3);
        let mut bytes = fs::read(&segs[0]).expect("read");
        let header = format::SEGMENT_HEADER_LEN as usize;
        let second = header + (bytes.len() - header) / 3;
        bytes[second + 1] ^= 0x40; // record 1's header (crc field)
        fs::write(&segs[0], &bytes).expect("write");

        let spool = Spool::open(cfg).expect("reopen");
        assert_eq!(spool.stats().pending_events, 8, "only seq 1 is lost");
        assert_eq!(spool.stats().corrupt_records, 1);
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 8).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 2, 3, 4, 5, 6, 7, 8]
        );
        for r in &records {
            assert_eq!(r.payload, body(r.seq));
            spool.confirm(r.seq);
        }
        assert_eq!(spool.stats().pending_events, 0);
        assert_eq!(spool.low(), 9);
        assert_eq!(spool.append(vec![payload(9)]).await.expect("append"), 9..10);
        spool.close().await.expect("close");
    });
}

#[test]
fn damage_after_commit_is_skipped_by_the_reader_which_resumes_after_it() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        for i in 0..6 {
            spool.append(vec![payload(i)]).await.expect("append");
        }
        let seg = segments(dir.path()).pop().expect("segment");
        let offset: u64 = (0..3).map(|i| format::record_len(payload(i).len())).sum();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut file = fs::OpenOptions::new().write(true).open(&seg).expect("open");
            file.seek(SeekFrom::Start(
                format::SEGMENT_HEADER_LEN + offset + format::HEADER_LEN,
            ))
            .expect("seek");
            file.write_all(b"XX").expect("damage record 3");
        }
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 5).await;
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 4, 5]
        );
        assert_eq!(spool.stats().corrupt_records, 1);
        for r in &records {
            spool.confirm(r.seq);
        }
        assert_eq!(spool.stats().pending_events, 0);
        spool.close().await.expect("close");
    });
}
