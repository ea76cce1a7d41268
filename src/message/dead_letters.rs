//! Where dead letters go when the broker cannot take them: `spool.dir/dead-letters/`, and the
//! per-window budget of dead letters the broker may take.

use std::path::PathBuf;
use std::time::Duration;

use crate::time::now_ms;

/// What a dead-letter file counts against the directory's budget at the least.
const FILE_BLOCK: u64 = 4096;

/// One "dead letter written to disk" line a second (the files and the counters say the rest).
static WRITTEN_LOG: crate::logs::Sampled = crate::logs::Sampled::per_second();

/// One "dead letter dropped" line a second (`hookbus_dead_letters_total{reason="dropped"}`
/// counts every one).
pub static DROPPED_LOG: crate::logs::Sampled = crate::logs::Sampled::per_second();

/// What a dead letter costs its destination beyond its payload: the reason, error (up to 512
/// bytes) and index headers, and the broker's own framing.
pub const DEAD_LETTER_OVERHEAD: usize = 512;

/// The bytes of dead letters that may go to the broker per window
/// (`routing.dead_letter_budget_bytes` per `routing.dead_letter_budget_window`): beyond it
/// they are kept in [`DeadLetterDir`] instead, so a flood of invalid input costs the
/// dead-letter destination a bounded amount per window.
pub struct DeadLetterBudget {
    bytes: u64,
    window_ms: u64,
    /// (start of the current window, bytes taken in it); never held across an await.
    state: std::sync::Mutex<(u64, u64)>,
}

impl DeadLetterBudget {
    pub fn new(bytes: u64, window: Duration) -> DeadLetterBudget {
        DeadLetterBudget {
            bytes,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            state: std::sync::Mutex::new((0, 0)),
        }
    }

    /// Takes a dead letter of `payload` bytes from the current window's budget, counting its
    /// headers and the broker's framing too ([`DEAD_LETTER_OVERHEAD`]: a flood of tiny items
    /// costs the destination far more than its payload); `false` (nothing taken) when it does
    /// not fit.
    pub fn try_take(&self, payload: usize, now_ms: u64) -> bool {
        let bytes = payload.saturating_add(DEAD_LETTER_OVERHEAD);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, used) = &mut *state;
        if now_ms.saturating_sub(*start) >= self.window_ms {
            *start = now_ms;
            *used = 0;
        }
        let bytes = bytes as u64;
        if used.saturating_add(bytes) > self.bytes {
            return false;
        }
        *used += bytes;
        true
    }
}

/// `spool.dir/dead-letters/`: dead letters no broker message can hold, one file each, within
/// a disk budget (`spool.dead_letter_max_bytes`) so that unauthenticated junk cannot fill the
/// spool's volume. Files are written whole or not at all (temporary name, fsync, rename).
pub struct DeadLetterDir {
    dir: PathBuf,
    budget: u64,
    used: std::sync::atomic::AtomicU64,
}

/// What a dead-letter file says about itself, in a JSON file beside it (same name, `.json`):
/// the headers a dead letter on the broker carries, and for a batch body kept whole the items
/// that were refused (the others were published). Files an older hookbus wrote have none.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskMeta {
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// A batch item's position in `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// A batch item's batch `schema` text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// A batch item's batch body, hex SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// A batch body kept whole: the positions of its refused items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<usize>>,
}

impl DiskMeta {
    pub fn new(reason: &str, error: &str) -> DiskMeta {
        DiskMeta {
            reason: reason.to_owned(),
            error: crate::text::truncate(error, 512).to_owned(),
            ..DiskMeta::default()
        }
    }

