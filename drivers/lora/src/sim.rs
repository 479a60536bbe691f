//! The simulated radio: virtual devices (water meter, river level probe,
//! waste container, lighting cabinet) that send real, encrypted LoRaWAN 1.0.x
//! data uplinks on a schedule, and a transmitter that acknowledges every
//! downlink. ABP devices send data from the start; OTAA devices send
//! JoinRequests until a downlink opens as a JoinAccept with their AppKey,
//! then send data with the derived session keys. It lets the whole pipeline
//! run and be tested without a concentrator. It does not model airtime, duty
//! cycle, collisions, class A receive windows or join timing (any JoinAccept
//! heard while waiting counts), and never rejoins.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::frame::{CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxAck, TxStatus, UplinkFrame};
use crate::phy::{build_data_uplink, AesKey, DataUplink, DevAddr, Eui64};
use crate::radio::{RadioError, RadioIo, RadioSource, RadioTask};
use crate::security::{build_join_request, derive_session_keys, open_join_accept, SessionKeys};

/// The `[radio.sim]` configuration: the virtual devices and the channels they use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub devices: Vec<SimDevice>,
    /// Uplink channels in Hz; defaults to the 8 EU868 channels of ChirpStack's default plan.
    #[serde(default = "default_frequencies")]
    pub frequencies: Vec<u32>,
    /// Makes payloads, channels and signal levels reproducible; random when absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// One virtual device: ABP (`dev_addr`, `nwk_s_key`, `app_s_key`) or OTAA
/// (`otaa`), never both.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimDevice {
    pub name: String,
    pub kind: DeviceKind,
    /// ABP: the device address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_addr: Option<DevAddr>,
    /// ABP: the network session key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nwk_s_key: Option<AesKey>,
    /// ABP: the application session key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_s_key: Option<AesKey>,
    /// OTAA: join first, then send with the session the JoinAccept gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otaa: Option<SimOtaa>,
    /// Application port, 1..=223.
    #[serde(default = "default_f_port")]
    pub f_port: u8,
    /// Time between two uplinks, at least 1 ms.
    pub interval_ms: u64,
    /// Stop after this many data uplinks (JoinRequests not counted); forever when absent.
    #[serde(default)]
    pub count: Option<u64>,
    /// Frame counter of the first uplink (ABP only: a joined session starts at 0).
    #[serde(default)]
    pub first_fcnt: u32,
    /// LoRa spreading factor, 7..=12.
    #[serde(default = "default_spreading_factor")]
    pub spreading_factor: u8,
    /// Send ConfirmedDataUp instead of UnconfirmedDataUp.
    #[serde(default)]
    pub confirmed: bool,
}

/// The `otaa = { ... }` table of an OTAA sim device: its root identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimOtaa {
    pub dev_eui: Eui64,
    pub join_eui: Eui64,
    pub app_key: AesKey,
    /// DevNonce of the first JoinRequest, incremented per attempt; drawn
    /// from the radio's seed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_dev_nonce: Option<u16>,
}

/// What a virtual device measures; each kind has its own payload layout
/// (all multi-byte fields big-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// 7 bytes: `u32` meter index in litres, `u16` battery in mV, `u8` flags
    /// (bit 0: leak suspected, water flowed in each of the last 24 uplinks;
    /// bit 1: low battery, below 3000 mV).
    WaterMeter,
    /// 6 bytes: `i16` water level in cm, `i16` water temperature in 0.1 °C,
    /// `u16` battery in mV.
    RiverLevel,
    /// 4 bytes: `u8` fill level in % (0..=100), `i8` temperature in °C,
    /// `u16` battery in mV.
    WasteFill,
    /// 8 bytes: `u8` bitmap of the 4 lighting circuits that are on (bit n =
    /// circuit n+1), `u8` mode (0 astronomical clock, 1 forced on, 2 forced
    /// off, 3 maintenance), `u32` energy meter in Wh, `u16` mains voltage in 0.1 V.
    LightingCabinet,
}

/// Why a simulator configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("sim radio: `frequencies` is empty; list at least one channel in Hz, or remove the key to use the 8 EU868 defaults")]
    NoFrequencies,
    #[error("sim device {device:?}: interval_ms must be at least 1")]
    ZeroInterval { device: String },
    #[error("sim device {device:?}: spreading_factor {sf} is not supported; use 7 to 12")]
    SpreadingFactor { device: String, sf: u8 },
    #[error("sim device {device:?}: f_port {port} is not an application port; use 1 to 223")]
    FPort { device: String, port: u8 },
    #[error("two sim devices are named {0:?}; device names must be unique")]
    DuplicateName(String),
    #[error(
        "sim device {device:?}: has both `otaa` and ABP keys ({abp_keys}); an OTAA device gets its \
         DevAddr and session keys from the join, so remove them, or remove `otaa` to use ABP"
    )]
    MixedActivation { device: String, abp_keys: String },
    #[error(
        "sim device {device:?}: no activation; ABP needs dev_addr, nwk_s_key and app_s_key (missing: {missing}), \
         OTAA needs otaa = {{ dev_eui = \"...\", join_eui = \"...\", app_key = \"...\" }}"
    )]
    MissingActivation { device: String, missing: String },
    #[error(
        "sim device {device:?}: first_fcnt is for ABP devices; an OTAA session always starts at frame counter 0"
    )]
    FirstFcntWithOtaa { device: String },
}

fn default_f_port() -> u8 {
    2
}

fn default_spreading_factor() -> u8 {
    7
}

/// The 8 EU868 uplink channels of ChirpStack's default channel plan, in Hz.
pub fn default_frequencies() -> Vec<u32> {
    vec![
        868_100_000,
        868_300_000,
        868_500_000,
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
    ]
}

impl SimConfig {
    /// Checks every device and the channel list; the error names the culprit.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.frequencies.is_empty() {
            return Err(SimError::NoFrequencies);
        }
        let mut names = HashSet::new();
        for d in &self.devices {
            let device = || d.name.clone();
            if d.interval_ms == 0 {
                return Err(SimError::ZeroInterval { device: device() });
            }
            if !(7..=12).contains(&d.spreading_factor) {
                return Err(SimError::SpreadingFactor { device: device(), sf: d.spreading_factor });
            }
            if !(1..=223).contains(&d.f_port) {
                return Err(SimError::FPort { device: device(), port: d.f_port });
            }
            if !names.insert(d.name.as_str()) {
                return Err(SimError::DuplicateName(device()));
            }
            d.activation().map(|_| ())?;
        }
        Ok(())
    }
}

