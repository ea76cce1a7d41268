//! Checkpoint and retention work of the writer thread: persisting the confirmed watermark
//! and deleting segments that are fully confirmed and either past `retain` or in the way of
//! new appends under `max_bytes`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{Writer, now_ms};
use crate::spool::format;

/// How often the watermark is written to the checkpoint file when it moved.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Writer {
    /// Periodic work: the checkpoint (when due or `forced`) and retention.
    pub(super) fn maintain(&mut self, forced: bool) -> io::Result<()> {
        let low = self.core.lock().low;
        if low != self.persisted_low
            && (forced || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
        {
            self.write_checkpoint(low)?;
        }
        if let Err(error) = self.reclaim(0) {
            warn!(%error, "spool: could not delete confirmed segments");
        }
        Ok(())
    }

    pub(super) fn final_checkpoint(&mut self) -> io::Result<()> {
        let low = self.core.lock().low;
        if low != self.persisted_low {
            self.write_checkpoint(low)?;
        }
        // Leave exact files behind; only a crash leaves a preallocated (zero) tail.
        if !self.core.failed.load(Ordering::Acquire) {
            let active = &self.active;
            active
                .file
                .set_len(active.data_start + active.committed_bytes)?;
            self.active.file.sync_data()?;
        }
        format::sync_dir(&self.core.config.dir)
    }

    /// Writes the watermark to a temp file, syncs it and renames it over the checkpoint, so
    /// the checkpoint is always either the old or the new value.
    fn write_checkpoint(&mut self, low: u64) -> io::Result<()> {
        let dir = &self.core.config.dir;
        let tmp = dir.join(format::CHECKPOINT_TMP);
        let mut file = File::create(&tmp)?;
        file.write_all(&format::encode_checkpoint(low))?;
        file.sync_data()?;
        fs::rename(&tmp, dir.join(format::CHECKPOINT_FILE))?;
        self.persisted_low = low;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Deletes leading segments whose records are all confirmed and that are either older
    /// than `retain` or needed to fit `extra` more bytes under `max_bytes`.
    pub(super) fn reclaim(&mut self, extra: u64) -> io::Result<()> {
        let config = &self.core.config;
        let retain_ms = u64::try_from(config.retain.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let (victims, all, low) = {
            let state = self.core.lock();
            let mut over = (state.used_bytes + extra).saturating_sub(config.max_bytes);
            let mut victims = 0;
            for seg in &state.segments {
                if seg.end_seq > state.low || seg.bytes == 0 {
                    break;
                }
                let expired = now.saturating_sub(seg.last_ms) >= retain_ms;
                if !expired && over == 0 {
                    break;
                }
                over = over.saturating_sub(seg.bytes);
                victims += 1;
            }
            (victims, victims == state.segments.len(), state.low)
        };
        if victims == 0 {
            return Ok(());
        }
        // The checkpoint must cover what is deleted, or a restart could reuse those seqs.
        if self.persisted_low < low {
            self.write_checkpoint(low)?;
            format::sync_dir(&self.core.config.dir)?;
        }
        if all {
            // The active segment itself is done with: continue in a fresh one.
            self.start_segment()?;
            let update = self.active.update();
            self.core.lock().apply(update);
        }
        let removed: Vec<_> = {
            let mut state = self.core.lock();
            let removed: Vec<_> = state.segments.drain(..victims).collect();
            state.used_bytes -= removed.iter().map(|s| s.bytes).sum::<u64>();
            self.core.publish(&state);
            removed
        };
        for seg in &removed {
            match fs::remove_file(&seg.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    warn!(error = %e, segment = %seg.path.display(), "spool: could not delete segment");
                }
                _ => {}
            }
        }
        format::sync_dir(&self.core.config.dir)?;
        debug!(
            segments = removed.len(),
            "spool: deleted confirmed segments"
        );
        Ok(())
    }
}
