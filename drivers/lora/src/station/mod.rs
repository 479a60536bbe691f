//! LoRa Basics Station's LNS protocol (issue 16), as a codec with no I/O: the JSON
//! messages a gateway and an LNS exchange over a WebSocket, written from the protocol's
//! public description (Semtech's "The LNS Protocol" and "Basic Station Glossary").
//!
//! - Discovery: the gateway asks `router-info` with its id ([`router_info_request`]) and
//!   gets the muxs URI back ([`RouterInfo`]).
//! - The gateway says `version` first ([`version_message`]); the LNS answers
//!   `router_config` ([`RouterConfig`]: region, channel plan's data rates, frequency range,
//!   JoinEUI and NetID filters, max EIRP), checked here, an absurd one refused with why.
//! - Uplinks: `jreq`, `updf`, `propdf` from an [`UplinkFrame`] ([`uplink_message`]) with
//!   their `upinfo` (rctx, xtime, gpstime, rssi, snr, rxtime: the original receive time, so
//!   a replayed uplink says when it was heard).
//! - Downlinks: `dnmsg` ([`Dnmsg`]) turned into a [`DownlinkFrame`] ([`Dnmsg::to_frame`]:
//!   Class A RX1 then RX2 from the uplink's xtime, Class C at once on RX2, Class B at a GPS
//!   time), a frequency or power the region forbids refused; `dntxed` on transmission
//!   ([`dntxed_message`]).
//! - `timesync` both ways; `runcmd`, `rmtsh` and `dnsched` are recognised so that the sink
//!   can refuse them by name.
//!
//! EUIs are accepted in every form Station uses (`01-23-45-67-89-ab-cd-ef`, ID6
//! `123:4567:89ab:cdef` with `::` compression, plain hex) and written with dashes.

#[cfg(test)]
mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::frame::{CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxTiming, UplinkFrame};
use crate::phy::{self, Eui64, PhyFrame};

/// The protocol version this codec speaks (`version.protocol`).
pub const PROTOCOL: u8 = 2;

/// A Basics Station message that could not be read, or asks for what may not be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StationError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no msgtype")]
    NoMsgtype,
    #[error("unknown msgtype {0:?}")]
    UnknownMsgtype(String),
    #[error("{msgtype}: {why}")]
    Field { msgtype: &'static str, why: String },
}

impl StationError {
    /// What kind of fault, for a log limiter: one line per kind, not per message.
    pub fn kind(&self) -> &'static str {
        match self {
            StationError::Json(_) => "json",
            StationError::NoMsgtype => "no msgtype",
            StationError::UnknownMsgtype(_) => "unknown msgtype",
            StationError::Field { msgtype, .. } => msgtype,
        }
    }
}

fn field(msgtype: &'static str, why: impl Into<String>) -> StationError {
    StationError::Field { msgtype, why: why.into() }
}

/// An EUI written `01-23-45-67-89-ab-cd-ef`, as Station writes them.
pub fn eui_text(e: Eui64) -> String {
    e.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join("-")
}

/// An EUI in any of Station's forms: dashes, colons (every byte), ID6 (`::` compression,
/// four 16-bit groups), plain hex, or a JSON number.
pub fn parse_eui(v: &Value) -> Option<Eui64> {
    if let Some(n) = v.as_u64() {
        return Some(Eui64::from_u64(n));
    }
    let s = v.as_str()?.trim();
    let hex_only: String = s.chars().filter(|c| *c != '-').collect();
    if s.contains('-') || (!s.contains(':') && s.len() == 16) {
        return (hex_only.len() == 16)
            .then(|| u64::from_str_radix(&hex_only, 16).ok())
            .flatten()
            .map(Eui64::from_u64);
    }
    let groups: Vec<&str> = s.split(':').collect();
    if groups.len() == 8 && groups.iter().all(|g| g.len() == 2) {
        return u64::from_str_radix(&groups.concat(), 16).ok().map(Eui64::from_u64);
    }
    id6(s)
}

/// ID6: four 16-bit hex groups separated by `:`, with one `::` standing for zero groups.
fn id6(s: &str) -> Option<Eui64> {
    let (head, tail) = match s.split_once("::") {
        Some((h, t)) => (h, Some(t)),
        None => (s, None),
    };
    let parse = |part: &str| -> Option<Vec<u16>> {
        if part.is_empty() {
            return Some(vec![]);
        }
        part.split(':').map(|g| (g.len() <= 4).then(|| u16::from_str_radix(g, 16).ok()).flatten()).collect()
    };
    let (h, t) = (parse(head)?, tail.map(parse).unwrap_or(Some(vec![]))?);
    let groups = match tail {
        None if h.len() == 4 => h,
        Some(_) if h.len() + t.len() < 4 => {
            let mut g = h.clone();
            g.resize(4 - t.len(), 0);
            g.extend(t);
            g
        }
        _ => return None,
    };
    Some(Eui64::from_u64(groups.iter().fold(0u64, |acc, g| (acc << 16) | u64::from(*g))))
}

