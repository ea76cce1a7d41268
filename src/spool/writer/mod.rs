//! The dedicated writer thread: group commit (write everything queued, one `fdatasync`,
//! complete every waiter), segment rotation, the checkpoint file and segment deletion.
//! The only code that writes to the spool directory after open; tokio threads never wait on
//! its I/O, they only await a oneshot.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

mod retention;

use super::format::{self, IndexEntry};
use super::recover::ActiveInit;
use super::state::SegmentUpdate;
use super::{Core, SpoolError};

/// Idle wake-up for checkpoint and retention work.
const TICK: Duration = Duration::from_millis(250);
/// Encoded records are written out whenever this much is buffered.
const FLUSH_BYTES: usize = 1 << 20;

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

pub(super) enum Request {
    Append(Append),
    Checkpoint {
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
    /// Test hook: commit what came before, then block until `release` fires.
    #[cfg(test)]
    Hold {
        holding: oneshot::Sender<()>,
        release: mpsc::Receiver<()>,
    },
    /// Test hook: stop like `kill -9` after the last commit (no checkpoint).
    #[cfg(test)]
    Crash {
        reply: oneshot::Sender<()>,
    },
}

pub(super) struct Append {
    pub(super) payloads: Vec<Bytes>,
    /// Encoded size, already reserved against `max_bytes` by the caller.
    pub(super) bytes: u64,
    pub(super) reply: Reply<Range<u64>>,
}

/// The segment being appended to. Byte counts are of records, from `data_start` on.
struct Active {
    first_seq: u64,
    path: PathBuf,
    file: File,
    /// File offset of the first record (after the version header).
    data_start: u64,
    /// Record bytes known to be on disk (fsynced).
    committed_bytes: u64,
    /// Record bytes written or buffered so far.
    written: u64,
    /// The seq the next record gets.
    end_seq: u64,
    last_ms: u64,
    last_index: Option<IndexEntry>,
    /// Index entries not yet published to the shared state.
    new_index: Vec<IndexEntry>,
}

impl Active {
    fn update(&mut self) -> SegmentUpdate {
        SegmentUpdate {
            first_seq: self.first_seq,
            end_seq: self.end_seq,
            data_start: self.data_start,
            bytes: self.written,
            last_ms: self.last_ms,
            new_index: std::mem::take(&mut self.new_index),
            path: self.path.clone(),
        }
    }
}

/// Where the active segment stood before a batch, to roll a failed batch back.
struct Undo {
    first_seq: u64,
    path: PathBuf,
    data_start: u64,
    committed_bytes: u64,
    end_seq: u64,
    last_ms: u64,
    last_index: Option<IndexEntry>,
}

struct BatchError {
    error: io::Error,
    /// An fsync failed: the page cache state is unknown, so the spool must stop.
    sync_failed: bool,
}

fn write_failed(error: io::Error) -> BatchError {
    BatchError {
        error,
        sync_failed: false,
    }
}

pub(super) struct Writer {
    core: Arc<Core>,
    active: Active,
    /// Newest append time written; append times never go backwards.
    last_ms: u64,
    persisted_low: u64,
    last_checkpoint: Instant,
    buf: Vec<u8>,
    committed: watch::Sender<u64>,
    /// Segments closed during the current batch, published with it.
    sealed: Vec<SegmentUpdate>,
    /// Files created during the current batch, removed if it fails.
    created: Vec<PathBuf>,
    /// Holds the directory lock until the thread ends.
    _lock: File,
}

impl Writer {
    /// Starts the thread. Returns the request queue and the committed-seq watch.
    pub(super) fn start(
        core: Arc<Core>,
        init: ActiveInit,
        persisted_low: u64,
        lock: File,
    ) -> io::Result<(mpsc::Sender<Request>, watch::Receiver<u64>)> {
        let mut file = File::options().write(true).open(&init.path)?;
        preallocate(&file, core.config.segment_bytes)?;
        file.seek(SeekFrom::Start(init.data_start + init.bytes))?;
        let active = Active {
            first_seq: init.first_seq,
            path: init.path,
            file,
            data_start: init.data_start,
            committed_bytes: init.bytes,
            written: init.bytes,
            end_seq: init.end_seq,
            last_ms: init.newest_ms,
            last_index: init.last_index,
            new_index: Vec::new(),
        };
        let (requests, queue) = mpsc::channel();
        let (committed, committed_rx) = watch::channel(init.end_seq);
        let writer = Writer {
            core,
            active,
            last_ms: init.newest_ms,
            persisted_low,
            last_checkpoint: Instant::now(),
            buf: Vec::with_capacity(FLUSH_BYTES),
            committed,
            sealed: Vec::new(),
            created: Vec::new(),
            _lock: lock,
        };
        thread::Builder::new()
            .name("hookbus-spool".into())
            .spawn(move || writer.run(queue))?;
        Ok((requests, committed_rx))
    }

