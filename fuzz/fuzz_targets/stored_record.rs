//! Stored journal records, structure-aware: ChirpStack `UplinkFrame` and
//! `GatewayStats` messages built with extreme times, sizes and enum values
//! (byte-level fuzzing rarely reaches a well-formed message with a year-300000
//! timestamp), plus raw bytes under any kind. Each record goes through every
//! sink's translation: Semtech UDP (`wire_object`, then the PUSH_DATA encoder)
//! and the MQTT sinks (`Protocol::publication`, ChirpStack protobuf/JSON and app).
#![no_main]

use arbitrary::Arbitrary;
use berrygw::config::PayloadFormat;
use berrygw::journal::{Record, Seq};
use berrygw::events::AppTopics;
use berrygw::sink::chirpstack::Topics;
use berrygw::sink::mqtt::Protocol;
use berrygw::sink::semtech_udp::{wire_object, WireObject};
use berrygw_fuzz::{extreme_i32, extreme_i64, Time};
use berrygw_lora::gwmp::codec::{Datagram, Packet, PROTOCOL_V2};
use berrygw_lora::Eui64;
use chirpstack_api::gw;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Modulation {
    None,
    Lora { spreading_factor: u32, bandwidth: u32, code_rate: i32 },
    Fsk { datarate: u32, frequency_deviation: u32 },
    LrFhss,
}

#[derive(Arbitrary, Debug)]
struct Uplink {
    phy_payload: Vec<u8>,
    frequency: u32,
    modulation: Modulation,
    gw_time: Time,
    rssi: (u8, i32),
    snr: f32,
    channel: u32,
    rf_chain: u32,
    board: u32,
    context: Vec<u8>,
    crc_status: i32,
    metadata: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug)]
struct Stats {
    time: Time,
    location: Option<(f64, f64, f64)>,
    counts: [u32; 4],
    metadata: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Uplink(Uplink),
    Stats(Stats),
    Raw(Vec<u8>),
}

/// The record's kind byte: usually the one its payload was built for, so that
/// built messages reach their sink path, sometimes any byte.
#[derive(Arbitrary, Debug)]
enum Kind {
    Matching,
    Raw(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    seq: u64,
    kind: Kind,
    received_at_ms: (u8, i64),
    payload: Payload,
    ackr: f64,
}

fn uplink(u: Uplink) -> gw::UplinkFrame {
    let parameters = match u.modulation {
        Modulation::None => None,
        Modulation::Lora { spreading_factor, bandwidth, code_rate } => {
            Some(gw::modulation::Parameters::Lora(gw::LoraModulationInfo {
                bandwidth,
                spreading_factor,
                code_rate,
                ..Default::default()
            }))
        }
        Modulation::Fsk { datarate, frequency_deviation } => {
            Some(gw::modulation::Parameters::Fsk(gw::FskModulationInfo { datarate, frequency_deviation }))
        }
        Modulation::LrFhss => Some(gw::modulation::Parameters::LrFhss(Default::default())),
    };
    gw::UplinkFrame {
        phy_payload: u.phy_payload,
        tx_info: Some(gw::UplinkTxInfo {
            frequency: u.frequency,
            modulation: Some(gw::Modulation { parameters }),
        }),
        rx_info: Some(gw::UplinkRxInfo {
            gw_time: u.gw_time.timestamp(),
            rssi: extreme_i32(u.rssi.0, u.rssi.1),
            snr: u.snr,
            channel: u.channel,
            rf_chain: u.rf_chain,
            board: u.board,
            context: u.context,
            crc_status: u.crc_status,
            metadata: u.metadata.into_iter().collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn stats(s: Stats) -> gw::GatewayStats {
    gw::GatewayStats {
        time: s.time.timestamp(),
        location: s.location.map(|(latitude, longitude, altitude)| chirpstack_api::common::Location {
            latitude,
            longitude,
            altitude,
            ..Default::default()
        }),
        rx_packets_received: s.counts[0],
        rx_packets_received_ok: s.counts[1],
        tx_packets_received: s.counts[2],
        tx_packets_emitted: s.counts[3],
        metadata: s.metadata.into_iter().collect(),
        ..Default::default()
    }
}

fuzz_target!(|input: Input| {
    // 1 uplink, 2 stats (ChirpStack and Semtech sinks), 16 app record.
    let (matching, payload) = match input.payload {
        Payload::Uplink(u) => (1, uplink(u).encode_to_vec()),
        Payload::Stats(s) => (2, stats(s).encode_to_vec()),
        Payload::Raw(bytes) => (16, bytes),
    };
    let record = Record {
        seq: Seq(input.seq),
        kind: match input.kind {
            Kind::Matching => matching,
            Kind::Raw(b) => b,
        },
        received_at_ms: extreme_i64(input.received_at_ms.0, input.received_at_ms.1),
        payload,
    };
    if let Ok(object) = wire_object(&record, input.ackr) {
        let (rxpk, stat) = match object {
            WireObject::Rxpk(p) => (vec![p], None),
            WireObject::Stat(s) => (Vec::new(), Some(s)),
        };
        let datagram = Datagram {
            version: PROTOCOL_V2,
            token: 1,
            packet: Packet::PushData { gateway_id: Eui64([1; 8]), rxpk, stat },
        };
        let _ = datagram.encode();
    }
    let protocols = [
        Protocol::Chirpstack {
            topics: Topics::new("eu868", "0016c001ff10a235"),
            format: PayloadFormat::Protobuf,
        },
        Protocol::Chirpstack {
            topics: Topics::new("eu868", "0016c001ff10a235"),
            format: PayloadFormat::Json,
        },
        Protocol::App {
            topics: AppTopics::new("berrygw", "0016c001ff10a235"),
            accept_sessions: false,
            accept_commands: false,
            accept_bundles: false,
            identity: None,
        },
    ];
    for protocol in &protocols {
        let _ = protocol.publication(&record);
    }
});