/// The uplink channels of a `router_config`, as a radio must be set to hear them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkPlan {
    /// Multi-SF LoRa channels (125 kHz), Hz, sorted.
    pub multi_sf: Vec<u32>,
    /// Single-SF LoRa channels (250 or 500 kHz, or `chan_Lora_std`).
    pub lora_std: Vec<LoraStd>,
    /// FSK channels.
    pub fsk: Vec<FskChannel>,
    /// The radios' centres, Hz, where `sx1301_conf` gives them for one board.
    pub centres: [Option<u32>; 2],
}

/// A single-SF LoRa uplink channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraStd {
    pub frequency: u32,
    /// Hz.
    pub bandwidth: u32,
    pub spreading_factor: u8,
}

/// An FSK uplink channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FskChannel {
    pub frequency: u32,
    /// bit/s.
    pub datarate: u32,
    /// Hz.
    pub frequency_deviation: u32,
}

impl UplinkPlan {
    /// The LoRa channels (multi-SF and single-SF), Hz, sorted, without repeats.
    pub fn lora_channels(&self) -> Vec<u32> {
        let mut hz: Vec<u32> =
            self.multi_sf.iter().copied().chain(self.lora_std.iter().map(|c| c.frequency)).collect();
        hz.sort_unstable();
        hz.dedup();
        hz
    }
}

/// The uplink channels of a `router_config`: `upchannels` (`[[Hz, minDR, maxDR], …]`,
/// each channel's kind from its data rates in `drs`: all FSK, all LoRa wider than
/// 125 kHz (single-SF), else multi-SF) or, without it, `sx1301_conf` (one or more
/// boards: `radio_0`/`radio_1` centres, `chan_multiSF_0..7`, `chan_Lora_std` and
/// `chan_FSK` with `radio` and `if` offsets). Every channel within `band`, at most 64.
fn uplink_plan(v: &Value, band: (u32, u32), drs: &[Option<DataRate>]) -> Result<Option<UplinkPlan>, String> {
    let in_band = |f: i64| -> Result<u32, String> {
        u32::try_from(f)
            .ok()
            .filter(|f| (band.0..=band.1).contains(f))
            .ok_or_else(|| format!("an uplink channel at {f} Hz, outside the band {band:?}"))
    };
    let mut plan = UplinkPlan::default();
    let mut count = 0usize;
    match (v.get("upchannels"), v.get("sx1301_conf")) {
        (Some(Value::Array(list)), _) => {
            count = list.len();
            for ch in list {
                let entry = ch.as_array().filter(|a| a.len() == 3);
                let nums = entry.and_then(|a| Some((a[0].as_i64()?, a[1].as_u64()?, a[2].as_u64()?)));
                let (f, min, max) =
                    nums.ok_or_else(|| format!("upchannels entry {ch} is not [Hz, minDR, maxDR]"))?;
                let f = in_band(f)?;
                let range: Vec<&Modulation> = usize::try_from(min)
                    .ok()
                    .zip(usize::try_from(max).ok())
                    .filter(|(min, max)| min <= max && *max < 16)
                    .ok_or_else(|| {
                        format!("upchannels entry {ch}: DR{min}..DR{max} is no range of DR0..DR15")
                    })
                    .map(|(min, max)| drs[min..=max].iter().flatten().map(|d| &d.modulation).collect())?;
                match range.first() {
                    Some(&&Modulation::Fsk { datarate, frequency_deviation })
                        if range.iter().all(|m| matches!(m, Modulation::Fsk { .. })) =>
                    {
                        plan.fsk.push(FskChannel { frequency: f, datarate, frequency_deviation });
                    }
                    Some(&&Modulation::Lora { spreading_factor, bandwidth, .. })
                        if range
                            .iter()
                            .all(|m| matches!(m, Modulation::Lora { bandwidth: 250_000 | 500_000, .. })) =>
                    {
                        plan.lora_std.push(LoraStd { frequency: f, bandwidth, spreading_factor });
                    }
                    _ => plan.multi_sf.push(f),
                }
            }
        }
        (None | Some(Value::Null), Some(Value::Array(boards))) => {
            for board in boards {
                let centre = |r: &Value| -> Result<Option<i64>, String> {
                    let radio = match r.as_i64() {
                        Some(0) => "radio_0",
                        Some(1) => "radio_1",
                        _ => return Err(format!("a channel on radio {r}: there are radio 0 and 1")),
                    };
                    let conf = &board[radio];
                    if conf["enable"] == Value::Bool(false) {
                        return Ok(None);
                    }
                    conf["freq"].as_i64().map(Some).ok_or_else(|| format!("{radio} has no freq"))
                };
                let names = (0..8).map(|i| format!("chan_multiSF_{i}"));
                for name in names.chain(["chan_Lora_std".into(), "chan_FSK".into()]) {
                    let ch = &board[name.as_str()];
                    if ch.is_null() || ch["enable"] != Value::Bool(true) {
                        continue;
                    }
                    let offset = ch["if"]
                        .as_i64()
                        .filter(|o| o.abs() <= 1_000_000)
                        .ok_or_else(|| format!("{name} has no if offset within ±1 MHz"))?;
                    let Some(c) = centre(&ch["radio"])? else { continue };
                    let f = in_band(c + offset)?;
                    count += 1;
                    let number = |key: &str, ok: &dyn Fn(u64) -> bool| {
                        ch[key]
                            .as_u64()
                            .filter(|x| ok(*x))
                            .ok_or_else(|| format!("{name} has no valid {key}"))
                    };
                    match name.as_str() {
                        // Without its own fields (Semtech's test LNS sends it so), the
                        // plan's single-SF uplink data rate (EU868: DR6, SF7 at 250 kHz).
                        "chan_Lora_std"
                            if ch.get("bandwidth").is_none() && ch.get("spread_factor").is_none() =>
                        {
                            let (spreading_factor, bandwidth) = single_sf_dr(drs).ok_or_else(|| {
                                format!("{name} has no bandwidth and spread_factor, and the DRs no single-SF uplink rate")
                            })?;
                            plan.lora_std.push(LoraStd { frequency: f, bandwidth, spreading_factor });
                        }
                        "chan_Lora_std" => plan.lora_std.push(LoraStd {
                            frequency: f,
                            bandwidth: number("bandwidth", &|b| matches!(b, 125_000 | 250_000 | 500_000))?
                                as u32,
                            spreading_factor: number("spread_factor", &|sf| (5..=12).contains(&sf))? as u8,
                        }),
                        "chan_FSK" => {
                            let datarate = number("datarate", &|d| (500..=250_000).contains(&d))? as u32;
                            let frequency_deviation = match ch.get("freq_deviation") {
                                None | Some(Value::Null) => datarate / 2,
                                Some(_) => number("freq_deviation", &|d| d <= 250_000)? as u32,
                            };
                            plan.fsk.push(FskChannel { frequency: f, datarate, frequency_deviation });
                        }
                        _ => plan.multi_sf.push(f),
                    }
                }
            }
            if let [board] = boards.as_slice() {
                for (i, radio) in ["radio_0", "radio_1"].iter().enumerate() {
                    let r = &board[*radio];
                    if r["enable"] != Value::Bool(false) {
                        plan.centres[i] = r["freq"].as_u64().and_then(|f| u32::try_from(f).ok());
                    }
                }
            }
        }
        (None | Some(Value::Null), None | Some(Value::Null)) => return Ok(None),
        _ => return Err("upchannels or sx1301_conf is not a list".into()),
    }
    if count > 64 {
        return Err(format!("{count} uplink channels (at most 64)"));
    }
    plan.multi_sf.sort_unstable();
    plan.multi_sf.dedup();
    Ok(Some(plan))
}

