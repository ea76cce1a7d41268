//! The `hookbus` binary: a dispatcher. Each subcommand is a function below that reads like a
//! runbook: load and check the config, set up logging, run, report. `hookbus --config PATH`
//! with no subcommand runs the bridge (`run`); `--check` validates and exits. A bad config
//! exits 64 (EX_USAGE) naming the key, never showing a secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookbus::config::{Config, ConfigError};
use hookbus::dead_letters::cli as dead_letters;
use hookbus::route;

/// `hookbus --version`: the crate version and the git revision it was built from (build.rs;
/// `unknown` without git or `HOOKBUS_REVISION`), as `hookbus_build_info` reports them.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("HOOKBUS_REVISION"),
    ")"
);

/// PubNub Presence webhooks → normalized events on Kafka or NATS.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    /// Validate the configuration file (syntax, types, values, unknown keys, routing
    /// templates, client settings) and exit.
    #[arg(long, global = true)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge until SIGTERM/SIGINT (the default).
    Run,
    /// Print the topic/subject a channel's events are published on (stdout), and which
    /// routing rule or template named it (stderr).
    Topic {
        /// Raw PubNub channel name.
        channel: String,
        /// Event action.
        #[arg(long, default_value = "join")]
        action: String,
        #[arg(long)]
        sub_key: Option<String>,
    },
    /// Run the presence roster (`[roster]`) until SIGTERM/SIGINT: who is in each channel now,
    /// kept from what the bridge published, served on `roster.listen`.
    Roster,
    /// Decode an escaped channel (one topic/subject token) back to the raw channel name.
    Unescape { escaped: String },
    /// What was refused (the dead-letter destination and `spool.dir/dead-letters/`): list it,
    /// or replay it through today's normalize after a fix or an upgrade.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Publish what a stopped instance left in its spool directory (a dead or scaled-away
    /// pod's volume), then exit: 0 when nothing is left, 1 otherwise.
    Drain {
        /// The spool directory to empty (the config's own `spool.dir` by default).
        #[arg(long)]
        spool_dir: Option<PathBuf>,
        /// Give up after this long (e.g. `10m`); what is left stays in the directory.
        #[arg(long, default_value = "10m")]
        timeout: humantime::Duration,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// One line per dead letter: time, reason, size, item index, where, error.
    List {
        /// One JSON object per line (time, reason, error, size, index, source, ref).
        #[arg(long)]
        json: bool,
        /// Give up reading the broker after this long.
        #[arg(long, default_value = "2m")]
        timeout: humantime::Duration,
    },
    /// Publish what today's normalize accepts, as a fresh webhook would; report what still
    /// fails. Ends with `replayed=N duplicates=D still_invalid=I`; exit 0 when it ran to the
    /// end, 1 when it could not (broker unreachable), 64 for a bad config or flag.
    Replay {
        /// Only dead letters written since: a duration back from now (`2h`) or an RFC 3339
        /// time.
        #[arg(long)]
        since: Option<String>,
        /// Only dead letters of this reason (`invalid_payload`, `invalid_item`, `unroutable`,
        /// `publish_failed`, `too_large`).
        #[arg(long)]
        reason: Option<String>,
        /// Report what would be replayed; publish, record and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long the broker may take to connect, be read, or confirm.
        #[arg(long, default_value = "2m")]
        timeout: humantime::Duration,
    },
}

const EX_USAGE: u8 = 64;

/// mimalloc: the request path allocates many small short-lived buffers, which glibc's
/// allocator serves noticeably slower under contention between worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            let _ = error.print();
            return match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                // A bad flag is a usage error like a bad config: 64 (EX_USAGE).
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    match cli.command {
        // Needs no config: a pure function of its argument.
        Some(Command::Unescape { escaped }) => unescape(&escaped),
        command => {
            let config = match load(&cli.config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let warnings = hookbus::sink::warnings(&config.sink, &config.kafka);
            if cli.check {
                for warning in &warnings {
                    eprintln!("hookbus: warning: {warning}");
                }
                println!("{}: ok", cli.config.display());
                return ExitCode::SUCCESS;
            }
            match command {
                None | Some(Command::Run) => run(config, &warnings),
                Some(Command::Roster) => roster(config),
                Some(Command::Topic {
                    channel,
                    action,
                    sub_key,
                }) => topic(&config, &channel, &action, sub_key.as_deref()),
                Some(Command::Drain { spool_dir, timeout }) => {
                    drain(config, spool_dir, timeout.into())
                }
                Some(Command::DeadLetters { command }) => dead_letters(&config, command),
                Some(Command::Unescape { .. }) => unreachable!("handled above"),
            }
        }
    }
}

