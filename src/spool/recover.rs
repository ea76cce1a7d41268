//! Opening an existing spool directory: reads the checkpoint, validates every segment record
//! by record, and rebuilds the in-memory [`State`]. Runs once, before the writer thread
//! starts, under the directory lock.
//!
//! A bad record with nothing valid after it is a torn tail (a crash mid-write): it is cut off.
//! A bad record *followed by valid ones* is corruption, not a tear: the damaged bytes are kept
//! in `corrupt/`, counted and logged as an error, and the valid records after them are split
//! into a segment of their own so they are still published.
//!
//! Format versions are checked first, before anything is changed: a segment or checkpoint of
//! an unknown version stops the open with [`SpoolError::UnsupportedVersion`] and the directory
//! is left exactly as it was. Headerless (v0) segments are read like current ones, records
//! from offset 0; appends always go to a segment of the current version.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::SpoolError;
use super::format::{self, Checkpoint, Decoded, IndexEntry, SegmentHead};
use super::state::{RangeSet, SegmentMeta, State};

/// What the writer needs to continue the log.
pub(super) struct ActiveInit {
    pub(super) first_seq: u64,
    pub(super) end_seq: u64,
    /// File offset of the first record.
    pub(super) data_start: u64,
    /// Committed record bytes (from `data_start`).
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

/// Called after each segment is validated with (bytes read so far, bytes of all segments).
pub(super) type Progress<'a> = &'a mut dyn FnMut(u64, u64);

pub(super) fn recover(dir: &Path, progress: Progress<'_>) -> Result<Recovered, SpoolError> {
    // Both reads only look; nothing is changed until every file's version is known.
    let checkpoint = read_checkpoint(dir)?;
    let names = list_segments(dir)?;
    match fs::remove_file(dir.join(format::CHECKPOINT_TMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let (mut segments, corrupt_records) = scan_all(dir, names, progress)?;
    let last_end = segments.back().map_or(0, |s| s.end_seq);
    let next_seq = last_end.max(checkpoint.unwrap_or(0));
    writable_last(dir, &mut segments, next_seq)?;
    let (state, active) = state_of(segments, checkpoint, next_seq)?;
    let pending = state.pending;
    let used_bytes = state.used_bytes;
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

/// Every segment validated in seq order (damage split off into a file of its own and scanned
/// in turn); empty segments before the last are removed. Returns them and the records lost to
/// corruption.
fn scan_all(
    dir: &Path,
    names: Vec<(u64, PathBuf, u64)>,
    progress: Progress<'_>,
) -> Result<(VecDeque<SegmentMeta>, u64), SpoolError> {
    let size = |path: &Path| fs::metadata(path).map_or(0, |m| m.len());
    let total: u64 = names.iter().map(|(_, path, _)| size(path)).sum();
    let mut read = 0u64;
    progress(0, total);
    let mut segments: VecDeque<SegmentMeta> = VecDeque::new();
    let mut todo: VecDeque<(u64, PathBuf, u64)> = names.into();
    let mut corrupt_records = 0;
    while let Some((first_seq, path, data_start)) = todo.pop_front() {
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
            )
            .into());
        }
        let is_last = todo.is_empty();
        let bytes = size(&path);
        let (meta, split) = scan_segment(dir, path, first_seq, data_start, is_last)?;
        read += bytes;
        // A split-off file adds bytes the first count did not know.
        progress(read, total.max(read));
        if let Some(split) = split {
            corrupt_records += split.first_seq - meta.end_seq;
            if todo
                .front()
                .is_none_or(|(first, _, _)| *first != split.first_seq)
            {
                // Usually the file just written (current version), but it may be one an
                // interrupted earlier recovery left, of whichever version wrote it.
                let data_start = segment_data_start(&split.path)?;
                todo.push_front((split.first_seq, split.path, data_start));
            }
        }
        if meta.end_seq == meta.first_seq && !todo.is_empty() {
            fs::remove_file(&meta.path)?;
            continue;
        }
        segments.push_back(meta);
    }

    Ok((segments, corrupt_records))
}

/// Makes the last segment the writer's: it must end exactly where the next append goes, be of
/// the current version, and exist.
fn writable_last(
    dir: &Path,
    segments: &mut VecDeque<SegmentMeta>,
    next_seq: u64,
) -> Result<(), SpoolError> {
    // The last segment is the writer's: it must end exactly where the next append goes, it
    // must be of the current version (a v0 file from before versions is left to be read and
    // deleted, never extended), and a segment file must always exist so the next seq
    // survives a restart with no records.
    if segments
        .back()
        .is_none_or(|s| s.end_seq != next_seq || s.data_start != format::SEGMENT_HEADER_LEN)
    {
        if let Some(last) = segments.back()
            && last.bytes == 0
        {
            fs::remove_file(&last.path)?;
            segments.pop_back();
        }
        let path = dir.join(format::segment_name(next_seq));
        format::create_segment(&path)?;
        format::sync_dir(dir)?;
        segments.push_back(SegmentMeta {
            first_seq: next_seq,
            end_seq: next_seq,
            data_start: format::SEGMENT_HEADER_LEN,
            bytes: 0,
            last_ms: 0,
            index: Vec::new(),
            path,
        });
    }

    Ok(())
}

/// The in-memory state and the writer's active segment for the recovered segments.
fn state_of(
    segments: VecDeque<SegmentMeta>,
    checkpoint: Option<u64>,
    next_seq: u64,
) -> Result<(State, ActiveInit), SpoolError> {
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
        return Err(io::Error::other("spool recovery left no segment").into());
    };
    let active = ActiveInit {
        first_seq: last.first_seq,
        end_seq: last.end_seq,
        data_start: last.data_start,
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
    Ok((state, active))
}

/// The watermark in the checkpoint file; `None` when there is none or it is unreadable
/// (everything on disk is replayed then).
///
/// # Errors
/// `UnsupportedVersion` for a checkpoint of another format version: replaying from the
/// start would not be wrong, but it would mean this build is running on a directory a newer
/// one wrote.
fn read_checkpoint(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let path = dir.join(format::CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(bytes) => match format::decode_checkpoint(&bytes) {
            Checkpoint::Low(low) => Ok(Some(low)),
            Checkpoint::Unknown(found) => Err(SpoolError::UnsupportedVersion {
                path,
                found,
                supported: format::CHECKPOINT_VERSION,
            }),
            Checkpoint::Unreadable => {
                warn!(
                    path = %path.display(),
                    "spool checkpoint unreadable; replaying every record on disk"
                );
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => {
            warn!(%error, path = %path.display(), "spool checkpoint unreadable; replaying every record on disk");
            Ok(None)
        }
    }
}

/// The segment files in seq order, each with the offset its records start at.
///
/// # Errors
/// `UnsupportedVersion` (or `Io(InvalidData)` for a damaged header) for the first file this
/// build cannot read; the caller has changed nothing yet.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf, u64)>, SpoolError> {
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
    names
        .into_iter()
        .map(|(first, path)| {
            let data_start = segment_data_start(&path)?;
            Ok((first, path, data_start))
        })
        .collect()
}

/// Where the records of the segment at `path` start, from its header.
///
/// # Errors
/// `UnsupportedVersion` for a header of an unknown version. `Io(InvalidData)` for a damaged
/// header: the header is synced before any record is written, so a crash does not leave
/// one, and guessing the layout could move valid records of a newer format to `corrupt/`.
fn segment_data_start(path: &Path) -> Result<u64, SpoolError> {
    match format::read_segment_head(path)? {
        SegmentHead::Unknown(found) => Err(SpoolError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: format::SEGMENT_VERSION,
        }),
        SegmentHead::Damaged => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "spool segment {} has a damaged version header; the file was left as it is",
                path.display()
            ),
        )
        .into()),
        SegmentHead::V0 => Ok(0),
        SegmentHead::Current => Ok(format::SEGMENT_HEADER_LEN),
    }
}