/// The spreading factor and bandwidth of the first uplink data rate wider than 125 kHz.
fn single_sf_dr(drs: &[Option<DataRate>]) -> Option<(u8, u32)> {
    drs.iter().flatten().filter(|d| !d.downlink_only).find_map(|d| match d.modulation {
        Modulation::Lora { spreading_factor, bandwidth: bandwidth @ (250_000 | 500_000), .. } => {
            Some((spreading_factor, bandwidth))
        }
        _ => None,
    })
}

/// The gateway's question to the router-info endpoint.
pub fn router_info_request(gateway: Eui64) -> Value {
    json!({ "router": eui_text(gateway) })
}

/// The router-info endpoint's answer: where to connect, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterInfo {
    pub uri: String,
}

impl RouterInfo {
    pub fn parse(text: &str) -> Result<RouterInfo, StationError> {
        let v: Value = serde_json::from_str(text).map_err(|e| StationError::Json(e.to_string()))?;
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            return Err(field("router-info", format!("refused: {e}")));
        }
        let uri = v.get("uri").and_then(Value::as_str).ok_or_else(|| field("router-info", "no uri"))?;
        if !(uri.starts_with("ws://") || uri.starts_with("wss://")) || uri.len() > 2048 {
            return Err(field("router-info", format!("uri {uri:?} is not a ws:// or wss:// URI")));
        }
        Ok(RouterInfo { uri: uri.to_string() })
    }
}

/// The first message on the muxs connection.
pub fn version_message(station: &str, model: &str, features: &str) -> Value {
    json!({
        "msgtype": "version",
        "station": station,
        "firmware": null,
        "package": station,
        "model": model,
        "protocol": PROTOCOL,
        "features": features,
    })
}

