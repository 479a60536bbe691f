//! The command-line tools that talk to the running daemon over its local API
//! socket: `berrygw status`, `reload`, `actuate`, `points` and `audit`. What they
//! print and the exit codes scripts rely on: 0 done (healthy, verified), 1 the
//! daemon refused or failed (unhealthy), 2 bad arguments or configuration, 3 no daemon
//! answering.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::api::client;
use crate::config::{self, ConfigError, DEFAULT_API_SOCKET};
use crate::status::text;

/// Where the daemon's local API is: `--socket`, else `[api] socket` of `--config`.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The local API socket; default: `[api] socket` of --config.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Configuration file naming the socket.
    #[arg(long, short, default_value = "/etc/berrygw/berrygw.toml")]
    pub config: PathBuf,
}

/// The local API socket: as given (`--socket`), as the configuration at `config`
/// names it, or the default when there is no configuration file there.
pub fn socket(given: Option<PathBuf>, config: &Path) -> Result<PathBuf, ConfigError> {
    match given {
        Some(s) => Ok(s),
        None => match config::load(config) {
            Ok(c) => Ok(c.config.api.socket),
            Err(_) if !config.exists() => Ok(PathBuf::from(DEFAULT_API_SOCKET)),
            Err(e) => Err(e),
        },
    }
}

/// The socket, or exit 2 with the configuration's error.
fn socket_or_exit(given: Option<PathBuf>, config: &Path) -> Result<PathBuf, ExitCode> {
    socket(given, config).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `berrygw reload`: 0 reloaded, 1 refused (the daemon keeps its registry), 2 bad configuration, 3 not running.
pub fn reload(socket: Option<PathBuf>, config: &Path) -> ExitCode {
    let socket = match socket_or_exit(socket, config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match client::request(&socket, "POST", "/api/reload") {
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

/// The body of a 200 answer from the local API; otherwise the exit code, said why
/// (1: the daemon answered with an error, 3: no daemon).
pub(super) fn api_call(
    api: ApiArgs,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, ExitCode> {
    let socket = socket_or_exit(api.socket, &api.config)?;
    match client::request_with_body(&socket, method, path, body) {
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
pub fn actuate(target: &str, command: &str, args: &[String], api: ApiArgs) -> ExitCode {
    let args = match berrygw_proto::envelope::args_from_words(args) {
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
pub fn points(target: &str, json: bool, api: ApiArgs) -> ExitCode {
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
pub fn audit(limit: usize, json: bool, api: ApiArgs) -> ExitCode {
    let body = match api_call(api, "GET", &format!("/api/audit?limit={limit}"), None) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if json {
        println!("{}", body.trim_end());
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Vec<crate::actuation::audit::AuditEntry>>(&body) {
        Ok(entries) => {
            print!("{}", crate::actuation::audit::render(&entries));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: unexpected answer: {e}");
            ExitCode::from(3)
        }
    }
}

/// `berrygw status`: 0 healthy, 1 unhealthy, 2 bad configuration, 3 not running or no answer.
pub fn status(json: bool, socket: Option<PathBuf>, config: &Path) -> ExitCode {
    let socket = match socket_or_exit(socket, config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let body = match client::ask(&socket) {
        Ok(b) => b,
        Err(e @ client::AskError::NotRunning { .. }) => {
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
    let parsed = client::parse(&body);
    if json {
        println!("{}", body.trim_end());
    }
    match parsed {
        Ok(s) => {
            if !json {
                print!("{}", text::render(&s));
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
