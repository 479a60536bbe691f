//! ChirpStack `command/down`, structure-aware: `DownlinkFrame` messages built
//! with extreme delays, GPS times, powers and sizes, sent as protobuf and as
//! JSON (where a duration is a string such as `"--9223372036854775808s"`),
//! plus raw bytes in both formats. `decode_downlink` must answer, never panic,
//! and a refusal of a decoded downlink must carry its TxAck.
#![no_main]

use arbitrary::Arbitrary;
use berrygw::config::PayloadFormat;
use berrygw::sink::chirpstack::{decode_downlink, tx_ack_message};
use berrygw_fuzz::{extreme_i32, Time};
use chirpstack_api::gw;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Timing {
    None,
    Immediately,
    Delay(Time),
    GpsEpoch(Time),
}

#[derive(Arbitrary, Debug)]
enum Modulation {
    None,
    Lora { spreading_factor: u32, bandwidth: u32, code_rate: i32, polarization_inversion: bool },
    Fsk { datarate: u32, frequency_deviation: u32 },
    LrFhss,
}

#[derive(Arbitrary, Debug)]
struct Item {
    phy_payload: Vec<u8>,
    frequency: u32,
    power: (u8, i32),
    modulation: Modulation,
    timing: Timing,
    context: Vec<u8>,
    board: u32,
    antenna: u32,
}

/// A JSON duration string: any text, or signs, edge seconds and a fraction
/// (`"--9223372036854775808s"` is three choices away).
#[derive(Arbitrary, Debug)]
enum DurationText {
    Any(String),
    Built { signs: u8, seconds: (u8, i64), fraction: Option<u32> },
}

impl DurationText {
    fn text(self) -> String {
        match self {
            DurationText::Any(s) => s,
            DurationText::Built { signs, seconds, fraction } => {
                let mut text = "-".repeat(usize::from(signs % 3));
                text.push_str(&berrygw_fuzz::extreme_i64(seconds.0, seconds.1).to_string());
                if let Some(f) = fraction {
                    text.push_str(&format!(".{f}"));
                }
                text.push('s');
                text
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    Built { downlink_id: u32, items: Vec<Item>, json_duration: Option<DurationText> },
    Protobuf(Vec<u8>),
    Json(Vec<u8>),
}

fn item(i: Item) -> gw::DownlinkFrameItem {
    let modulation = match i.modulation {
        Modulation::None => None,
        Modulation::Lora { spreading_factor, bandwidth, code_rate, polarization_inversion } => {
            Some(gw::modulation::Parameters::Lora(gw::LoraModulationInfo {
                bandwidth,
                spreading_factor,
                code_rate,
                polarization_inversion,
                ..Default::default()
            }))
        }
        Modulation::Fsk { datarate, frequency_deviation } => {
            Some(gw::modulation::Parameters::Fsk(gw::FskModulationInfo { datarate, frequency_deviation }))
        }
        Modulation::LrFhss => Some(gw::modulation::Parameters::LrFhss(Default::default())),
    };
    let timing = match i.timing {
        Timing::None => None,
        Timing::Immediately => Some(gw::timing::Parameters::Immediately(Default::default())),
        Timing::Delay(t) => Some(gw::timing::Parameters::Delay(gw::DelayTimingInfo { delay: t.duration() })),
        Timing::GpsEpoch(t) => Some(gw::timing::Parameters::GpsEpoch(gw::GpsEpochTimingInfo {
            time_since_gps_epoch: t.duration(),
        })),
    };
    gw::DownlinkFrameItem {
        phy_payload: i.phy_payload,
        tx_info: Some(gw::DownlinkTxInfo {
            frequency: i.frequency,
            power: extreme_i32(i.power.0, i.power.1),
            modulation: modulation.map(|p| gw::Modulation { parameters: Some(p) }),
            timing: timing.map(|p| gw::Timing { parameters: Some(p) }),
            context: i.context,
            board: i.board,
            antenna: i.antenna,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn decode(payload: &[u8], format: PayloadFormat) {
    match decode_downlink(payload, format) {
        Ok(cmd) => assert!(cmd.shape.chosen < cmd.shape.items),
        Err(e) => {
            if let Some((ack, shape)) = e.refusal() {
                let _ = tx_ack_message("0016c001ff10a235", &ack, shape, format);
            }
        }
    }
}

fuzz_target!(|input: Input| match input {
    Input::Built { downlink_id, items, json_duration } => {
        let msg = gw::DownlinkFrame {
            downlink_id,
            items: items.into_iter().map(item).collect(),
            ..Default::default()
        };
        decode(&msg.encode_to_vec(), PayloadFormat::Protobuf);
        let Ok(mut json) = serde_json::to_string(&msg) else { return };
        if let Some(d) = json_duration {
            // The duration strings pbjson-types parses itself.
            let quoted = serde_json::Value::String(d.text()).to_string();
            json = json.replace("\"delay\":{}", &format!("\"delay\":{{\"delay\":{quoted}}}"));
            json = json.replace("\"immediately\":{}", &format!("\"delay\":{{\"delay\":{quoted}}}"));
        }
        decode(json.as_bytes(), PayloadFormat::Json);
    }
    Input::Protobuf(bytes) => decode(&bytes, PayloadFormat::Protobuf),
    Input::Json(bytes) => decode(&bytes, PayloadFormat::Json),
});
