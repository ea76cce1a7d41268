//! PEM files named in the config (CA bundles, client certificates, private keys), read and
//! parsed at start and by `--check`, so a wrong path or a file of the wrong kind is reported
//! naming its key instead of surfacing later as a failed handshake.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::InvalidAt {
        key: key.to_owned(),
        message,
    }
}

/// `path` holds at least one PEM certificate and nothing malformed.
///
/// # Errors
/// The file is missing or unreadable, or holds no certificate.
pub fn check_certificates(key: &str, path: &Path) -> Result<(), ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let mut count = 0;
    for cert in certs {
        cert.map_err(|e| {
            invalid(
                key,
                format!("{} is not a PEM certificate file: {e}", path.display()),
            )
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `path` holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// The file is missing or unreadable, or holds no private key.
pub fn check_private_key(key: &str, path: &Path) -> Result<(), ConfigError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(invalid(key, format!("cannot read {}: {e}", path.display())));
    }
    PrivateKeyDer::from_pem_file(path).map(drop).map_err(|e| {
        invalid(
            key,
            format!("{} holds no PEM private key: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_kind_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for (result, key, detail) in [
            (check_certificates("a.ca", &missing), "a.ca", "cannot read"),
            (
                check_certificates("a.ca", &junk),
                "a.ca",
                "no PEM certificate",
            ),
            (
                check_private_key("a.key", &junk),
                "a.key",
                "no PEM private key",
            ),
            (check_private_key("a.key", &missing), "a.key", "cannot read"),
        ] {
            let e = result.unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(detail), "{e}");
        }
    }
}
