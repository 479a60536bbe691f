//! A reading: one verified, decrypted, decoded uplink of a known device, as
//! published on the app sink and handed to the rules. The JSON shape is the
//! contract with the data platform (README, "Readings").

use std::collections::BTreeMap;

use berrygw_lora::phy::{DevAddr, Eui64};
use berrygw_lora::{Modulation, UplinkFrame};
use serde::Serialize;

/// One decoded uplink.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reading {
    pub gateway_id: String,
    /// The uplink's per-gateway sequence number (the same as on the network server side).
    pub seq: u64,
    pub device_name: String,
    pub dev_eui: Eui64,
    pub dev_addr: DevAddr,
    pub tags: BTreeMap<String, String>,
    pub f_port: u8,
    /// Full 32-bit uplink counter.
    pub f_cnt: u32,
    pub confirmed: bool,
    /// When the radio received it (RFC 3339, UTC, milliseconds).
    pub received_at: String,
    pub received_at_ms: i64,
    pub rx: RxInfo,
    /// `cayenne_lpp`, `hex`, or the JavaScript file name.
    pub codec: String,
    /// What the codec made of the payload; `null` when it failed (see `errors`).
    pub object: serde_json::Value,
    /// The decrypted payload, hex.
    pub payload_hex: String,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// Radio metadata of the uplink.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RxInfo {
    pub frequency_hz: u32,
    /// `SF9BW125`, `FSK50000`.
    pub data_rate: String,
    pub rssi: i16,
    pub snr: f32,
    pub channel: u8,
}

impl RxInfo {
    /// The metadata of a received frame.
    pub fn of(frame: &UplinkFrame) -> RxInfo {
        RxInfo {
            frequency_hz: frame.frequency.0,
            data_rate: data_rate(&frame.modulation),
            rssi: frame.rssi,
            snr: frame.snr,
            channel: frame.channel,
        }
    }
}

/// `SF7BW125` for LoRa, `FSK50000` for FSK: the label used in readings and metrics.
pub fn data_rate(m: &Modulation) -> String {
    match m {
        Modulation::Lora { spreading_factor, bandwidth, .. } => {
            format!("SF{spreading_factor}BW{}", bandwidth / 1000)
        }
        Modulation::Fsk { datarate, .. } => format!("FSK{datarate}"),
    }
}
