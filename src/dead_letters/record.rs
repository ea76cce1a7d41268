//! What earlier replays published: `spool.dir/dead-letters/replayed.log`, one event id a line,
//! appended and synced once the broker has confirmed the event. A replay skips every event
//! already in it, so a second replay publishes nothing twice (Kafka has no broker-side
//! dedup, and the command starts with an empty dedup set).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The record's file name inside `spool.dir/dead-letters/`.
pub const FILE: &str = "replayed.log";

pub struct Record {
    path: PathBuf,
    ids: HashSet<String>,
    file: Option<std::fs::File>,
}

impl Record {
    /// The record in `dir` (empty when there is none yet).
    ///
    /// # Errors
    /// It exists and cannot be read.
    pub fn open(dir: &Path) -> std::io::Result<Record> {
        let path = dir.join(FILE);
        let ids = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(error) => return Err(error),
        };
        Ok(Record {
            path,
            ids,
            file: None,
        })
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Adds `ids` (published and confirmed) durably.
    ///
    /// # Errors
    /// The disk refused; the ids are not recorded (a later replay publishes them again).
    pub fn add(&mut self, ids: &[String]) -> std::io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let file = self.file.as_mut().expect("opened above");
        let mut text = String::new();
        for id in ids {
            // An id is what normalize accepted: never a line break, but be sure.
            text.push_str(&id.replace(['\n', '\r'], " "));
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.ids.extend(ids.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_added_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = Record::open(dir.path()).unwrap();
        assert!(!record.contains("a"));
        record.add(&["a".to_owned(), "b".to_owned()]).unwrap();
        assert!(record.contains("a"));
        let record = Record::open(dir.path()).unwrap();
        assert!(record.contains("a") && record.contains("b") && !record.contains("c"));
    }
}