    fn run(mut self, queue: mpsc::Receiver<Request>) {
        let mut close_reply = None;
        loop {
            let mut next = match queue.recv_timeout(TICK) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut checkpoint_replies = Vec::new();
            while let Some(request) = next.take() {
                match request {
                    Request::Append(append) => appends.push(append),
                    Request::Checkpoint { reply } => checkpoint_replies.push(reply),
                    Request::Close { reply } => {
                        close_reply = Some(reply);
                        break;
                    }
                    #[cfg(test)]
                    Request::Hold { holding, release } => {
                        self.commit(std::mem::take(&mut appends));
                        let _ = holding.send(());
                        let _ = release.recv();
                    }
                    #[cfg(test)]
                    Request::Crash { reply } => {
                        drop(appends);
                        drop(self);
                        let _ = reply.send(());
                        return;
                    }
                }
                next = queue.try_recv().ok();
            }
            self.commit(appends);
            let forced = !checkpoint_replies.is_empty() || close_reply.is_some();
            let result = self.maintain(forced);
            for reply in checkpoint_replies {
                let _ = reply.send(match &result {
                    Ok(()) => Ok(()),
                    Err(error) => Err(copy_error(error).into()),
                });
            }
            if close_reply.is_some() {
                break;
            }
        }
        // Requests queued behind a close are dropped with the queue: their callers get `Closed`.
        drop(queue);
        let result = self.final_checkpoint();
        if let Err(error) = &result {
            warn!(%error, "spool: final checkpoint failed; the next start replays more");
        }
        drop(self);
        if let Some(reply) = close_reply {
            let _ = reply.send(result.map_err(Into::into));
        }
    }

    /// Writes every queued append, fsyncs once, then completes all of them.
    fn commit(&mut self, appends: Vec<Append>) {
        if appends.is_empty() {
            return;
        }
        let total: u64 = appends.iter().map(|a| a.bytes).sum();
        if self.core.failed.load(Ordering::Acquire) {
            self.fail(
                appends,
                total,
                &io::Error::other("spool disabled after a failed fsync"),
            );
            return;
        }
        if let Err(error) = self.reclaim(total) {
            warn!(%error, "spool: could not delete confirmed segments");
        }
        let ms = now_ms().max(self.last_ms);
        let undo = Undo {
            first_seq: self.active.first_seq,
            path: self.active.path.clone(),
            data_start: self.active.data_start,
            committed_bytes: self.active.committed_bytes,
            end_seq: self.active.end_seq,
            last_ms: self.active.last_ms,
            last_index: self.active.last_index,
        };
        self.buf.clear();
        self.sealed.clear();
        self.created.clear();
        let mut ranges = Vec::with_capacity(appends.len());
        match self.write_batch(&appends, ms, &mut ranges) {
            Ok(()) => self.publish(appends, ranges, total),
            Err(BatchError { error, sync_failed }) => {
                let undone = if sync_failed {
                    Err(io::Error::other("fsync failed"))
                } else {
                    self.undo(undo)
                };
                if let Err(undo_error) = undone {
                    self.core.failed.store(true, Ordering::Release);
                    error!(%error, %undo_error, "spool: write or fsync failed; spool disabled until restart");
                } else {
                    warn!(%error, "spool: write failed; the waiting appends were rolled back");
                }
                self.fail(appends, total, &error);
            }
        }
    }