/// Transparent huge pages off for this process. mimalloc reserves its heap in large aligned
/// arenas; where THP applies (mimalloc's own `madvise`, compiled out by its `no_thp` feature, or
/// hosts with THP `always`) each first touch of an arena region costs a 2 MiB page, and an idle
/// hookbus held 12 MiB of them (31 MiB RSS instead of 19). What mimalloc touched before `main`
/// stays; everything after gets 4 KiB pages. `MIMALLOC_ALLOW_THP=0` in the environment (the
/// image sets it) does the same from the first allocation.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        const PR_SET_THP_DISABLE: std::ffi::c_int = 41;
        unsafe extern "C" {
            fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
        }
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag on this process's
        // memory map; it reads and writes no memory of ours. Failure (an old kernel) is fine.
        let _ = unsafe {
            prctl(
                PR_SET_THP_DISABLE,
                1 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
            )
        };
    }
}

/// The config file read, validated section by section, its routing compiled and its client
/// settings checked; or exit 64 with the key at fault (no secret shown).
fn load(path: &Path) -> Result<Config, ExitCode> {
    let also = |config: &Config| -> Result<(), ConfigError> {
        route::check(config)?;
        hookbus::sink::check(&config.sink, &config.nats, &config.kafka)
    };
    Config::load_checked(path, &also).map_err(|error| {
        eprintln!(
            "hookbus: invalid configuration: {}",
            clip(&error.to_string(), 2000)
        );
        ExitCode::from(EX_USAGE)
    })
}

/// `hookbus run`: the bridge until SIGTERM/SIGINT.
fn run(config: Config, warnings: &[String]) -> ExitCode {
    init_tracing();
    warn_about_auth(&config.auth);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let serve = async {
        let running = hookbus::app::start(config).await?;
        let signal = hookbus::shutdown::signal().await?;
        tracing::info!(signal, "shutting down");
        running.shutdown();
        running.wait().await
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "hookbus failed");
            ExitCode::FAILURE
        }
    }
}

/// `hookbus roster`: the presence roster until SIGTERM/SIGINT.
fn roster(config: Config) -> ExitCode {
    init_tracing();
    if config.roster.is_none() {
        eprintln!("hookbus: invalid configuration: `hookbus roster` needs a [roster] section");
        return ExitCode::from(EX_USAGE);
    }
    warn_about_auth(&config.auth);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let serve = async {
        let stop = hookbus::shutdown::Shutdown::new();
        let signals = stop.clone();
        tokio::spawn(async move {
            if let Ok(signal) = hookbus::shutdown::signal().await {
                tracing::info!(signal, "shutting down");
            }
            signals.trigger();
        });
        hookbus::roster::run(config, stop).await
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "hookbus roster failed");
            ExitCode::FAILURE
        }
    }
}

