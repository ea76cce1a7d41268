//! Write-ahead spool: durable local log of opaque records between the ingress ack and the
//! broker publish (`ack.mode = "spool"`, docs/configuration.md).
//!
//! Owns the spool directory: segment files, the confirmed-watermark checkpoint, recovery of a
//! torn tail, group-commit fsync on a dedicated thread, and deletion of published segments.
//! It knows nothing about events, brokers or HTTP. Format and tuning: `docs/spool.md`.

mod format;
mod reader;
mod recover;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

pub use reader::SpoolReader;

use state::State;
use writer::Request;

/// Default segment size: large enough that rotation and deletion are rare, small enough that
/// a confirmed segment frees disk soon.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Where and how much the spool may write.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory holding the segments and the checkpoint; created if missing. Other entries
    /// (e.g. `dead-letters/`) are left alone.
    pub dir: PathBuf,
    /// Bound on the record bytes of all segment files (each file adds a 16-byte version
    /// header, not counted). An append that would exceed it after deleting
    /// every fully confirmed segment fails with [`SpoolError::Full`].
    pub max_bytes: u64,
    /// A segment is closed and a new one started once the next record would take its file
    /// (header included) past this size (a single larger record gets a segment of its own).
    pub segment_bytes: u64,
    /// How long fully confirmed segments are kept (unless the space is needed), so that
    /// [`Spool::scan_since`] can rebuild the dedup set at start. Usually the dedup window.
    pub retain: Duration,
}

/// Handle to an open spool. Cheap to clone; all clones share one writer thread.
///
/// The writer thread stops after [`Spool::close`], or when every handle is dropped (then the
/// checkpoint is still written, but nobody waits for it).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Handle>,
}

struct Handle {
    core: Arc<Core>,
    requests: mpsc::Sender<Request>,
    committed: watch::Receiver<u64>,
}

/// Why an append or read failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// No room under `max_bytes` even after deleting confirmed segments; answer 503.
    #[error("spool is full")]
    Full,
    /// [`Spool::close`] was called (or the writer thread is gone).
    #[error("spool is closed")]
    Closed,
    /// The file system failed. After a failed fsync every later append fails too: the page
    /// cache can no longer be trusted, and a restart recovers from what is on disk.
    #[error("spool I/O: {0}")]
    Io(#[from] io::Error),
    /// A segment or checkpoint file names a format version this build cannot read, most
    /// likely written by a newer hookbus. Refused at open before anything in the directory
    /// was changed, so the version that wrote it can still read every record.
    #[error(
        "spool file {} has format version {found}, but this hookbus reads versions up to \
         {supported}: upgrade hookbus, or run `hookbus drain` with the version that wrote it \
         to empty the spool first",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

/// One record as stored: the payload bytes the app appended, with their seq and append time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the log; consecutive within one append, increasing across appends.
    pub seq: u64,
    /// Unix milliseconds at which the group commit holding it was written (never decreases).
    pub appended_ms: u64,
    pub payload: Bytes,
}

impl SpoolStats {
    /// Bytes on disk of records already published, kept for the dedup rebuild (`retain`) and
    /// deleted whenever the space is needed.
    pub fn retained(&self) -> u64 {
        self.bytes.saturating_sub(self.unpublished_bytes)
    }
}

/// Gauges for metrics; read from atomics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended (and fsynced) but not confirmed.
    pub pending_events: u64,
    /// Record bytes of all segment files on disk (committed data; the 16-byte version header
    /// of each file is not counted).
    pub bytes: u64,
    /// Of `bytes`, those from the first unpublished record on (see [`SpoolStats::retained`]).
    pub unpublished_bytes: u64,
    /// Append time of the lowest unconfirmed record (to ~100 ms); `None` when nothing is pending.
    pub oldest_unconfirmed_ms: Option<u64>,
    /// Records lost to corruption since open (damaged bytes kept in `corrupt/`).
    pub corrupt_records: u64,
}

/// State shared by the handles, the writer thread and the reader.
struct Core {
    config: SpoolConfig,
    /// Never held across I/O or `.await`.
    state: Mutex<State>,
    pending: AtomicU64,
    bytes: AtomicU64,
    unpublished_bytes: AtomicU64,
    /// `u64::MAX` stands for `None`.
    oldest_ms: AtomicU64,
    /// Number of data-file fsyncs (`fdatasync`) done by the writer.
    syncs: AtomicU64,
    corrupt_records: AtomicU64,
    closed: AtomicBool,
    failed: AtomicBool,
}

