//! Segments: rotation, deletion once confirmed, readers behind the watermark, retention for
//! the dedup rebuild.

use super::*;

#[test]
fn full_until_confirmed_segments_can_be_deleted() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = Bytes::from(vec![7u8; 76]);
        let rec = format::record_len(body.len()); // 100 bytes
        let cfg = SpoolConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 10 * rec,
            segment_bytes: format::SEGMENT_HEADER_LEN + 4 * rec,
            retain: Duration::from_secs(3600),
        };
        let spool = Spool::open(cfg.clone()).expect("open");
        for _ in 0..10 {
            spool.append(vec![body.clone()]).await.expect("fits");
        }
        assert!(matches!(
            spool.append(vec![body.clone()]).await,
            Err(SpoolError::Full)
        ));
        assert!(!spool.has_headroom(0));
        assert_eq!(spool.stats().bytes, 10 * rec);
        assert_eq!(segments(dir.path()).len(), 3);

        let mut reader = spool.reader();
        let records = read_n(&mut reader, 10).await;
        for r in &records[..5] {
            spool.confirm(r.seq);
        }
        // Segment 0..4 is fully confirmed: its space counts as free, the retain notwithstanding.
        assert!(spool.has_headroom(3 * rec) && !spool.has_headroom(4 * rec));
        assert_eq!(
            spool
                .append(vec![body.clone(); 4])
                .await
                .expect("fits after reclaim"),
            10..14
        );
        assert!(spool.stats().bytes <= cfg.max_bytes);
        assert!(
            !segments(dir.path())
                .iter()
                .any(|p| p.ends_with(format::segment_name(0)))
        );
        assert!(matches!(
            spool.append(vec![body.clone()]).await,
            Err(SpoolError::Full)
        ));
        // A record that can never fit is refused at once too.
        let huge = Bytes::from(vec![0u8; (cfg.max_bytes + 1) as usize]);
        assert!(matches!(
            spool.append(vec![huge]).await,
            Err(SpoolError::Full)
        ));
        assert_eq!(read_n(&mut reader, 4).await.last().map(|r| r.seq), Some(13));
        spool.close().await.expect("close");
    });
}

#[test]
fn segments_rotate_and_confirmed_ones_are_deleted() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = Bytes::from_static(b"0123456789");
        let rec = format::record_len(body.len());
        let mut cfg = config(dir.path());
        cfg.segment_bytes = format::SEGMENT_HEADER_LEN + 3 * rec;
        let spool = Spool::open(cfg.clone()).expect("open");
        for _ in 0..10 {
            spool.append(vec![body.clone()]).await.expect("append");
        }
        let names: Vec<_> = segments(dir.path())
            .iter()
            .map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        let want: Vec<_> = [0, 3, 6, 9]
            .iter()
            .map(|&s| Some(format::segment_name(s)))
            .collect();
        assert_eq!(names, want);
        assert!(
            segments(dir.path())
                .iter()
                .take(3)
                .all(|p| fs::metadata(p).map(|m| m.len()).ok()
                    == Some(format::SEGMENT_HEADER_LEN + 3 * rec))
        );

        let mut reader = spool.reader();
        for r in read_n(&mut reader, 7).await {
            spool.confirm(r.seq);
        }
        spool.checkpoint().await.expect("checkpoint");
        let left: Vec<_> = segments(dir.path());
        assert_eq!(
            left.len(),
            2,
            "0.. and 3.. deleted, 6.. holds unconfirmed seq 7"
        );
        assert_eq!(spool.stats().bytes, 4 * rec);

        for r in read_n(&mut reader, 3).await {
            spool.confirm(r.seq);
        }
        spool.checkpoint().await.expect("checkpoint");
        let left = segments(dir.path());
        assert_eq!(left.len(), 1, "only a fresh, empty segment stays");
        assert_eq!(spool.stats().bytes, 0);
        spool.close().await.expect("close");
        assert_eq!(
            fs::metadata(&left[0]).expect("meta").len(),
            format::SEGMENT_HEADER_LEN,
            "close trims preallocation"
        );

        let spool = Spool::open(cfg).expect("reopen");
        assert_eq!(
            spool.append(vec![body]).await.expect("append"),
            10..11,
            "seqs are never reused"
        );
        spool.close().await.expect("close");
    });
}

#[test]
fn reader_behind_the_watermark_skips_deleted_segments() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.segment_bytes = 1; // one record per segment
        let spool = Spool::open(cfg).expect("open");
        spool
            .append((0..4).map(payload).collect())
            .await
            .expect("append");
        let mut reader = spool.reader();
        let first = read_n(&mut reader, 4).await;
        let mut reader = spool.reader();
        for r in &first {
            spool.confirm(r.seq);
        }
        spool.checkpoint().await.expect("checkpoint");
        assert_eq!(segments(dir.path()).len(), 1, "all four deleted");
        spool.append(vec![payload(4)]).await.expect("append");
        let next = read_n(&mut reader, 1).await;
        assert_eq!(next[0].seq, 4);
        spool.close().await.expect("close");
    });
}

#[test]
fn retain_keeps_confirmed_segments_for_scan_since() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.retain = Duration::from_secs(3600);
        cfg.segment_bytes = 64;
        let spool = Spool::open(cfg.clone()).expect("open");
        for i in 0..5 {
            spool.append(vec![payload(i)]).await.expect("append");
        }
        let mut reader = spool.reader();
        let records = read_n(&mut reader, 5).await;
        for r in &records {
            spool.confirm(r.seq);
        }
        spool.checkpoint().await.expect("checkpoint");
        assert_eq!(spool.stats().pending_events, 0);
        assert!(segments(dir.path()).len() >= 5, "kept for retain");
        assert_eq!(scan(&spool, 0), visited(&records));
        let since = records[2].appended_ms;
        let want: Vec<Record> = records
            .iter()
            .filter(|r| r.appended_ms >= since)
            .cloned()
            .collect();
        assert_eq!(scan(&spool, since), visited(&want));
        assert_eq!(want.last().map(|r| r.seq), Some(4));
        assert!(scan(&spool, records[4].appended_ms + 1).is_empty());
        spool.close().await.expect("close");

        let spool = Spool::open(cfg).expect("reopen");
        assert_eq!(spool.stats().pending_events, 0);
        assert_eq!(scan(&spool, 0), visited(&records));
        spool.close().await.expect("close");
    });
}