    fn write_batch(
        &mut self,
        appends: &[Append],
        ms: u64,
        ranges: &mut Vec<Range<u64>>,
    ) -> Result<(), BatchError> {
        let segment_bytes = self.core.config.segment_bytes;
        for append in appends {
            let start = self.active.end_seq;
            for payload in &append.payloads {
                let len = format::record_len(payload.len());
                let active = &self.active;
                if active.written > 0 && active.data_start + active.written + len > segment_bytes {
                    self.rotate()?;
                }
                let active = &mut self.active;
                if format::index_due(active.last_index.as_ref(), active.written, ms) {
                    let entry = IndexEntry {
                        seq: active.end_seq,
                        offset: active.written,
                        ms,
                    };
                    active.last_index = Some(entry);
                    active.new_index.push(entry);
                }
                format::encode_record(&mut self.buf, active.end_seq, ms, payload);
                active.written += len;
                active.end_seq += 1;
                active.last_ms = ms;
                if self.buf.len() >= FLUSH_BYTES {
                    self.flush()?;
                }
            }
            ranges.push(start..self.active.end_seq);
        }
        self.flush()?;
        self.sync()?;
        self.last_ms = ms;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BatchError> {
        self.active
            .file
            .write_all(&self.buf)
            .map_err(write_failed)?;
        self.buf.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), BatchError> {
        self.active.file.sync_data().map_err(|error| BatchError {
            error,
            sync_failed: true,
        })?;
        self.core.syncs.fetch_add(1, Ordering::Relaxed);
        self.active.committed_bytes = self.active.written;
        Ok(())
    }

    /// Closes the full active segment (synced) and starts the next one within a batch.
    fn rotate(&mut self) -> Result<(), BatchError> {
        self.flush()?;
        // Drop the unused preallocated tail; the sync below makes the new size durable.
        self.active
            .file
            .set_len(self.active.data_start + self.active.written)
            .map_err(write_failed)?;
        self.sync()?;
        let sealed = self.active.update();
        self.sealed.push(sealed);
        self.start_segment().map_err(write_failed)?;
        self.created.push(self.active.path.clone());
        Ok(())
    }

    /// Creates an empty segment (current version header only) named after the next seq and
    /// makes it the active one.
    fn start_segment(&mut self) -> io::Result<()> {
        let first_seq = self.active.end_seq;
        let dir = &self.core.config.dir;
        let path = dir.join(format::segment_name(first_seq));
        let file = format::create_segment(&path)?;
        preallocate(&file, self.core.config.segment_bytes)?;
        format::sync_dir(dir)?;
        self.active = Active {
            first_seq,
            path,
            file,
            data_start: format::SEGMENT_HEADER_LEN,
            committed_bytes: 0,
            written: 0,
            end_seq: first_seq,
            last_ms: 0,
            last_index: None,
            new_index: Vec::new(),
        };
        Ok(())
    }

    /// Publishes a successful batch to readers, stats and waiters.
    fn publish(&mut self, appends: Vec<Append>, ranges: Vec<Range<u64>>, total: u64) {
        let mut updates = std::mem::take(&mut self.sealed);
        updates.push(self.active.update());
        let count: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        {
            let mut state = self.core.lock();
            for update in updates {
                state.apply(update);
            }
            state.committed_next = self.active.end_seq;
            state.used_bytes += total;
            state.reserved_bytes = state.reserved_bytes.saturating_sub(total);
            state.pending += count;
            self.core.publish(&state);
        }
        self.committed.send_replace(self.active.end_seq);
        for (append, range) in appends.into_iter().zip(ranges) {
            let _ = append.reply.send(Ok(range));
        }
    }

    fn fail(&mut self, appends: Vec<Append>, total: u64, error: &io::Error) {
        {
            let mut state = self.core.lock();
            state.reserved_bytes = state.reserved_bytes.saturating_sub(total);
        }
        for append in appends {
            let _ = append.reply.send(Err(copy_error(error).into()));
        }
    }

    /// Rolls a failed (unsynced) batch back: drops segments it created and truncates the
    /// segment that was active before it.
    fn undo(&mut self, undo: Undo) -> io::Result<()> {
        self.buf.clear();
        self.sealed.clear();
        for path in self.created.drain(..) {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let file = if self.active.first_seq == undo.first_seq {
            self.active.file.try_clone()?
        } else {
            File::options().write(true).open(&undo.path)?
        };
        let end = undo.data_start + undo.committed_bytes;
        file.set_len(end)?;
        let mut file = file;
        file.seek(SeekFrom::Start(end))?;
        self.active = Active {
            first_seq: undo.first_seq,
            path: undo.path,
            file,
            data_start: undo.data_start,
            committed_bytes: undo.committed_bytes,
            written: undo.committed_bytes,
            end_seq: undo.end_seq,
            last_ms: undo.last_ms,
            last_index: undo.last_index,
            new_index: Vec::new(),
        };
        Ok(())
    }
}

/// Extends `file` (sparse, no blocks allocated) to `bytes`: appends inside the file size then
/// need no size update, which makes each `fdatasync` measurably cheaper (`docs/spool.md`).
/// Recovery reads the zero tail as unwritten space.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    if file.metadata()?.len() < bytes {
        file.set_len(bytes)?;
    }
    Ok(())
}

fn copy_error(error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), error.to_string())
}

pub(super) use crate::time::now_ms;