/// Valid records found after corruption, moved to a segment file of their own.
struct Split {
    first_seq: u64,
    path: PathBuf,
}

/// Validates every record of one segment, from `data_start`. At the first bad record the file
/// is cut there; when valid records follow the damage, they are first copied to a new segment
/// file (returned) and the damaged bytes kept aside. `offset` and `len` count record bytes
/// (from `data_start`), like the index.
fn scan_segment(
    dir: &Path,
    path: PathBuf,
    first_seq: u64,
    data_start: u64,
    is_last: bool,
) -> io::Result<(SegmentMeta, Option<Split>)> {
    let file = File::options().read(true).write(true).open(&path)?;
    let file_len = file.metadata()?.len();
    let len = file_len.saturating_sub(data_start);
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    reader.seek(SeekFrom::Start(data_start))?;
    let (mut offset, mut seq, mut last_ms) = (0u64, first_seq, 0u64);
    let mut index: Vec<IndexEntry> = Vec::new();
    let invalid = loop {
        match format::read_record(&mut reader, len - offset, seq) {
            Ok(Decoded::End) => break None,
            // Preallocated tail: clean unless something was written into it (a torn write).
            Ok(Decoded::Unwritten) => {
                break nonzero_after(&file, data_start + offset)?.then_some("torn write");
            }
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
    // Logs and the names of kept bytes give file offsets, to find the bytes with any tool.
    let file_offset = data_start + offset;
    if let Some(reason) = invalid {
        let damage = Damaged {
            file_offset,
            seq,
            dropped: len - offset,
            reason,
        };
        split = salvage(dir, &path, &file, first_seq, is_last, &damage)?;
    }
    if file_offset != file_len {
        file.set_len(file_offset)?;
        file.sync_all()?;
    }
    let meta = SegmentMeta {
        first_seq,
        end_seq: seq,
        data_start,
        bytes: offset,
        last_ms,
        index,
        path,
    };
    Ok((meta, split))
}

/// Where a segment's records stop being valid.
struct Damaged {
    /// File offset of the first bad byte.
    file_offset: u64,
    /// The seq the bad record should have had.
    seq: u64,
    /// Record bytes from there to the end of the file.
    dropped: u64,
    reason: &'static str,
}

/// After damage in `path`: the valid records that follow it (from the expected seq on) copied
/// to a segment file of their own (returned), the damaged bytes kept aside; or, when none
/// follow, the loss logged (a torn tail of the last segment is only a warning).
fn salvage(
    dir: &Path,
    path: &Path,
    mut file: &File,
    first_seq: u64,
    is_last: bool,
    damage: &Damaged,
) -> io::Result<Option<Split>> {
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(damage.file_offset))?;
    file.read_to_end(&mut rest)?;
    // A valid record of the expected seq may follow junk, except at the very start of the
    // file (it would split into a segment of the same name).
    let after = if damage.seq == first_seq {
        damage.seq
    } else {
        damage.seq - 1
    };
    match format::next_valid(&rest, after) {
        Some((at, next_seq)) => {
            let aside = format::keep_corrupt(dir, path, damage.file_offset, &rest[..at]);
            error!(
                segment = %path.display(), offset = damage.file_offset, damaged_bytes = at,
                reason = damage.reason, lost_from_seq = damage.seq, lost_to_seq = next_seq, kept = ?aside,
                "spool: corrupt records inside the log; the valid records after them are kept"
            );
            let new_path = dir.join(format::segment_name(next_seq));
            if !new_path.exists() {
                // Written by this code, so of the current version whatever the source was.
                let tmp = new_path.with_extension("split");
                let mut out = format::create_segment(&tmp)?;
                out.write_all(&rest[at..])?;
                out.sync_all()?;
                fs::rename(&tmp, &new_path)?;
                format::sync_dir(dir)?;
            }
            Ok(Some(Split {
                first_seq: next_seq,
                path: new_path,
            }))
        }
        None if is_last => {
            warn!(
                segment = %path.display(), offset = damage.file_offset,
                dropped_bytes = damage.dropped, reason = damage.reason,
                "spool: discarding the torn tail of the log"
            );
            Ok(None)
        }
        None => {
            error!(
                segment = %path.display(), offset = damage.file_offset,
                dropped_bytes = damage.dropped, reason = damage.reason,
                first_lost_seq = damage.seq,
                "spool: corrupt record inside the log; the rest of this segment is lost"
            );
            Ok(None)
        }
    }
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
