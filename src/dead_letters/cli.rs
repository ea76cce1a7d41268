//! The command-line side of `hookbus dead-letters`: output lines, progress on a terminal, the
//! summary line and the exit codes (0 ran to the end, 1 could not, 64 bad usage).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::{Options, Progress};
use crate::config::Config;

/// `list`: one line (or JSON object) per dead letter on stdout; 1 when the broker or the
/// directory could not be read to the end (what was read is printed).
pub async fn list(config: &Config, json: bool, within: Duration) -> u8 {
    let mut count = 0u64;
    let read = super::each(config, within, async |letter| {
        let line = if json {
            letter.json().to_string()
        } else {
            letter.line()
        };
        count += 1;
        writeln!(std::io::stdout().lock(), "{line}").is_ok()
    })
    .await;
    match read {
        Ok(()) => {
            eprintln!("{count} dead letters");
            0
        }
        Err(error) => {
            eprintln!("hookbus: {error}");
            1
        }
    }
}

/// `replay`: still-failing dead letters on stderr as they come, progress on a terminal, the
/// summary line on stdout.
pub async fn replay(config: &Config, options: &Options) -> u8 {
    let terminal = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut report = |progress: Progress<'_>| match progress {
        Progress::Done(n) => {
            if terminal && last.elapsed() >= Duration::from_millis(200) {
                last = std::time::Instant::now();
                eprint!("\r{n} dead letters…");
            }
        }
        Progress::StillInvalid { letter, errors } => {
            if terminal {
                eprint!("\r");
            }
            eprintln!(
                "still invalid: {} {} ({}): {}",
                letter.source.as_str(),
                letter.reference,
                letter.meta.reason,
                errors.join("; ")
            );
        }
    };
    let outcome = super::replay(config, options, &mut report).await;
    if terminal {
        eprint!("\r");
    }
    match outcome {
        Ok(summary) => {
            let verb = if options.dry_run {
                "would be published"
            } else {
                "published"
            };
            eprintln!("{} events {verb}", summary.events);
            println!(
                "replayed={} duplicates={} still_invalid={}{}",
                summary.replayed,
                summary.duplicates,
                summary.still_invalid,
                if options.dry_run {
                    " (dry run: nothing published)"
                } else {
                    ""
                }
            );
            0
        }
        Err(error) => {
            eprintln!("hookbus: dead-letter replay stopped: {error}");
            1
        }
    }
}

/// `--since`: a duration back from now (`90m`, `2h`) or an RFC 3339 time, as Unix ms.
///
/// # Errors
/// Neither.
pub fn since(text: &str) -> Result<u64, String> {
    let now = crate::time::now_ms();
    if let Ok(back) = humantime::parse_duration(text) {
        return Ok(now.saturating_sub(u64::try_from(back.as_millis()).unwrap_or(u64::MAX)));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("{text:?} is neither a duration (`2h`) nor an RFC 3339 time"))
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
}
