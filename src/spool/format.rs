//! On-disk encoding of segment files (version header, records) and of the checkpoint file.
//!
//! A segment file of the current version (1) is `header(16) | record*`: the header is
//! `b"HBSPSEG\0" | version u32 LE | crc32 of the first 12 bytes`. A file whose first eight bytes
//! are not that magic was written before versions existed (version 0): records from offset 0.
//! Record offsets and byte counts elsewhere in the spool are relative to where the records
//! start (the segment's `data_start`), so only the code that seeks in a file adds it.
//!
//! Pure encode/decode and validation; no policy (what to do with a bad record is decided by
//! `recover` and `reader`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use bytes::Bytes;

use super::Record;

/// `crc32 u32 | len u32 | seq u64 | appended_ms u64`, little-endian, then `len` payload bytes.
/// The CRC (crc32, IEEE) covers everything after itself: header fields and payload.
pub(super) const HEADER_LEN: u64 = 24;

/// Segment files are named `{first_seq:020}.seg` so a plain sort is seq order.
const SEGMENT_SUFFIX: &str = ".seg";

pub(super) const CHECKPOINT_FILE: &str = "checkpoint";
pub(super) const CHECKPOINT_TMP: &str = "checkpoint.tmp";
pub(super) const LOCK_FILE: &str = "lock";
/// `HBSPCK` followed by the checkpoint format version as two ASCII digits.
const CHECKPOINT_PREFIX: &[u8; 6] = b"HBSPCK";
/// The only checkpoint version there is; its files have always been `HBSPCK01`.
pub(super) const CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_MAGIC: &[u8; 8] = b"HBSPCK01";
const CHECKPOINT_LEN: usize = 20;

const SEGMENT_MAGIC: &[u8; 8] = b"HBSPSEG\0";
/// Version written into every new segment. Version 0 is the headerless layout.
pub(super) const SEGMENT_VERSION: u32 = 1;
/// Length of the segment header; the records of a current-version segment start here.
pub(super) const SEGMENT_HEADER_LEN: u64 = 16;

/// A sparse index entry is kept per segment whenever this much time or data has passed since
/// the previous one; it bounds the scan needed to position a reader and the error of
/// `oldest_unconfirmed_ms`.
const INDEX_EVERY_MS: u64 = 100;
const INDEX_EVERY_BYTES: u64 = 1 << 20;

/// A position inside a segment: the record `seq` starts at byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) ms: u64,
}

/// Whether a record at `offset` appended at `ms` gets its own index entry.
pub(super) fn index_due(last: Option<&IndexEntry>, offset: u64, ms: u64) -> bool {
    match last {
        None => true,
        Some(last) => {
            ms >= last.ms.saturating_add(INDEX_EVERY_MS)
                || offset >= last.offset.saturating_add(INDEX_EVERY_BYTES)
        }
    }
}

pub(super) fn record_len(payload_len: usize) -> u64 {
    HEADER_LEN + payload_len as u64
}

/// Appends one encoded record to `buf`. The caller has checked `payload.len() <= u32::MAX`.
pub(super) fn encode_record(buf: &mut Vec<u8>, seq: u64, ms: u64, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&ms.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Result of reading one record from a segment.
pub(super) enum Decoded {
    /// A valid record and its encoded length.
    Record(Record, u64),
    /// Clean end: no bytes left.
    End,
    /// An all-zero header: preallocated space that was never written (no valid record has
    /// one, its checksum would not be zero).
    Unwritten,
    /// The bytes at this position are not a valid record (torn write or corruption).
    Invalid(&'static str),
}

/// Reads the record at the current position of `r`, which has `remaining` bytes left in the
/// segment. `expected_seq` is the seq this position must hold.
pub(super) fn read_record(
    r: &mut impl Read,
    remaining: u64,
    expected_seq: u64,
) -> io::Result<Decoded> {
    if remaining == 0 {
        return Ok(Decoded::End);
    }
    if remaining < HEADER_LEN {
        return Ok(Decoded::Invalid("partial header"));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut header)?;
    if header.iter().all(|&b| b == 0) {
        return Ok(Decoded::Unwritten);
    }
    let (crc, len, seq, ms) = parse_header(&header);
    if u64::from(len) > remaining - HEADER_LEN {
        return Ok(Decoded::Invalid("length past end of segment"));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..]);
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Ok(Decoded::Invalid("checksum mismatch"));
    }
    if seq != expected_seq {
        return Ok(Decoded::Invalid("unexpected sequence number"));
    }
    let record = Record {
        seq,
        appended_ms: ms,
        payload: Bytes::from(payload),
    };
    Ok(Decoded::Record(record, record_len(len as usize)))
}

/// Reads only the header at the current position: `(seq, encoded length)`. Used to skip
/// records that were validated before (recovery or commit) without reading their payload.
pub(super) fn read_header(r: &mut impl Read) -> io::Result<(u64, u64)> {
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut header)?;
    let (_, len, seq, _) = parse_header(&header);
    Ok((seq, record_len(len as usize)))
}

fn parse_header(h: &[u8; HEADER_LEN as usize]) -> (u32, u32, u64, u64) {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    (u32_at(0), u32_at(4), u64_at(8), u64_at(16))
}

