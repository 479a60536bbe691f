//! The `berrygw` command: the daemon (`run`), the field tools
//! (`check-config`, `status`, `reload`, `actuate`, `points`, `audit`,
//! `decode`), the self-contained `demo` and the `bench` harness.
//! Argument parsing and logging set-up only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

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

/// Where the daemon's local API is.
#[derive(clap::Args)]
struct ApiArgs {
    /// The local API socket; default: `[api] socket` of --config.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Configuration file naming the socket.
    #[arg(long, short, default_value = "/etc/berrygw/berrygw.toml")]
    config: PathBuf,
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
    /// Decode a payload with a codec, or a whole frame with a registered device's keys.
    Decode(berrygw::cli::decode::DecodeArgs),
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
            let site = match Site::load(&config) {
                Ok(site) => site,
                Err(e) => {
                    tracing::error!("refusing to start: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(berrygw::daemon::run_until_signal(&site)));
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
        Command::Status { json, socket, config } => status(json, socket, &config),
        Command::Reload { socket, config } => reload(socket, &config),
        Command::Actuate { target, command, args, api } => actuate(&target, &command, &args, api),
        Command::Points { target, json, api } => points(&target, json, api),
        Command::Audit { limit, json, api } => audit(limit, json, api),
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

/// The local API socket: as given, as configured, or the default.
fn api_socket(socket: Option<PathBuf>, config: &std::path::Path) -> Result<PathBuf, ExitCode> {
    match socket {
        Some(s) => Ok(s),
        None => match berrygw::config::load(config) {
            Ok(c) => Ok(c.config.api.socket),
            // No configuration file at the default place: the default socket.
            Err(_) if !config.exists() => Ok(PathBuf::from(berrygw::config::DEFAULT_API_SOCKET)),
            Err(e) => {
                eprintln!("error: {e}");
                Err(ExitCode::from(2))
            }
        },
    }
}

/// `berrygw reload`: 0 reloaded, 1 refused (the daemon keeps its registry), 2 bad configuration, 3 not running.
fn reload(socket: Option<PathBuf>, config: &std::path::Path) -> ExitCode {
    use berrygw::status::cli;
    let socket = match api_socket(socket, config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match cli::request(&socket, "POST", "/api/reload") {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            println!("reloaded: {}", v["report"].as_str().unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let why = v["error"].as_str().map(str::to_string).unwrap_or_else(|| body.trim().to_string());
            eprintln!("NOT reloaded (the daemon keeps what was in force): {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}

/// `name=value` pairs (or one JSON object) as a JSON object of arguments.
fn parse_args(args: &[String]) -> Result<serde_json::Value, String> {
    if let [one] = args {
        if one.trim_start().starts_with('{') {
            return serde_json::from_str(one).map_err(|e| format!("arguments are not a JSON object: {e}"));
        }
    }
    let mut map = serde_json::Map::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| format!("argument {a:?}: write name=value"))?;
        // 60 and true are numbers and booleans; anything else is a string (an enumeration label).
        let value = serde_json::from_str::<serde_json::Value>(v)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| serde_json::Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(serde_json::Value::Object(map))
}

/// The body of a 200 answer from the local API; otherwise the exit code, said why
/// (1: the daemon answered with an error, 3: no daemon).
fn api_call(api: ApiArgs, method: &str, path: &str, body: Option<&str>) -> Result<String, ExitCode> {
    use berrygw::status::cli;
    let socket = api_socket(api.socket, &api.config)?;
    match cli::request_with_body(&socket, method, path, body) {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => {
            eprintln!("error: HTTP {status}: {}", body.trim());
            Err(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(3))
        }
    }
}

/// `berrygw actuate`: 0 verified, 1 refused or failed, 2 bad arguments, 3 no daemon.
fn actuate(target: &str, command: &str, args: &[String], api: ApiArgs) -> ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let body = serde_json::json!({ "target": target, "command": command, "args": args }).to_string();
    eprintln!("{target}: {command} {args} … (waits for the read-back)");
    let body = match api_call(api, "POST", "/api/actuate", Some(&body)) {
        Ok(body) => body,
        Err(code) => return code,
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let outcome = v["outcome"].as_str().unwrap_or("unknown");
    let reason = v["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
    println!("{outcome}{reason}: {}", v["message"].as_str().unwrap_or_default());
    if outcome == "verified" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `berrygw points`.
fn points(target: &str, json: bool, api: ApiArgs) -> ExitCode {
    let body = match api_call(api, "GET", &format!("/api/points/{target}"), None) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if json {
        println!("{}", body.trim_end());
        return ExitCode::SUCCESS;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let state = &v["state"];
    println!(
        "{target} ({}, {}): {}",
        v["profile"].as_str().unwrap_or_default(),
        v["link"].as_str().unwrap_or_default(),
        if state["online"] == true { "online" } else { "OFFLINE" }
    );
    if let Some(e) = state["last_error"].as_str() {
        println!("  last error: {e}");
    }
    if let Some(points) = state["points"].as_object() {
        for (name, value) in points {
            let unit = v["units"][name].as_str().unwrap_or_default();
            println!("  {name:<28} {value} {unit}");
        }
    }
    if let Some(commands) = v["commands"].as_array() {
        let names: Vec<&str> = commands.iter().filter_map(|c| c.as_str()).collect();
        println!("  commands: {}", names.join(", "));
    }
    ExitCode::SUCCESS
}

/// `berrygw audit`.
fn audit(limit: usize, json: bool, api: ApiArgs) -> ExitCode {
    let body = match api_call(api, "GET", &format!("/api/audit?limit={limit}"), None) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if json {
        println!("{}", body.trim_end());
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Vec<berrygw::actuation::audit::AuditEntry>>(&body) {
        Ok(entries) => {
            print!("{}", berrygw::actuation::audit::render(&entries));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: unexpected answer: {e}");
            ExitCode::from(3)
        }
    }
}

/// `berrygw status`: 0 healthy, 1 unhealthy, 2 bad configuration, 3 not running or no answer.
fn status(json: bool, socket: Option<PathBuf>, config: &std::path::Path) -> ExitCode {
    use berrygw::status::cli;
    let socket = match api_socket(socket, config) {
        Ok(s) => s,
        Err(code) => return code,
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
