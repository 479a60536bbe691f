//! The `berrygw` command: the daemon (`run`), the field tools
//! (`check-config`, `status`, `reload`, `actuate`, `points`, `audit`, `availability`, `maintenance`,
//! `identity`, `decode`), the self-contained `demo` and the `bench` harness.
//! Argument parsing and logging set-up only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use berrygw::cli::api::{self as commands, ApiArgs};
use berrygw::config::{ConfigError, Site};
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
    /// Make the running daemon re-read its device registry and codecs (like SIGHUP).
    Reload {
        /// The local API socket; default: `[api] socket` of --config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Configuration file naming the socket.
        #[arg(long, short, default_value = "/etc/berrygw/berrygw.toml")]
        config: PathBuf,
    },
    /// Run a command on a field device through the daemon, with every safety check
    /// (exit 0 verified, 1 refused or failed, 3 not running).
    Actuate {
        /// Field device name (`barrage-cher-1`).
        target: String,
        /// Profile command (`move_bay2`).
        command: String,
        /// Arguments, `name=value` (numbers and true/false as such), or one JSON object.
        args: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a field device's points as last polled, and its commands.
    Points {
        /// Field device name.
        target: String,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the latest command attempts from every source (durable audit log).
    Audit {
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The availability ledger's figures of a month: availability and time to restore per
    /// service, the incidents and the planned maintenance.
    Availability {
        /// The local month, YYYY-MM; default: this month.
        #[arg(long)]
        month: Option<String>,
        /// Print the daemon's JSON.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// One CSV line per service.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Declare planned maintenance (excluded from the availability figures): `start --reason`, `stop`.
    Maintenance {
        #[command(subcommand)]
        action: MaintenanceAction,
    },
    /// This gateway's identity key: `init` makes it (never replaces it), `show` prints it.
    Identity(berrygw::cli::identity::IdentityArgs),
    /// Decode a payload with a codec, or a whole frame with a registered device's keys.
    Decode(berrygw::cli::decode::DecodeArgs),
    /// Run the whole pipeline with a simulated radio and an embedded broker; nothing to install.
    Demo(berrygw::demo::DemoArgs),
    /// Measure journal and forwarding throughput against a running MQTT broker.
    Bench(berrygw::bench::BenchArgs),
}

#[derive(Subcommand)]
enum MaintenanceAction {
    /// A maintenance window starts now.
    Start {
        /// Why (kept in the ledger and shown in the reports).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The maintenance window in progress ends now.
    Stop {
        #[command(flatten)]
        api: ApiArgs,
    },
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
    // One worker: at a field's 1-50 uplinks/s every hand-off between tasks on a second worker
    // cost a thread wake-up (BENCHMARKS.md "Field rates": context switches per uplink 5.9 ->
    // 4.1 at 10/s, 3.3 -> 2.3 at 2,000/s). Blocking work has threads of its own (journal
    // owners, decoder, concentrator) or `block_in_place`, which a multi-thread runtime with
    // one worker still allows.
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Site::load(&file).and_then(|site| site.compile_codecs()) {
            Ok(Some(devices)) => {
                println!("{}: OK ({devices} devices in the registry)", file.display());
                ExitCode::SUCCESS
            }
            Ok(None) => {
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
            let site = match berrygw::daemon::load_site(&config) {
                Ok(site) => site,
                Err(e) => {
                    tracing::error!("refusing to start: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(berrygw::daemon::run_until_signal(site)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                // A file found bad only as it is put to use (a codec that does not compile).
                Err(e) if e.chain().any(|c| c.is::<ConfigError>()) => {
                    tracing::error!("refusing to start: {e:#}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    tracing::error!("berrygw failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json, socket, config } => commands::status(json, socket, &config),
        Command::Reload { socket, config } => commands::reload(socket, &config),
        Command::Actuate { target, command, args, api } => commands::actuate(&target, &command, &args, api),
        Command::Points { target, json, api } => commands::points(&target, json, api),
        Command::Audit { limit, json, api } => commands::audit(limit, json, api),
        Command::Availability { month, json, csv, api } => {
            berrygw::cli::availability::availability(month.as_deref(), json, csv, api)
        }
        Command::Maintenance { action: MaintenanceAction::Start { reason, api } } => {
            berrygw::cli::availability::maintenance(Some(&reason), api)
        }
        Command::Maintenance { action: MaintenanceAction::Stop { api } } => {
            berrygw::cli::availability::maintenance(None, api)
        }
        Command::Identity(args) => berrygw::cli::identity::run(args),
        Command::Decode(args) => {
            init_logging("warn");
            report(berrygw::cli::decode::run(args))
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
