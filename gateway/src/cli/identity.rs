//! `berrygw identity init|show`: this gateway's identity key (`crate::identity`), made
//! at install by the package and shown to whoever enrols the gateway at the centre.
//! Exit codes: 0 done, 1 no identity (show), 2 bad configuration or an unusable key file.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::identity;

#[derive(clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    action: Action,
    /// Configuration file naming the state directory (`[gateway] state_dir`).
    #[arg(long, short, global = true, default_value = "/etc/berrygw/berrygw.toml")]
    config: PathBuf,
    /// The state directory itself, instead of reading it from --config.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Print JSON (`{"gateway_id", "public_key", "sealed_box"}` for show).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Make the identity key if there is none (never replaces one), then show it.
    Init,
    /// Print the public key (what the centre seals secrets to).
    Show,
}

pub fn run(args: IdentityArgs) -> ExitCode {
    let loaded = config::load(&args.config);
    let state_dir = match (&args.state_dir, &loaded) {
        (Some(dir), _) => dir.clone(),
        (None, Ok(c)) => c.config.gateway.state_dir.clone(),
        (None, Err(e)) => {
            eprintln!("error: {e} (or give --state-dir)");
            return ExitCode::from(2);
        }
    };
    let gateway_id = loaded.as_ref().ok().map(|c| c.config.gateway.id.to_string());
    let result = match args.action {
        Action::Init => identity::load_or_create(&state_dir).map(|(id, made)| {
            if made {
                eprintln!("identity key made: {}", identity::path(&state_dir).display());
            }
            id
        }),
        Action::Show if !identity::path(&state_dir).exists() => {
            eprintln!("no identity key in {} (make one with `berrygw identity init`)", state_dir.display());
            return ExitCode::from(1);
        }
        Action::Show => identity::load(&state_dir),
    };
    let id = match result {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let key = id.recipient();
    if args.json {
        let a = berrygw_proto::identity::Announcement::new(gateway_id.as_deref().unwrap_or_default(), &key);
        println!("{}", serde_json::to_string(&a).unwrap_or_default());
    } else {
        println!("{key}");
    }
    ExitCode::SUCCESS
}
