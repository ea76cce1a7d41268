//! `hookbus dead-letters list|replay`: what the bridge refused, read back from the dead-letter
//! destination and `spool.dir/dead-letters/`, and replayed through today's normalize after a
//! fix or an upgrade (see docs/dead-letters.md).

pub mod cli;
mod disk;
mod record;
mod replay;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use replay::{Options, Progress, ReplayError, Summary, replay};

use crate::config::Config;
use crate::message::DiskMeta;
use crate::sink::{SinkError, StoredDeadLetter};

/// Where a dead letter is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The dead-letter destination on the broker (`routing.dead_letter`).
    Broker,
    /// A file in `spool.dir/dead-letters/`.
    Disk,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Broker => "broker",
            Source::Disk => "disk",
        }
    }
}

/// One dead letter, from either place.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// When it was written, Unix milliseconds.
    pub time_ms: u64,
    /// Reason, error, item index and batch schema (what the broker's headers or the file's
    /// meta say; a file an older hookbus wrote has its reason only, from its name).
    pub meta: DiskMeta,
    pub source: Source,
    /// `topic/partition/offset`, `stream/sequence`, or the file's name.
    pub reference: String,
    pub payload: Bytes,
    /// The body file and its meta file, for a dead letter on disk.
    pub files: Option<(PathBuf, PathBuf)>,
}

impl DeadLetter {
    fn from_broker(stored: StoredDeadLetter) -> DeadLetter {
        let header = |name: &str| {
            stored
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let meta = DiskMeta::from_headers(header).unwrap_or_default();
        DeadLetter {
            time_ms: stored.time_ms,
            meta,
            source: Source::Broker,
            reference: stored.reference,
            payload: stored.payload,
            files: None,
        }
    }

    /// One line of `list`: time, reason, size, item index, where, and the error.
    pub fn line(&self) -> String {
        let index = self
            .meta
            .index
            .map_or_else(|| "-".to_owned(), |i| i.to_string());
        format!(
            "{}  {:<14} {:>9} B  index={:<5} {} {}  {}",
            crate::normalize::rfc3339_ms(self.time_ms as i64),
            self.meta.reason,
            self.payload.len(),
            index,
            self.source.as_str(),
            self.reference,
            if self.meta.error.is_empty() {
                "(error not recorded)"
            } else {
                &self.meta.error
            }
        )
    }

    /// One line of `list --json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "time": crate::normalize::rfc3339_ms(self.time_ms as i64),
            "reason": self.meta.reason,
            "error": self.meta.error,
            "size": self.payload.len(),
            "index": self.meta.index,
            "source": self.source.as_str(),
            "ref": self.reference,
        })
    }
}

/// Why the dead letters could not be read to the end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the dead-letter destination {destination}: {error}")]
    Broker {
        destination: String,
        error: SinkError,
    },
    #[error("reading {dir}: {error}")]
    Disk { dir: String, error: std::io::Error },
}

/// Every dead letter, the broker's first (oldest first per partition), then the files (oldest
/// first), to `each`; one at a time, never all in memory. Stops early when `each` says so.
///
/// # Errors
/// The broker or the directory could not be read to the end (what was read was handed over).
pub async fn each<F>(config: &Config, within: Duration, mut each: F) -> Result<(), ReadError>
where
    F: AsyncFnMut(DeadLetter) -> bool,
{
    let router = crate::route::Router::new(&config.routing).map_err(|e| ReadError::Broker {
        destination: config.routing.dead_letter.clone(),
        error: SinkError::Permanent(e.to_string()),
    })?;
    let destination = router.dead_letter().to_owned();
    let (tx, mut rx) = mpsc::channel(64);
    let reader = {
        let (sink, nats, kafka) = (
            config.sink.clone(),
            config.nats.clone(),
            config.kafka.clone(),
        );
        let destination = destination.clone();
        tokio::spawn(async move {
            crate::sink::read_dead_letters(&sink, &nats, &kafka, &destination, within, tx).await
        })
    };
    let mut stopped = false;
    while let Some(stored) = rx.recv().await {
        if !each(DeadLetter::from_broker(stored)).await {
            stopped = true;
            break;
        }
    }
    drop(rx);
    let read = reader
        .await
        .unwrap_or_else(|e| Err(SinkError::Retriable(format!("the reader failed: {e}"))));
    if !stopped && let Err(error) = read {
        return Err(ReadError::Broker { destination, error });
    }
    if stopped {
        return Ok(());
    }
    let dir = config.spool.dir.join("dead-letters");
    for path in disk::files(&dir).map_err(|error| ReadError::Disk {
        dir: dir.display().to_string(),
        error,
    })? {
        let Some(letter) = disk::read(&path) else {
            continue; // gone since the listing (replayed by another run), or unreadable
        };
        if !each(letter).await {
            break;
        }
    }
    Ok(())
}
