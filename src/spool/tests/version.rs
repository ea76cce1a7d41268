//! Format versions on disk: a directory written before versions existed (headerless v0
//! segments, `HBSPCK01` checkpoint) is read as it is, v0 and v1 segments mix, and a segment or
//! checkpoint of an unknown version stops the open without a byte of the directory changing.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{config, payload, read_n, rt, scan, segments};
use crate::spool::format::{self, SegmentHead};
use crate::spool::{Spool, SpoolError};

/// Append time of the hand-written records: old, but not zero (zero means "none").
fn old_ms(seq: u64) -> u64 {
    1_000 + seq
}

/// Encoded records `seqs` with `payload(seq)`, as every version so far writes them.
fn records(seqs: std::ops::Range<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for seq in seqs {
        format::encode_record(&mut bytes, seq, old_ms(seq), &payload(seq));
    }
    bytes
}

/// A segment as the code before versions wrote it: records from offset 0, then `zeros` bytes
/// of preallocated space (a crash leaves them; a clean close trims them).
fn write_v0_segment(dir: &Path, seqs: std::ops::Range<u64>, zeros: usize) -> PathBuf {
    let path = dir.join(format::segment_name(seqs.start));
    let mut bytes = records(seqs);
    bytes.resize(bytes.len() + zeros, 0);
    fs::write(&path, bytes).expect("write v0 segment");
    path
}

/// A segment of the current version: the header, then the records.
fn write_v1_segment(dir: &Path, seqs: std::ops::Range<u64>) -> PathBuf {
    let path = dir.join(format::segment_name(seqs.start));
    let mut file = format::create_segment(&path).expect("create v1 segment");
    file.write_all(&records(seqs)).expect("write records");
    path
}

/// A header in the current layout naming `version` (spelt out, to pin the format).
fn header(version: u32) -> Vec<u8> {
    let mut bytes = b"HBSPSEG\0".to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            let bytes = fs::read(&path).expect("read");
            out.insert(path, bytes);
        }
    }
    out
}

fn record_bytes(seqs: std::ops::Range<u64>) -> u64 {
    seqs.map(|seq| format::record_len(payload(seq).len())).sum()
}

#[test]
fn segment_header_is_magic_version_and_checksum() {
    let current = header(format::SEGMENT_VERSION);
    assert_eq!(current.len() as u64, format::SEGMENT_HEADER_LEN);
    let mut bad_crc = current.clone();
    bad_crc[15] ^= 1;
    let cases: Vec<(&str, Vec<u8>, SegmentHead)> = vec![
        ("current", current.clone(), SegmentHead::Current),
        ("newer", header(2), SegmentHead::Unknown(2)),
        ("empty file", Vec::new(), SegmentHead::V0),
        ("v0 record first", records(0..1), SegmentHead::V0),
        ("v0 zeros", vec![0; 16], SegmentHead::V0),
        ("v0 shorter than a header", vec![7; 5], SegmentHead::V0),
        ("magic, short", current[..12].to_vec(), SegmentHead::Damaged),
        ("magic, bad crc", bad_crc, SegmentHead::Damaged),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(format::decode_segment_header(&bytes), want, "{name}");
    }
}

#[test]
fn checkpoint_version_is_the_last_two_magic_digits() {
    use format::Checkpoint;
    let current = format::encode_checkpoint(42);
    assert_eq!(&current[..8], b"HBSPCK01");
    let mut bad_crc = current;
    bad_crc[19] ^= 1;
    let cases: Vec<(&str, Vec<u8>, Checkpoint)> = vec![
        ("current", current.to_vec(), Checkpoint::Low(42)),
        (
            "newer, longer",
            b"HBSPCK02 and more bytes".to_vec(),
            Checkpoint::Unknown(2),
        ),
        (
            "newer, short",
            b"HBSPCK10".to_vec(),
            Checkpoint::Unknown(10),
        ),
        ("v01 damaged", bad_crc.to_vec(), Checkpoint::Unreadable),
        ("v01 torn", current[..12].to_vec(), Checkpoint::Unreadable),
        (
            "no digits",
            b"HBSPCKxx________________".to_vec(),
            Checkpoint::Unreadable,
        ),
        ("prefix only", b"HBSPCK0".to_vec(), Checkpoint::Unreadable),
        ("empty", Vec::new(), Checkpoint::Unreadable),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(format::decode_checkpoint(&bytes), want, "{name}");
    }
}

