//! Reading committed records back from the segment files: the publisher's [`SpoolReader`]
//! and the start-up [`scan_since`]. File reads run in `spawn_blocking` (reader) or on the
//! caller's thread (scan, start-up only); only committed (fsynced) bytes are ever read.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, warn};

use super::format::{self, Decoded, IndexEntry};
use super::{Core, Record, SpoolError};

/// Segments looked at per batch; a batch rarely spans more than two.
const PLAN_SEGMENTS: usize = 4;
/// A batch stops growing past this many bytes (it always holds at least one record).
const MAX_BATCH_BYTES: u64 = 4 << 20;
const READ_BUFFER: usize = 256 << 10;

/// Yields committed records in seq order, from the first unconfirmed one, reading them from
/// the segment files (a large backlog is never held in memory).
pub struct SpoolReader {
    core: Arc<Core>,
    committed: watch::Receiver<u64>,
    cursor: Cursor,
    file: Option<OpenSegment>,
}

/// The next seq to yield, and where it starts when known (segment first seq, byte offset).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    seq: u64,
    at: Option<(u64, u64)>,
}

struct OpenSegment {
    first_seq: u64,
    file: File,
}

/// A committed snapshot of one segment, taken under the state lock. `bytes` and offsets count
/// from `data_start` (the file offset of the first record), as in `SegmentMeta`.
struct SegmentView {
    first_seq: u64,
    end_seq: u64,
    data_start: u64,
    bytes: u64,
    path: PathBuf,
    /// Indexed position at or before where reading starts.
    start: IndexEntry,
}

struct BatchOut {
    records: Vec<Record>,
    cursor: Cursor,
    /// Committed seqs that could not be read and were skipped.
    lost: Option<(Range<u64>, &'static str)>,
    /// Of `lost`, the seqs damaged with valid records after them (corruption, not a tear).
    corrupt: u64,
}

impl BatchOut {
    /// The records read so far, then the rest of the segment (`lost`) skipped as unreadable.
    fn skipping(records: Vec<Record>, lost: Range<u64>, reason: &'static str) -> BatchOut {
        BatchOut {
            records,
            cursor: Cursor {
                seq: lost.end,
                at: None,
            },
            lost: Some((lost, reason)),
            corrupt: 0,
        }
    }
}

impl SpoolReader {
    pub(super) fn new(core: Arc<Core>, committed: watch::Receiver<u64>) -> SpoolReader {
        let seq = core.lock().low;
        SpoolReader {
            core,
            committed,
            cursor: Cursor { seq, at: None },
            file: None,
        }
    }

    /// Waits until at least one committed unread record exists, then returns up to `max` of
    /// them in seq order (fewer when they exceed a few MiB). `max == 0` returns at once.
    ///
    /// Cancel safe: the position only moves when a batch is returned.
    ///
    /// # Errors
    /// `Closed` once the spool is closed and every committed record was returned; `Io` when a
    /// segment cannot be read (the position is kept, so calling again retries). A record
    /// whose checksum fails here is logged as data loss and skipped; reading resumes at the
    /// next valid record of its segment (the damaged bytes are kept in `corrupt/`). Records
    /// above the first unconfirmed one that were confirmed already are not yielded again.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, SpoolError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        loop {
            self.wait_committed().await?;
            let plan = self.plan();
            let cursor = self.cursor;
            let file = self.file.take();
            let dir = self.core.config.dir.clone();
            let (out, file) =
                tokio::task::spawn_blocking(move || read_batch(&dir, &plan, cursor, file, max))
                    .await
                    .map_err(io::Error::other)??;
            self.cursor = out.cursor;
            self.file = file;
            if let Some((range, reason)) = out.lost {
                let mut state = self.core.lock();
                if range.end > state.low {
                    error!(
                        from_seq = range.start,
                        to_seq = range.end,
                        reason,
                        "spool: unreadable records skipped"
                    );
                }
                state.mark_lost(range);
                self.core.publish(&state);
            }
            if out.corrupt > 0 {
                self.core
                    .corrupt_records
                    .fetch_add(out.corrupt, std::sync::atomic::Ordering::Relaxed);
            }
            let mut records = out.records;
            {
                let state = self.core.lock();
                records.retain(|r| !state.is_done(r.seq));
            }
            if !records.is_empty() {
                return Ok(records);
            }
        }
    }

    /// Waits until a committed record is there to read. Cancel safe.
    ///
    /// # Errors
    /// `Closed` once the spool is closed and every committed record was returned.
    pub async fn wait_unread(&mut self) -> Result<(), SpoolError> {
        self.wait_committed().await
    }

    async fn wait_committed(&mut self) -> Result<(), SpoolError> {
        loop {
            if self.cursor.seq < *self.committed.borrow_and_update() {
                return Ok(());
            }
            if self.committed.changed().await.is_err() {
                // The writer is gone; what it committed last is still readable.
                return if self.cursor.seq < *self.committed.borrow() {
                    Ok(())
                } else {
                    Err(SpoolError::Closed)
                };
            }
        }
    }

    fn plan(&self) -> Vec<SegmentView> {
        let state = self.core.lock();
        let first = state.segment_for(self.cursor.seq);
        state
            .segments
            .iter()
            .skip(first)
            .take(PLAN_SEGMENTS)
            .map(|s| SegmentView {
                first_seq: s.first_seq,
                end_seq: s.end_seq,
                data_start: s.data_start,
                bytes: s.bytes,
                path: s.path.clone(),
                start: s.position_before(self.cursor.seq.max(s.first_seq)),
            })
            .collect()
    }
}

