//! `[spool]`: the write-ahead spool on disk.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{GIB, KIB, count, span};
use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the write-ahead spool (and of `dead-letters/`).
    pub dir: PathBuf,
    /// Disk the spool may use; appends beyond it get 503.
    pub max_bytes: u64,
    /// Size at which a spool segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Disk for dead letters too large for the broker (`dir/dead-letters/`); when full, the
    /// body is dropped and counted (`hookbus_dead_letters_total{reason="dropped"}`).
    pub dead_letter_max_bytes: u64,
    /// Reading the spool back at start may take as long as it needs while it makes progress;
    /// with none for this long, `/healthz` fails so the orchestrator restarts the process.
    #[serde(deserialize_with = "duration")]
    pub recovery_stall_timeout: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("data/spool"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            dead_letter_max_bytes: 100 * 1024 * 1024,
            recovery_stall_timeout: Duration::from_secs(120),
        }
    }
}

impl SpoolConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        count("spool.max_bytes", self.max_bytes, 64 * KIB, 16 * 1024 * GIB)?;
        count(
            "spool.dead_letter_max_bytes",
            self.dead_letter_max_bytes,
            0,
            1024 * GIB,
        )?;
        span(
            "spool.recovery_stall_timeout",
            self.recovery_stall_timeout,
            Duration::from_millis(100),
            Duration::from_secs(24 * 3600),
        )?;
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "must not be empty"));
        }
        // A missing directory is created at start; something else in its place never works.
        if let Ok(metadata) = std::fs::metadata(&self.dir)
            && !metadata.is_dir()
        {
            return Err(invalid(
                "spool.dir",
                format!("{} exists and is not a directory", self.dir.display()),
            ));
        }
        if self.segment_bytes < 4096 || self.segment_bytes > self.max_bytes {
            return Err(invalid(
                "spool.segment_bytes",
                "must be at least 4096 and at most spool.max_bytes",
            ));
        }
        Ok(())
    }
}