/// The first valid record in `bytes` (the rest of a segment after a damaged record): its offset
/// and seq. A candidate needs a seq above `after_seq` that the bytes left could still reach, a
/// length that fits, and a matching checksum, so random bytes are taken for a record about
/// once in 2^32 tries. `None` when nothing valid follows (a torn tail, or zeros).
pub(super) fn next_valid(bytes: &[u8], after_seq: u64) -> Option<(usize, u64)> {
    let header_len = HEADER_LEN as usize;
    let seq_bound = after_seq.saturating_add((bytes.len() / header_len) as u64 + 1);
    let mut at = 0;
    while at + header_len <= bytes.len() {
        let header: &[u8; HEADER_LEN as usize] = bytes[at..at + header_len]
            .try_into()
            .unwrap_or(&[0; HEADER_LEN as usize]);
        let (crc, len, seq, _) = parse_header(header);
        let end = at + header_len + len as usize;
        if seq > after_seq && seq <= seq_bound && crc != 0 && end <= bytes.len() {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[4..]);
            hasher.update(&bytes[at + header_len..end]);
            if hasher.finalize() == crc {
                return Some((at, seq));
            }
        }
        at += 1;
    }
    None
}

/// Where the bytes of damaged records are kept for inspection, inside the spool directory.
pub(super) const CORRUPT_DIR: &str = "corrupt";

/// Copies damaged bytes to `dir/corrupt/<segment>-<offset>.bin` (best effort: the records are
/// lost either way; the copy is for whoever investigates).
pub(super) fn keep_corrupt(
    dir: &Path,
    segment: &Path,
    offset: u64,
    bytes: &[u8],
) -> Option<std::path::PathBuf> {
    let name = segment.file_name()?.to_string_lossy().into_owned();
    let aside = dir.join(CORRUPT_DIR).join(format!("{name}-{offset}.bin"));
    std::fs::create_dir_all(dir.join(CORRUPT_DIR))
        .and_then(|()| std::fs::write(&aside, bytes))
        .ok()?;
    Some(aside)
}

pub(super) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first seq of a segment file, or `None` if `name` is not a segment file.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `magic(8) | low u64 LE | crc32 of the first 16 bytes`.
pub(super) fn encode_checkpoint(low: u64) -> [u8; CHECKPOINT_LEN] {
    let mut out = [0u8; CHECKPOINT_LEN];
    out[..8].copy_from_slice(CHECKPOINT_MAGIC);
    out[8..16].copy_from_slice(&low.to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checkpoint {
    /// A valid watermark.
    Low(u64),
    /// `HBSPCK` and two digits other than `01`: a format this code does not know. Its length
    /// and checksum are not looked at, they may differ in that format.
    Unknown(u32),
    /// Anything else (torn, damaged, not a checkpoint): as if there were none.
    Unreadable,
}

pub(super) fn decode_checkpoint(bytes: &[u8]) -> Checkpoint {
    if let Some(found) = checkpoint_version(bytes)
        && found != CHECKPOINT_VERSION
    {
        return Checkpoint::Unknown(found);
    }
    if bytes.len() != CHECKPOINT_LEN || &bytes[..8] != CHECKPOINT_MAGIC {
        return Checkpoint::Unreadable;
    }
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32fast::hash(&bytes[..16]) != crc {
        return Checkpoint::Unreadable;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..16]);
    Checkpoint::Low(u64::from_le_bytes(low))
}

/// The version digits after the `HBSPCK` prefix, if the file has both.
fn checkpoint_version(bytes: &[u8]) -> Option<u32> {
    let digits = bytes.strip_prefix(CHECKPOINT_PREFIX)?.get(..2)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(u32::from(digits[0] - b'0') * 10 + u32::from(digits[1] - b'0'))
}

/// `magic(8) | version u32 LE | crc32 of the first 12 bytes`.
fn encode_segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
    out[..8].copy_from_slice(SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&out[..12]);
    out[12..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What the first bytes of a segment file say about its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SegmentHead {
    /// No header (written before versions existed, or a file never written to): records, or
    /// preallocated zeros, from offset 0.
    V0,
    /// A valid header of [`SEGMENT_VERSION`]: records from [`SEGMENT_HEADER_LEN`].
    Current,
    /// A valid header naming another version: a layout this code does not know.
    Unknown(u32),
    /// The magic, but a short header or a failed checksum.
    Damaged,
}

/// Classifies the first bytes of a segment file (up to [`SEGMENT_HEADER_LEN`] of them). A v0
/// file starts with the magic only if its first record has a payload of exactly 4,670,803
/// bytes whose checksum happens to read `HBSP` (odds of 2^-32 for such a record).
pub(super) fn decode_segment_header(first: &[u8]) -> SegmentHead {
    if first.len() < SEGMENT_MAGIC.len() || &first[..8] != SEGMENT_MAGIC {
        return SegmentHead::V0;
    }
    if first.len() < SEGMENT_HEADER_LEN as usize {
        return SegmentHead::Damaged;
    }
    let crc = u32::from_le_bytes([first[12], first[13], first[14], first[15]]);
    if crc32fast::hash(&first[..12]) != crc {
        return SegmentHead::Damaged;
    }
    match u32::from_le_bytes([first[8], first[9], first[10], first[11]]) {
        SEGMENT_VERSION => SegmentHead::Current,
        other => SegmentHead::Unknown(other),
    }
}

/// Reads and classifies the header of the segment file at `path`.
pub(super) fn read_segment_head(path: &Path) -> io::Result<SegmentHead> {
    let mut first = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    File::open(path)?
        .take(SEGMENT_HEADER_LEN)
        .read_to_end(&mut first)?;
    Ok(decode_segment_header(&first))
}

/// Creates (or truncates) a segment file holding only the current header, and syncs it: the
/// version is on disk before any record is, so no record sits in a file of unknown layout.
/// The file position is left at the end of the header, where the first record goes.
pub(super) fn create_segment(path: &Path) -> io::Result<File> {
    let mut file = File::create(path)?;
    file.write_all(&encode_segment_header())?;
    file.sync_data()?;
    Ok(file)
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
