//! Opening an existing spool directory: reads the checkpoint, validates every segment record
//! by record, and rebuilds the in-memory [`State`]. Runs once, before the writer thread
//! starts, under the directory lock.
//!
//! A bad record with nothing valid after it is a torn tail (a crash mid-write): it is cut off.
//! A bad record *followed by valid ones* is corruption, not a tear: the damaged bytes are kept
//! in `corrupt/`, counted and logged as an error, and the valid records after them are split
//! into a segment of their own so they are still published.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::format::{self, Decoded, IndexEntry};
use super::state::{RangeSet, SegmentMeta, State};

/// What the writer needs to continue the log.
pub(super) struct ActiveInit {
    pub(super) first_seq: u64,
    pub(super) end_seq: u64,
    pub(super) bytes: u64,
    pub(super) last_index: Option<IndexEntry>,
    pub(super) path: PathBuf,
    /// Newest append time in the whole log, so append times never go backwards.
    pub(super) newest_ms: u64,
}

pub(super) struct Recovered {
    pub(super) state: State,
    pub(super) active: ActiveInit,
    /// The watermark read from the checkpoint file (or implied when it is missing).
    pub(super) checkpoint: u64,
    /// Records lost to corruption (not to a torn tail) found while opening.
    pub(super) corrupt_records: u64,
}

pub(super) fn recover(dir: &Path) -> io::Result<Recovered> {
    let checkpoint = read_checkpoint(dir);
    match fs::remove_file(dir.join(format::CHECKPOINT_TMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(first) = entry
            .file_name()
            .to_str()
            .and_then(format::parse_segment_name)
        {
            names.push((first, entry.path()));
        }
    }
    names.sort_unstable();

    let mut segments: VecDeque<SegmentMeta> = VecDeque::new();
    let mut todo: VecDeque<(u64, PathBuf)> = names.into();
    let mut corrupt_records = 0;
    while let Some((first_seq, path)) = todo.pop_front() {
        if let Some(prev) = segments.back()
            && first_seq < prev.end_seq
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "spool segment {} overlaps the previous one (ends at seq {})",
                    path.display(),
                    prev.end_seq
                ),
            ));
        }
        let is_last = todo.is_empty();
        let (meta, split) = scan_segment(dir, path, first_seq, is_last)?;
        if let Some(split) = split {
            corrupt_records += split.first_seq - meta.end_seq;
            if todo
                .front()
                .is_none_or(|(first, _)| *first != split.first_seq)
            {
                todo.push_front((split.first_seq, split.path));
            }
        }
        if meta.end_seq == meta.first_seq && !todo.is_empty() {
            fs::remove_file(&meta.path)?;
            continue;
        }
        segments.push_back(meta);
    }

    let last_end = segments.back().map_or(0, |s| s.end_seq);
    let next_seq = last_end.max(checkpoint.unwrap_or(0));
    // The last segment is the writer's: it must end exactly where the next append goes, and
    // a segment file must always exist so the next seq survives a restart with no records.
    if segments.back().is_none_or(|s| s.end_seq != next_seq) {
        if let Some(last) = segments.back()
            && last.bytes == 0
        {
            fs::remove_file(&last.path)?;
            segments.pop_back();
        }
        let path = dir.join(format::segment_name(next_seq));
        File::create(&path)?;
        format::sync_dir(dir)?;
        segments.push_back(SegmentMeta {
            first_seq: next_seq,
            end_seq: next_seq,
            bytes: 0,
            last_ms: 0,
            index: Vec::new(),
            path,
        });
    }

    let first = segments.front().map_or(next_seq, |s| s.first_seq);
    let low = checkpoint.unwrap_or(0).max(first).min(next_seq);
    let pending = segments
        .iter()
        .map(|s| s.end_seq.saturating_sub(s.first_seq.max(low)))
        .sum();
    let used_bytes = segments.iter().map(|s| s.bytes).sum();
    let newest_ms = segments.iter().map(|s| s.last_ms).max().unwrap_or(0);
    let gaps: Vec<_> = segments
        .iter()
        .zip(segments.iter().skip(1))
        .map(|(a, b)| a.end_seq..b.first_seq)
        .filter(|g| !g.is_empty())
        .collect();
    // Never fails: a segment was pushed above when none was left.
    let Some(last) = segments.back() else {
        return Err(io::Error::other("spool recovery left no segment"));
    };
    let active = ActiveInit {
        first_seq: last.first_seq,
        end_seq: last.end_seq,
        bytes: last.bytes,
        last_index: last.index.last().copied(),
        path: last.path.clone(),
        newest_ms,
    };
    let mut state = State {
        segments,
        low,
        done_above: RangeSet::default(),
        committed_next: next_seq,
        pending,
        used_bytes,
        reserved_bytes: 0,
    };
    for gap in gaps {
        state.skip_missing(gap);
    }
    info!(
        dir = %dir.display(),
        segments = state.segments.len(),
        pending,
        bytes = used_bytes,
        first_unconfirmed = state.low,
        next_seq,
        "spool opened"
    );
    Ok(Recovered {
        checkpoint: state.low,
        state,
        active,
        corrupt_records,
    })
}

