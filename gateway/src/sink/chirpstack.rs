//! The ChirpStack v4 gateway protocol as berrygw speaks it over MQTT: topic
//! names, and the translation between our frame types and the
//! `chirpstack_api::gw` messages (protobuf on disk, protobuf or JSON on the
//! wire). Pure functions; the connection lives in `sink::mqtt`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use berrygw_core::unix_ms;
use berrygw_lora::{
    CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxAck, TxStatus, TxTiming, UplinkFrame,
};
use chirpstack_api::gw;
use chirpstack_api::pbjson_types::{Duration as PbDuration, Timestamp};
use prost::Message;

use crate::journal::Record;
use crate::sink::pace::Sender;
use serde::Deserialize;

/// Encoding of ChirpStack messages on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Protobuf,
    Json,
}

/// Metadata key carrying the per-gateway uplink sequence number.
pub const META_SEQ: &str = "berrygw_seq";
/// Metadata key carrying the original receive time (RFC 3339 is in `gw_time`; this is unix ms).
pub const META_RECEIVED_MS: &str = "berrygw_received_ms";

/// Journal record kinds of the ChirpStack sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Uplink = 1,
    Stats = 2,
}

impl RecordKind {
    /// Kind from its journal byte.
    pub fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Uplink),
            2 => Some(RecordKind::Stats),
            _ => None,
        }
    }

    /// The event name in the topic (`event/<name>`).
    pub fn event(self) -> &'static str {
        match self {
            RecordKind::Uplink => "up",
            RecordKind::Stats => "stats",
        }
    }
}

