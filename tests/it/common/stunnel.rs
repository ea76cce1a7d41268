//! A real TLS terminator (Debian's `stunnel4`) in front of a plaintext broker, for brokers that
//! cannot do TLS themselves (tansu 0.6 parses `--cert`/`--key` but serves plaintext): clients
//! make a real TLS handshake with it, optionally with a client certificate it requires.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Stunnel {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Stunnel {
    /// Listens on `port` (TLS with `cert`/`key`) and forwards to `127.0.0.1:target`; with
    /// `client_ca`, a client certificate signed by it is required.
    pub fn start(
        port: u16,
        target: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Stunnel {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conf = format!(
            "foreground = yes\npid =\noutput = {}\ndebug = 5\n[broker]\naccept = 127.0.0.1:{port}\n\
             connect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
            dir.path().join("stunnel.log").display(),
            cert.display(),
            key.display(),
        );
        if let Some(ca) = client_ca {
            conf.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            ));
        }
        let file = dir.path().join("stunnel.conf");
        std::fs::write(&file, conf).expect("stunnel.conf");
        let child = Command::new("stunnel4")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 on PATH (scripts/setup installs it)");
        let tunnel = Stunnel {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not listen:\n{}",
                tunnel.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tunnel
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
