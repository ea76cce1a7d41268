//! Dead letters in `spool.dir/dead-letters/`: `<ms>-<reason>-<hash>.body` files, each with its
//! meta in `<same name>.json` (files an older hookbus wrote have none).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{DeadLetter, Source};
use crate::message::DiskMeta;

/// The body files in `dir`, oldest first (their names start with the time); none when `dir`
/// does not exist.
///
/// # Errors
/// The directory exists but cannot be read.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "body") {
            files.push(path);
        }
    }
    files.sort_by_key(|p| (time_of(p), p.clone()));
    Ok(files)
}

/// The dead letter in `path`, with its meta (or, without a meta file, the reason its name
/// gives); `None` when the file cannot be read (gone since the listing).
pub fn read(path: &Path) -> Option<DeadLetter> {
    let payload = std::fs::read(path).ok()?;
    let meta_path = path.with_extension("json");
    let meta = std::fs::read(&meta_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<DiskMeta>(&bytes).ok())
        .unwrap_or_else(|| DiskMeta {
            reason: reason_of(path).unwrap_or_default(),
            ..DiskMeta::default()
        });
    Some(DeadLetter {
        time_ms: time_of(path),
        meta,
        source: Source::Disk,
        reference: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        payload: Bytes::from(payload),
        files: Some((path.to_owned(), meta_path)),
    })
}

/// The write time in a file's name (`<ms>-…`); 0 when it has none.
fn time_of(path: &Path) -> u64 {
    stem(path)
        .and_then(|s| s.split('-').next().map(str::to_owned))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The reason in a file's name (`<ms>-<reason>-<hash>`).
fn reason_of(path: &Path) -> Option<String> {
    let stem = stem(path)?;
    let (_, rest) = stem.split_once('-')?;
    let (reason, _) = rest.rsplit_once('-')?;
    Some(reason.to_owned())
}

fn stem(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// Removes a replayed dead letter's files (the body first: a meta file alone is ignored).
pub fn remove(files: &(PathBuf, PathBuf)) -> std::io::Result<()> {
    std::fs::remove_file(&files.0)?;
    match std::fs::remove_file(&files.1) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_time_and_reason_for_files_without_meta() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir
            .path()
            .join("1764950000000-invalid_payload-0011223344556677.body");
        std::fs::write(&old, b"{}").unwrap();
        let new = dir
            .path()
            .join("1764950000001-too_large-8899aabbccddeeff.body");
        std::fs::write(&new, b"[]").unwrap();
        let meta = DiskMeta {
            reason: "too_large".to_owned(),
            error: "body of 3 bytes".to_owned(),
            items: Some(vec![2, 5]),
            ..DiskMeta::default()
        };
        std::fs::write(
            new.with_extension("json"),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("stray.json"), b"{}").unwrap();
        let found = files(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![old.clone(), new.clone()],
            "bodies only, oldest first"
        );
        let old = read(&old).unwrap();
        assert_eq!(old.time_ms, 1_764_950_000_000);
        assert_eq!(old.meta.reason, "invalid_payload");
        assert_eq!(old.meta.error, "");
        let new = read(&new).unwrap();
        assert_eq!(new.meta, meta);
        assert_eq!(&new.payload[..], b"[]");
        remove(new.files.as_ref().unwrap()).unwrap();
        assert_eq!(files(dir.path()).unwrap().len(), 1);
        assert!(
            !dir.path()
                .join("1764950000001-too_large-8899aabbccddeeff.json")
                .exists()
        );
        assert!(files(&dir.path().join("missing")).unwrap().is_empty());
    }
}