#[test]
fn a_directory_from_before_versions_is_read_and_continued_in_a_new_segment() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        write_v0_segment(dir.path(), 0..3, 0);
        // The last segment as a crash of the old code leaves it: preallocated zeros.
        let last = write_v0_segment(dir.path(), 3..6, 4096);
        fs::write(
            dir.path().join(format::CHECKPOINT_FILE),
            format::encode_checkpoint(1),
        )
        .expect("v0 checkpoint");

        let spool = Spool::open(config(dir.path())).expect("open a v0 directory");
        assert_eq!(spool.stats().pending_events, 5, "the checkpoint was read");
        assert_eq!(
            spool.stats().bytes,
            record_bytes(0..6),
            "headers are not counted"
        );
        let mut reader = spool.reader();
        let read = read_n(&mut reader, 5).await;
        assert_eq!(
            read.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        for r in &read {
            assert_eq!(
                (r.payload.clone(), r.appended_ms),
                (payload(r.seq), old_ms(r.seq))
            );
        }
        let all: Vec<_> = (0..6).map(|seq| (old_ms(seq), payload(seq))).collect();
        assert_eq!(scan(&spool, 0), all, "scan_since reads v0 records too");

        // New records go to a new segment of the current version; the v0 file is not extended
        // (only its zero tail is trimmed, as recovery does for any version).
        assert_eq!(spool.append(vec![payload(6)]).await.expect("append"), 6..7);
        assert_eq!(read_n(&mut reader, 1).await[0].payload, payload(6));
        assert_eq!(fs::read(&last).expect("v0 segment"), records(3..6));
        let newest = segments(dir.path()).pop().expect("segment");
        assert_eq!(newest, dir.path().join(format::segment_name(6)));
        assert_eq!(
            format::read_segment_head(&newest).expect("head"),
            SegmentHead::Current
        );
        assert_eq!(&fs::read(&newest).expect("new segment")[..16], header(1));
        spool.close().await.expect("close");

        // Reopened, the mixed directory reads the same; once confirmed, retention removes the
        // v0 segments like any other.
        let spool = Spool::open(config(dir.path())).expect("reopen mixed");
        let mut reader = spool.reader();
        let read = read_n(&mut reader, 6).await;
        assert_eq!(
            read.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..7).collect::<Vec<_>>()
        );
        for r in &read {
            assert_eq!(r.payload, payload(r.seq));
            spool.confirm(r.seq);
        }
        spool.checkpoint().await.expect("checkpoint");
        assert_eq!(
            segments(dir.path())
                .iter()
                .map(|p| format::read_segment_head(p).expect("head"))
                .collect::<Vec<_>>(),
            vec![SegmentHead::Current],
            "only the fresh active segment is left"
        );
        assert_eq!(spool.stats().bytes, 0);
        spool.close().await.expect("close");
    });
}

#[test]
fn v0_and_v1_segments_mix_and_v0_corruption_is_handled_as_before() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let v0 = write_v0_segment(dir.path(), 0..4, 0);
        write_v1_segment(dir.path(), 4..7);
        // Damage record 1 of the v0 segment: records 2 and 3 after it are still valid.
        let record_1 = format::record_len(payload(0).len());
        let mut bytes = fs::read(&v0).expect("read");
        bytes[(record_1 + format::HEADER_LEN + 1) as usize] ^= 0x01;
        fs::write(&v0, &bytes).expect("write");

        let spool = Spool::open(config(dir.path())).expect("open");
        let stats = spool.stats();
        assert_eq!((stats.pending_events, stats.corrupt_records), (6, 1));
        let mut reader = spool.reader();
        let read = read_n(&mut reader, 6).await;
        assert_eq!(
            read.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 2, 3, 4, 5, 6]
        );
        assert!(read.iter().all(|r| r.payload == payload(r.seq)));
        // Kept bytes are named by their file offset; v0 records start at 0.
        let kept = dir
            .path()
            .join(format::CORRUPT_DIR)
            .join(format!("{}-{record_1}.bin", format::segment_name(0)));
        assert_eq!(
            fs::read(&kept).expect("kept bytes").len() as u64,
            format::record_len(payload(1).len())
        );
        // The valid records after the damage moved to a segment this code wrote: current version.
        let split = dir.path().join(format::segment_name(2));
        assert_eq!(
            format::read_segment_head(&split).expect("head"),
            SegmentHead::Current
        );
        assert_eq!(
            format::read_segment_head(&v0).expect("head"),
            SegmentHead::V0
        );
        assert_eq!(
            fs::read(&v0).expect("v0"),
            records(0..1),
            "cut after record 0"
        );
        spool.close().await.expect("close");

        let spool = Spool::open(config(dir.path())).expect("reopen");
        assert_eq!(spool.stats().corrupt_records, 0, "a clean log now");
        assert_eq!(spool.stats().pending_events, 6);
        assert_eq!(scan(&spool, 0).len(), 6);
        spool.close().await.expect("close");
    });
}

