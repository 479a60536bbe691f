//! `berryctl`: the operator's tool at the centre of a berrygw network (never needed on a
//! gateway). It reaches the gateways only through the network's MQTT broker, like the
//! rest of the platform.
//!
//! - `keygen`: an Ed25519 signing key (0600) and the `authorized_keys` entry that lets
//!   gateways accept it, with its scope.
//! - `command`: a command signed for one gateway and field device, published, and its
//!   outcome awaited on the gateway's `event/command`.
//! - `session push`: an OTAA device's session keys, signed and sealed to the gateway's
//!   identity (its announced key, pinned in `known_gateways` the first time).
//! - `fleet`: every gateway in one table (online, stale, offline since), from the
//!   state and health records the gateways keep retained on the broker.
//! - `exporter`: the same records as Prometheus metrics, for a central Prometheus.
//! - `pin`: gateways' identity keys learnt from their announcements, pinned.
//! - `bundle build` / `bundle push`: a site's configuration files, signed, sealed where
//!   they hold device keys, published retained for the target gateways to take.
//! - `availability --month`: the fleet's monthly availability report for the maintenance
//!   contract, joined from the month records the gateways keep retained.
//!
//! Exit codes scripts may rely on: 0 done (`command`: verified), 1 the gateway refused
//! or the command failed, 2 no answer in time (or the broker could not be reached),
//! 3 bad arguments or local files. `--json` prints one JSON object on stdout.

mod availability;
mod broker;
mod bundle;
mod command;
mod exporter;
mod fleet;
mod keygen;
mod known;
mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berryctl",
    version,
    about = "Run a berrygw network from the centre, through its MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Make an Ed25519 signing key and print its authorized_keys entry.
    Keygen(keygen::KeygenArgs),
    /// Sign a command for a gateway's field device, publish it, wait for its outcome
    /// (exit 0 verified, 1 refused or failed, 2 no answer).
    Command(Box<command::CommandArgs>),
    /// OTAA session keys for a gateway, sealed to its identity (`session push`).
    Session(session::SessionArgs),
    /// Every gateway in one table, from the broker's retained state and health records
    /// (exit 0 all online and healthy, 1 one is not, 2 none heard).
    Fleet(fleet::FleetArgs),
    /// Learn gateways' identity keys from their announcements and pin them (like known_hosts).
    Pin(known::PinArgs),
    /// Signed configuration bundles: `build` a site's files, `push` them to the gateways
    /// (exit 0 applied, 1 refused or rolled back, 2 no answer).
    Bundle(bundle::BundleArgs),
    /// Serve the fleet as Prometheus metrics (`berrygw_fleet_*`), from the broker.
    Exporter(exporter::ExporterArgs),
    /// The fleet's monthly availability report for the maintenance contract, from every
    /// gateway's retained month record (table, --csv, --json, --html page with timelines).
    Availability(availability::AvailabilityArgs),
}

/// What a command-line run ends with.
pub enum Exit {
    Done,
    Refused,
    NoAnswer,
    Usage,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Done => 0,
            Exit::Refused => 1,
            Exit::NoAnswer => 2,
            Exit::Usage => 3,
        })
    }
}

/// The one-thread runtime every command runs its broker connection on (exit 3 if none).
fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| command::usage(&format!("runtime: {e}")))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // --help and --version are not errors; a bad argument is exit 3, never 2
            // (which says "no answer").
            return if usage { Exit::Usage.into() } else { Exit::Done.into() };
        }
    };
    match cli.command {
        Action::Keygen(args) => keygen::run(args).into(),
        Action::Command(args) => command::run(*args).into(),
        Action::Session(args) => session::run(args).into(),
        Action::Fleet(args) => fleet::run(args).into(),
        Action::Exporter(args) => exporter::run(args).into(),
        Action::Bundle(args) => bundle::run(args).into(),
        Action::Pin(args) => known::pin(args).into(),
        Action::Availability(args) => availability::run(args).into(),
    }
}