    /// The meta of `message` kept on disk instead of being published: a dead letter's own
    /// headers, or `reason` and `error` for an event.
    pub fn of(message: &super::Message, reason: &str, error: &str) -> DiskMeta {
        let header = |name: &str| {
            message
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        match DiskMeta::from_headers(header) {
            Some(meta) if !message.is_event => meta,
            _ => DiskMeta::new(reason, error),
        }
    }

    /// The meta a dead letter's headers carry (`header` looks one up by name); `None` when
    /// there is no reason header (not a dead letter).
    pub fn from_headers(header: impl Fn(&str) -> Option<String>) -> Option<DiskMeta> {
        use super::{
            HEADER_DEAD_LETTER_BATCH, HEADER_DEAD_LETTER_ERROR, HEADER_DEAD_LETTER_INDEX,
            HEADER_DEAD_LETTER_REASON, HEADER_DEAD_LETTER_SCHEMA,
        };
        Some(DiskMeta {
            reason: header(HEADER_DEAD_LETTER_REASON)?,
            error: header(HEADER_DEAD_LETTER_ERROR).unwrap_or_default(),
            index: header(HEADER_DEAD_LETTER_INDEX).and_then(|i| i.parse().ok()),
            schema: header(HEADER_DEAD_LETTER_SCHEMA),
            batch: header(HEADER_DEAD_LETTER_BATCH),
            items: None,
        })
    }
}

/// The reason in a dead-letter file's name: letters, digits and `_` only.
fn file_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect()
}

/// Why a dead letter was not kept.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("the dead-letter directory is at its budget ({budget} bytes)")]
    Full { budget: u64 },
    #[error("writing the dead letter failed: {0}")]
    Io(#[from] std::io::Error),
}

impl DeadLetterDir {
    /// The directory and its budget; counts the files already there (blocking, at start).
    pub fn open(dir: PathBuf, budget: u64) -> DeadLetterDir {
        let used = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(std::fs::Metadata::is_file)
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        DeadLetterDir {
            dir,
            budget,
            used: std::sync::atomic::AtomicU64::new(used),
        }
    }

    /// Bytes of dead letters on disk.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes `body` as one file named by time, reason and content hash, with `meta` in a JSON
    /// file beside it (written first: the body's rename commits both); they count at least
    /// 4 KiB against the budget. Blocking.
    ///
    /// # Errors
    /// `Full` when it would exceed the budget; `Io` when the disk refuses (no partial file is
    /// left behind either way).
    pub fn write(&self, body: &[u8], meta: &DiskMeta) -> Result<PathBuf, DeadLetterError> {
        use std::io::Write;
        use std::sync::atomic::Ordering;

        use sha2::{Digest, Sha256};
        let reason = file_reason(&meta.reason);
        let meta = serde_json::to_vec(meta).unwrap_or_default();
        // A file costs at least a block, whatever its length: thousands of tiny dead letters
        // must not fill the volume's inodes under a byte budget they hardly touch.
        let size = (body.len() as u64).max(FILE_BLOCK) + (meta.len() as u64).max(FILE_BLOCK);
        let before = self.used.fetch_add(size, Ordering::SeqCst);
        if before.saturating_add(size) > self.budget {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return Err(DeadLetterError::Full {
                budget: self.budget,
            });
        }
        let digest = Sha256::digest(body);
        let hex = crate::text::hex(&digest[..8]);
        let path = self.dir.join(format!("{}-{reason}-{hex}.body", now_ms()));
        let tmp = path.with_extension("tmp");
        let meta_path = path.with_extension("json");
        let write = |path: &std::path::Path, bytes: &[u8]| -> std::io::Result<()> {
            let mut file = std::fs::File::create(path)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| write(&tmp, &meta))
            .and_then(|()| std::fs::rename(&tmp, &meta_path))
            .and_then(|()| write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(&self.dir));
        match written {
            Ok(()) => {
                if let Some(suppressed) = WRITTEN_LOG.admit(now_ms()) {
                    tracing::warn!(path = %path.display(), bytes = body.len(), reason, suppressed, "dead letter written to disk");
                }
                Ok(path)
            }
            Err(error) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&meta_path);
                self.used.fetch_sub(size, Ordering::SeqCst);
                Err(error.into())
            }
        }
    }
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn dead_letter_budget_counts_overhead_and_refills_per_window() {
        let budget =
            DeadLetterBudget::new(10 * DEAD_LETTER_OVERHEAD as u64, Duration::from_secs(60));
        // Ten empty dead letters fill it: each costs its overhead.
        let t = 1_700_000_000_000;
        for _ in 0..10 {
            assert!(budget.try_take(0, t));
        }
        assert!(!budget.try_take(0, t));
        assert!(!budget.try_take(0, t + 59_999), "same window");
        assert!(
            budget.try_take(0, t + 60_000),
            "the next window starts empty"
        );
        let small = DeadLetterBudget::new(100, Duration::from_secs(1));
        assert!(
            !small.try_take(1, 0),
            "one that never fits is refused, not split"
        );
    }
}