/// `hookbus unescape`: one topic/subject token back to the raw channel name.
fn unescape(escaped: &str) -> ExitCode {
    match route::unescape(escaped) {
        Ok(raw) => {
            println!("{raw}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hookbus: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// `hookbus topic`: the name a channel's events get, and the rule or template that named it.
fn topic(config: &Config, channel: &str, action: &str, sub_key: Option<&str>) -> ExitCode {
    let mut out = String::new();
    let rendered = route::Router::new(&config.routing)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.render(channel, action, sub_key, &mut out)
                .map(|()| r.matched(channel))
                .map_err(|e| e.to_string())
        });
    match rendered {
        Ok(matched) => {
            println!("{out}");
            match matched {
                route::Matched::Rule(i) => eprintln!(
                    "(routing.rules[{i}]: channel {:?}, template {:?})",
                    config.routing.rules[i].channel, config.routing.rules[i].template
                ),
                route::Matched::Default => eprintln!(
                    "(routing.template {:?}: no rule matched)",
                    config.routing.template
                ),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hookbus: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// At every start: anonymous ingress is a choice worth repeating in the log, and an
/// `allow_anonymous` that a token overrides is probably a leftover.
fn warn_about_auth(auth: &hookbus::config::AuthConfig) {
    if auth.anonymous() {
        tracing::warn!("anonymous ingress is on: any client that reaches http.listen can publish");
    } else if auth.allow_anonymous {
        tracing::warn!(
            "auth.allow_anonymous is ignored: a token is set (auth.token, auth.tokens or \
             HOOKBUS_AUTH_TOKEN), and every webhook must carry one"
        );
    }
}

/// The multi-threaded runtime, or `None` after saying why it could not start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|error| eprintln!("hookbus: cannot start the runtime: {error}"))
        .ok()
}

/// `hookbus drain`: publish what a stopped instance left in a spool directory, then exit.
fn drain(mut config: Config, spool_dir: Option<PathBuf>, timeout: std::time::Duration) -> ExitCode {
    init_tracing();
    if let Some(dir) = spool_dir {
        config.spool.dir = dir;
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(hookbus::app::drain(config, timeout)) {
        Ok(report) => {
            println!(
                "drained {}: {} records published, {} left",
                report.dir.display(),
                report.published,
                report.left
            );
            if report.left == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "drain failed");
            ExitCode::FAILURE
        }
    }
}

/// `hookbus dead-letters list|replay`.
fn dead_letters(config: &Config, command: DeadLettersCommand) -> ExitCode {
    init_tracing();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match command {
        DeadLettersCommand::List { json, timeout } => {
            ExitCode::from(runtime.block_on(dead_letters::list(config, json, timeout.into())))
        }
        DeadLettersCommand::Replay {
            since,
            reason,
            dry_run,
            timeout,
        } => {
            let since_ms = match since.as_deref().map(dead_letters::since).transpose() {
                Ok(since) => since,
                Err(error) => {
                    eprintln!("hookbus: --since: {error}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let options = hookbus::dead_letters::Options {
                since_ms,
                reason,
                dry_run,
                within: timeout.into(),
            };
            ExitCode::from(runtime.block_on(dead_letters::replay(config, &options)))
        }
    }
}

/// `text` cut to `max` bytes (at a character boundary): an error quoting a 10 MB line of a
/// config file must not print it.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

/// Logs go to stderr (stdout belongs to the stdout sink); `RUST_LOG` filters,
/// `HOOKBUS_LOG_FORMAT=json` switches to JSON lines. Colours only when stderr is a terminal, so
/// container logs and files hold plain text.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let directives = log_directives(std::env::var("RUST_LOG").ok().as_deref());
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(log_directives(None)));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("HOOKBUS_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The most verbose level the NATS client may log at.
const ASYNC_NATS_MAX: tracing_subscriber::filter::LevelFilter =
    tracing_subscriber::filter::LevelFilter::INFO;

/// `RUST_LOG` (or `info`) with the async-nats crate held at INFO at most, whatever the user
/// asked for: at DEBUG it logs each server address with `?` formatting, which prints a URL's
/// userinfo password (`nats://user:pass@host`) in full, and at TRACE every protocol operation.
/// Each `async_nats…` directive is lowered to INFO if it asks for more, and `async_nats=info`
/// is added unless the user set a level for `async_nats` itself (so a global `debug` does
/// not reach it). A directive with a span filter and no target (`[conn]=debug`) would still
/// apply to async-nats' events inside such spans; it has none that hookbus creates.
fn log_directives(rust_log: Option<&str>) -> String {
    use std::str::FromStr;
    use tracing_subscriber::filter::LevelFilter;
    let mut directives = Vec::new();
    let mut crate_level_set = false;
    for directive in rust_log.unwrap_or("info").split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        // `target[span{field}]=level`, `target=level`, `target` (all levels) or `level`.
        let (selector, level) = match directive.rsplit_once('=') {
            Some((selector, level)) if !level.contains(['}', ']']) => (selector, Some(level)),
            _ if LevelFilter::from_str(directive).is_ok() => ("", Some(directive)),
            _ => (directive, None),
        };
        let target = selector.split('[').next().unwrap_or_default();
        let nats = target == "async_nats" || target.starts_with("async_nats::");
        if !nats {
            directives.push(directive.to_owned());
            continue;
        }
        crate_level_set |= selector == "async_nats";
        let asked = level.map_or(Ok(LevelFilter::TRACE), LevelFilter::from_str);
        match asked {
            Ok(asked) if asked <= ASYNC_NATS_MAX => directives.push(directive.to_owned()),
            // Too verbose, or a level EnvFilter would reject anyway.
            _ => directives.push(format!("{selector}={ASYNC_NATS_MAX}")),
        }
    }
    if !crate_level_set {
        directives.push(format!("async_nats={ASYNC_NATS_MAX}"));
    }
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_nats_never_logs_below_info() {
        for (rust_log, expected) in [
            (None, "info,async_nats=info"),
            (Some("debug"), "debug,async_nats=info"),
            (Some("trace,hyper=warn"), "trace,hyper=warn,async_nats=info"),
            (Some("async_nats=debug"), "async_nats=info"),
            (Some("async_nats"), "async_nats=info"),
            (Some("async_nats=warn,debug"), "async_nats=warn,debug"),
            (Some("async_nats=off"), "async_nats=off"),
            (
                Some("async_nats::connector=trace"),
                "async_nats::connector=info,async_nats=info",
            ),
            (
                Some("async_nats[conn]=TRACE"),
                "async_nats[conn]=info,async_nats=info",
            ),
            (Some("async_nats=5"), "async_nats=info"),
            (Some("hookbus=debug"), "hookbus=debug,async_nats=info"),
        ] {
            assert_eq!(log_directives(rust_log), expected, "{rust_log:?}");
        }
        for rust_log in ["debug", "async_nats=trace", "async_nats::connector=debug"] {
            let filter =
                tracing_subscriber::EnvFilter::try_new(log_directives(Some(rust_log))).unwrap();
            assert_eq!(
                filter.max_level_hint(),
                Some(if rust_log == "debug" {
                    tracing_subscriber::filter::LevelFilter::DEBUG
                } else {
                    ASYNC_NATS_MAX
                }),
                "{rust_log}"
            );
        }
    }
}