/// A data rate: LoRa spreading factor and bandwidth, or FSK; Station's `[sf, bw, dnonly]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRate {
    pub modulation: Modulation,
    /// Used for downlinks only.
    pub downlink_only: bool,
}

/// The regions this codec knows: their frequency band, default data rates and the most a
/// `router_config` may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub name: &'static str,
    /// The band a frequency must lie in, Hz.
    pub band: (u32, u32),
    /// The highest EIRP the region allows, dBm.
    pub max_eirp_dbm: i8,
}

/// EU863-870.
pub const EU868: Region = Region { name: "EU868", band: (863_000_000, 870_000_000), max_eirp_dbm: 27 };

fn region(name: &str) -> Option<Region> {
    match name {
        "EU868" | "EU863" => Some(EU868),
        _ => None,
    }
}

fn lora(sf: u8, bw_khz: u32) -> Modulation {
    Modulation::Lora { spreading_factor: sf, bandwidth: bw_khz * 1000, code_rate: CodeRate::Cr4_5 }
}

/// EU868's data rates DR0..DR7.
fn eu868_drs() -> Vec<Option<DataRate>> {
    let mut drs: Vec<Option<DataRate>> =
        (0..6).map(|dr| Some(DataRate { modulation: lora(12 - dr, 125), downlink_only: false })).collect();
    drs.push(Some(DataRate { modulation: lora(7, 250), downlink_only: false }));
    drs.push(Some(DataRate {
        modulation: Modulation::Fsk { datarate: 50_000, frequency_deviation: 25_000 },
        downlink_only: false,
    }));
    drs.resize(16, None);
    drs
}

/// `router_config`, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    pub region: Region,
    /// The frequencies the LNS may use, Hz (within the region's band).
    pub freq_range: (u32, u32),
    /// DR0..DR15; `None` where undefined.
    pub drs: Vec<Option<DataRate>>,
    /// The EIRP the LNS allows, dBm (at most the region's).
    pub max_eirp_dbm: f32,
    /// JoinEUI ranges whose join requests are forwarded (empty: all).
    pub join_eui: Vec<(u64, u64)>,
    /// NetIDs whose data frames are forwarded (empty: all).
    pub net_id: Vec<u32>,
    pub hwspec: Option<String>,
    /// `MuxTime` of the message: the LNS's clock, seconds.
    pub mux_time: Option<f64>,
    /// The LoRa uplink channels of the LNS's plan, Hz, sorted (multi-SF and single-SF
    /// ones of `plan`). `None` when the LNS gives no plan.
    pub upchannels: Option<Vec<u32>>,
    /// The LNS's uplink channels by kind: from `upchannels`, else from `sx1301_conf`.
    pub plan: Option<UplinkPlan>,
}

impl RouterConfig {
    /// Read and check a `router_config` message; an absurd one is refused with why.
    pub fn parse(v: &Value) -> Result<RouterConfig, StationError> {
        const M: &str = "router_config";
        let name = v.get("region").and_then(Value::as_str).ok_or_else(|| field(M, "no region"))?;
        let region = region(name)
            .ok_or_else(|| field(M, format!("region {name:?} is not one berrygw knows (EU868)")))?;
        let freq_range = match v.get("freq_range") {
            None | Some(Value::Null) => region.band,
            Some(r) => {
                let r = r
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .ok_or_else(|| field(M, "freq_range is not [min, max]"))?;
                let (lo, hi) = (r[0].as_u64(), r[1].as_u64());
                match (lo, hi) {
                    (Some(lo), Some(hi))
                        if lo < hi && lo >= u64::from(region.band.0) && hi <= u64::from(region.band.1) =>
                    {
                        (lo as u32, hi as u32)
                    }
                    _ => {
                        return Err(field(
                            M,
                            format!(
                                "freq_range {r:?} is not within {}'s band {:?}",
                                region.name, region.band
                            ),
                        ))
                    }
                }
            }
        };
        let drs = match v.get("DRs") {
            None | Some(Value::Null) => eu868_drs(),
            Some(d) => {
                let d = d
                    .as_array()
                    .filter(|a| !a.is_empty() && a.len() <= 16)
                    .ok_or_else(|| field(M, "DRs is not a list of 1 to 16 data rates"))?;
                let mut drs = Vec::with_capacity(16);
                for (i, entry) in d.iter().enumerate() {
                    drs.push(data_rate(entry).map_err(|why| field(M, format!("DR{i}: {why}")))?);
                }
                drs.resize(16, None);
                drs
            }
        };
        let max_eirp_dbm = match v.get("max_eirp") {
            None | Some(Value::Null) => f32::from(region.max_eirp_dbm),
            Some(e) => match e.as_f64() {
                Some(e) if e.is_finite() && (0.0..=f64::from(region.max_eirp_dbm)).contains(&e) => e as f32,
                _ => {
                    return Err(field(
                        M,
                        format!("max_eirp {e} is not within 0..={} dBm", region.max_eirp_dbm),
                    ))
                }
            },
        };
        let join_eui = match v.get("JoinEui") {
            None | Some(Value::Null) => vec![],
            Some(j) => {
                let j = j
                    .as_array()
                    .filter(|a| a.len() <= 64)
                    .ok_or_else(|| field(M, "JoinEui is not a list of ranges"))?;
                let mut out = Vec::new();
                for range in j {
                    let pair = range.as_array().filter(|a| a.len() == 2);
                    let (lo, hi) = pair
                        .and_then(|p| Some((parse_eui(&p[0])?.to_u64(), parse_eui(&p[1])?.to_u64())))
                        .filter(|(lo, hi)| lo <= hi)
                        .ok_or_else(|| field(M, format!("JoinEui range {range} is not [low, high]")))?;
                    out.push((lo, hi));
                }
                out
            }
        };
        let net_id = match v.get("NetID") {
            None | Some(Value::Null) => vec![],
            Some(n) => n
                .as_array()
                .filter(|a| a.len() <= 64)
                .and_then(|a| {
                    a.iter().map(|x| x.as_u64().filter(|x| *x < 1 << 24).map(|x| x as u32)).collect()
                })
                .ok_or_else(|| field(M, "NetID is not a list of 24-bit NetIDs"))?,
        };
        let plan = uplink_plan(v, region.band, &drs).map_err(|why| field(M, why))?;
        let upchannels = plan.as_ref().map(UplinkPlan::lora_channels);
        Ok(RouterConfig {
            region,
            freq_range,
            drs,
            max_eirp_dbm,
            join_eui,
            net_id,
            hwspec: v.get("hwspec").and_then(Value::as_str).map(str::to_string),
            mux_time: v.get("MuxTime").and_then(Value::as_f64),
            upchannels,
            plan,
        })
    }

