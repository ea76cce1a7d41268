//! A real TLS terminator (Debian's `stunnel4`) in front of a plaintext broker, for brokers that
//! cannot do TLS themselves (tansu 0.6 parses `--cert`/`--key` but serves plaintext): clients
//! make a real TLS handshake with it, optionally with a client certificate it requires.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::spawn_on;

pub struct Stunnel {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Stunnel {
    /// Listens on `port` (TLS with `cert`/`key`) and forwards to `127.0.0.1:target`; with
    /// `client_ca`, a client certificate signed by it is required. `None` when another process
    /// took `port` first (the caller picks another one and starts again).
    pub fn start(
        port: u16,
        target: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Option<Stunnel> {
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
        // Errors before the log file opens (a taken port among them) go to stderr.
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr.log");
        let mut tunnel = Stunnel { dir, child: None };
        let mut command = Command::new("stunnel4");
        command.arg(&file).stdout(Stdio::null()).stderr(stderr);
        let child = spawn_on(
            &mut command,
            port,
            "stunnel4",
            Duration::from_secs(10),
            &|| tunnel.log(),
        )?;
        tunnel.child = Some(child);
        Some(tunnel)
    }

    pub fn log(&self) -> String {
        ["stderr.log", "stunnel.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path().join(f)).ok())
            .collect()
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
