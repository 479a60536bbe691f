//! The `berrygw` command: the daemon (`run`), the field tools
//! (`check-config`), the self-contained `demo` and the `bench` harness.
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

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