#[test]
fn a_segment_of_an_unknown_version_is_refused_and_nothing_is_changed() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        spool
            .append((0..3).map(payload).collect())
            .await
            .expect("append");
        // What recovery would otherwise tidy up: a preallocated tail and a stale temp file.
        spool.crash().await;
        fs::write(dir.path().join(format::CHECKPOINT_TMP), b"stale").expect("tmp");
        // A newer hookbus continued in a segment of version 2, whose records this code could
        // only take for corruption.
        let newer = dir.path().join(format::segment_name(3));
        let mut bytes = header(2);
        bytes.extend_from_slice(b"a record layout from the future");
        fs::write(&newer, &bytes).expect("v2 segment");
        let before = snapshot(dir.path());

        let error = Spool::open(config(dir.path())).expect_err("unknown version");
        match &error {
            SpoolError::UnsupportedVersion {
                path,
                found,
                supported,
            } => assert_eq!((path, *found, *supported), (&newer, 2, 1)),
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        let text = error.to_string();
        for want in [
            newer.display().to_string().as_str(),
            "version 2",
            "up to 1",
            "upgrade hookbus",
            "hookbus drain",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text:?}");
        }
        assert_eq!(
            snapshot(dir.path()),
            before,
            "no byte of the directory changed"
        );
        assert!(!dir.path().join(format::CORRUPT_DIR).exists());

        // Without the newer file the directory opens as usual.
        fs::remove_file(&newer).expect("remove");
        let spool = Spool::open(config(dir.path())).expect("open");
        assert_eq!(spool.stats().pending_events, 3);
        spool.close().await.expect("close");
    });
}

#[test]
fn a_damaged_segment_header_is_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_v1_segment(dir.path(), 0..2);
    let mut bytes = fs::read(&path).expect("read");
    bytes[9] ^= 0x01; // the version field: the checksum no longer matches
    fs::write(&path, &bytes).expect("write");
    let before = snapshot(dir.path());
    let error = Spool::open(config(dir.path())).expect_err("damaged header");
    assert!(
        matches!(&error, SpoolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData),
        "{error:?}"
    );
    assert!(error.to_string().contains(&path.display().to_string()));
    let after: BTreeMap<_, _> = snapshot(dir.path())
        .into_iter()
        .filter(|(p, _)| !p.ends_with(format::LOCK_FILE))
        .collect();
    assert_eq!(after, before);
}

#[test]
fn a_checkpoint_of_an_unknown_version_is_refused_not_taken_as_missing() {
    rt().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(config(dir.path())).expect("open");
        spool
            .append((0..3).map(payload).collect())
            .await
            .expect("append");
        spool.close().await.expect("close");
        let checkpoint = dir.path().join(format::CHECKPOINT_FILE);
        fs::write(&checkpoint, b"HBSPCK02 with a layout of its own").expect("v2 checkpoint");
        let before = snapshot(dir.path());

        let error = Spool::open(config(dir.path())).expect_err("unknown checkpoint");
        assert!(
            matches!(
                &error,
                SpoolError::UnsupportedVersion { path, found: 2, supported: 1 } if *path == checkpoint
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("hookbus drain"));
        assert_eq!(snapshot(dir.path()), before);

        // A damaged checkpoint of the known version is still only a warning: replay everything.
        let mut damaged = format::encode_checkpoint(2);
        damaged[10] ^= 0x01;
        fs::write(&checkpoint, damaged).expect("damaged checkpoint");
        let spool = Spool::open(config(dir.path())).expect("open");
        assert_eq!(spool.stats().pending_events, 3);
        spool.close().await.expect("close");
    });
}