    /// Why the radio's uplink channels (`radio`, Hz) are not the LNS's plan, if they are
    /// not: the channels only one side has. `None` when they agree or the LNS gave no plan.
    pub fn channel_mismatch(&self, radio: &[u32]) -> Option<String> {
        let lns = self.upchannels.as_ref()?;
        let mhz = |v: Vec<u32>| {
            v.iter().map(|f| format!("{:.3}", f64::from(*f) / 1e6)).collect::<Vec<_>>().join(", ")
        };
        let only_lns: Vec<u32> = lns.iter().copied().filter(|f| !radio.contains(f)).collect();
        let only_radio: Vec<u32> = radio.iter().copied().filter(|f| !lns.contains(f)).collect();
        if only_lns.is_empty() && only_radio.is_empty() {
            return None;
        }
        let mut why = Vec::new();
        if !only_lns.is_empty() {
            why.push(format!("the LNS's plan has {} MHz, which the radio does not listen on", mhz(only_lns)));
        }
        if !only_radio.is_empty() {
            why.push(format!("the radio listens on {} MHz, which the LNS's plan lacks", mhz(only_radio)));
        }
        Some(why.join("; "))
    }

    /// The DR of a modulation, if the plan has it (for uplinks).
    pub fn dr_of(&self, m: &Modulation) -> Option<u8> {
        let same = |a: &Modulation| match (a, m) {
            (
                Modulation::Lora { spreading_factor: s1, bandwidth: b1, .. },
                Modulation::Lora { spreading_factor: s2, bandwidth: b2, .. },
            ) => s1 == s2 && b1 == b2,
            (Modulation::Fsk { datarate: d1, .. }, Modulation::Fsk { datarate: d2, .. }) => d1 == d2,
            _ => false,
        };
        self.drs
            .iter()
            .position(|d| d.is_some_and(|d| !d.downlink_only && same(&d.modulation)))
            .map(|i| i as u8)
    }

    /// The modulation of data rate `dr`.
    pub fn modulation_of(&self, dr: i64) -> Option<Modulation> {
        usize::try_from(dr).ok().and_then(|i| self.drs.get(i).copied().flatten()).map(|d| d.modulation)
    }

    /// Whether a frame's JoinEUI or DevAddr passes the filters the LNS set.
    pub fn passes(&self, frame: &PhyFrame) -> bool {
        match frame {
            PhyFrame::JoinRequest(j) => {
                self.join_eui.is_empty()
                    || self.join_eui.iter().any(|(lo, hi)| (*lo..=*hi).contains(&j.join_eui.to_u64()))
            }
            PhyFrame::Data(d) => {
                self.net_id.is_empty() || self.net_id.iter().any(|n| net_id_matches(*n, d.dev_addr.to_u32()))
            }
            _ => true,
        }
    }