/// How a device gets its session, once its configuration is checked.
#[derive(Clone, Copy, Debug)]
enum Activation {
    Abp(SessionKeys),
    Otaa(SimOtaa),
}

impl SimDevice {
    /// The one activation the device is configured with, or why not.
    fn activation(&self) -> Result<Activation, SimError> {
        let abp = [
            ("dev_addr", self.dev_addr.is_some()),
            ("nwk_s_key", self.nwk_s_key.is_some()),
            ("app_s_key", self.app_s_key.is_some()),
        ];
        let names = |present: bool| {
            abp.iter().filter(|(_, p)| *p == present).map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        };
        match (self.otaa, self.dev_addr, self.nwk_s_key, self.app_s_key) {
            (Some(_), None, None, None) if self.first_fcnt != 0 => {
                Err(SimError::FirstFcntWithOtaa { device: self.name.clone() })
            }
            (Some(otaa), None, None, None) => Ok(Activation::Otaa(otaa)),
            (Some(_), ..) => {
                Err(SimError::MixedActivation { device: self.name.clone(), abp_keys: names(true) })
            }
            (None, Some(dev_addr), Some(nwk_s_key), Some(app_s_key)) => {
                Ok(Activation::Abp(SessionKeys { dev_addr, nwk_s_key, app_s_key }))
            }
            (None, ..) => {
                Err(SimError::MissingActivation { device: self.name.clone(), missing: names(false) })
            }
        }
    }
}

/// The four demo devices `berrygw demo` runs: one per kind, DevAddrs in 26000000/7.
pub fn example_devices() -> Vec<SimDevice> {
    let device = |name: &str, kind, addr: u32, nwk, app, interval_ms, sf| SimDevice {
        name: name.to_owned(),
        kind,
        dev_addr: Some(DevAddr::from_u32(addr)),
        nwk_s_key: Some(AesKey(nwk)),
        app_s_key: Some(AesKey(app)),
        otaa: None,
        f_port: default_f_port(),
        interval_ms,
        count: None,
        first_fcnt: 0,
        spreading_factor: sf,
        confirmed: false,
    };
    vec![
        device(
            "compteur-eau-mairie",
            DeviceKind::WaterMeter,
            0x260b_1a01,
            [0xcd, 0x4b, 0xa8, 0x07, 0x24, 0x6f, 0xfb, 0x65, 0x0c, 0x5a, 0x20, 0xf8, 0x33, 0xd9, 0x84, 0xb0],
            [0xea, 0x15, 0x0a, 0x39, 0xd3, 0x25, 0xf5, 0x48, 0xe7, 0x95, 0x12, 0xd7, 0x39, 0x70, 0x3a, 0x9c],
            5_000,
            9,
        ),
        device(
            "sonde-niveau-cher-pont",
            DeviceKind::RiverLevel,
            0x260b_1a02,
            [0x96, 0x08, 0xa1, 0x55, 0x1e, 0x4e, 0x78, 0xdd, 0x91, 0xef, 0x99, 0xac, 0x74, 0x2f, 0xeb, 0xb2],
            [0x29, 0x62, 0x86, 0x82, 0x4a, 0x03, 0x35, 0x36, 0x15, 0x0f, 0x6e, 0xe5, 0x2d, 0x24, 0xa4, 0x57],
            3_000,
            10,
        ),
        device(
            "conteneur-verre-place-eglise",
            DeviceKind::WasteFill,
            0x260b_1a03,
            [0x7b, 0x27, 0xf7, 0x99, 0x59, 0xfb, 0x68, 0x0e, 0xaa, 0x39, 0xeb, 0x39, 0x60, 0xe7, 0xef, 0x73],
            [0x84, 0xcd, 0x2b, 0x16, 0xe2, 0xa6, 0x7f, 0x3d, 0xb9, 0x59, 0xe4, 0xdd, 0x9a, 0x83, 0x8f, 0x08],
            4_000,
            8,
        ),
        device(
            "armoire-ep-rue-haute",
            DeviceKind::LightingCabinet,
            0x260b_1a04,
            [0xcd, 0x32, 0x96, 0x41, 0x78, 0x11, 0x51, 0x9f, 0x61, 0xfa, 0x71, 0x7f, 0x1a, 0x4d, 0xcf, 0xe2],
            [0x84, 0xa8, 0xa6, 0x36, 0x73, 0x9b, 0xa2, 0x96, 0xea, 0x11, 0x94, 0xec, 0x38, 0xd9, 0xb4, 0xd3],
            2_000,
            7,
        ),
    ]
}

/// The evolving readings of one device, per kind.
#[derive(Clone, Debug)]
enum Telemetry {
    WaterMeter { index_l: u32, battery_mv: u16, flowing_for: u32 },
    RiverLevel { level_cm: i16, trend_cm: i16, temp_dc: i16, battery_mv: u16 },
    WasteFill { fill: u8, temp_c: i8, battery_mv: u16 },
    LightingCabinet { lit: bool, circuits: u8, energy_wh: u32, mains_dv: u16, battery_mv: u16 },
}

/// A battery that loses a millivolt now and then, down to 2800 mV.
fn drain(battery_mv: &mut u16, rng: &mut StdRng) {
    if *battery_mv > 2800 && rng.gen_bool(0.05) {
        *battery_mv -= 1;
    }
}

impl Telemetry {
    fn new(kind: DeviceKind, rng: &mut StdRng) -> Self {
        let battery_mv = rng.gen_range(3300..=3650);
        match kind {
            DeviceKind::WaterMeter => {
                Telemetry::WaterMeter { index_l: rng.gen_range(50_000..=900_000), battery_mv, flowing_for: 0 }
            }
            DeviceKind::RiverLevel => Telemetry::RiverLevel {
                level_cm: rng.gen_range(80..=250),
                trend_cm: 0,
                temp_dc: rng.gen_range(60..=180),
                battery_mv,
            },
            DeviceKind::WasteFill => Telemetry::WasteFill {
                fill: rng.gen_range(0..=60),
                temp_c: rng.gen_range(5..=25),
                battery_mv,
            },
            DeviceKind::LightingCabinet => Telemetry::LightingCabinet {
                lit: rng.gen_bool(0.5),
                circuits: 0,
                energy_wh: rng.gen_range(1_000_000..=9_000_000),
                mains_dv: 2300,
                battery_mv,
            },
        }
    }

