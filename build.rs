//! Build script: the git revision for `hookbus --version` and `hookbus_build_info{revision}`.
//! `HOOKBUS_REVISION` in the environment wins (an image build without `.git`); else
//! `git rev-parse --short HEAD` when git and a repository are there; else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HOOKBUS_REVISION");
    let revision = match std::env::var("HOOKBUS_REVISION") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned()),
    };
    // Rebuild when HEAD moves: HEAD itself (checkout) and the ref it names (commit).
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", PathBuf::from(head).display());
    }
    // A packed ref has no file of its own (cargo would rerun this script on every build).
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &reference])
        && PathBuf::from(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rustc-env=HOOKBUS_REVISION={revision}");
}

/// One line of git's output, or None when git or the repository is missing.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