    fn check_frequency(&self, hz: i64, what: &str) -> Result<u32, StationError> {
        match u32::try_from(hz) {
            Ok(f) if f >= self.freq_range.0 && f <= self.freq_range.1 => Ok(f),
            _ => Err(field(
                "dnmsg",
                format!(
                    "{what} {hz} Hz is outside {:?} ({} as the LNS set it)",
                    self.freq_range, self.region.name
                ),
            )),
        }
    }
}

/// Whether DevAddr `addr` belongs to NetID `net_id` (LoRaWAN 1.0.4 / Backend Interfaces:
/// the NwkID is the NetID's low bits, placed under the address's type prefix).
fn net_id_matches(net_id: u32, addr: u32) -> bool {
    let typ = net_id >> 21;
    // (NwkID length, address prefix length) per NetID type 0..7.
    let (nwkid_bits, prefix_bits) = match typ {
        0 => (6, 1),
        1 => (6, 2),
        2 => (9, 3),
        3 => (11, 4),
        4 => (12, 5),
        5 => (13, 6),
        6 => (15, 7),
        _ => (17, 8),
    };
    let prefix = (0xffu32 << (8 - prefix_bits)) & 0xff & !(1 << (8 - prefix_bits));
    let addr_prefix = (addr >> 24) & (0xff << (8 - prefix_bits)) & 0xff;
    let nwkid = net_id & ((1 << nwkid_bits) - 1);
    let addr_nwkid = (addr >> (32 - prefix_bits - nwkid_bits)) & ((1 << nwkid_bits) - 1);
    addr_prefix == prefix && addr_nwkid == nwkid
}

/// `[sf, bw, dnonly]`: sf 7..12 with bw 125/250/500 (kHz), sf 0 for FSK, -1 for undefined.
fn data_rate(v: &Value) -> Result<Option<DataRate>, String> {
    let a = v.as_array().filter(|a| a.len() == 3).ok_or("not [sf, bw, dnonly]")?;
    let (sf, bw, dn) = (a[0].as_i64(), a[1].as_i64(), a[2].as_i64());
    let downlink_only = match dn {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(format!("dnonly {} is not 0 or 1", a[2])),
    };
    match (sf, bw) {
        (Some(-1), _) => Ok(None),
        (Some(0), _) => Ok(Some(DataRate {
            modulation: Modulation::Fsk { datarate: 50_000, frequency_deviation: 25_000 },
            downlink_only,
        })),
        (Some(sf @ 7..=12), Some(bw @ (125 | 250 | 500))) => {
            Ok(Some(DataRate { modulation: lora(sf as u8, bw as u32), downlink_only }))
        }
        _ => Err(format!("spreading factor {} / bandwidth {} kHz is no data rate", a[0], a[1])),
    }
}

/// `xtime` as berrygw writes it: bits 55..48 the radio session (a concentrator restart
/// starts a new one, so an old xtime cannot be taken for a new counter), bits 47..0 the
/// concentrator's microsecond counter extended to 48 bits.
pub fn xtime(session: u8, counter48: u64) -> i64 {
    ((u64::from(session) << 48) | (counter48 & 0xffff_ffff_ffff)) as i64
}

/// The session and the 32-bit concentrator counter of an `xtime`.
pub fn xtime_parts(xtime: i64) -> Option<(u8, u32)> {
    (xtime >= 0).then_some((((xtime as u64) >> 48) as u8, xtime as u32))
}

/// What a radio adds to an uplink for `upinfo`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpContext {
    /// Radio context: which board and antenna heard it (echoed in the downlink).
    pub rctx: i64,
    pub xtime: i64,
    /// GPS time of reception, µs; 0 when unknown.
    pub gpstime: i64,
    /// The LNS's clock when the frame was heard (from the last `MuxTime`), seconds; 0 unknown.
    pub ref_time: f64,
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn mic_i32(mic: [u8; 4]) -> i32 {
    i32::from_le_bytes(mic)
}