/// Topic names for one gateway.
#[derive(Clone, Debug)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// `<prefix>/gateway/<gateway_id>`.
    pub fn new(prefix: &str, gateway_id: &str) -> Topics {
        let prefix = prefix.trim_matches('/');
        let base = if prefix.is_empty() {
            format!("gateway/{gateway_id}")
        } else {
            format!("{prefix}/gateway/{gateway_id}")
        };
        Topics { base }
    }

    /// `…/event/<name>`.
    pub fn event(&self, name: &str) -> String {
        format!("{}/event/{name}", self.base)
    }

    /// `…/state/conn` (retained).
    pub fn conn_state(&self) -> String {
        format!("{}/state/conn", self.base)
    }

    /// `…/command/down`.
    pub fn command_down(&self) -> String {
        format!("{}/command/down", self.base)
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn code_rate(cr: CodeRate) -> gw::CodeRate {
    match cr {
        CodeRate::Cr4_5 => gw::CodeRate::Cr45,
        CodeRate::Cr4_6 => gw::CodeRate::Cr46,
        CodeRate::Cr4_7 => gw::CodeRate::Cr47,
        CodeRate::Cr4_8 => gw::CodeRate::Cr48,
    }
}

fn modulation(m: &Modulation, polarization_inversion: bool) -> gw::Modulation {
    let parameters = match *m {
        Modulation::Lora { spreading_factor, bandwidth, code_rate: cr } => {
            gw::modulation::Parameters::Lora(gw::LoraModulationInfo {
                bandwidth,
                spreading_factor: spreading_factor.into(),
                code_rate: code_rate(cr).into(),
                polarization_inversion,
                ..Default::default()
            })
        }
        Modulation::Fsk { datarate, frequency_deviation } => {
            gw::modulation::Parameters::Fsk(gw::FskModulationInfo { datarate, frequency_deviation })
        }
    };
    gw::Modulation { parameters: Some(parameters) }
}

/// The ChirpStack message for one accepted uplink, with its sequence number.
pub fn uplink_message(gateway_id: &str, frame: &UplinkFrame, seq: u64, uplink_id: u32) -> gw::UplinkFrame {
    let metadata = HashMap::from([
        (META_SEQ.to_string(), seq.to_string()),
        (META_RECEIVED_MS.to_string(), unix_ms(frame.received_at).to_string()),
    ]);
    gw::UplinkFrame {
        phy_payload: frame.phy_payload.clone(),
        tx_info: Some(gw::UplinkTxInfo {
            frequency: frame.frequency.0,
            modulation: Some(modulation(&frame.modulation, false)),
        }),
        rx_info: Some(gw::UplinkRxInfo {
            gateway_id: gateway_id.to_string(),
            uplink_id,
            gw_time: Some(timestamp(frame.received_at)),
            rssi: frame.rssi.into(),
            snr: frame.snr,
            channel: frame.channel.into(),
            rf_chain: frame.rf_chain.into(),
            board: frame.board.into(),
            context: uplink_context(frame.counter_us, unix_ms(frame.received_at)),
            metadata,
            crc_status: match frame.crc {
                CrcStatus::Ok => gw::CrcStatus::CrcOk,
                CrcStatus::Bad => gw::CrcStatus::BadCrc,
                CrcStatus::Missing => gw::CrcStatus::NoCrc,
            }
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A stored uplink record back as the frame the radio gave and its sequence number: what a
/// sink speaking another protocol than ChirpStack's (Basics Station) sends from the same
/// journal. `None` for another kind of record or one that does not decode.
pub fn frame_of_record(r: &Record) -> Option<(UplinkFrame, u64)> {
    if RecordKind::from_u8(r.kind)? != RecordKind::Uplink {
        return None;
    }
    let up = gw::UplinkFrame::decode(r.payload.as_slice()).ok()?;
    let tx = up.tx_info?;
    let rx = up.rx_info?;
    let modulation = match tx.modulation?.parameters? {
        gw::modulation::Parameters::Lora(l) => Modulation::Lora {
            spreading_factor: u8::try_from(l.spreading_factor).ok()?,
            bandwidth: l.bandwidth,
            code_rate: match gw::CodeRate::try_from(l.code_rate).ok()? {
                gw::CodeRate::Cr46 => CodeRate::Cr4_6,
                gw::CodeRate::Cr47 => CodeRate::Cr4_7,
                gw::CodeRate::Cr48 => CodeRate::Cr4_8,
                _ => CodeRate::Cr4_5,
            },
        },
        gw::modulation::Parameters::Fsk(f) => {
            Modulation::Fsk { datarate: f.datarate, frequency_deviation: f.frequency_deviation }
        }
        _ => return None,
    };
    let seq = rx.metadata.get(META_SEQ)?.parse().ok()?;
    let received_ms: i64 =
        rx.metadata.get(META_RECEIVED_MS).and_then(|m| m.parse().ok()).unwrap_or(r.received_at_ms);
    let counter_us = rx.context.get(..4).and_then(|c| c.try_into().ok()).map_or(0, u32::from_be_bytes);
    let frame = UplinkFrame {
        phy_payload: up.phy_payload,
        frequency: Frequency(tx.frequency),
        modulation,
        rssi: i16::try_from(rx.rssi).ok()?,
        snr: rx.snr,
        crc: match gw::CrcStatus::try_from(rx.crc_status).ok()? {
            gw::CrcStatus::CrcOk => CrcStatus::Ok,
            gw::CrcStatus::BadCrc => CrcStatus::Bad,
            gw::CrcStatus::NoCrc => CrcStatus::Missing,
        },
        channel: u8::try_from(rx.channel).ok()?,
        rf_chain: u8::try_from(rx.rf_chain).ok()?,
        board: u8::try_from(rx.board).ok()?,
        counter_us,
        received_at: UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(received_ms).ok()?),
    };
    Some((frame, seq))
}

/// The one field of a stored `gw::UplinkFrame` that pacing reads (prost skips the rest).
#[derive(Clone, PartialEq, prost::Message)]
struct PhyPayloadOnly {
    #[prost(bytes = "vec", tag = "1")]
    phy_payload: Vec<u8>,
}

/// Who sent a stored uplink, for pacing the replay (`sink::pace`): the DevAddr of a data
/// uplink, the DevEUI of a join or rejoin request; `None` for stats, proprietary frames and
/// records that do not decode (the sink deals with those).
pub fn uplink_sender(r: &Record) -> Option<Sender> {
    if RecordKind::from_u8(r.kind)? != RecordKind::Uplink {
        return None;
    }
    let phy = PhyPayloadOnly::decode(r.payload.as_slice()).ok()?.phy_payload;
    let mtype = phy.first()? >> 5;
    match mtype {
        // UnconfirmedDataUp, ConfirmedDataUp: DevAddr, little-endian after MHDR.
        0b010 | 0b100 => Some(Sender::DevAddr(u32::from_le_bytes(phy.get(1..5)?.try_into().ok()?))),
        // JoinRequest: JoinEUI then DevEUI.
        0b000 => Some(Sender::DevEui(u64::from_le_bytes(phy.get(9..17)?.try_into().ok()?))),
        // RejoinRequest type 0/2: NetID then DevEUI; type 1: JoinEUI then DevEUI.
        0b110 => {
            let at = if phy.get(1) == Some(&1) { 10 } else { 5 };
            Some(Sender::DevEui(u64::from_le_bytes(phy.get(at..at + 8)?.try_into().ok()?)))
        }
        _ => None,
    }
}

/// Counters that go into a `GatewayStats` message.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    pub rx_received: u32,
    pub rx_received_ok: u32,
    pub tx_received: u32,
    pub tx_emitted: u32,
    pub rx_per_frequency: HashMap<u32, u32>,
    pub tx_per_status: HashMap<String, u32>,
    pub metadata: HashMap<String, String>,
}

/// The ChirpStack stats message for one interval.
pub fn stats_message(gateway_id: &str, at: SystemTime, s: StatsSnapshot) -> gw::GatewayStats {
    gw::GatewayStats {
        gateway_id: gateway_id.to_string(),
        time: Some(timestamp(at)),
        rx_packets_received: s.rx_received,
        rx_packets_received_ok: s.rx_received_ok,
        tx_packets_received: s.tx_received,
        tx_packets_emitted: s.tx_emitted,
        metadata: s.metadata,
        rx_packets_per_frequency: s.rx_per_frequency,
        tx_packets_per_status: s.tx_per_status,
        ..Default::default()
    }
}

/// The retained connection state message (`ONLINE`, or `OFFLINE` as last will).
pub fn conn_state(gateway_id: &str, online: bool, format: PayloadFormat) -> Vec<u8> {
    let msg = gw::ConnState {
        gateway_id: gateway_id.to_string(),
        state: if online { gw::conn_state::State::Online } else { gw::conn_state::State::Offline }.into(),
        ..Default::default()
    };
    match format {
        PayloadFormat::Protobuf => msg.encode_to_vec(),
        PayloadFormat::Json => serde_json::to_vec(&msg).unwrap_or_default(),
    }
}

/// Why a journal record or a command could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown journal record kind {0}")]
    UnknownKind(u8),
    #[error("undecodable protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("undecodable JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("downlink {0} has no items")]
    NoItems(u32),
    #[error("downlink duration {0} is malformed")]
    BadDuration(String),
    /// A downlink that decodes but cannot be transmitted.
    #[error("downlink {id}: {what}")]
    BadDownlink { id: u32, shape: AckShape, what: &'static str },
    /// A downlink answering an uplink whose receive windows have all closed (a replayed
    /// uplink's answer): never sent on air.
    #[error("downlink {id}: its last transmit time passed {late_ms} ms ago (it answers an uplink received {age_ms} ms ago)")]
    TooLate { id: u32, shape: AckShape, late_ms: i64, age_ms: i64 },
}

/// How the `event/ack` of a downlink lists its items: `items` offered (RX1, RX2), the
/// radio's answer at `chosen`, `TOO_LATE` before it (their time had passed), `IGNORED` after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckShape {
    pub items: usize,
    pub chosen: usize,
}

impl AckShape {
    /// One item, answered as a whole.
    pub const ONE: AckShape = AckShape { items: 1, chosen: 0 };
}

impl ProtocolError {
    /// The TxAck that tells the network server a decoded downlink was refused
    /// (with how many items it had), or `None` when there is no downlink id to answer.
    pub fn refusal(&self) -> Option<(TxAck, AckShape)> {
        match *self {
            ProtocolError::BadDownlink { id, shape, .. } => {
                Some((TxAck { downlink_id: id, status: TxStatus::InternalError }, shape))
            }
            ProtocolError::TooLate { id, shape, .. } => {
                Some((TxAck { downlink_id: id, status: TxStatus::TooLate }, shape))
            }
            _ => None,
        }
    }
}

/// Wire payload for a journal record (stored as protobuf) in the sink's format.
pub fn wire_payload(
    kind: RecordKind,
    stored: &[u8],
    format: PayloadFormat,
) -> Result<Vec<u8>, ProtocolError> {
    match format {
        PayloadFormat::Protobuf => Ok(stored.to_vec()),
        PayloadFormat::Json => Ok(match kind {
            RecordKind::Uplink => serde_json::to_vec(&gw::UplinkFrame::decode(stored)?)?,
            RecordKind::Stats => serde_json::to_vec(&gw::GatewayStats::decode(stored)?)?,
        }),
    }
}

/// A downlink command from the network server, translated for the radio.
#[derive(Debug)]
pub struct DownlinkCommand {
    pub frame: DownlinkFrame,
    /// The alternatives (RX1, RX2) the network server offered and which one goes; the ack lists each.
    pub shape: AckShape,
}

/// Decode a `command/down` payload: the first item whose transmit time has not passed
/// goes to the radio (RX2 when RX1's window closed on the way), the later ones are
/// acknowledged as ignored. A command that decodes but cannot be transmitted is
/// [`ProtocolError::BadDownlink`], one whose every window has closed
/// [`ProtocolError::TooLate`]: the network server is told with a TxAck (see
/// [`ProtocolError::refusal`]).
pub fn decode_downlink(payload: &[u8], format: PayloadFormat) -> Result<DownlinkCommand, ProtocolError> {
    let msg: gw::DownlinkFrame = match format {
        PayloadFormat::Protobuf => gw::DownlinkFrame::decode(payload)?,
        PayloadFormat::Json => {
            let value: serde_json::Value = serde_json::from_slice(payload)?;
            if let Some(what) = unparsable_duration(&value) {
                return Err(ProtocolError::BadDuration(what));
            }
            serde_json::from_value(value)?
        }
    };
    let (id, items) = (msg.downlink_id, msg.items.len());
    let now_ms = unix_ms(SystemTime::now());
    let mut late = None;
    for (chosen, item) in msg.items.iter().enumerate() {
        let shape = AckShape { items, chosen };
        if let Some(passed) = lateness(item, now_ms) {
            late = Some((passed, shape));
            continue;
        }
        let frame =
            downlink_frame(id, item).map_err(|what| ProtocolError::BadDownlink { id, shape, what })?;
        return Ok(DownlinkCommand { frame, shape });
    }
    match late {
        Some(((late_ms, age_ms), shape)) => Err(ProtocolError::TooLate { id, shape, late_ms, age_ms }),
        None => Err(ProtocolError::NoItems(id)),
    }
}

/// `rx_info.context` of an uplink, echoed in the downlinks that answer it: the concentrator
/// counter (4 bytes, what a delay is counted from) and the receive time (unix ms, 8 bytes,
/// what tells a replayed uplink's answer from a live one). Both big-endian.
fn uplink_context(counter_us: u32, received_ms: i64) -> Vec<u8> {
    let mut context = counter_us.to_be_bytes().to_vec();
    context.extend_from_slice(&received_ms.to_be_bytes());
    context
}

/// How late a delay-timed downlink would be at `now_ms`, and how old the uplink it answers
/// is, when its transmit time (uplink receive time + delay) has passed. `None` when it is
/// on time, not delay-timed, or its context carries no receive time (an older berrygw's).
fn lateness(item: &gw::DownlinkFrameItem, now_ms: i64) -> Option<(i64, i64)> {
    let tx = item.tx_info.as_ref()?;
    let Some(gw::timing::Parameters::Delay(d)) = tx.timing.as_ref()?.parameters.as_ref() else {
        return None;
    };
    let received_ms = i64::from_be_bytes(tx.context.get(4..12)?.try_into().ok()?);
    let delay_ms = d.delay.as_ref().and_then(duration_us).map_or(0, |us| (us / 1000) as i64);
    let late_ms = now_ms.saturating_sub(received_ms.saturating_add(delay_ms));
    (late_ms > 0).then(|| (late_ms, now_ms.saturating_sub(received_ms)))
}

/// Names of the `google.protobuf.Duration` fields of a downlink, in both JSON spellings.
const DURATION_FIELDS: [&str; 3] = ["delay", "timeSinceGpsEpoch", "time_since_gps_epoch"];

/// A duration string that pbjson-types would overflow on: it strips one `-` and
/// negates what it parsed, so `"--9223372036854775808s"` negates `i64::MIN`
/// (a panic in debug builds). No valid duration has two signs; such a command is refused.
fn unparsable_duration(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Object(map) => map.iter().find_map(|(key, value)| match value {
            serde_json::Value::String(d) if DURATION_FIELDS.contains(&key.as_str()) => {
                let unsigned = d.strip_prefix('-').unwrap_or(d);
                unsigned.starts_with(['-', '+']).then(|| format!("{key} {d:?}"))
            }
            other => unparsable_duration(other),
        }),
        serde_json::Value::Array(list) => list.iter().find_map(unparsable_duration),
        _ => None,
    }
}

/// The radio's frame for one downlink item, or why it cannot be sent.
fn downlink_frame(id: u32, item: &gw::DownlinkFrameItem) -> Result<DownlinkFrame, &'static str> {
    let tx = item.tx_info.as_ref().ok_or("no tx_info")?;
    let m = tx.modulation.as_ref().and_then(|m| m.parameters.as_ref()).ok_or("no modulation")?;
    let (modulation, invert_iq) = match m {
        gw::modulation::Parameters::Lora(l) => {
            let sf = u8::try_from(l.spreading_factor)
                .ok()
                .filter(|sf| (5..=12).contains(sf))
                .ok_or("spreading factor out of range")?;
            let cr = match gw::CodeRate::try_from(l.code_rate).unwrap_or(gw::CodeRate::CrUndefined) {
                gw::CodeRate::Cr45 | gw::CodeRate::CrUndefined => CodeRate::Cr4_5,
                gw::CodeRate::Cr46 => CodeRate::Cr4_6,
                gw::CodeRate::Cr47 => CodeRate::Cr4_7,
                gw::CodeRate::Cr48 => CodeRate::Cr4_8,
                _ => return Err("unsupported code rate"),
            };
            (
                Modulation::Lora { spreading_factor: sf, bandwidth: l.bandwidth, code_rate: cr },
                l.polarization_inversion,
            )
        }
        gw::modulation::Parameters::Fsk(f) => {
            (Modulation::Fsk { datarate: f.datarate, frequency_deviation: f.frequency_deviation }, false)
        }
        gw::modulation::Parameters::LrFhss(_) => return Err("LR-FHSS downlinks are not supported"),
    };
    let timing = match tx.timing.as_ref().and_then(|t| t.parameters.as_ref()) {
        None | Some(gw::timing::Parameters::Immediately(_)) => TxTiming::Immediately,
        Some(gw::timing::Parameters::Delay(d)) => {
            let counter =
                <[u8; 4]>::try_from(tx.context.get(..4).ok_or("delay timing without uplink context")?)
                    .map(u32::from_be_bytes)
                    .map_err(|_| "delay timing without uplink context")?;
            let delay = d.delay.as_ref().map_or(Some(0), duration_us).ok_or("delay out of range")?;
            // The concentrator counter is 32-bit microseconds: a delay must fit one turn.
            let delay = u32::try_from(delay).map_err(|_| "delay out of range")?;
            TxTiming::Counter(counter.wrapping_add(delay))
        }
        Some(gw::timing::Parameters::GpsEpoch(g)) => TxTiming::GpsEpoch(
            g.time_since_gps_epoch.as_ref().map_or(Some(0), duration_us).ok_or("GPS time out of range")?,
        ),
    };
    let power_dbm = i8::try_from(tx.power).map_err(|_| "power out of range")?;
    Ok(DownlinkFrame {
        downlink_id: id,
        phy_payload: item.phy_payload.clone(),
        frequency: Frequency(tx.frequency),
        modulation,
        power_dbm,
        timing,
        invert_iq,
        board: u8::try_from(tx.board).unwrap_or(0),
        antenna: u8::try_from(tx.antenna).unwrap_or(0),
    })
}