    /// Advances the readings by one uplink and encodes them (layouts on `DeviceKind`).
    fn next_payload(&mut self, rng: &mut StdRng) -> Vec<u8> {
        match self {
            Telemetry::WaterMeter { index_l, battery_mv, flowing_for } => {
                let used: u32 = if rng.gen_bool(0.4) { 0 } else { rng.gen_range(1..=40) };
                *index_l = index_l.wrapping_add(used);
                *flowing_for = if used > 0 { *flowing_for + 1 } else { 0 };
                drain(battery_mv, rng);
                let flags = u8::from(*flowing_for >= 24) | (u8::from(*battery_mv < 3000) << 1);
                let mut p = index_l.to_be_bytes().to_vec();
                p.extend_from_slice(&battery_mv.to_be_bytes());
                p.push(flags);
                p
            }
            Telemetry::RiverLevel { level_cm, trend_cm, temp_dc, battery_mv } => {
                if rng.gen_bool(0.1) {
                    *trend_cm = rng.gen_range(-1..=1);
                }
                *level_cm = (*level_cm + *trend_cm + rng.gen_range(-2..=2)).clamp(0, 800);
                *temp_dc = (*temp_dc + rng.gen_range(-2..=2)).clamp(-20, 300);
                drain(battery_mv, rng);
                let mut p = level_cm.to_be_bytes().to_vec();
                p.extend_from_slice(&temp_dc.to_be_bytes());
                p.extend_from_slice(&battery_mv.to_be_bytes());
                p
            }
            Telemetry::WasteFill { fill, temp_c, battery_mv } => {
                *fill = if *fill >= 90 && rng.gen_bool(0.3) {
                    rng.gen_range(0..=5) // emptied by the collection round
                } else {
                    (*fill + rng.gen_range(0..=3)).min(100)
                };
                *temp_c = (*temp_c + rng.gen_range(-1..=1)).clamp(-15, 50);
                drain(battery_mv, rng);
                let mut p = vec![*fill, temp_c.to_be_bytes()[0]];
                p.extend_from_slice(&battery_mv.to_be_bytes());
                p
            }
            Telemetry::LightingCabinet { lit, circuits, energy_wh, mains_dv, battery_mv } => {
                if rng.gen_bool(0.05) {
                    *lit = !*lit; // dusk or dawn
                }
                *circuits = if *lit { 0x0f } else { 0x00 };
                if *lit && rng.gen_bool(0.02) {
                    *circuits &= !(1 << rng.gen_range(0..4)); // a tripped breaker
                }
                let on = circuits.count_ones();
                *energy_wh = energy_wh.wrapping_add(on * rng.gen_range(15..=35));
                *mains_dv = (2300 + rng.gen_range(-60..=60)) as u16;
                drain(battery_mv, rng);
                let mode = 0; // astronomical clock
                let mut p = vec![*circuits, mode];
                p.extend_from_slice(&energy_wh.to_be_bytes());
                p.extend_from_slice(&mains_dv.to_be_bytes());
                p
            }
        }
    }
}

/// The random stream of device `index`, independent of how uplinks interleave.
fn device_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A device while the radio runs.
struct DeviceRun {
    config: SimDevice,
    state: DeviceState,
    telemetry: Telemetry,
    rng: StdRng,
    /// Data uplinks sent (what `count` limits).
    sent: u64,
    /// Mean RSSI at this gateway (the device's distance), dBm.
    rssi_base: i16,
}

/// Where a device stands; the session stays inside the radio.
#[derive(Clone, Copy, Debug)]
enum DeviceState {
    /// Sends data with this session; `fcnt` goes into the next uplink.
    Active { keys: SessionKeys, fcnt: u32 },
    /// OTAA, not joined yet: `next_dev_nonce` goes into the next JoinRequest;
    /// `pending` is the DevNonce of the last one sent, which a JoinAccept answers.
    Joining { otaa: SimOtaa, next_dev_nonce: u16, pending: Option<u16> },
}

/// What a device just put on air, for the log and the counters.
#[derive(Clone, Copy, Debug)]
enum Sent {
    JoinRequest { dev_nonce: u16 },
    Data { fcnt: u32 },
}

impl DeviceRun {
    fn done(&self) -> bool {
        self.config.count.is_some_and(|c| self.sent >= c)
    }

    /// The next frame: a JoinRequest while joining, a data uplink once active.
    fn next_phy_payload(&mut self) -> Result<(Vec<u8>, Sent), RadioError> {
        match &mut self.state {
            DeviceState::Joining { otaa, next_dev_nonce, pending } => {
                let dev_nonce = *next_dev_nonce;
                *pending = Some(dev_nonce);
                *next_dev_nonce = dev_nonce.wrapping_add(1);
                let phy = build_join_request(otaa.join_eui, otaa.dev_eui, dev_nonce, &otaa.app_key);
                Ok((phy, Sent::JoinRequest { dev_nonce }))
            }
            DeviceState::Active { keys, fcnt } => {
                let payload = self.telemetry.next_payload(&mut self.rng);
                let sent = *fcnt;
                // The 32-bit counter wraps like a device's; only its low 16 bits go on air.
                *fcnt = fcnt.wrapping_add(1);
                let phy = build_data_uplink(
                    &DataUplink {
                        dev_addr: keys.dev_addr,
                        fcnt: sent,
                        confirmed: self.config.confirmed,
                        adr: true,
                        f_port: self.config.f_port,
                        payload: &payload,
                    },
                    &keys.nwk_s_key,
                    &keys.app_s_key,
                )
                .map_err(|e| RadioError::Failed(format!("sim device {:?}: {e}", self.config.name)))?;
                Ok((phy, Sent::Data { fcnt: sent }))
            }
        }
    }

    /// Tries a downlink as the JoinAccept this device waits for; true when
    /// it opened with the AppKey and the device joined.
    fn try_join(&mut self, phy_payload: &[u8]) -> bool {
        let DeviceState::Joining { otaa, pending: Some(dev_nonce), .. } = self.state else {
            return false;
        };
        let Ok(accept) = open_join_accept(phy_payload, &otaa.app_key) else {
            return false;
        };
        let keys = derive_session_keys(&otaa.app_key, &accept, dev_nonce);
        info!(
            device = %self.config.name,
            dev_eui = %otaa.dev_eui,
            dev_addr = %keys.dev_addr,
            dev_nonce,
            "sim radio: device joined"
        );
        self.state = DeviceState::Active { keys, fcnt: 0 };
        true
    }
}