fn read_checkpoint(dir: &Path) -> Option<u64> {
    let path = dir.join(format::CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let low = format::decode_checkpoint(&bytes);
            if low.is_none() {
                warn!(
                    path = %path.display(),
                    "spool checkpoint unreadable; replaying every record on disk"
                );
            }
            low
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            warn!(%error, path = %path.display(), "spool checkpoint unreadable; replaying every record on disk");
            None
        }
    }
}

/// Valid records found after corruption, moved to a segment file of their own.
struct Split {
    first_seq: u64,
    path: PathBuf,
}

/// Validates every record of one segment. At the first bad record the file is cut there; when
/// valid records follow the damage, they are first copied to a new segment file (returned) and
/// the damaged bytes kept aside.
fn scan_segment(
    dir: &Path,
    path: PathBuf,
    first_seq: u64,
    is_last: bool,
) -> io::Result<(SegmentMeta, Option<Split>)> {
    let file = File::options().read(true).write(true).open(&path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let (mut offset, mut seq, mut last_ms) = (0u64, first_seq, 0u64);
    let mut index: Vec<IndexEntry> = Vec::new();
    let invalid = loop {
        match format::read_record(&mut reader, len - offset, seq) {
            Ok(Decoded::End) => break None,
            // Preallocated tail: clean unless something was written into it (a torn write).
            Ok(Decoded::Unwritten) => break nonzero_after(&file, offset)?.then_some("torn write"),
            Ok(Decoded::Invalid(reason)) => break Some(reason),
            Ok(Decoded::Record(record, record_len)) => {
                if format::index_due(index.last(), offset, record.appended_ms) {
                    index.push(IndexEntry {
                        seq,
                        offset,
                        ms: record.appended_ms,
                    });
                }
                last_ms = record.appended_ms;
                offset += record_len;
                seq += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Some("file shrank"),
            Err(e) => return Err(e),
        }
    };
    drop(reader);
    let mut split = None;
    if let Some(reason) = invalid {
        let mut rest = Vec::new();
        (&file).seek(SeekFrom::Start(offset))?;
        (&file).read_to_end(&mut rest)?;
        // A valid record of the expected seq may follow junk, except at the very start of the
        // file (it would split into a segment of the same name).
        let after = if seq == first_seq { seq } else { seq - 1 };
        match format::next_valid(&rest, after) {
            Some((at, next_seq)) => {
                let aside = format::keep_corrupt(dir, &path, offset, &rest[..at]);
                error!(
                    segment = %path.display(), offset, damaged_bytes = at, reason,
                    lost_from_seq = seq, lost_to_seq = next_seq, kept = ?aside,
                    "spool: corrupt records inside the log; the valid records after them are kept"
                );
                let new_path = dir.join(format::segment_name(next_seq));
                if !new_path.exists() {
                    let tmp = new_path.with_extension("split");
                    let mut out = File::create(&tmp)?;
                    out.write_all(&rest[at..])?;
                    out.sync_all()?;
                    fs::rename(&tmp, &new_path)?;
                    format::sync_dir(dir)?;
                }
                split = Some(Split {
                    first_seq: next_seq,
                    path: new_path,
                });
            }
            None if is_last => warn!(
                segment = %path.display(), offset, dropped_bytes = len - offset, reason,
                "spool: discarding the torn tail of the log"
            ),
            None => error!(
                segment = %path.display(), offset, dropped_bytes = len - offset, reason,
                first_lost_seq = seq,
                "spool: corrupt record inside the log; the rest of this segment is lost"
            ),
        }
    }
    if offset != len {
        file.set_len(offset)?;
        file.sync_all()?;
    }
    let meta = SegmentMeta {
        first_seq,
        end_seq: seq,
        bytes: offset,
        last_ms,
        index,
        path,
    };
    Ok((meta, split))
}

/// Whether any byte from `offset` to the end of `file` is not zero.
fn nonzero_after(file: &File, offset: u64) -> io::Result<bool> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(offset))?;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        if buf.iter().any(|&b| b != 0) {
            return Ok(true);
        }
        let n = buf.len();
        reader.consume(n);
    }
}