impl std::fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolReader")
            .field("next_seq", &self.cursor.seq)
            .finish()
    }
}

/// `file` when it is `seg`'s, else `seg` opened; `None` when the file is gone (deleted because
/// fully confirmed, a reader behind the watermark having raced it, or removed by hand).
fn open_segment(seg: &SegmentView, file: Option<OpenSegment>) -> io::Result<Option<OpenSegment>> {
    match file {
        Some(open) if open.first_seq == seg.first_seq => Ok(Some(open)),
        _ => match File::open(&seg.path) {
            Ok(file) => Ok(Some(OpenSegment {
                first_seq: seg.first_seq,
                file,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// Skips from the indexed position (`offset`, `at_seq`) to `seq`; these records were validated
/// before, so only their headers are read. `Some(reason)` when a header does not fit.
fn skip_to(
    reader: &mut BufReader<&File>,
    seg: &SegmentView,
    offset: &mut u64,
    at_seq: &mut u64,
    seq: u64,
) -> io::Result<Option<&'static str>> {
    while *at_seq < seq {
        let (found, len) = format::read_header(reader)?;
        if found != *at_seq || *offset + len > seg.bytes {
            return Ok(Some("bad record header"));
        }
        reader.seek_relative((len - format::HEADER_LEN) as i64)?;
        *offset += len;
        *at_seq += 1;
    }
    Ok(None)
}

/// Blocking: reads up to `max` records from `cursor` through the planned segments.
fn read_batch(
    dir: &std::path::Path,
    plan: &[SegmentView],
    mut cursor: Cursor,
    mut file: Option<OpenSegment>,
    max: usize,
) -> io::Result<(BatchOut, Option<OpenSegment>)> {
    let mut records = Vec::new();
    let mut bytes = 0u64;
    for seg in plan {
        if records.len() >= max || bytes >= MAX_BATCH_BYTES {
            break;
        }
        // Seqs below a segment's first one are gone: deleted after confirmation, or lost.
        let seq = cursor.seq.max(seg.first_seq);
        if seq >= seg.end_seq {
            if seq > cursor.seq {
                cursor = Cursor { seq, at: None };
            }
            continue;
        }
        let Some(open) = open_segment(seg, file.take())? else {
            return Ok((
                BatchOut::skipping(records, seq..seg.end_seq, "segment file missing"),
                None,
            ));
        };
        let (mut offset, mut at_seq) = match cursor.at {
            Some((first, offset)) if first == seg.first_seq && cursor.seq == seq => (offset, seq),
            _ => (seg.start.offset, seg.start.seq),
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER, &open.file);
        reader.seek(SeekFrom::Start(seg.data_start + offset))?;
        let mut invalid = skip_to(&mut reader, seg, &mut offset, &mut at_seq, seq)?;
        while invalid.is_none()
            && at_seq < seg.end_seq
            && records.len() < max
            && bytes < MAX_BATCH_BYTES
        {
            match format::read_record(&mut reader, seg.bytes - offset, at_seq) {
                Ok(Decoded::Record(record, len)) => {
                    offset += len;
                    bytes += len;
                    at_seq += 1;
                    records.push(record);
                }
                Ok(Decoded::End) => invalid = Some("segment shorter than committed"),
                Ok(Decoded::Unwritten) => invalid = Some("zeroed record"),
                Ok(Decoded::Invalid(reason)) => invalid = Some(reason),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    invalid = Some("segment shorter than committed");
                }
                Err(e) => return Err(e),
            }
        }
        drop(reader);
        if let Some(reason) = invalid {
            let damage = Damage {
                records,
                offset,
                at_seq,
                reason,
            };
            return Ok(resume_after_damage(dir, seg, open, damage));
        }
        cursor = Cursor {
            seq: at_seq,
            at: Some((seg.first_seq, offset)),
        };
        file = Some(open);
    }
    let out = BatchOut {
        records,
        cursor,
        lost: None,
        corrupt: 0,
    };
    Ok((out, file))
}

/// Visits every committed record appended at or after `since_ms`, oldest first.
pub(super) fn scan_since(
    core: &Core,
    since_ms: u64,
    mut visit: impl FnMut(u64, &[u8]),
) -> Result<(), SpoolError> {
    let views: Vec<SegmentView> = {
        let state = core.lock();
        state
            .segments
            .iter()
            .filter(|s| s.end_seq > s.first_seq && s.last_ms >= since_ms)
            .map(|s| {
                // Records before the last index entry older than `since_ms` are older too.
                let i = s.index.partition_point(|e| e.ms < since_ms);
                let start = i.checked_sub(1).map_or(
                    IndexEntry {
                        seq: s.first_seq,
                        offset: 0,
                        ms: 0,
                    },
                    |i| s.index[i],
                );
                SegmentView::of(s, start)
            })
            .collect()
    };
    for seg in views {
        scan_segment(&seg, u64::MAX, &mut |_, record| {
            if record.appended_ms >= since_ms {
                visit(record.appended_ms, &record.payload);
            }
        })?;
    }
    Ok(())
}

/// Visits every unconfirmed record committed when called, in seq order: the records a replay
/// may send again. Returns one past the last seq it looked at (the committed end).
pub(super) fn scan_unconfirmed(
    core: &Core,
    mut visit: impl FnMut(&Record),
) -> Result<u64, SpoolError> {
    let (low, end, views) = {
        let state = core.lock();
        let (low, end) = (state.low, state.committed_next);
        let views: Vec<SegmentView> = state
            .segments
            .iter()
            .filter(|s| s.end_seq > s.first_seq && s.end_seq > low && s.first_seq < end)
            .map(|s| SegmentView::of(s, s.position_before(low.max(s.first_seq))))
            .collect();
        (low, end, views)
    };
    for seg in views {
        scan_segment(&seg, end, &mut |seq, record| {
            if seq >= low && !core.lock().is_done(seq) {
                visit(record);
            }
        })?;
    }
    Ok(end)
}

impl SegmentView {
    fn of(s: &super::state::SegmentMeta, start: IndexEntry) -> SegmentView {
        SegmentView {
            first_seq: s.first_seq,
            end_seq: s.end_seq,
            data_start: s.data_start,
            bytes: s.bytes,
            path: s.path.clone(),
            start,
        }
    }
}

/// Reads one segment from its `start` entry, visiting each record below `end` (and below the
/// segment's committed end); an unreadable record ends the segment with a warning.
fn scan_segment(
    seg: &SegmentView,
    end: u64,
    visit: &mut impl FnMut(u64, &Record),
) -> Result<(), SpoolError> {
    let file = match File::open(&seg.path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    reader.seek(SeekFrom::Start(seg.data_start + seg.start.offset))?;
    let (mut offset, mut seq) = (seg.start.offset, seg.start.seq);
    while seq < seg.end_seq.min(end) {
        match format::read_record(&mut reader, seg.bytes - offset, seq) {
            Ok(Decoded::Record(record, len)) => {
                visit(seq, &record);
                offset += len;
                seq += 1;
            }
            Ok(Decoded::End | Decoded::Unwritten | Decoded::Invalid(_)) => {
                warn!(segment = %seg.path.display(), seq, "spool scan: unreadable record, rest of segment skipped");
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                warn!(segment = %seg.path.display(), seq, "spool scan: segment shorter than committed");
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where a batch stopped on a damaged record.
struct Damage {
    /// The records read before it.
    records: Vec<Record>,
    /// Its offset (from the segment's data start) and seq.
    offset: u64,
    at_seq: u64,
    reason: &'static str,
}

/// After a damaged record: the batch read so far, resumed at the next valid record of the
/// segment (the damaged bytes kept aside and logged), or ended at the segment when nothing
/// valid follows.
fn resume_after_damage(
    dir: &std::path::Path,
    seg: &SegmentView,
    open: OpenSegment,
    damage: Damage,
) -> (BatchOut, Option<OpenSegment>) {
    let Damage {
        records,
        offset,
        at_seq,
        reason,
    } = damage;
    let mut rest = vec![0u8; (seg.bytes.saturating_sub(offset)) as usize];
    let resumed = (&open.file)
        .seek(SeekFrom::Start(seg.data_start + offset))
        .and_then(|_| io::Read::read_exact(&mut &open.file, &mut rest))
        .ok()
        .and_then(|()| format::next_valid(&rest, at_seq.saturating_sub(1)));
    let Some((at, next_seq)) = resumed else {
        return (
            BatchOut::skipping(records, at_seq..seg.end_seq, reason),
            None,
        );
    };
    let file_offset = seg.data_start + offset;
    let aside = format::keep_corrupt(dir, &seg.path, file_offset, &rest[..at]);
    error!(
        segment = %seg.path.display(), offset = file_offset, damaged_bytes = at, reason,
        lost_from_seq = at_seq, lost_to_seq = next_seq, kept = ?aside,
        "spool: corrupt records; reading resumes at the next valid record"
    );
    let out = BatchOut {
        records,
        cursor: Cursor {
            seq: next_seq,
            at: Some((seg.first_seq, offset + at as u64)),
        },
        lost: Some((at_seq..next_seq, reason)),
        corrupt: next_seq - at_seq,
    };
    (out, Some(open))
}
