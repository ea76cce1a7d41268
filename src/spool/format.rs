//! On-disk encoding of segment records and of the checkpoint file.
//!
//! Pure encode/decode and validation; no policy (what to do with a bad record is decided by
//! `recover` and `reader`).

use std::io::{self, Read};
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
const CHECKPOINT_MAGIC: &[u8; 8] = b"HBSPCK01";
const CHECKPOINT_LEN: usize = 20;

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

pub(super) fn decode_checkpoint(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != CHECKPOINT_LEN || &bytes[..8] != CHECKPOINT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32fast::hash(&bytes[..16]) != crc {
        return None;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..16]);
    Some(u64::from_le_bytes(low))
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
