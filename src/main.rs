//! The `hookbus` binary: CLI, config loading, logging, then `app::start` until SIGTERM/SIGINT.
//! A bad config exits 64 (EX_USAGE) naming the key, never showing a secret.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookbus::config::Config;
use hookbus::route::{self, Router};

/// PubNub Presence webhooks → normalized events on Kafka or NATS.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Validate the configuration file (syntax, types, values, unknown keys) and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
    /// Decode an escaped channel (one topic/subject token) back to the raw channel name.
    Unescape { escaped: String },
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

const EX_USAGE: u8 = 64;

/// mimalloc: the request path allocates many small short-lived buffers, which glibc's
/// allocator serves noticeably slower under contention between worker threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Unescape { escaped }) = &cli.command {
        return match route::unescape(escaped) {
            Ok(raw) => {
                println!("{raw}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hookbus: {error}");
                ExitCode::from(EX_USAGE)
            }
        };
    }
    let config = match Config::load(&cli.config).and_then(|config| {
        hookbus::sink::check(&config.sink, &config.nats, &config.kafka)
            .map_err(|error| config.redact_error(error))
            .map(|()| config)
    }) {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "hookbus: invalid configuration: {}",
                clip(&error.to_string(), 2000)
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Topic {
        channel,
        action,
        sub_key,
    }) = &cli.command
    {
        let mut out = String::new();
        return match Router::new(&config.routing)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.render(channel, action, sub_key.as_deref(), &mut out)
                    .map(|()| r.matched(channel))
                    .map_err(|e| e.to_string())
            }) {
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
        };
    }

    init_tracing();
    if let Some(Command::Drain { spool_dir, timeout }) = cli.command {
        let mut config = config;
        if let Some(dir) = spool_dir {
            config.spool.dir = dir;
        }
        return drain(config, timeout.into());
    }
    warn_about_auth(&config.auth);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "hookbus failed");
            ExitCode::FAILURE
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

fn drain(config: Config, timeout: std::time::Duration) -> ExitCode {
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

async fn run(config: Config) -> anyhow::Result<()> {
    let running = hookbus::app::start(config).await?;
    let signal = hookbus::shutdown::signal().await?;
    tracing::info!(signal, "shutting down");
    running.shutdown();
    running.wait().await
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