/// Salt for the stream that draws a device's first DevNonce, apart from its
/// telemetry stream so that joining does not change the readings it sends.
const DEV_NONCE_SALT: u64 = 0x6a6f_696e_6e6f_6e63;

/// The simulated radio; `start` runs it until the pipeline closes its channels.
#[derive(Clone, Debug)]
pub struct SimRadio {
    config: SimConfig,
}

impl SimRadio {
    /// A simulated radio for a configuration that passes `SimConfig::validate`.
    pub fn new(config: SimConfig) -> Result<SimRadio, SimError> {
        config.validate()?;
        Ok(SimRadio { config })
    }

    /// The configuration the radio runs.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    async fn run(self, io: RadioIo) -> Result<(), RadioError> {
        let RadioIo { uplinks, mut downlinks, tx_acks, .. } = io;
        let SimConfig { devices, frequencies, seed } = self.config;
        let seed = seed.unwrap_or_else(rand::random);
        info!(devices = devices.len(), seed, "sim radio: started");
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();

        let mut devices: Vec<DeviceRun> = devices
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let mut device_rng = StdRng::seed_from_u64(device_seed(seed, i));
                // `new` validated the configuration; a refusal here is still reported, not trusted away.
                let state = match config.activation().map_err(|e| RadioError::Start(e.to_string()))? {
                    Activation::Abp(keys) => DeviceState::Active { keys, fcnt: config.first_fcnt },
                    Activation::Otaa(otaa) => DeviceState::Joining {
                        otaa,
                        next_dev_nonce: otaa.first_dev_nonce.unwrap_or_else(|| {
                            StdRng::seed_from_u64(device_seed(seed, i) ^ DEV_NONCE_SALT).gen()
                        }),
                        pending: None,
                    },
                };
                Ok(DeviceRun {
                    telemetry: Telemetry::new(config.kind, &mut device_rng),
                    config,
                    state,
                    rng: device_rng,
                    sent: 0,
                    rssi_base: rng.gen_range(-110..=-65),
                })
            })
            .collect::<Result<_, RadioError>>()?;
        // Next uplink of each device, earliest first. Devices start spread
        // over their first interval, then keep an absolute schedule so a
        // late wake-up is caught up and rates hold (tokio's Burst behaviour).
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        for (i, d) in devices.iter().enumerate() {
            if !d.done() {
                let offset = rng.gen_range(0..d.config.interval_ms);
                due.push(Reverse((start + Duration::from_millis(offset), i)));
            }
        }

        let mut total: u64 = 0;
        let mut announced_done = false;
        let mut downlinks_open = true;
        loop {
            if due.is_empty() {
                if !announced_done {
                    info!("sim radio: all devices done ({total} uplinks)");
                    announced_done = true;
                }
                if !downlinks_open {
                    return Ok(());
                }
            }
            let next = due.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                biased;
                () = uplinks.closed() => return Ok(()),
                downlink = downlinks.recv(), if downlinks_open => match downlink {
                    Some(downlink) => {
                        // The first device waiting whose AppKey opens it joins; the rest keep trying.
                        let on_time = matches!(
                            downlink.timing.status_at(start.elapsed().as_micros() as u32, SystemTime::now()),
                            TxStatus::Ok
                        );
                        for device in devices.iter_mut().filter(|_| on_time) {
                            if device.try_join(&downlink.phy_payload) {
                                break;
                            }
                        }
                        // Counted like the SX1302's: microseconds since start, wrapping at 32 bits.
                        let counter_now = start.elapsed().as_micros() as u32;
                        acknowledge(&downlink, downlink.timing.status_at(counter_now, SystemTime::now()), &tx_acks).await;
                    }
                    None => downlinks_open = false,
                },
                () = tokio::time::sleep_until(next.unwrap_or(start)), if next.is_some() => {
                    let Some(Reverse((at, i))) = due.pop() else { continue };
                    // `i` came from enumerating `devices`, which never shrinks.
                    let device = &mut devices[i];
                    let (phy_payload, sent) = device.next_phy_payload()?;
                    let channel = rng.gen_range(0..frequencies.len());
                    let rssi = device.rssi_base + rng.gen_range(-5..=5);
                    // SNR follows RSSI from -5 dB near sensitivity to +10 dB close by,
                    // in the concentrator's 0.25 dB steps.
                    let snr = (f32::from(rssi + 115) * 15.0 / 55.0 - 5.0 + rng.gen_range(-1.5..=1.5))
                        .clamp(-5.0, 10.0);
                    let frame = UplinkFrame {
                        phy_payload,
                        frequency: Frequency(frequencies[channel]),
                        modulation: Modulation::Lora {
                            spreading_factor: device.config.spreading_factor,
                            bandwidth: 125_000,
                            code_rate: CodeRate::Cr4_5,
                        },
                        rssi,
                        snr: (snr * 4.0).round() / 4.0,
                        crc: CrcStatus::Ok,
                        channel: u8::try_from(channel).unwrap_or(u8::MAX),
                        rf_chain: 0,
                        board: 0,
                        // Wraps every ~71.6 minutes, like the SX1302 counter.
                        counter_us: start.elapsed().as_micros() as u32,
                        received_at: SystemTime::now(),
                    };
                    match sent {
                        Sent::Data { fcnt } => {
                            debug!(device = %device.config.name, fcnt, frequency = %frame.frequency, "sim radio: uplink");
                        }
                        Sent::JoinRequest { dev_nonce } => {
                            debug!(device = %device.config.name, dev_nonce, frequency = %frame.frequency, "sim radio: join request");
                        }
                    }
                    if uplinks.send(frame).await.is_err() {
                        return Ok(());
                    }
                    if matches!(sent, Sent::Data { .. }) {
                        device.sent += 1;
                    }
                    total += 1;
                    if !device.done() {
                        due.push(Reverse((at + Duration::from_millis(device.config.interval_ms), i)));
                    }
                }
            }
        }
    }
}