/// A non-negative protobuf duration in microseconds; `None` if it is negative,
/// malformed (nanos outside 0..1e9) or does not fit 64 bits.
fn duration_us(d: &PbDuration) -> Option<u64> {
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u64::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    seconds.checked_mul(1_000_000)?.checked_add(nanos / 1000)
}

/// The `event/ack` payload for a radio's answer to a downlink.
pub fn tx_ack_message(gateway_id: &str, ack: &TxAck, shape: AckShape, format: PayloadFormat) -> Vec<u8> {
    let status = match ack.status {
        TxStatus::Ok => gw::TxAckStatus::Ok,
        TxStatus::TooLate => gw::TxAckStatus::TooLate,
        TxStatus::TooEarly => gw::TxAckStatus::TooEarly,
        TxStatus::CollisionPacket => gw::TxAckStatus::CollisionPacket,
        TxStatus::CollisionBeacon => gw::TxAckStatus::CollisionBeacon,
        TxStatus::TxFrequency => gw::TxAckStatus::TxFreq,
        TxStatus::TxPower => gw::TxAckStatus::TxPower,
        TxStatus::GpsUnlocked => gw::TxAckStatus::GpsUnlocked,
        TxStatus::QueueFull => gw::TxAckStatus::QueueFull,
        TxStatus::InternalError => gw::TxAckStatus::InternalError,
        TxStatus::DutyCycleOverflow => gw::TxAckStatus::DutyCycleOverflow,
        // ChirpStack has no "sent, unconfirmed"; OK would claim more than we know.
        TxStatus::Unconfirmed => gw::TxAckStatus::Ignored,
    };
    let item = |status: gw::TxAckStatus| gw::DownlinkTxAckItem { status: status.into() };
    let list: Vec<gw::DownlinkTxAckItem> = (0..shape.items.max(shape.chosen + 1))
        .map(|i| match i.cmp(&shape.chosen) {
            std::cmp::Ordering::Less => item(gw::TxAckStatus::TooLate),
            std::cmp::Ordering::Equal => item(status),
            std::cmp::Ordering::Greater => item(gw::TxAckStatus::Ignored),
        })
        .collect();
    let msg = gw::DownlinkTxAck {
        gateway_id: gateway_id.to_string(),
        downlink_id: ack.downlink_id,
        items: list,
        ..Default::default()
    };
    match format {
        PayloadFormat::Protobuf => msg.encode_to_vec(),
        PayloadFormat::Json => serde_json::to_vec(&msg).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> UplinkFrame {
        let mut f = UplinkFrame::example(vec![0x40, 1, 2, 3, 4, 0, 1, 0, 2, 9, 9, 9, 9], CrcStatus::Ok);
        (f.rssi, f.rf_chain, f.counter_us) = (-87, 1, 123_456);
        f.received_at = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        f
    }

    #[test]
    fn uplink_carries_seq_and_original_receive_time() {
        let msg = uplink_message("0016c001ff10a235", &frame(), 42, 7);
        let bytes = msg.encode_to_vec();
        let back = gw::UplinkFrame::decode(bytes.as_slice()).expect("decodes");
        let rx = back.rx_info.expect("rx_info");
        assert_eq!(rx.metadata.get(META_SEQ).map(String::as_str), Some("42"));
        assert_eq!(rx.metadata.get(META_RECEIVED_MS).map(String::as_str), Some("1700000000123"));
        assert_eq!(rx.gw_time.map(|t| t.seconds), Some(1_700_000_000));
        assert_eq!((rx.rssi, rx.snr, rx.rf_chain), (-87, 7.5, 1));
        assert_eq!(back.tx_info.map(|t| t.frequency), Some(868_100_000));
    }

    #[test]
    fn json_wire_format_is_chirpstack_json() {
        let stored = uplink_message("0016c001ff10a235", &frame(), 1, 7).encode_to_vec();
        let json = wire_payload(RecordKind::Uplink, &stored, PayloadFormat::Json).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
        assert_eq!(v["rxInfo"]["gatewayId"], "0016c001ff10a235");
        assert_eq!(v["rxInfo"]["metadata"][META_SEQ], "1");
    }

    #[test]
    fn corrupt_stored_record_is_an_error_not_a_panic() {
        let err =
            wire_payload(RecordKind::Uplink, &[0xff, 0xff, 0xff], PayloadFormat::Json).expect_err("garbage");
        assert!(err.to_string().contains("protobuf"), "{err}");
    }

    fn delayed_downlink(delay: PbDuration) -> gw::DownlinkFrame {
        gw::DownlinkFrame {
            downlink_id: 9,
            items: vec![gw::DownlinkFrameItem {
                phy_payload: vec![0x60, 1, 2],
                tx_info: Some(gw::DownlinkTxInfo {
                    frequency: 869_525_000,
                    power: 14,
                    modulation: Some(modulation(
                        &Modulation::Lora {
                            spreading_factor: 9,
                            bandwidth: 125_000,
                            code_rate: CodeRate::Cr4_5,
                        },
                        true,
                    )),
                    timing: Some(gw::Timing {
                        parameters: Some(gw::timing::Parameters::Delay(gw::DelayTimingInfo {
                            delay: Some(delay),
                        })),
                    }),
                    context: 1000u32.to_be_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn downlink_with_out_of_range_timing_is_refused_with_a_tx_ack() {
        let refused = |cmd: gw::DownlinkFrame| {
            let err = decode_downlink(&cmd.encode_to_vec(), PayloadFormat::Protobuf).expect_err("refused");
            err.refusal().expect("answered with a TxAck")
        };
        let huge = PbDuration { seconds: i64::MAX, nanos: 999_999_999 };
        // Used to overflow (panic in debug builds, a wrapped TX time in release).
        let (ack, items) = refused(delayed_downlink(huge));
        assert_eq!((ack.downlink_id, ack.status, items), (9, TxStatus::InternalError, AckShape::ONE));
        let mut gps = delayed_downlink(PbDuration::default());
        gps.items[0].tx_info.as_mut().expect("tx_info").timing = Some(gw::Timing {
            parameters: Some(gw::timing::Parameters::GpsEpoch(gw::GpsEpochTimingInfo {
                time_since_gps_epoch: Some(huge),
            })),
        });
        assert_eq!(refused(gps).0.status, TxStatus::InternalError);
        // More than one turn of the 32-bit microsecond counter (about 71.6 minutes).
        refused(delayed_downlink(PbDuration { seconds: 4_295, nanos: 0 }));
        refused(delayed_downlink(PbDuration { seconds: -1, nanos: 0 }));
        let fits = delayed_downlink(PbDuration { seconds: 4_294, nanos: 0 });
        let d = decode_downlink(&fits.encode_to_vec(), PayloadFormat::Protobuf).expect("fits the counter");
        assert_eq!(d.frame.timing, TxTiming::Counter(1000u32.wrapping_add(4_294_000_000)));
    }

    /// A delay-timed downlink answering an uplink received at `received_ms`.
    fn answering(received_ms: i64, delay_s: i64) -> gw::DownlinkFrame {
        let mut d = delayed_downlink(PbDuration { seconds: delay_s, nanos: 0 });
        d.items[0].tx_info.as_mut().expect("tx_info").context = uplink_context(1000, received_ms);
        d
    }

    #[test]
    fn a_downlink_answering_an_uplink_past_its_receive_windows_is_refused_too_late() {
        let now = unix_ms(SystemTime::now());
        // A replayed uplink received half an hour ago: ChirpStack's ACK for it is refused, not sent.
        let err = decode_downlink(&answering(now - 1_800_000, 1).encode_to_vec(), PayloadFormat::Protobuf)
            .expect_err("stale");
        assert!(matches!(err, ProtocolError::TooLate { age_ms, .. } if age_ms >= 1_800_000), "{err}");
        assert_eq!(err.refusal(), Some((TxAck { downlink_id: 9, status: TxStatus::TooLate }, AckShape::ONE)));
        // A live uplink's answer, its RX2 window 2 s ahead, goes to the radio at the counter.
        let live =
            decode_downlink(&answering(now, 2).encode_to_vec(), PayloadFormat::Protobuf).expect("on time");
        assert_eq!(live.frame.timing, TxTiming::Counter(1000 + 2_000_000));
        // The uplink message carries that context.
        let rx = uplink_message("0016c001ff10a235", &frame(), 1, 7).rx_info.expect("rx_info");
        assert_eq!(rx.context, uplink_context(frame().counter_us, 1_700_000_000_123));
    }

    #[test]
    fn rx2_goes_when_rx1_closed_on_the_way_and_the_ack_says_so() {
        let now = unix_ms(SystemTime::now());
        // Received 1.5 s ago: RX1 (1 s) has passed, RX2 (2 s) is still ahead.
        let mut cmd = answering(now - 1500, 1);
        let mut rx2 = answering(now - 1500, 2).items.remove(0);
        rx2.tx_info.as_mut().expect("tx_info").frequency = 869_525_000;
        cmd.items.push(rx2);
        let d = decode_downlink(&cmd.encode_to_vec(), PayloadFormat::Protobuf).expect("RX2 on time");
        assert_eq!(d.shape, AckShape { items: 2, chosen: 1 });
        assert_eq!(d.frame.timing, TxTiming::Counter(1000 + 2_000_000));
        let ack = gw::DownlinkTxAck::decode(
            tx_ack_message(
                "gw",
                &TxAck { downlink_id: 9, status: TxStatus::Ok },
                d.shape,
                PayloadFormat::Protobuf,
            )
            .as_slice(),
        )
        .expect("ack");
        let statuses: Vec<gw::TxAckStatus> = ack.items.iter().map(|i| i.status()).collect();
        assert_eq!(statuses, [gw::TxAckStatus::TooLate, gw::TxAckStatus::Ok]);
        // Both closed: refused, each item TOO_LATE.
        let mut stale = answering(now - 60_000, 1);
        stale.items.push(answering(now - 60_000, 2).items.remove(0));
        let err = decode_downlink(&stale.encode_to_vec(), PayloadFormat::Protobuf).expect_err("stale");
        let (ack, shape) = err.refusal().expect("answered");
        let msg =
            gw::DownlinkTxAck::decode(tx_ack_message("gw", &ack, shape, PayloadFormat::Protobuf).as_slice())
                .expect("ack");
        assert!(msg.items.iter().all(|i| i.status() == gw::TxAckStatus::TooLate), "{msg:?}");
        assert_eq!(msg.items.len(), 2);
    }

    #[test]
    fn a_stored_uplink_reads_back_as_the_frame_the_radio_gave() {
        let mut f = frame();
        f.received_at = UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_123);
        f.counter_us = 4_000_000_123;
        f.rssi = -112;
        f.snr = -7.5;
        f.channel = 3;
        f.rf_chain = 1;
        let record = Record {
            seq: crate::journal::Seq(42),
            kind: RecordKind::Uplink as u8,
            received_at_ms: 0,
            payload: uplink_message("0016c001ff10a235", &f, 42, 7).encode_to_vec(),
        };
        assert_eq!(frame_of_record(&record), Some((f.clone(), 42)));
        let mut fsk = f;
        fsk.modulation = Modulation::Fsk { datarate: 50_000, frequency_deviation: 25_000 };
        let record = Record { payload: uplink_message("gw", &fsk, 43, 8).encode_to_vec(), ..record };
        assert_eq!(frame_of_record(&record).map(|(f, s)| (f.modulation, s)), Some((fsk.modulation, 43)));
        // Stats, junk: not a frame.
        assert_eq!(frame_of_record(&Record { kind: RecordKind::Stats as u8, ..record.clone() }), None);
        assert_eq!(frame_of_record(&Record { payload: vec![0xff, 0xff], ..record }), None);
    }

    #[test]
    fn pacing_knows_an_uplink_by_its_devaddr_or_deveui() {
        let stored = |phy: Vec<u8>| {
            let mut f = frame();
            f.phy_payload = phy;
            Record {
                seq: crate::journal::Seq(1),
                kind: RecordKind::Uplink as u8,
                received_at_ms: 0,
                payload: uplink_message("0016c001ff10a235", &f, 1, 7).encode_to_vec(),
            }
        };
        let data = vec![0x40, 0x01, 0x1a, 0x0b, 0x26, 0, 5, 0, 2, 1, 2, 3, 4];
        assert_eq!(uplink_sender(&stored(data.clone())), Some(Sender::DevAddr(0x260b_1a01)));
        let mut confirmed = data;
        confirmed[0] = 0x80;
        assert_eq!(uplink_sender(&stored(confirmed)), Some(Sender::DevAddr(0x260b_1a01)));
        let mut join = vec![0x00];
        join.extend_from_slice(&[0x11; 8]); // JoinEUI
        join.extend_from_slice(&0x0004_a30b_001c_0530u64.to_le_bytes()); // DevEUI
        join.extend_from_slice(&[1, 0, 0, 0, 0, 0]); // DevNonce, MIC
        assert_eq!(uplink_sender(&stored(join)), Some(Sender::DevEui(0x0004_a30b_001c_0530)));
        assert_eq!(uplink_sender(&stored(vec![0xe0, 1, 2])), None, "proprietary");
        assert_eq!(uplink_sender(&stored(vec![0x40, 1])), None, "truncated");
        let stats = Record { kind: RecordKind::Stats as u8, ..stored(vec![0x40, 1, 2, 3, 4]) };
        assert_eq!(uplink_sender(&stats), None);
        let garbage = Record { payload: vec![0xff, 0xff], ..stored(vec![]) };
        assert_eq!(uplink_sender(&garbage), None);
    }

    #[test]
    fn json_duration_with_two_signs_is_refused_not_a_panic() {
        let json =
            serde_json::to_string(&delayed_downlink(PbDuration { seconds: 1, nanos: 0 })).expect("json");
        assert!(json.contains(r#""delay":"1s""#), "{json}");
        for bad in ["--9223372036854775808s", "-+1s", "+-1s"] {
            let hostile = json.replace(r#""delay":"1s""#, &format!(r#""delay":"{bad}""#));
            let err = decode_downlink(hostile.as_bytes(), PayloadFormat::Json).expect_err("refused");
            assert!(matches!(err, ProtocolError::BadDuration(_) | ProtocolError::Json(_)), "{bad}: {err}");
        }
        let d = decode_downlink(json.as_bytes(), PayloadFormat::Json).expect("the valid one decodes");
        assert_eq!(d.frame.timing, TxTiming::Counter(1_001_000));
    }

    #[test]
    fn downlink_round_trip_and_malformed_commands() {
        let cmd = delayed_downlink(PbDuration { seconds: 1, nanos: 0 });
        let d = decode_downlink(&cmd.encode_to_vec(), PayloadFormat::Protobuf).expect("decodes");
        assert_eq!(d.frame.timing, TxTiming::Counter(1_001_000));
        assert!(d.frame.invert_iq);
        assert_eq!(d.shape, AckShape::ONE);
        assert!(decode_downlink(b"\xff\xff", PayloadFormat::Protobuf).is_err());
        assert!(decode_downlink(b"{not json", PayloadFormat::Json).is_err());
        let empty = gw::DownlinkFrame { downlink_id: 3, ..Default::default() };
        let err = decode_downlink(&empty.encode_to_vec(), PayloadFormat::Protobuf).expect_err("no items");
        assert!(err.to_string().contains("no items"));
    }
}
