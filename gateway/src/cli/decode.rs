//! `berrygw decode`, the field tool: run a codec over a payload typed by hand,
//! or verify, decrypt and decode a whole captured frame with the registry's
//! keys, exactly as the daemon would (same registry, same codecs, same
//! limits), without touching the daemon's counters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use berrygw_codecs::UplinkInput;
use berrygw_lora::phy::{self, PhyFrame};
use berrygw_lora::security::{self, SessionKeys};

use crate::config::{self, DecodeSection};
use crate::decode::engine::{codec_limits, instantiate};
use crate::decode::registry::{Activation, CodecRef, Registry};
use crate::decode::sessions::SessionStore;

/// `berrygw decode` arguments.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["codec", "device"])))]
pub struct DecodeArgs {
    /// Codec to run over FRMPayload bytes: a .js file, `cayenne_lpp` or `hex`.
    #[arg(long, requires = "fport")]
    pub codec: Option<PathBuf>,
    /// FPort of the payload (with --codec).
    #[arg(long)]
    pub fport: Option<u8>,
    /// ChirpStack codec variables, `name=value` (with --codec; repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub variables: Vec<String>,
    /// Registry device (name or DevEUI) whose keys verify and decrypt a whole PHYPayload.
    #[arg(long)]
    pub device: Option<String>,
    /// Full 32-bit frame counter, when the device has sent more than 65,535 uplinks (with --device).
    #[arg(long)]
    pub fcnt: Option<u32>,
    /// Configuration naming the registry, codec folders and state directory (with --device).
    #[arg(long, short, default_value = "/etc/berrygw/berrygw.toml")]
    pub config: PathBuf,
    /// FRMPayload (with --codec) or PHYPayload (with --device), hex.
    pub hex: String,
}

/// Run `berrygw decode`: prints the JSON result on stdout.
pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    let bytes = hex::decode(args.hex.trim()).context("the payload is not hex")?;
    let out = match (&args.codec, &args.device) {
        (Some(codec), _) => {
            let variables = parse_variables(&args.variables)?;
            let f_port = args.fport.ok_or_else(|| anyhow!("--fport is required with --codec"))?;
            decode_payload(codec, f_port, &bytes, &variables)?
        }
        (None, Some(device)) => decode_frame(&args.config, device, args.fcnt, &bytes)?,
        (None, None) => bail!("give --codec FILE --fport N, or --device NAME"),
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn parse_variables(vars: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    vars.iter()
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--var {v:?}: write NAME=VALUE"))
        })
        .collect()
}

fn decode_payload(
    codec: &Path,
    f_port: u8,
    bytes: &[u8],
    variables: &BTreeMap<String, String>,
) -> anyhow::Result<serde_json::Value> {
    let r = match codec.to_str() {
        Some("cayenne_lpp" | "cayenne-lpp") => CodecRef::CayenneLpp,
        Some("hex" | "raw") => CodecRef::Hex,
        _ => CodecRef::Js(codec.to_path_buf()),
    };
    // The daemon's default limits.
    let mut codec = instantiate(&r, &codec_limits(50, 8 * 1024))?;
    let input = UplinkInput { bytes, f_port, recv_time: SystemTime::now(), variables, device: "cli" };
    let decoded = codec.decode(&input).map_err(|e| anyhow!("{}: {e}", codec.name()))?;
    Ok(serde_json::json!({
        "codec": codec.name(),
        "f_port": f_port,
        "data": decoded.data,
        "warnings": decoded.warnings,
        "errors": decoded.errors,
    }))
}

fn decode_frame(
    config_path: &Path,
    device: &str,
    fcnt: Option<u32>,
    phy_payload: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let cfg = config::load(config_path)?;
    let DecodeSection { devices, codec_dirs, codec_time_limit_ms, codec_memory_limit_kib } =
        cfg.config.decode.as_ref().ok_or_else(|| {
            anyhow!("{}: no [decode] section, so no device registry", config_path.display())
        })?;
    let registry = Registry::load(devices.get_ref(), codec_dirs)?;
    let d = registry.find(device).ok_or_else(|| {
        anyhow!("no device named {device:?} (or with that DevEUI) in {}", registry.path.display())
    })?;
    let keys = match &d.activation {
        Activation::Abp { dev_addr, nwk_s_key, app_s_key } => {
            SessionKeys { dev_addr: *dev_addr, nwk_s_key: *nwk_s_key, app_s_key: *app_s_key }
        }
        Activation::Otaa { .. } => {
            let store = cfg.config.gateway.state_dir.join("sessions.sqlite");
            SessionStore::peek(&store)?
                .remove(&d.dev_eui)
                .map(|s| s.keys)
                .ok_or_else(|| anyhow!("{} is OTAA and has no session yet (it has not joined through this gateway, nor were keys pushed)", d.name))?
        }
    };
    let frame = phy::parse(phy_payload).map_err(|e| anyhow!("not a LoRaWAN frame: {e}"))?;
    let PhyFrame::Data(data) = frame else { bail!("a {} carries no application payload", frame.mtype()) };
    if data.dev_addr != keys.dev_addr {
        bail!("the frame is from DevAddr {}, {} has DevAddr {}", data.dev_addr, d.name, keys.dev_addr);
    }
    // The counter before the one given, so that it is the next one expected.
    let last = fcnt.and_then(|n| n.checked_sub(1));
    let up = security::verify_uplink(phy_payload, &keys, last).map_err(|e| anyhow!("{e}"))?;
    let mut out = serde_json::json!({
        "device": d.name,
        "dev_eui": d.dev_eui.to_string(),
        "dev_addr": keys.dev_addr.to_string(),
        "f_cnt": up.fcnt,
        "f_port": up.f_port,
        "confirmed": up.confirmed,
        "payload_hex": hex::encode(&up.payload),
    });
    if let Some(f_port) = up.f_port.filter(|p| *p > 0) {
        let mut codec = instantiate(&d.codec, &codec_limits(*codec_time_limit_ms, *codec_memory_limit_kib))?;
        let input = UplinkInput {
            bytes: &up.payload,
            f_port,
            recv_time: SystemTime::now(),
            variables: &d.variables,
            device: &d.name,
        };
        out["codec"] = codec.name().into();
        match codec.decode(&input) {
            Ok(decoded) => {
                out["object"] = decoded.data;
                out["warnings"] = decoded.warnings.into();
                out["errors"] = decoded.errors.into();
            }
            Err(e) => {
                out["object"] = serde_json::Value::Null;
                out["errors"] = vec![e.to_string()].into();
            }
        }
    }
    Ok(out)
}
