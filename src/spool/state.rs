//! In-memory view of the spool shared by the handles, the writer thread and the reader:
//! segment metadata, the confirmed watermark and byte accounting. No I/O happens here, so
//! the mutex guarding it is only ever held for short, non-blocking sections.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::PathBuf;

use super::format::IndexEntry;

/// One segment file as far as it is committed (fsynced).
///
/// `bytes` and the index offsets count from `data_start`, where the records begin (after the
/// version header, or 0 in a headerless v0 file): byte accounting ignores headers, and only
/// code that seeks in the file adds `data_start`.
#[derive(Debug)]
pub(super) struct SegmentMeta {
    pub(super) first_seq: u64,
    /// One past the last committed record (`first_seq` when empty).
    pub(super) end_seq: u64,
    /// File offset of the first record: `format::SEGMENT_HEADER_LEN`, or 0 for a v0 file.
    pub(super) data_start: u64,
    /// Committed record bytes.
    pub(super) bytes: u64,
    /// Append time of the newest record; 0 when empty.
    pub(super) last_ms: u64,
    /// Sparse, seq-ordered; the first entry is the first record, at (data) offset 0.
    pub(super) index: Vec<IndexEntry>,
    pub(super) path: PathBuf,
}

impl SegmentMeta {
    /// The indexed position closest to `seq` from below (the first record if none).
    pub(super) fn position_before(&self, seq: u64) -> IndexEntry {
        let i = self.index.partition_point(|e| e.seq <= seq);
        match i.checked_sub(1) {
            Some(i) => self.index[i],
            None => IndexEntry {
                seq: self.first_seq,
                offset: 0,
                ms: 0,
            },
        }
    }
}

/// New committed data for one segment, produced by the writer after an fsync.
#[derive(Debug)]
pub(super) struct SegmentUpdate {
    pub(super) first_seq: u64,
    pub(super) end_seq: u64,
    pub(super) data_start: u64,
    pub(super) bytes: u64,
    pub(super) last_ms: u64,
    pub(super) new_index: Vec<IndexEntry>,
    pub(super) path: PathBuf,
}

/// Disjoint, non-adjacent half-open ranges of seqs.
#[derive(Debug, Default)]
pub(super) struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `range`; returns how many seqs were not in the set before.
    pub(super) fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let (mut start, mut end) = (range.start, range.end);
        let mut already = 0;
        let mut merged = Vec::new();
        for (&s, &e) in self.ranges.range(..=range.end).rev() {
            if e < range.start {
                break;
            }
            already += e.min(range.end).saturating_sub(s.max(range.start));
            start = start.min(s);
            end = end.max(e);
            merged.push(s);
        }
        for s in merged {
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        (range.end - range.start) - already
    }

    /// Whether `seq` is in the set.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq < end)
    }

    /// Removes and returns the end of the range starting exactly at `seq`.
    fn take_starting_at(&mut self, seq: u64) -> Option<u64> {
        self.ranges.remove(&seq)
    }
}

#[derive(Debug)]
pub(super) struct State {
    /// Seq order; the last one is the writer's active segment.
    pub(super) segments: VecDeque<SegmentMeta>,
    /// Lowest seq that is neither confirmed nor lost. Everything below is done with.
    pub(super) low: u64,
    /// Confirmed (or lost) seqs above `low`.
    pub(super) done_above: RangeSet,
    /// Seqs below this are durable and may be read.
    pub(super) committed_next: u64,
    /// Committed records not yet confirmed.
    pub(super) pending: u64,
    /// Committed bytes of all segments.
    pub(super) used_bytes: u64,
    /// Bytes admitted by `append` and not yet committed.
    pub(super) reserved_bytes: u64,
}

impl State {
    /// Whether `seq` is confirmed (or lost) already.
    pub(super) fn is_done(&self, seq: u64) -> bool {
        seq < self.low || self.done_above.contains(seq)
    }

    /// Records that `seq` was published. Returns whether the watermark or the count changed.
    pub(super) fn confirm(&mut self, seq: u64) -> bool {
        if seq < self.low || seq >= self.committed_next {
            return false;
        }
        let added = self.done_above.insert(seq..seq + 1);
        self.pending -= added.min(self.pending);
        self.advance();
        added > 0
    }

