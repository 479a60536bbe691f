//! `berryctl session push`: an OTAA device's session keys for a gateway that did not hear
//! its join, in a signed `set_session` envelope whose keys are sealed to that gateway's
//! identity (`berrygw_proto::session`). The gateway's public key comes from `--recipient`,
//! or from its retained announcement on the broker, checked against the pins in
//! `--known-gateways` (see `known`). The keys are read from a file, never the command
//! line (which other users of the machine can see).

use std::path::PathBuf;
use std::time::Duration;

use berrygw_proto::sealed::Recipient;
use berrygw_proto::session::{SessionKeys, SEALED_KEYS};

use crate::command::{usage, Signed};
use crate::known::{self, Pin};
use crate::Exit;

#[derive(clap::Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Push a device's session keys, sealed to the gateway (exit 0 installed, 1 refused, 2 no answer).
    Push(Box<PushArgs>),
}

#[derive(clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    signed: Signed,
    /// The device's DevEUI (16 hex digits); the signing key's scope must allow
    /// `set_session` on it.
    #[arg(long)]
    dev_eui: String,
    /// Its DevAddr (8 hex digits).
    #[arg(long)]
    dev_addr: String,
    /// Its next uplink counter.
    #[arg(long, default_value_t = 0)]
    f_cnt_up: u32,
    /// A JSON file `{"nwk_s_key": "…32 hex…", "app_s_key": "…32 hex…"}`.
    #[arg(long)]
    keys_file: PathBuf,
    /// The gateway's public identity key (`berrygw identity show`); else its announcement.
    #[arg(long)]
    recipient: Option<Recipient>,
    /// Pinned gateway keys (default ~/.config/berryctl/known_gateways).
    #[arg(long)]
    known_gateways: Option<PathBuf>,
}

pub fn run(args: SessionArgs) -> Exit {
    match args.action {
        Action::Push(a) => push(*a),
    }
}

fn push(a: PushArgs) -> Exit {
    let key = match a.signed.key() {
        Ok(k) => k,
        Err(exit) => return exit,
    };
    let keys: SessionKeys = match std::fs::read(&a.keys_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(k) => k,
        Err(e) => return usage(&format!("--keys-file {}: {e}", a.keys_file.display())),
    };
    let runtime = match crate::runtime() {
        Ok(r) => r,
        Err(exit) => return exit,
    };
    let (broker, gateway) = (&a.signed.broker, &a.signed.gateway);
    let recipient = match &a.recipient {
        Some(r) => r.clone(),
        None => match runtime.block_on(known::announced_key(broker, gateway, Duration::from_secs(a.signed.wait))) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return usage(&format!(
                    "gateway {gateway} announced no identity key within {} s; give --recipient (berrygw identity show)",
                    a.signed.wait
                ))
            }
            Err(e) => return usage(&format!("{e:#}")),
        },
    };
    let pins = a.known_gateways.clone().unwrap_or_else(known::default_path);
    match known::check_or_pin(&pins, gateway, &recipient) {
        Ok(Pin::Known) => {}
        Ok(Pin::Added) => eprintln!("gateway {gateway} key {recipient} pinned in {}", pins.display()),
        Err(e) => return usage(&e),
    }
    let args = serde_json::json!({
        "dev_addr": a.dev_addr,
        "f_cnt_up": a.f_cnt_up,
        SEALED_KEYS: keys.seal(&recipient),
    });
    let topic = broker.topics(gateway).session_set();
    a.signed.send(&runtime, &key, topic, &a.dev_eui, "set_session", args)
}