/// Pretends to transmit a downlink when its timing allows, and answers.
async fn acknowledge(downlink: &DownlinkFrame, status: TxStatus, tx_acks: &tokio::sync::mpsc::Sender<TxAck>) {
    if status == TxStatus::Ok {
        info!(
            downlink_id = downlink.downlink_id,
            frequency = %downlink.frequency,
            bytes = downlink.phy_payload.len(),
            "sim radio: downlink transmitted (simulated)"
        );
    } else {
        info!(downlink_id = downlink.downlink_id, ?status, "sim radio: downlink refused, not transmitted");
    }
    let ack = TxAck { downlink_id: downlink.downlink_id, status };
    if tx_acks.send(ack).await.is_err() {
        debug!("sim radio: nobody listens for tx acks any more");
    }
}

impl RadioSource for SimRadio {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn start(self: Box<Self>, io: RadioIo) -> RadioTask {
        Box::pin(self.run(io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::UplinkFilter;
    use crate::frame::TxTiming;
    use crate::phy::{self, CryptoError, PhyFrame};
    use crate::security::{
        build_join_accept, verify_join_request, verify_uplink, JoinAccept, JoinRequestFields,
    };
    use std::collections::HashMap;
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tracing::field::{Field, Visit};

    struct Harness {
        uplinks: mpsc::Receiver<UplinkFrame>,
        downlinks: mpsc::Sender<DownlinkFrame>,
        tx_acks: mpsc::Receiver<TxAck>,
        task: JoinHandle<Result<(), RadioError>>,
    }

    fn start(config: SimConfig, capacity: usize) -> Harness {
        let (up_tx, uplinks) = mpsc::channel(capacity);
        let (downlinks, down_rx) = mpsc::channel(8);
        let (ack_tx, tx_acks) = mpsc::channel(8);
        let radio = Box::new(SimRadio::new(config).unwrap());
        assert_eq!(radio.kind(), "sim");
        let task = tokio::spawn(radio.start(RadioIo {
            uplinks: up_tx,
            downlinks: down_rx,
            tx_acks: ack_tx,
            taken: None,
        }));
        Harness { uplinks, downlinks, tx_acks, task }
    }

    fn one_device(interval_ms: u64, count: Option<u64>) -> SimConfig {
        let mut device = example_devices().remove(0);
        device.interval_ms = interval_ms;
        device.count = count;
        SimConfig { devices: vec![device], frequencies: default_frequencies(), seed: Some(7) }
    }

    /// The session of an ABP device.
    fn abp_keys(d: &SimDevice) -> SessionKeys {
        match d.activation() {
            Ok(Activation::Abp(keys)) => keys,
            other => panic!("{} is not a valid ABP device: {other:?}", d.name),
        }
    }

    /// What device `index` of a radio seeded with `seed` sends, in clear.
    fn expected_payloads(seed: u64, index: usize, kind: DeviceKind, n: usize) -> Vec<Vec<u8>> {
        let mut rng = StdRng::seed_from_u64(device_seed(seed, index));
        let mut t = Telemetry::new(kind, &mut rng);
        (0..n).map(|_| t.next_payload(&mut rng)).collect()
    }

    fn downlink(id: u32) -> DownlinkFrame {
        downlink_carrying(id, vec![0x60, 1, 2, 3, 4, 0, 0, 0, 9, 9, 9, 9])
    }

    fn downlink_carrying(id: u32, phy_payload: Vec<u8>) -> DownlinkFrame {
        DownlinkFrame {
            downlink_id: id,
            phy_payload,
            frequency: Frequency(869_525_000),
            modulation: Modulation::Lora {
                spreading_factor: 12,
                bandwidth: 125_000,
                code_rate: CodeRate::Cr4_5,
            },
            power_dbm: 14,
            timing: TxTiming::Immediately,
            invert_iq: true,
            board: 0,
            antenna: 0,
        }
    }

    /// Collects the message of every event logged on this thread.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<String>>>);

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl tracing::Subscriber for Logs {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[tokio::test(start_paused = true)]
    async fn sim_frames_parse_pass_the_filter_and_decrypt_to_the_generated_payloads() {
        let mut devices = example_devices();
        for d in &mut devices {
            d.count = Some(6);
            d.interval_ms = 50;
        }
        // Crosses the 16-bit boundary: on air 65534, 65535, 0, 1, ...
        devices[1].first_fcnt = 65_534;
        devices[3].confirmed = true;
        let config =
            SimConfig { devices: devices.clone(), frequencies: default_frequencies(), seed: Some(42) };
        let mut h = start(config, 64);
        let filter = UplinkFilter::new(toml::from_str("dev_addr_prefixes = [\"26000000/7\"]").unwrap());
        let mut seen: HashMap<usize, Vec<u32>> = HashMap::new();
        for _ in 0..24 {
            let frame = h.uplinks.recv().await.unwrap();
            let phy = filter.check(&frame).unwrap();
            let PhyFrame::Data(data) = phy else { panic!("not a data frame: {phy:?}") };
            let i = devices.iter().position(|d| d.dev_addr == Some(data.dev_addr)).unwrap();
            let d = &devices[i];
            let keys = abp_keys(d);
            assert!(data.mtype.is_uplink());
            assert_eq!(data.f_port, Some(2));
            assert_eq!(
                data.mtype,
                if d.confirmed { phy::MType::ConfirmedDataUp } else { phy::MType::UnconfirmedDataUp }
            );
            assert_eq!(
                frame.modulation,
                Modulation::Lora {
                    spreading_factor: d.spreading_factor,
                    bandwidth: 125_000,
                    code_rate: CodeRate::Cr4_5
                }
            );
            assert_eq!(default_frequencies()[usize::from(frame.channel)], frame.frequency.0);
            assert!((-115..=-60).contains(&frame.rssi), "rssi {}", frame.rssi);
            assert!((-5.0..=10.0).contains(&frame.snr), "snr {}", frame.snr);

            let n = seen.entry(i).or_default();
            let fcnt = d.first_fcnt.wrapping_add(n.len() as u32);
            assert_eq!(u32::from(data.fcnt), fcnt & 0xffff);
            let clear =
                phy::verify_and_decrypt(&frame.phy_payload, &keys.nwk_s_key, &keys.app_s_key, fcnt).unwrap();
            let expected = expected_payloads(42, i, d.kind, n.len() + 1);
            assert_eq!(Some(&clear), expected.last());
            assert_eq!(
                phy::verify_and_decrypt(&frame.phy_payload, &keys.app_s_key, &keys.app_s_key, fcnt),
                Err(CryptoError::MicMismatch),
                "the AppSKey is not the NwkSKey"
            );
            n.push(fcnt);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[&1], vec![65_534, 65_535, 65_536, 65_537, 65_538, 65_539]);
        drop(h.uplinks);
        assert!(h.task.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn sim_with_count_sends_exactly_that_many_then_reports_done_and_ends_when_channels_close() {
        let logs = Logs::default();
        let _guard = tracing::subscriber::set_default(logs.clone());
        let mut h = start(one_device(1_000, Some(3)), 8);
        for _ in 0..3 {
            assert!(h.uplinks.recv().await.is_some());
        }
        let more = tokio::time::timeout(Duration::from_secs(3_600), h.uplinks.recv()).await;
        assert!(more.is_err(), "a 4th frame arrived: {more:?}");
        // Still a transmitter after the devices are done.
        h.downlinks.send(downlink(77)).await.unwrap();
        assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 77, status: TxStatus::Ok }));
        drop(h.downlinks);
        assert!(h.task.await.unwrap().is_ok());
        let logs = logs.0.lock().unwrap();
        let done: Vec<_> = logs.iter().filter(|m| m.contains("all devices done")).collect();
        assert_eq!(done, vec!["sim radio: all devices done (3 uplinks)"]);
    }

    #[tokio::test]
    async fn a_downlink_whose_counter_time_has_passed_is_answered_too_late() {
        let mut h = start(one_device(60_000, None), 8);
        let mut stale = downlink(41);
        // An answer to an uplink heard before this radio started: its time has passed.
        stale.timing = TxTiming::Counter(u32::MAX - 10);
        h.downlinks.send(stale).await.unwrap();
        assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 41, status: TxStatus::TooLate }));
        let mut ahead = downlink(42);
        ahead.timing = TxTiming::Counter(30_000_000);
        h.downlinks.send(ahead).await.unwrap();
        assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 42, status: TxStatus::Ok }));
    }

    #[tokio::test(start_paused = true)]
    async fn sim_answers_every_downlink_with_an_ok_ack_and_stops_when_uplinks_close() {
        let mut h = start(one_device(10_000, None), 8);
        for id in 1..=5 {
            h.downlinks.send(downlink(id)).await.unwrap();
            let ack = h.tx_acks.recv().await.unwrap();
            assert_eq!((ack.downlink_id, ack.status), (id, TxStatus::Ok));
        }
        drop(h.uplinks);
        assert!(h.task.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn sim_sends_50_frames_per_second_at_a_20_ms_interval() {
        let mut h = start(one_device(20, None), 1_000);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let mut n = 0;
        while h.uplinks.try_recv().is_ok() {
            n += 1;
        }
        assert!((49..=51).contains(&n), "{n} frames in one second");
    }

    #[tokio::test(start_paused = true)]
    async fn sim_catches_up_after_the_pipeline_stalls() {
        let mut h = start(one_device(20, None), 1);
        let deadline = Instant::now() + Duration::from_millis(1_000);
        // The pipeline does not read for half a second...
        tokio::time::sleep(Duration::from_millis(500)).await;
        // ...then drains as fast as frames come.
        let mut n = 0;
        loop {
            tokio::select! {
                biased;
                f = h.uplinks.recv() => { f.unwrap(); n += 1; }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        assert!((49..=51).contains(&n), "{n} frames in one second");
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_gives_the_same_frames() {
        let mut config = one_device(100, Some(10));
        config.devices.push(example_devices().remove(2));
        // Its DevNonces come from the seed too.
        config.devices.push(otaa_device("joiner", AesKey([0x42; 16]), None));
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut h = start(config.clone(), 32);
            let mut frames = Vec::new();
            for _ in 0..12 {
                let f = h.uplinks.recv().await.unwrap();
                frames.push((f.phy_payload, f.frequency, f.rssi, f.snr.to_bits()));
            }
            runs.push(frames);
        }
        assert_eq!(runs[0], runs[1]);
    }

    const JOIN_EUI: Eui64 = Eui64([0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0x00, 0x00, 0x00]);

    /// An OTAA river level probe, DevEUI from its AppKey's first byte.
    fn otaa_device(name: &str, app_key: AesKey, first_dev_nonce: Option<u16>) -> SimDevice {
        SimDevice {
            name: name.to_owned(),
            kind: DeviceKind::RiverLevel,
            dev_addr: None,
            nwk_s_key: None,
            app_s_key: None,
            otaa: Some(SimOtaa {
                dev_eui: Eui64::from_u64(0x0004_a30b_0000_0000 | u64::from(app_key.0[0])),
                join_eui: JOIN_EUI,
                app_key,
                first_dev_nonce,
            }),
            f_port: 2,
            interval_ms: 1_000,
            count: None,
            first_fcnt: 0,
            spreading_factor: 9,
            confirmed: false,
        }
    }

    fn join_accept(dev_addr: u32) -> JoinAccept {
        JoinAccept {
            join_nonce: 0x00_0a01,
            net_id: 0x00_0013,
            dev_addr: DevAddr::from_u32(dev_addr),
            dl_settings: 0,
            rx_delay: 1,
            cf_list: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn otaa_device_joins_on_its_join_accept_and_sends_data_that_verifies() {
        let logs = Logs::default();
        let _guard = tracing::subscriber::set_default(logs.clone());
        let app_key = AesKey([0x42; 16]);
        let mut device = otaa_device("sonde-otaa", app_key, Some(0x0100));
        device.count = Some(3);
        let dev_eui = device.otaa.unwrap().dev_eui;
        let mut h =
            start(SimConfig { devices: vec![device], frequencies: default_frequencies(), seed: Some(11) }, 8);

        // Unanswered, it keeps asking, one DevNonce up each time.
        for dev_nonce in [0x0100, 0x0101] {
            let f = h.uplinks.recv().await.unwrap();
            assert_eq!(
                verify_join_request(&f.phy_payload, &app_key).unwrap(),
                JoinRequestFields { join_eui: JOIN_EUI, dev_eui, dev_nonce }
            );
        }
        let accept = join_accept(0x260b_1a10);
        let phy = build_join_accept(&accept, &app_key).unwrap();
        h.downlinks.send(downlink_carrying(5, phy)).await.unwrap();
        assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: 5, status: TxStatus::Ok }));

        // The network server derives the session from the last JoinRequest.
        let keys = derive_session_keys(&app_key, &accept, 0x0101);
        let expected = expected_payloads(11, 0, DeviceKind::RiverLevel, 3);
        let mut last = None;
        for payload in &expected {
            let f = h.uplinks.recv().await.unwrap();
            let up = verify_uplink(&f.phy_payload, &keys, last).unwrap();
            assert_eq!((up.fcnt, up.f_port), (last.map_or(0, |l| l + 1), Some(2)));
            assert_eq!(&up.payload, payload);
            last = Some(up.fcnt);
        }
        assert!(tokio::time::timeout(Duration::from_secs(60), h.uplinks.recv()).await.is_err(), "count is 3");
        drop(h.uplinks);
        assert!(h.task.await.unwrap().is_ok());
        let logs = logs.0.lock().unwrap();
        assert_eq!(logs.iter().filter(|m| *m == "sim radio: device joined").count(), 1);
        assert!(logs.iter().any(|m| m == "sim radio: all devices done (5 uplinks)"), "{logs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn join_accepts_for_other_keys_and_other_downlinks_are_acked_but_ignored() {
        let app_key = AesKey([0x42; 16]);
        let mut h = start(
            SimConfig {
                devices: vec![otaa_device("sonde-otaa", app_key, Some(7))],
                frequencies: default_frequencies(),
                seed: Some(3),
            },
            8,
        );
        let f = h.uplinks.recv().await.unwrap();
        assert_eq!(verify_join_request(&f.phy_payload, &app_key).unwrap().dev_nonce, 7);
        let foreign = build_join_accept(&join_accept(0x260b_1a11), &AesKey([0x43; 16])).unwrap();
        h.downlinks.send(downlink_carrying(1, foreign)).await.unwrap();
        h.downlinks.send(downlink(2)).await.unwrap();
        for id in [1, 2] {
            assert_eq!(h.tx_acks.recv().await, Some(TxAck { downlink_id: id, status: TxStatus::Ok }));
        }
        for dev_nonce in [8, 9] {
            let f = h.uplinks.recv().await.unwrap();
            let parsed = phy::parse(&f.phy_payload).unwrap();
            assert_eq!(parsed.mtype(), phy::MType::JoinRequest, "still joining");
            assert_eq!(verify_join_request(&f.phy_payload, &app_key).unwrap().dev_nonce, dev_nonce);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_accept_joins_only_the_device_whose_key_opens_it() {
        let (key_a, key_b) = (AesKey([0xa0; 16]), AesKey([0xb0; 16]));
        let mut h = start(
            SimConfig {
                devices: vec![otaa_device("a", key_a, Some(1)), otaa_device("b", key_b, Some(1))],
                frequencies: default_frequencies(),
                seed: Some(5),
            },
            8,
        );
        // Both have asked once.
        for _ in 0..2 {
            assert_eq!(
                phy::parse(&h.uplinks.recv().await.unwrap().phy_payload).unwrap().mtype(),
                phy::MType::JoinRequest
            );
        }
        let accept = join_accept(0x260b_1a0b);
        h.downlinks.send(downlink_carrying(9, build_join_accept(&accept, &key_b).unwrap())).await.unwrap();
        assert_eq!(h.tx_acks.recv().await.map(|a| a.status), Some(TxStatus::Ok));
        let keys_b = derive_session_keys(&key_b, &accept, 1);
        let (mut joins_a, mut data_b) = (0, 0u32);
        for _ in 0..6 {
            let f = h.uplinks.recv().await.unwrap();
            match phy::parse(&f.phy_payload).unwrap() {
                PhyFrame::JoinRequest(j) => {
                    assert_eq!(verify_join_request(&f.phy_payload, &key_a).unwrap().dev_nonce, j.dev_nonce);
                    joins_a += 1;
                }
                PhyFrame::Data(_) => {
                    let up = verify_uplink(&f.phy_payload, &keys_b, data_b.checked_sub(1)).unwrap();
                    assert_eq!(up.fcnt, data_b);
                    data_b += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((joins_a, data_b), (3, 3));
    }

    /// Big-endian helpers for reading payloads back by their documented layout.
    fn be16(p: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([p[at], p[at + 1]])
    }

    #[test]
    fn each_kind_produces_plausible_evolving_readings() {
        let n = 2_000;
        let water = expected_payloads(1, 0, DeviceKind::WaterMeter, n);
        let mut last = 0u32;
        for p in &water {
            assert_eq!(p.len(), 7);
            let index = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            assert!(index >= last && (50_000..=1_000_000).contains(&index));
            assert!((2800..=3650).contains(&be16(p, 4)));
            assert_eq!(p[6] & !0x03, 0, "only flag bits 0 and 1 are used");
            last = index;
        }
        let river = expected_payloads(1, 1, DeviceKind::RiverLevel, n);
        for p in &river {
            assert_eq!(p.len(), 6);
            assert!((0..=800).contains(&(be16(p, 0) as i16)));
            assert!((-20..=300).contains(&(be16(p, 2) as i16)));
        }
        assert!(river.windows(2).any(|w| w[0][..2] != w[1][..2]), "the level moves");
        let waste = expected_payloads(1, 2, DeviceKind::WasteFill, n);
        for p in &waste {
            assert_eq!(p.len(), 4);
            assert!(p[0] <= 100);
            assert!((-15..=50).contains(&(p[1] as i8)));
        }
        assert!(waste.windows(2).any(|w| w[1][0] < w[0][0]), "the container gets emptied");
        let light = expected_payloads(1, 3, DeviceKind::LightingCabinet, n);
        let mut last = 0u32;
        for p in &light {
            assert_eq!(p.len(), 8);
            assert_eq!(p[0] & 0xf0, 0, "4 circuits");
            assert!(p[1] <= 3);
            let energy = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            assert!(energy >= last);
            assert!((2240..=2360).contains(&be16(p, 6)));
            last = energy;
        }
        assert!(light.iter().any(|p| p[0] == 0x0f) && light.iter().any(|p| p[0] == 0));
    }

    #[test]
    fn config_reads_from_toml_with_defaults() {
        let config: SimConfig = toml::from_str(
            r#"
            [[devices]]
            name = "compteur"
            kind = "water_meter"
            dev_addr = "26011BDA"
            nwk_s_key = "2b7e151628aed2a6abf7158809cf4f3c"
            app_s_key = "00112233445566778899aabbccddeeff"
            interval_ms = 20
            "#,
        )
        .unwrap();
        assert_eq!(config.frequencies.len(), 8);
        assert_eq!(config.seed, None);
        let d = &config.devices[0];
        assert_eq!((d.f_port, d.spreading_factor, d.first_fcnt), (2, 7, 0));
        assert_eq!((d.count, d.confirmed), (None, false));
        assert!(SimRadio::new(config).is_ok());
    }

    #[test]
    fn otaa_config_reads_from_toml_and_abp_keys_stay_optional() {
        let config: SimConfig = toml::from_str(
            r#"
            [[devices]]
            name = "sonde"
            kind = "river_level"
            otaa = { dev_eui = "0004A30B001C0530", join_eui = "70b3d57ed0000000", app_key = "2b7e151628aed2a6abf7158809cf4f3c" }
            interval_ms = 60000
            "#,
        )
        .unwrap();
        let d = &config.devices[0];
        assert_eq!((d.dev_addr, d.nwk_s_key, d.app_s_key), (None, None, None));
        let otaa = d.otaa.unwrap();
        assert_eq!(otaa.dev_eui.to_string(), "0004a30b001c0530");
        assert_eq!(otaa.first_dev_nonce, None);
        assert!(SimRadio::new(config.clone()).is_ok());
        // It writes back without the absent ABP keys, and reads the same.
        let text = toml::to_string(&config).unwrap();
        assert!(!text.contains("dev_addr"), "{text}");
        assert_eq!(toml::from_str::<SimConfig>(&text).unwrap(), config);

        let unknown = toml::from_str::<SimConfig>(
            "[[devices]]\nname = \"x\"\nkind = \"river_level\"\ninterval_ms = 1000\n\
             otaa = { dev_eui = \"0004a30b001c0530\", join_eui = \"70b3d57ed0000000\", \
             app_key = \"2b7e151628aed2a6abf7158809cf4f3c\", nwk_key = \"00\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("unknown field `nwk_key`"), "{unknown}");
    }

    #[test]
    fn config_refuses_mixed_or_missing_activation() {
        let bad = |d: SimDevice| {
            SimRadio::new(SimConfig { devices: vec![d], frequencies: default_frequencies(), seed: None })
                .unwrap_err()
                .to_string()
        };
        let otaa = otaa_device("sonde", AesKey([1; 16]), None);
        let abp = example_devices().remove(0);
        assert_eq!(
            bad(SimDevice { dev_addr: abp.dev_addr, app_s_key: abp.app_s_key, ..otaa.clone() }),
            "sim device \"sonde\": has both `otaa` and ABP keys (dev_addr, app_s_key); an OTAA device gets its \
             DevAddr and session keys from the join, so remove them, or remove `otaa` to use ABP"
        );
        assert_eq!(
            bad(SimDevice { nwk_s_key: None, app_s_key: None, ..abp.clone() }),
            "sim device \"compteur-eau-mairie\": no activation; ABP needs dev_addr, nwk_s_key and app_s_key \
             (missing: nwk_s_key, app_s_key), OTAA needs otaa = { dev_eui = \"...\", join_eui = \"...\", app_key = \"...\" }"
        );
        assert!(
            bad(SimDevice { otaa: None, ..otaa.clone() }).contains("missing: dev_addr, nwk_s_key, app_s_key")
        );
        assert_eq!(
            bad(SimDevice { first_fcnt: 10, ..otaa }),
            "sim device \"sonde\": first_fcnt is for ABP devices; an OTAA session always starts at frame counter 0"
        );
        // An ABP device written the old way still reads (config_reads_from_toml_with_defaults).
        let missing = toml::from_str::<SimConfig>(
            "[[devices]]\nname = \"x\"\nkind = \"water_meter\"\ndev_addr = \"26011bda\"\ninterval_ms = 1000\n",
        )
        .unwrap();
        assert!(SimRadio::new(missing).unwrap_err().to_string().contains("missing: nwk_s_key, app_s_key"));
    }

    #[test]
    fn config_errors_name_the_device_and_the_fix() {
        let bad = |f: &dyn Fn(&mut SimConfig)| {
            let mut c = one_device(1_000, None);
            f(&mut c);
            SimRadio::new(c).unwrap_err().to_string()
        };
        assert_eq!(
            bad(&|c| c.devices[0].interval_ms = 0),
            "sim device \"compteur-eau-mairie\": interval_ms must be at least 1"
        );
        assert_eq!(
            bad(&|c| c.devices[0].spreading_factor = 13),
            "sim device \"compteur-eau-mairie\": spreading_factor 13 is not supported; use 7 to 12"
        );
        assert!(bad(&|c| c.devices[0].spreading_factor = 6).contains("use 7 to 12"));
        assert!(bad(&|c| c.devices[0].f_port = 0).contains("f_port 0 is not an application port"));
        assert!(bad(&|c| c.frequencies.clear()).contains("`frequencies` is empty"));
        assert_eq!(
            bad(&|c| c.devices.push(c.devices[0].clone())),
            "two sim devices are named \"compteur-eau-mairie\"; device names must be unique"
        );
        let unknown =
            toml::from_str::<SimConfig>("devices = []\nfrequency = [868100000]").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `frequency`"), "{unknown}");
        let kind = toml::from_str::<SimConfig>(
            "[[devices]]\nname = \"x\"\nkind = \"gas_meter\"\ndev_addr = \"26011bda\"\n\
             nwk_s_key = \"00112233445566778899aabbccddeeff\"\n\
             app_s_key = \"00112233445566778899aabbccddeeff\"\ninterval_ms = 1000\n",
        )
        .unwrap_err()
        .to_string();
        assert!(kind.contains("unknown variant `gas_meter`"), "{kind}");
    }

    #[test]
    fn example_devices_are_valid_and_inside_the_demo_prefix() {
        let devices = example_devices();
        let prefix: crate::filter::DevAddrPrefix = "26000000/7".parse().unwrap();
        let kinds: HashSet<_> = devices.iter().map(|d| d.kind).collect();
        assert_eq!(kinds.len(), 4);
        for d in &devices {
            let keys = abp_keys(d);
            assert!(prefix.matches(keys.dev_addr), "{}", keys.dev_addr);
            assert!((1_000..=5_000).contains(&d.interval_ms));
            assert_ne!(keys.nwk_s_key, keys.app_s_key);
        }
        assert!(SimRadio::new(SimConfig { devices, frequencies: default_frequencies(), seed: None }).is_ok());
    }
}