impl Core {
    /// The state lock. A panic while holding it cannot leave the bookkeeping half-updated
    /// in a way that loses data (no I/O happens under it), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mirrors the gauges of `state` into the atomics read by [`Spool::stats`].
    fn publish(&self, state: &State) {
        self.pending.store(state.pending, Ordering::Relaxed);
        self.bytes.store(state.used_bytes, Ordering::Relaxed);
        self.unpublished_bytes
            .store(state.unpublished_bytes(), Ordering::Relaxed);
        let oldest = state.oldest_unconfirmed_ms().unwrap_or(u64::MAX);
        self.oldest_ms.store(oldest, Ordering::Relaxed);
    }

    fn failed_error() -> SpoolError {
        SpoolError::Io(io::Error::other(
            "spool disabled after a failed fsync; restart to recover",
        ))
    }
}

impl Spool {
    /// Opens or creates the spool dir, recovers (truncates a torn tail, see `docs/spool.md`),
    /// and starts the writer thread. Blocking: call it at startup (or in `spawn_blocking`).
    ///
    /// # Errors
    /// `Io` when the directory cannot be created or read, is locked by another live spool,
    /// or holds overlapping segments or a segment with a damaged version header;
    /// `Io(InvalidInput)` for a zero `segment_bytes` or `max_bytes`; `UnsupportedVersion`
    /// when a segment or the checkpoint is of a format this build does not know (then
    /// nothing in the directory was changed).
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        Spool::open_observed(config, &mut |_, _| {})
    }

    /// [`Spool::open`], calling `progress(bytes read, bytes of all segments)` as recovery
    /// validates each segment (so a long read back is visible, and a stalled one too).
    ///
    /// # Errors
    /// As [`Spool::open`].
    pub fn open_observed(
        config: SpoolConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Spool, SpoolError> {
        if config.segment_bytes == 0 || config.max_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "spool segment_bytes and max_bytes must be positive",
            )
            .into());
        }
        fs::create_dir_all(&config.dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.dir.join(format::LOCK_FILE))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "spool dir {} is in use by another spool",
                    config.dir.display()
                ),
            ),
            fs::TryLockError::Error(e) => e,
        })?;
        let recovered = recover::recover(&config.dir, progress)?;
        let state = recovered.state;
        let core = Arc::new(Core {
            config,
            pending: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            unpublished_bytes: AtomicU64::new(0),
            oldest_ms: AtomicU64::new(u64::MAX),
            syncs: AtomicU64::new(0),
            corrupt_records: AtomicU64::new(recovered.corrupt_records),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            state: Mutex::new(state),
        });
        core.publish(&core.lock());
        let (requests, committed) = writer::Writer::start(
            Arc::clone(&core),
            recovered.active,
            recovered.checkpoint,
            lock,
        )?;
        Ok(Spool {
            inner: Arc::new(Handle {
                core,
                requests,
                committed,
            }),
        })
    }

    /// Appends all payloads as consecutive records; resolves once they are fsynced (one fsync
    /// covers every append waiting at that moment). Returns their seqs.
    ///
    /// Dropping the future after the first poll does not withdraw the records: they are still
    /// written, only nobody is told.
    ///
    /// # Errors
    /// `Full` at once when the records do not fit under `max_bytes`; `Closed` after
    /// [`Spool::close`]; `Io` when writing or syncing failed (nothing of this call is
    /// readable then), or for a payload over 4 GiB.
    pub async fn append(&self, payloads: Vec<Bytes>) -> Result<Range<u64>, SpoolError> {
        let core = &self.inner.core;
        if core.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        if core.failed.load(Ordering::Acquire) {
            return Err(Core::failed_error());
        }
        if payloads.iter().any(|p| u32::try_from(p.len()).is_err()) {
            return Err(
                io::Error::new(io::ErrorKind::InvalidInput, "spool record over 4 GiB").into(),
            );
        }
        let bytes: u64 = payloads.iter().map(|p| format::record_len(p.len())).sum();
        let (reply, done) = oneshot::channel();
        {
            let mut state = core.lock();
            if payloads.is_empty() {
                return Ok(state.committed_next..state.committed_next);
            }
            if state.committed_load().saturating_add(bytes) > core.config.max_bytes {
                return Err(SpoolError::Full);
            }
            // Queued under the lock (the send never blocks): queue order is admission order,
            // and reserved bytes always belong to queued requests.
            let request = Request::Append(writer::Append {
                payloads,
                bytes,
                reply,
            });
            if self.inner.requests.send(request).is_err() {
                return Err(SpoolError::Closed);
            }
            state.reserved_bytes += bytes;
        }
        done.await.map_err(|_| SpoolError::Closed)?
    }

    /// A reader positioned at the first unconfirmed record. The app uses one.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader::new(Arc::clone(&self.inner.core), self.inner.committed.clone())
    }

    /// Marks a record published. Out of order and repeats are fine; seqs not yet committed
    /// are ignored. No I/O: the watermark reaches disk with the next checkpoint (about once
    /// a second, and on [`Spool::close`]).
    pub fn confirm(&self, seq: u64) {
        let core = &self.inner.core;
        let mut state = core.lock();
        if state.confirm(seq) {
            core.publish(&state);
        }
    }

    /// Visits every record still on disk appended at or after `since_ms` (confirmed or not),
    /// oldest first, with its append time and payload — to rebuild the dedup set at start.
    /// Blocking; holds one record in memory at a time.
    ///
    /// # Errors
    /// `Io` when a segment cannot be read.
    pub fn scan_since(
        &self,
        since_ms: u64,
        visit: impl FnMut(u64, &[u8]),
    ) -> Result<(), SpoolError> {
        reader::scan_since(&self.inner.core, since_ms, visit)
    }

    /// Visits every unconfirmed committed record, in seq order (what a replay would send),
    /// and returns one past the last seq it looked at. Blocking; holds one record at a time.
    ///
    /// # Errors
    /// `Io` when a segment cannot be read.
    pub fn scan_unconfirmed(&self, visit: impl FnMut(&Record)) -> Result<u64, SpoolError> {
        reader::scan_unconfirmed(&self.inner.core, visit)
    }

    /// Gauges for metrics (atomics only).
    pub fn stats(&self) -> SpoolStats {
        let core = &self.inner.core;
        let oldest = core.oldest_ms.load(Ordering::Relaxed);
        SpoolStats {
            pending_events: core.pending.load(Ordering::Relaxed),
            bytes: core.bytes.load(Ordering::Relaxed),
            unpublished_bytes: core.unpublished_bytes.load(Ordering::Relaxed),
            oldest_unconfirmed_ms: (oldest != u64::MAX).then_some(oldest),
            corrupt_records: core.corrupt_records.load(Ordering::Relaxed),
        }
    }

    /// True when more than `headroom` bytes can still be appended: `max_bytes` minus the bytes
    /// in use, where fully confirmed segments (deleted on demand) count as free. False once
    /// closed or disabled by a failed fsync — for readiness.
    pub fn has_headroom(&self, headroom: u64) -> bool {
        let core = &self.inner.core;
        if core.closed.load(Ordering::Acquire) || core.failed.load(Ordering::Acquire) {
            return false;
        }
        let load = core.lock().committed_load();
        core.config.max_bytes.saturating_sub(load) > headroom
    }

    /// Writes the checkpoint now and deletes the segments that may go (fully confirmed and
    /// older than `retain`). The writer does this by itself about once a second; this is for
    /// callers that want it at a known point (tests, after a drain).
    ///
    /// # Errors
    /// `Closed` after close; `Io` when the checkpoint cannot be written.
    pub async fn checkpoint(&self) -> Result<(), SpoolError> {
        let (reply, done) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Checkpoint { reply })
            .map_err(|_| SpoolError::Closed)?;
        done.await.map_err(|_| SpoolError::Closed)?
    }

    /// Finishes the appends already queued, writes and syncs the checkpoint, and stops the
    /// writer thread. Later appends fail with `Closed`; a reader returns the records already
    /// committed, then `Closed`. Calling it again is a no-op.
    ///
    /// # Errors
    /// `Io` when the final checkpoint cannot be written (the next start replays more).
    pub async fn close(&self) -> Result<(), SpoolError> {
        self.inner.core.closed.store(true, Ordering::Release);
        let (reply, done) = oneshot::channel();
        if self.inner.requests.send(Request::Close { reply }).is_err() {
            return Ok(());
        }
        done.await.unwrap_or(Ok(()))
    }

    /// Data-file fsyncs so far: with group commit this grows slower than the append count.
    pub fn sync_count(&self) -> u64 {
        self.inner.core.syncs.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.core.config.dir)
            .field("stats", &self.stats())
            .finish()
    }
}