/// The `jreq`, `updf` or `propdf` message of an uplink; `None` for a frame Station would
/// not send (a bad CRC, a downlink type, a data rate outside the plan, filtered out).
pub fn uplink_message(frame: &UplinkFrame, cfg: &RouterConfig, ctx: &UpContext) -> Option<Value> {
    if frame.crc != CrcStatus::Ok {
        return None;
    }
    let dr = cfg.dr_of(&frame.modulation)?;
    let parsed = phy::parse(&frame.phy_payload).ok()?;
    if !cfg.passes(&parsed) {
        return None;
    }
    let upinfo = json!({
        "rctx": ctx.rctx,
        "xtime": ctx.xtime,
        "gpstime": ctx.gpstime,
        "fts": -1,
        "rssi": f64::from(frame.rssi),
        "snr": (f64::from(frame.snr) * 100.0).round() / 100.0,
        "rxtime": unix_secs(frame.received_at),
    });
    let p = &frame.phy_payload;
    let mut msg = match parsed {
        PhyFrame::JoinRequest(j) => json!({
            "msgtype": "jreq",
            "MHdr": p[0],
            "JoinEui": eui_text(j.join_eui),
            "DevEui": eui_text(j.dev_eui),
            "DevNonce": j.dev_nonce,
            "MIC": mic_i32(j.mic),
        }),
        PhyFrame::Data(d) if d.mtype.is_uplink() => {
            let fopts_end = 8 + usize::from(d.fctrl.fopts_len);
            let payload_start = if d.f_port.is_some() { fopts_end + 1 } else { fopts_end };
            json!({
                "msgtype": "updf",
                "MHdr": p[0],
                "DevAddr": d.dev_addr.to_u32() as i32,
                "FCtrl": p[5],
                "FCnt": d.fcnt,
                "FOpts": hex::encode(p.get(8..fopts_end).unwrap_or_default()),
                "FPort": d.f_port.map_or(-1, i32::from),
                "FRMPayload": hex::encode(p.get(payload_start..p.len() - 4).unwrap_or_default()),
                "MIC": mic_i32(d.mic),
            })
        }
        PhyFrame::Proprietary { .. } => json!({
            "msgtype": "propdf",
            "FRMPayload": hex::encode(p),
        }),
        _ => return None,
    };
    msg["RefTime"] = json!(ctx.ref_time);
    msg["DR"] = json!(dr);
    msg["Freq"] = json!(frame.frequency.0);
    msg["upinfo"] = upinfo;
    Some(msg)
}

/// A `dnmsg`: a downlink for one device.
#[derive(Clone, Debug, PartialEq)]
pub struct Dnmsg {
    pub dev_eui: Option<Eui64>,
    /// Device class: 0 A, 1 B, 2 C.
    pub class: u8,
    /// The LNS's id of this downlink (echoed in `dntxed`).
    pub diid: i64,
    pub pdu: Vec<u8>,
    pub rx_delay_s: u8,
    pub rx1: Option<(i64, i64)>,
    pub rx2: Option<(i64, i64)>,
    /// Class B: DR, Freq and GPS time.
    pub absolute: Option<(i64, i64, i64)>,
    pub xtime: Option<i64>,
    pub rctx: Option<i64>,
    pub priority: i64,
}

/// Which window a downlink goes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Rx1,
    Rx2,
    /// Class C, at once on RX2's channel.
    Immediate,
    /// Class B, at a GPS time.
    Absolute,
}

impl Dnmsg {
    pub fn parse(v: &Value) -> Result<Dnmsg, StationError> {
        const M: &str = "dnmsg";
        let int = |k: &str| v.get(k).and_then(Value::as_i64);
        let pair = |dr: &str, f: &str| int(dr).zip(int(f));
        let pdu = v.get("pdu").and_then(Value::as_str).ok_or_else(|| field(M, "no pdu"))?;
        let pdu = hex::decode(pdu).map_err(|_| field(M, "pdu is not hex"))?;
        if pdu.is_empty() || pdu.len() > 255 {
            return Err(field(M, format!("pdu of {} bytes", pdu.len())));
        }
        let class = match int("dC").unwrap_or(0) {
            c @ 0..=2 => c as u8,
            c => return Err(field(M, format!("device class {c}"))),
        };
        let rx_delay_s = match int("RxDelay").unwrap_or(1) {
            0 => 1,
            d @ 1..=15 => d as u8,
            d => return Err(field(M, format!("RxDelay {d} s"))),
        };
        let diid = int("diid").ok_or_else(|| field(M, "no diid"))?;
        Ok(Dnmsg {
            dev_eui: v.get("DevEui").and_then(parse_eui),
            class,
            diid,
            pdu,
            rx_delay_s,
            rx1: pair("RX1DR", "RX1Freq"),
            rx2: pair("RX2DR", "RX2Freq"),
            absolute: int("DR").zip(int("Freq")).zip(int("gpstime")).map(|((d, f), g)| (d, f, g)),
            xtime: int("xtime"),
            rctx: int("rctx"),
            priority: int("priority").unwrap_or(0),
        })
    }

