//! The `[radio.sim]` configuration: the virtual devices (kind, ABP keys or OTAA
//! identity, port, interval, count, spreading factor) and the channels they use, the
//! checks that name the culprit and the fix, the one activation each device resolves
//! to, and the four devices `berrygw demo` runs.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::phy::{AesKey, DevAddr, Eui64};
use crate::security::SessionKeys;

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
pub(super) enum Activation {
    Abp(SessionKeys),
    Otaa(SimOtaa),
}

impl SimDevice {
    /// The one activation the device is configured with, or why not.
    pub(super) fn activation(&self) -> Result<Activation, SimError> {
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
