//! The `berrygw` command: the daemon (`run`), the field tools
//! (`check-config`, `status`), the self-contained `demo` and the `bench` harness.
//! Argument parsing and logging set-up only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berrygw",
    version,
    about = "LoRaWAN gateway runtime: uplinks kept safe through outages, forwarded over MQTT/TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/berrygw/berrygw.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and exit (0 when it would start).
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Ask the running daemon how it is doing (exit 0 healthy, 1 unhealthy, 3 not running).
    Status {
        /// Print the daemon's JSON (as served at /api/status) instead of a summary.
        #[arg(long)]
        json: bool,
        /// The local API socket; default: `[api] socket` of --config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Configuration file naming the socket.
        #[arg(long, short, default_value = "/etc/berrygw/berrygw.toml")]
        config: PathBuf,
    },
    /// Run the whole pipeline with a simulated radio and an embedded broker; nothing to install.
    Demo(berrygw::demo::DemoArgs),
    /// Measure journal and forwarding throughput against a running MQTT broker.
    Bench(berrygw::bench::BenchArgs),
}

/// Logs to the systemd journal when started by systemd with its journal on
/// stderr (`JOURNAL_STREAM`), to stderr otherwise; `BERRYGW_LOG` (or
/// `RUST_LOG`) overrides `default_level`.
fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERRYGW_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry.with(journald.with_syslog_identifier("berrygw".into())).init();
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match berrygw::config::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            init_logging("info");
            let cfg = match berrygw::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("refusing to start: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(berrygw::pipeline::run_until_signal(&cfg)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("berrygw failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json, socket, config } => status(json, socket, &config),
        Command::Demo(args) => {
            // The demo prints its own account; logs only for trouble.
            init_logging("warn");
            report(
                runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(berrygw::demo::run(args))),
            )
        }
        Command::Bench(args) => {
            init_logging("warn");
            report(berrygw::bench::run(args))
        }
    }
}

/// `berrygw status`: 0 healthy, 1 unhealthy, 2 bad configuration, 3 not running or no answer.
fn status(json: bool, socket: Option<PathBuf>, config: &std::path::Path) -> ExitCode {
    use berrygw::status::cli;
    let socket = match socket {
        Some(s) => s,
        None => match berrygw::config::load(config) {
            Ok(c) => c.config.api.socket,
            // No configuration file at the default place: the default socket.
            Err(_) if !config.exists() => PathBuf::from(berrygw::config::DEFAULT_API_SOCKET),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let body = match cli::ask(&socket) {
        Ok(b) => b,
        Err(e @ cli::AskError::NotRunning { .. }) => {
            eprintln!(
                "berrygw is not running ({e}).\nStart it with `systemctl start berrygw`, or name its socket with --socket."
            );
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let parsed = cli::parse(&body);
    if json {
        println!("{}", body.trim_end());
    }
    match parsed {
        Ok(s) => {
            if !json {
                print!("{}", cli::render(&s));
            }
            if s.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