    /// Marks committed records that turned out unreadable as done, so they neither block the
    /// watermark nor count as pending.
    pub(super) fn mark_lost(&mut self, range: Range<u64>) {
        let range = range.start.max(self.low)..range.end.min(self.committed_next);
        let added = self.done_above.insert(range);
        self.pending -= added.min(self.pending);
        self.advance();
    }

    /// Marks seqs that never existed (gaps between segments) as done; they were never pending.
    pub(super) fn skip_missing(&mut self, range: Range<u64>) {
        let range = range.start.max(self.low)..range.end;
        self.done_above.insert(range);
        self.advance();
    }

    fn advance(&mut self) {
        while let Some(end) = self.done_above.take_starting_at(self.low) {
            self.low = end;
        }
    }

    /// Bytes of the leading segments whose records are all confirmed: the space an append
    /// may count on because the writer deletes them when it needs room.
    pub(super) fn reclaimable_bytes(&self) -> u64 {
        self.segments
            .iter()
            .take_while(|s| s.end_seq <= self.low)
            .map(|s| s.bytes)
            .sum()
    }

    /// Bytes in use or promised, minus what could be reclaimed right now.
    pub(super) fn committed_load(&self) -> u64 {
        (self.used_bytes + self.reserved_bytes).saturating_sub(self.reclaimable_bytes())
    }

    /// Bytes from the first unconfirmed record to the end of the log (records confirmed out of
    /// order above it included): what a broker outage has piled up.
    pub(super) fn unpublished_bytes(&self) -> u64 {
        if self.low >= self.committed_next {
            return 0;
        }
        let i = self.segment_for(self.low);
        let Some(seg) = self.segments.get(i) else {
            return 0;
        };
        // The index is sparse: count from the indexed record at or before `low`.
        let before = seg.position_before(self.low).offset;
        let rest: u64 = self.segments.iter().skip(i + 1).map(|s| s.bytes).sum();
        seg.bytes.saturating_sub(before) + rest
    }

    /// Index of the segment that holds (or would hold) `seq`: the first whose end is above it.
    pub(super) fn segment_for(&self, seq: u64) -> usize {
        self.segments.partition_point(|s| s.end_seq <= seq)
    }

    /// Append time of the lowest unconfirmed record, at index granularity.
    pub(super) fn oldest_unconfirmed_ms(&self) -> Option<u64> {
        if self.low >= self.committed_next {
            return None;
        }
        let seg = self.segments.get(self.segment_for(self.low))?;
        let entry = seg.position_before(self.low);
        (entry.ms != 0).then_some(entry.ms)
    }

    /// Applies a commit: extends the active segment or adds new ones.
    pub(super) fn apply(&mut self, update: SegmentUpdate) {
        if let Some(last) = self.segments.back_mut()
            && last.first_seq == update.first_seq
        {
            last.end_seq = update.end_seq;
            last.bytes = update.bytes;
            last.last_ms = update.last_ms;
            last.index.extend(update.new_index);
            return;
        }
        self.segments.push_back(SegmentMeta {
            first_seq: update.first_seq,
            end_seq: update.end_seq,
            data_start: update.data_start,
            bytes: update.bytes,
            last_ms: update.last_ms,
            index: update.new_index,
            path: update.path,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_merges_and_counts_new_seqs() {
        let mut set = RangeSet::default();
        assert_eq!(set.insert(5..6), 1);
        assert_eq!(set.insert(7..9), 2);
        assert_eq!(set.insert(5..6), 0);
        assert_eq!(set.insert(4..10), 3);
        assert_eq!(set.ranges.len(), 1);
        assert_eq!(set.take_starting_at(4), Some(10));
        assert_eq!(set.insert(1..2), 1);
        assert_eq!(set.insert(2..3), 1);
        assert_eq!(set.ranges.get(&1), Some(&3));
    }

    #[test]
    fn confirm_out_of_order_advances_watermark() {
        let mut state = State {
            segments: VecDeque::new(),
            low: 0,
            done_above: RangeSet::default(),
            committed_next: 5,
            pending: 5,
            used_bytes: 0,
            reserved_bytes: 0,
        };
        assert!(state.confirm(2));
        assert!(state.confirm(1));
        assert_eq!(state.low, 0);
        assert!(!state.confirm(2));
        assert!(state.confirm(0));
        assert_eq!((state.low, state.pending), (3, 2));
        assert!(!state.confirm(7), "uncommitted seqs are ignored");
        state.mark_lost(3..5);
        assert_eq!((state.low, state.pending), (5, 0));
    }
}