    /// The frame to transmit in `window`; `counter_of(xtime)` gives the concentrator counter
    /// (µs) of the uplink's xtime if it belongs to the radio's current session. The power is
    /// the plan's max EIRP, the frequency and data rate checked against the plan.
    pub fn to_frame(
        &self,
        window: Window,
        cfg: &RouterConfig,
        downlink_id: u32,
        counter_of: impl Fn(i64) -> Option<u32>,
    ) -> Result<DownlinkFrame, StationError> {
        const M: &str = "dnmsg";
        let (dr, freq, timing) = match window {
            Window::Rx1 | Window::Rx2 => {
                let (dr, freq) = if window == Window::Rx1 { self.rx1 } else { self.rx2 }
                    .ok_or_else(|| field(M, format!("no {window:?} parameters")))?;
                let xtime = self.xtime.ok_or_else(|| field(M, "no xtime for a Class A window"))?;
                let counter = counter_of(xtime).ok_or_else(|| field(M, "xtime of another radio session"))?;
                let delay_s = u32::from(self.rx_delay_s) + u32::from(window == Window::Rx2);
                (dr, freq, TxTiming::Counter(counter.wrapping_add(delay_s * 1_000_000)))
            }
            Window::Immediate => {
                let (dr, freq) = self.rx2.ok_or_else(|| field(M, "no RX2 parameters for Class C"))?;
                (dr, freq, TxTiming::Immediately)
            }
            Window::Absolute => {
                let (dr, freq, gps) =
                    self.absolute.ok_or_else(|| field(M, "no DR, Freq and gpstime for Class B"))?;
                let gps = u64::try_from(gps).map_err(|_| field(M, format!("gpstime {gps}")))?;
                (dr, freq, TxTiming::GpsEpoch(gps))
            }
        };
        let modulation =
            cfg.modulation_of(dr).ok_or_else(|| field(M, format!("DR{dr} is not in the channel plan")))?;
        let frequency = cfg.check_frequency(freq, "frequency")?;
        Ok(DownlinkFrame {
            downlink_id,
            phy_payload: self.pdu.clone(),
            frequency: Frequency(frequency),
            modulation,
            power_dbm: cfg.max_eirp_dbm.floor() as i8,
            timing,
            invert_iq: true,
            board: 0,
            antenna: 0,
        })
    }

    /// The windows to try, in order: RX1 then RX2 (Class A), RX2 at once (Class C), the
    /// GPS time (Class B).
    pub fn windows(&self) -> Vec<Window> {
        match self.class {
            1 => vec![Window::Absolute],
            2 if self.xtime.is_none() || self.rx1.is_none() => vec![Window::Immediate],
            _ => [(self.rx1.is_some(), Window::Rx1), (self.rx2.is_some(), Window::Rx2)]
                .into_iter()
                .filter_map(|(ok, w)| ok.then_some(w))
                .collect(),
        }
    }
}

/// `dntxed`: the downlink `diid` left the antenna.
pub fn dntxed_message(d: &Dnmsg, xtime: i64, txtime: SystemTime, gpstime: i64) -> Value {
    json!({
        "msgtype": "dntxed",
        "diid": d.diid,
        "DevEui": d.dev_eui.map(eui_text).unwrap_or_default(),
        "rctx": d.rctx.unwrap_or(0),
        "xtime": xtime,
        "txtime": unix_secs(txtime),
        "gpstime": gpstime,
    })
}

/// The gateway's `timesync` request: its own time when sent.
pub fn timesync_request(txtime: f64) -> Value {
    json!({ "msgtype": "timesync", "txtime": txtime })
}

/// What the LNS sends.
#[derive(Clone, Debug, PartialEq)]
pub enum Downstream {
    RouterConfig(Box<RouterConfig>),
    Dnmsg(Box<Dnmsg>),
    /// The answer to a `timesync` request (`txtime` echoed) or an unsolicited one (`xtime`).
    Timesync {
        txtime: Option<f64>,
        xtime: Option<i64>,
        gpstime: i64,
    },
    /// Remote commands and shells, and multicast schedules: recognised, to be refused by name.
    Runcmd,
    Rmtsh,
    Dnsched,
}

impl Downstream {
    /// Read one message from the LNS; anything malformed or unknown is an error that names it.
    pub fn parse(text: &str) -> Result<Downstream, StationError> {
        let v: Value = serde_json::from_str(text).map_err(|e| StationError::Json(e.to_string()))?;
        let msgtype = v.get("msgtype").and_then(Value::as_str).ok_or(StationError::NoMsgtype)?;
        Ok(match msgtype {
            "router_config" => Downstream::RouterConfig(Box::new(RouterConfig::parse(&v)?)),
            "dnmsg" => Downstream::Dnmsg(Box::new(Dnmsg::parse(&v)?)),
            "timesync" => {
                let gpstime = v
                    .get("gpstime")
                    .and_then(Value::as_i64)
                    .filter(|g| *g >= 0)
                    .ok_or_else(|| field("timesync", "no gpstime"))?;
                Downstream::Timesync {
                    txtime: v.get("txtime").and_then(Value::as_f64),
                    xtime: v.get("xtime").and_then(Value::as_i64),
                    gpstime,
                }
            }
            "runcmd" => Downstream::Runcmd,
            "rmtsh" => Downstream::Rmtsh,
            "dnsched" => Downstream::Dnsched,
            other => return Err(StationError::UnknownMsgtype(other.chars().take(40).collect())),
        })
    }
}
