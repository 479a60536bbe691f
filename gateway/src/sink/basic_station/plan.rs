//! The LNS's channel plan on the concentrator (`channel_plan = "lns"`, the default, with
//! `[radio] kind = "sx1302"`): `router_config`'s uplink channels become the SX1302's, as
//! Station does; the radio restarts only when the plan differs from the one it runs.
//!
//! The plan is kept (`<state_dir>/basic_station/plan.json`) once the concentrator runs
//! it, and the pipeline starts the concentrator on it (`kept`): a gateway restarted
//! during an outage listens on the LNS's channels, not the configuration's, before the
//! LNS is back to say them again.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use berrygw_lora::station::{RouterConfig, UplinkPlan};
use berrygw_sx1302::config::{FskChannel, LoraServiceChannel};
use berrygw_sx1302::{Applied, ChannelPlan, Tuner};
use tracing::{info, warn};

use super::Refused;

/// The kept plan's file name, in the sink's state folder.
pub const FILE: &str = "plan.json";
/// Who set a plan, as the concentrator's status shows it.
pub const FROM_LNS: &str = "the Basics Station LNS's router_config";
pub const FROM_KEPT: &str = "the Basics Station LNS's router_config (kept from before a restart)";
/// Longest a retune may take: a reset and `lgw_start` (about a second), twice if the
/// concentrator has to go back to its old plan.
const RETUNE_WAIT: Duration = Duration::from_secs(30);

/// The concentrator's plan from the LNS's: one single-SF and one FSK channel at most.
pub fn channel_plan(p: &UplinkPlan) -> Result<ChannelPlan, String> {
    if p.multi_sf.is_empty() && p.lora_std.is_empty() {
        return Err("it has no LoRa uplink channel: the radio would hear nothing".into());
    }
    if p.lora_std.len() > 1 || p.fsk.len() > 1 {
        return Err(format!(
            "{} single-SF LoRa and {} FSK channels; the SX1302 has one of each",
            p.lora_std.len(),
            p.fsk.len()
        ));
    }
    Ok(ChannelPlan {
        multi_sf: p.multi_sf.clone(),
        lora_service: p.lora_std.first().map(|c| LoraServiceChannel {
            frequency: c.frequency,
            bandwidth: c.bandwidth,
            spreading_factor: c.spreading_factor,
        }),
        fsk: p.fsk.first().map(|c| FskChannel {
            frequency: c.frequency,
            datarate: c.datarate,
            frequency_deviation: c.frequency_deviation,
        }),
        centres: p.centres,
    })
}

/// Puts the LNS's plan on the concentrator, and keeps it once it runs. A plan the
/// concentrator cannot take is refused (the session ends, status says why) and the
/// concentrator stays on the plan it had. An LNS that gives no plan changes nothing.
pub async fn retune(tuner: &Tuner, config: &RouterConfig, dir: &Path) -> anyhow::Result<Applied> {
    let Some(plan) = &config.plan else { return Ok(Applied::Unchanged) };
    let refused = |why: String| {
        Refused(format!(
            "router_config: the concentrator cannot take the LNS's channel plan: {why}; it stays on the \
             plan it had (set channel_plan = \"radio\" to keep [radio.sx1302]'s and compare)"
        ))
    };
    let plan = channel_plan(plan).map_err(refused)?;
    let applied = match tokio::time::timeout(RETUNE_WAIT, tuner.apply(&plan, FROM_LNS)).await {
        Ok(applied) => applied.map_err(refused)?,
        Err(_) => {
            return Err(refused(format!("no answer from the concentrator within {RETUNE_WAIT:?}")).into())
        }
    };
    if applied == Applied::Retuned {
        info!(channels = ?plan.multi_sf, "basic station sink: the concentrator now listens on the LNS's channel plan");
    }
    if kept(dir).as_ref() != Some(&plan) {
        keep(dir, &plan)?;
    }
    Ok(applied)
}

/// The plan kept by an earlier run, if any: a damaged file is said and left aside.
pub fn kept(dir: &Path) -> Option<ChannelPlan> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!("{}: {e}; the concentrator starts on [radio.sx1302]'s channels", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(plan) => Some(plan),
        Err(e) => {
            warn!(
                "{}: not a channel plan ({e}); the concentrator starts on [radio.sx1302]'s channels",
                path.display()
            );
            None
        }
    }
}

fn keep(dir: &Path, plan: &ChannelPlan) -> anyhow::Result<()> {
    berrygw_core::files::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_vec_pretty(plan).context("encoding the channel plan")?;
    let path = dir.join(FILE);
    berrygw_journal::seq::write_durably(&path, &text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use berrygw_lora::station::{FskChannel as StationFsk, LoraStd};

    use super::*;

    fn lns_plan() -> UplinkPlan {
        UplinkPlan {
            multi_sf: vec![868_100_000, 868_300_000, 868_500_000],
            lora_std: vec![LoraStd { frequency: 868_300_000, bandwidth: 250_000, spreading_factor: 7 }],
            fsk: vec![StationFsk { frequency: 868_800_000, datarate: 50_000, frequency_deviation: 25_000 }],
            centres: [Some(868_500_000), None],
        }
    }

    #[test]
    fn the_lns_plan_becomes_the_concentrators() {
        let p = channel_plan(&lns_plan()).unwrap();
        assert_eq!(p.multi_sf, vec![868_100_000, 868_300_000, 868_500_000]);
        assert_eq!(
            p.lora_service.map(|c| (c.frequency, c.bandwidth, c.spreading_factor)),
            Some((868_300_000, 250_000, 7))
        );
        assert_eq!(p.fsk.map(|c| (c.frequency, c.datarate)), Some((868_800_000, 50_000)));
        assert_eq!(p.centres, [Some(868_500_000), None]);
        let mut two = lns_plan();
        two.lora_std.push(two.lora_std[0]);
        let e = channel_plan(&two).unwrap_err();
        assert!(e.contains("2 single-SF LoRa and 1 FSK channels"), "{e}");
        let fsk_only = UplinkPlan { multi_sf: vec![], lora_std: vec![], ..lns_plan() };
        let e = channel_plan(&fsk_only).unwrap_err();
        assert!(e.contains("no LoRa uplink channel"), "{e}");
    }

    #[test]
    fn a_kept_plan_round_trips_and_a_damaged_one_is_left_aside() {
        let dir = tempfile::tempdir().unwrap();
        let sink_dir = dir.path().join("basic_station");
        assert_eq!(kept(&sink_dir), None);
        let p = channel_plan(&lns_plan()).unwrap();
        keep(&sink_dir, &p).unwrap();
        assert_eq!(kept(&sink_dir), Some(p));
        std::fs::write(sink_dir.join(FILE), b"{\"multi_sf\": [1, ").unwrap();
        assert_eq!(kept(&sink_dir), None);
        std::fs::write(sink_dir.join(FILE), b"{\"multi_sf\": [], \"other\": 1}").unwrap();
        assert_eq!(kept(&sink_dir), None, "unknown fields refused");
    }
}
