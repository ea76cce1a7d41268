//! The one reader for files the config names (`${file:…}` secrets, NATS seeds, credentials
//! and PEM files): a regular file (symlinks followed, as Kubernetes Secret mounts are) of at
//! most [`MAX_FILE_BYTES`], read through a bounded reader. A device, FIFO or directory is
//! refused before it is read, so `/dev/zero` fails at once instead of filling memory.
//! Errors name the key and the path, never the contents.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::ConfigError;

/// Largest file hookbus reads for its config: far above any secret, certificate bundle or
/// `.creds` file.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The bytes of the regular file at `path`, at most [`MAX_FILE_BYTES`].
///
/// The path is checked with `stat` before it is opened: opening a FIFO for reading blocks
/// until a writer appears. A file swapped for something else between the two is caught by
/// the `fstat` of the open file, and a file that grows (or a procfs file that claims size 0)
/// by reading at most one byte past the limit.
///
/// # Errors
/// `NotFound` and the like from the file system; `InvalidInput` for a file that is not a
/// regular file or is larger than the limit.
pub fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    regular_and_small(&std::fs::metadata(path)?)?;
    let file = File::open(path)?;
    let metadata = file.metadata()?;
    regular_and_small(&metadata)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
///
/// # Errors
/// Those of [`read_bounded`], and `InvalidData` for bytes that are not UTF-8.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read_bounded(path)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the file does not hold UTF-8 text",
        )
    })
}

/// [`read_to_string`] for the file named by config key `key`.
///
/// # Errors
/// `InvalidAt` naming `key` and the path (never the contents).
pub fn read_at(key: &str, path: &Path) -> Result<String, ConfigError> {
    read_to_string(path).map_err(|e| ConfigError::InvalidAt {
        key: key.to_owned(),
        message: format!("cannot read {}: {e}", path.display()),
    })
}

fn regular_and_small(metadata: &std::fs::Metadata) -> io::Result<()> {
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, device, FIFO or socket)",
        ));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("larger than {MAX_FILE_BYTES} bytes (1 MiB)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn regular_files_and_symlinks_to_them_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        // A Kubernetes Secret volume: token → ..data/token, ..data → ..2024_01_01.
        let data = dir.path().join("..2024_01_01");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("token"), "mounted").unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).unwrap();
        let mounted = dir.path().join("mounted");
        std::os::unix::fs::symlink(dir.path().join("..data/token"), &mounted).unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "s3cret\n");
        assert_eq!(read_to_string(&mounted).unwrap(), "mounted");
        let exact = dir.path().join("exact");
        std::fs::write(&exact, vec![b'a'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read_bounded(&exact).unwrap().len() as u64, MAX_FILE_BYTES);
    }

    #[test]
    fn devices_directories_fifos_and_large_files_fail_fast() {
        let dir = tempfile::tempdir().unwrap();
        let large = dir.path().join("large");
        std::fs::write(&large, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let link_to_zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link_to_zero).unwrap();
        let started = Instant::now();
        for path in [
            Path::new("/dev/zero"),
            Path::new("/dev/urandom"),
            Path::new("/dev/null"),
            dir.path(),
            &fifo,
            &large,
            &link_to_zero,
        ] {
            let e = read_bounded(path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{path:?}: {e}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = read_at("nats.tls_ca_file", Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.key(), Some("nats.tls_ca_file"));
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_to_string(&binary).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
