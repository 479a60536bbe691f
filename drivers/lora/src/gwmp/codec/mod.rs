//! The GWMP wire format (Semtech's "gateway to server" UDP protocol, versions 1
//! and 2): the 4-byte header, the six datagram types, the `rxpk`, `txpk`,
//! `stat` and `txpk_ack` JSON objects, and their translation to and from our
//! frame types. Both ends use it: the ingest (we serve a local packet
//! forwarder) and the Semtech UDP sink (we are the forwarder of a remote
//! network server). Pure code, no sockets; every parser returns a
//! [`CodecError`] on hostile input and never panics.
//!
//! Field semantics follow Semtech's PROTOCOL.TXT. Where the protocol leaves a
//! choice, this module decides once for both ends (see the `///` of each item).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::frame::{
    CodeRate, CrcStatus, DownlinkFrame, Frequency, Modulation, TxStatus, TxTiming, UplinkFrame,
};
use crate::phy::Eui64;

/// GWMP version 1: the original protocol, without TX_ACK.
pub const PROTOCOL_V1: u8 = 1;
/// GWMP version 2: adds TX_ACK (the version Semtech's current forwarders speak).
pub const PROTOCOL_V2: u8 = 2;
/// Largest UDP payload over IPv4; receive buffers are this large.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;
/// Largest LoRa (and SX130x FSK) PHY payload in bytes.
pub const MAX_PHY_PAYLOAD: usize = 255;

/// Version, token (2 bytes) and identifier.
const HEADER_LEN: usize = 4;
/// Gateway EUI after the header of forwarder → server datagrams.
const EUI_LEN: usize = 8;
/// Frequencies outside this range (MHz) are taken as garbage, not as a radio's report.
const FREQ_RANGE_MHZ: std::ops::RangeInclusive<f64> = 100.0..=3000.0;
/// Reported RSSI outside this range (dBm) is garbage.
const RSSI_RANGE: std::ops::RangeInclusive<i32> = -250..=50;
/// Reported SNR outside this range (dB) is garbage.
const SNR_RANGE: std::ops::RangeInclusive<f32> = -50.0..=50.0;
/// Transmit power outside this range (dBm) is refused rather than clamped.
const POWER_RANGE: std::ops::RangeInclusive<i32> = -20..=40;
/// FSK bit rates the SX130x family can use (bit/s).
const FSK_DATARATE_RANGE: std::ops::RangeInclusive<u32> = 500..=300_000;
/// A forwarder `time` further than this from our clock is a broken clock: we use ours.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// What a datagram is, from byte 3 of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Identifier {
    /// Forwarder → server: received frames and/or status.
    PushData = 0,
    /// Server → forwarder: PUSH_DATA received.
    PushAck = 1,
    /// Forwarder → server: keepalive that opens the downlink path.
    PullData = 2,
    /// Server → forwarder: a frame to transmit.
    PullResp = 3,
    /// Server → forwarder: PULL_DATA received.
    PullAck = 4,
    /// Forwarder → server: outcome of a PULL_RESP (version 2 only).
    TxAck = 5,
}

impl Identifier {
    fn from_u8(b: u8) -> Option<Identifier> {
        Some(match b {
            0 => Identifier::PushData,
            1 => Identifier::PushAck,
            2 => Identifier::PullData,
            3 => Identifier::PullResp,
            4 => Identifier::PullAck,
            5 => Identifier::TxAck,
            _ => return None,
        })
    }

    /// The name PROTOCOL.TXT uses, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Identifier::PushData => "PUSH_DATA",
            Identifier::PushAck => "PUSH_ACK",
            Identifier::PullData => "PULL_DATA",
            Identifier::PullResp => "PULL_RESP",
            Identifier::PullAck => "PULL_ACK",
            Identifier::TxAck => "TX_ACK",
        }
    }
}

/// Why a datagram or one of its objects was refused.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Shorter than its fixed part.
    #[error("datagram of {len} bytes is shorter than its {need}-byte {what}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the fixed part needs.
        need: usize,
        /// Which fixed part.
        what: &'static str,
    },
    /// Byte 0 is not a protocol version we speak.
    #[error("protocol version {0} is not GWMP 1 or 2")]
    Version(u8),
    /// Byte 3 is not one of the six datagram types.
    #[error("unknown datagram identifier 0x{0:02x}")]
    Identifier(u8),
    /// The JSON body does not parse into the object PROTOCOL.TXT describes.
    #[error("{identifier}: invalid JSON body: {source}")]
    Json {
        /// Name of the datagram type.
        identifier: &'static str,
        /// What serde_json found.
        #[source]
        source: serde_json::Error,
    },
    /// A field is missing, unsupported or out of any plausible range.
    #[error("`{field}`: {reason}")]
    Field {
        /// JSON field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `data` is not base64.
    #[error("`data` is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Serializing our own JSON failed (not expected with these types).
    #[error("encoding JSON failed: {0}")]
    Encode(#[source] serde_json::Error),
}

impl CodecError {
    /// Short label for counters and rate-limited logs ("json", "base64", ...).
    pub fn cause(&self) -> &'static str {
        match self {
            CodecError::Truncated { .. } => "truncated",
            CodecError::Version(_) => "version",
            CodecError::Identifier(_) => "identifier",
            CodecError::Json { .. } => "json",
            CodecError::Field { .. } => "field",
            CodecError::Base64(_) => "base64",
            CodecError::Encode(_) => "encode",
        }
    }

    fn field(field: &'static str, reason: impl Into<String>) -> CodecError {
        CodecError::Field { field, reason: reason.into() }
    }
}

/// One GWMP datagram.
#[derive(Clone, Debug, PartialEq)]
pub struct Datagram {
    /// [`PROTOCOL_V1`] or [`PROTOCOL_V2`]; answers carry the version of the request.
    pub version: u8,
    /// Random token; an acknowledgement echoes the token of what it acknowledges.
    pub token: u16,
    pub packet: Packet,
}

/// The content of a datagram, by type.
#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    /// Received frames (`rxpk`) and/or gateway status (`stat`).
    PushData {
        gateway_id: Eui64,
        rxpk: Vec<RxPk>,
        stat: Option<Stat>,
    },
    PushAck,
    PullData {
        gateway_id: Eui64,
    },
    /// A frame to transmit.
    PullResp {
        txpk: TxPk,
    },
    PullAck,
    /// The forwarder's answer to a PULL_RESP; an empty body means "no error".
    TxAck {
        gateway_id: Eui64,
        ack: TxPkAck,
    },
}

impl Packet {
    /// The datagram type of this content.
    pub fn identifier(&self) -> Identifier {
        match self {
            Packet::PushData { .. } => Identifier::PushData,
            Packet::PushAck => Identifier::PushAck,
            Packet::PullData { .. } => Identifier::PullData,
            Packet::PullResp { .. } => Identifier::PullResp,
            Packet::PullAck => Identifier::PullAck,
            Packet::TxAck { .. } => Identifier::TxAck,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PushDataBody {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rxpk: Vec<RxPk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stat: Option<Stat>,
}

#[derive(Serialize, Deserialize)]
struct PullRespBody {
    txpk: TxPk,
}

#[derive(Serialize, Deserialize)]
struct TxAckBody {
    txpk_ack: TxPkAck,
}

impl Datagram {
    /// Parse one received datagram. Trailing NUL bytes after a JSON body (some
    /// forwarders send C strings) are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Datagram, CodecError> {
        let [version, t0, t1, id, body @ ..] = bytes else {
            return Err(CodecError::Truncated { len: bytes.len(), need: HEADER_LEN, what: "header" });
        };
        if *version != PROTOCOL_V1 && *version != PROTOCOL_V2 {
            return Err(CodecError::Version(*version));
        }
        let token = u16::from_be_bytes([*t0, *t1]);
        let identifier = Identifier::from_u8(*id).ok_or(CodecError::Identifier(*id))?;
        let packet = match identifier {
            Identifier::PushData => {
                let (gateway_id, json) = split_eui(body, bytes.len())?;
                let body: PushDataBody = parse_json(json, identifier)?;
                Packet::PushData { gateway_id, rxpk: body.rxpk, stat: body.stat }
            }
            Identifier::PushAck => Packet::PushAck,
            Identifier::PullData => Packet::PullData { gateway_id: split_eui(body, bytes.len())?.0 },
            Identifier::PullResp => {
                Packet::PullResp { txpk: parse_json::<PullRespBody>(body, identifier)?.txpk }
            }
            Identifier::PullAck => Packet::PullAck,
            Identifier::TxAck => {
                let (gateway_id, json) = split_eui(body, bytes.len())?;
                let ack = if trim_body(json).is_empty() {
                    TxPkAck::default()
                } else {
                    parse_json::<TxAckBody>(json, identifier)?.txpk_ack
                };
                Packet::TxAck { gateway_id, ack }
            }
        };
        Ok(Datagram { version: *version, token, packet })
    }

    /// The bytes to send.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let [t0, t1] = self.token.to_be_bytes();
        let mut out = vec![self.version, t0, t1, self.packet.identifier() as u8];
        match &self.packet {
            Packet::PushData { gateway_id, rxpk, stat } => {
                out.extend_from_slice(&gateway_id.0);
                // The body borrows nothing: clone-free serialization through a view.
                #[derive(Serialize)]
                struct View<'a> {
                    #[serde(skip_serializing_if = "<[RxPk]>::is_empty")]
                    rxpk: &'a [RxPk],
                    #[serde(skip_serializing_if = "Option::is_none")]
                    stat: Option<&'a Stat>,
                }
                serde_json::to_writer(&mut out, &View { rxpk, stat: stat.as_ref() })
                    .map_err(CodecError::Encode)?;
            }
            Packet::PullData { gateway_id } => out.extend_from_slice(&gateway_id.0),
            Packet::PullResp { txpk } => {
                #[derive(Serialize)]
                struct View<'a> {
                    txpk: &'a TxPk,
                }
                serde_json::to_writer(&mut out, &View { txpk }).map_err(CodecError::Encode)?;
            }
            Packet::TxAck { gateway_id, ack } => {
                out.extend_from_slice(&gateway_id.0);
                #[derive(Serialize)]
                struct View<'a> {
                    txpk_ack: &'a TxPkAck,
                }
                serde_json::to_writer(&mut out, &View { txpk_ack: ack }).map_err(CodecError::Encode)?;
            }
            Packet::PushAck | Packet::PullAck => {}
        }
        Ok(out)
    }
}

fn split_eui(body: &[u8], len: usize) -> Result<(Eui64, &[u8]), CodecError> {
    match body.split_first_chunk::<EUI_LEN>() {
        Some((eui, rest)) => Ok((Eui64(*eui), rest)),
        None => {
            Err(CodecError::Truncated { len, need: HEADER_LEN + EUI_LEN, what: "header and gateway EUI" })
        }
    }
}

fn trim_body(json: &[u8]) -> &[u8] {
    let end = json.iter().rposition(|b| *b != 0 && !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    &json[..end]
}

fn parse_json<'a, T: Deserialize<'a>>(json: &'a [u8], identifier: Identifier) -> Result<T, CodecError> {
    serde_json::from_slice(trim_body(json))
        .map_err(|source| CodecError::Json { identifier: identifier.name(), source })
}

/// `datr`: a LoRa data rate name (`"SF7BW125"`) or an FSK bit rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Datr {
    Lora(String),
    Fsk(u32),
}

/// One received frame as a forwarder reports it (`rxpk`).
///
/// Both layouts are read: the common one (`rssi`, `lsnr`, `chan` at top level)
/// and the multi-antenna one (`rsig` array, `jver` 2), from whose strongest
/// antenna the signal fields are taken. Unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RxPk {
    /// UTC receive time, ISO 8601 with µs ("2013-03-31T16:21:17.528002Z").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// GPS receive time, ms since the GPS epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmms: Option<u64>,
    /// Concentrator counter (µs) at the end of the frame.
    pub tmst: u32,
    /// Centre frequency in MHz.
    pub freq: f64,
    /// IF channel.
    #[serde(default)]
    pub chan: u32,
    /// RF chain.
    #[serde(default)]
    pub rfch: u32,
    /// Concentrator board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brd: Option<u32>,
    /// CRC: 1 ok, -1 bad, 0 none.
    pub stat: i32,
    /// "LORA" or "FSK".
    pub modu: String,
    pub datr: Datr,
    /// LoRa coding rate ("4/5").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codr: Option<String>,
    /// Channel RSSI in dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i32>,
    /// Signal RSSI in dBm (SX1302 forwarders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssis: Option<i32>,
    /// LoRa SNR in dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsnr: Option<f32>,
    /// Per-antenna signal (multi-antenna forwarders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rsig: Vec<RSig>,
    /// Payload size in bytes.
    pub size: u32,
    /// Payload, base64.
    pub data: String,
}

/// Signal of one antenna in a multi-antenna `rxpk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RSig {
    #[serde(default)]
    pub chan: u32,
    /// Channel RSSI in dBm.
    pub rssic: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsnr: Option<f32>,
}

/// Where an uplink's `received_at` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxTime {
    /// The forwarder's `time`.
    Reported,
    /// No `time` in the `rxpk`: our clock when the datagram arrived.
    Absent,
    /// `time` unparsable or further than [`MAX_CLOCK_SKEW`] from our clock: ours instead.
    Replaced,
}

impl RxPk {
    /// The `rxpk` for one of our uplinks. Only `rssi` (channel RSSI, as ChirpStack
    /// uses it) is written; `time` carries the original receive time, left out
    /// when GWMP cannot write it (see [`writable_time`]).
    pub fn from_uplink(f: &UplinkFrame) -> RxPk {
        let (modu, datr, codr) = modulation_fields(&f.modulation);
        let lora = matches!(f.modulation, Modulation::Lora { .. });
        RxPk {
            time: rfc3339_micros(f.received_at),
            tmms: None,
            tmst: f.counter_us,
            freq: mhz(f.frequency),
            chan: f.channel.into(),
            rfch: f.rf_chain.into(),
            brd: (f.board != 0).then_some(f.board.into()),
            stat: match f.crc {
                CrcStatus::Ok => 1,
                CrcStatus::Bad => -1,
                CrcStatus::Missing => 0,
            },
            modu,
            datr,
            codr,
            rssi: Some(f.rssi.into()),
            rssis: None,
            lsnr: (lora && f.snr.is_finite()).then_some(f.snr),
            rsig: Vec::new(),
            size: f.phy_payload.len().try_into().unwrap_or(u32::MAX),
            data: STANDARD.encode(&f.phy_payload),
        }
    }

    /// Our uplink for this `rxpk`, checked field by field. `now` stands in for a
    /// missing or implausible `time` (the second value says which happened).
    /// RSSI is the channel RSSI (`rssi`), or `rssis` when that is all there is.
    pub fn to_uplink(&self, now: SystemTime) -> Result<(UplinkFrame, RxTime), CodecError> {
        let frequency = parse_freq(self.freq)?;
        let (rssi, lsnr, chan) = match self.rssi.or(self.rssis) {
            Some(rssi) => (rssi, self.lsnr, self.chan),
            None => {
                let best = self
                    .rsig
                    .iter()
                    .max_by_key(|a| a.rssic)
                    .ok_or_else(|| CodecError::field("rssi", "missing (no rssi, rssis or rsig)"))?;
                (best.rssic, best.lsnr, best.chan)
            }
        };
        if !RSSI_RANGE.contains(&rssi) {
            return Err(CodecError::field("rssi", format!("{rssi} dBm is not a plausible RSSI")));
        }
        let modulation = parse_modulation(&self.modu, &self.datr, self.codr.as_deref(), None)?;
        let snr = match modulation {
            Modulation::Lora { .. } => {
                let snr = lsnr.ok_or_else(|| CodecError::field("lsnr", "missing for a LoRa frame"))?;
                if !snr.is_finite() || !SNR_RANGE.contains(&snr) {
                    return Err(CodecError::field("lsnr", format!("{snr} dB is not a plausible SNR")));
                }
                snr
            }
            // FSK has no SNR report.
            Modulation::Fsk { .. } => 0.0,
        };
        let crc = match self.stat {
            1 => CrcStatus::Ok,
            -1 => CrcStatus::Bad,
            0 => CrcStatus::Missing,
            other => return Err(CodecError::field("stat", format!("{other} is not 1, -1 or 0"))),
        };
        let phy_payload = decode_data(&self.data, self.size)?;
        let (received_at, rx_time) = match self.time.as_deref() {
            None => (now, RxTime::Absent),
            Some(text) => match parse_rfc3339(text).filter(|t| within_skew(*t, now)) {
                Some(t) => (t, RxTime::Reported),
                None => (now, RxTime::Replaced),
            },
        };
        let frame = UplinkFrame {
            phy_payload,
            frequency,
            modulation,
            rssi: i16::try_from(rssi).unwrap_or(i16::MIN), // RSSI_RANGE fits in i16
            snr,
            crc,
            channel: small("chan", chan)?,
            rf_chain: small("rfch", self.rfch)?,
            board: small("brd", self.brd.unwrap_or(0))?,
            counter_us: self.tmst,
            received_at,
        };
        Ok((frame, rx_time))
    }
}

/// A frame to transmit, as a network server asks for it (`txpk`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxPk {
    /// Transmit as soon as possible (`tmst`/`tmms` ignored).
    #[serde(default)]
    pub imme: bool,
    /// Transmit when the concentrator counter reaches this value (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmst: Option<u32>,
    /// Transmit at this GPS time, ms since the GPS epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmms: Option<u64>,
    /// Centre frequency in MHz.
    pub freq: f64,
    /// RF chain to transmit on.
    #[serde(default)]
    pub rfch: u32,
    /// Power in dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub powe: Option<i32>,
    /// "LORA" or "FSK".
    pub modu: String,
    pub datr: Datr,
    /// LoRa coding rate ("4/5").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codr: Option<String>,
    /// FSK frequency deviation in Hz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdev: Option<u32>,
    /// Invert I/Q (LoRaWAN downlinks to devices).
    #[serde(default)]
    pub ipol: bool,
    /// Preamble length in symbols; forwarder default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prea: Option<u32>,
    /// Payload size in bytes.
    pub size: u32,
    /// Payload, base64 (padding optional).
    pub data: String,
    /// Send without PHY CRC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ncrc: Option<bool>,
    /// Concentrator board (multi-board forwarders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brd: Option<u32>,
    /// Antenna (multi-antenna forwarders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ant: Option<u32>,
}

impl TxPk {
    /// The `txpk` for one of our downlinks (RF chain 0, the TX chain of every SX130x board
    /// we know; `brd`/`ant` only when not 0).
    pub fn from_downlink(d: &DownlinkFrame) -> TxPk {
        let (modu, datr, codr) = modulation_fields(&d.modulation);
        let (imme, tmst, tmms) = match d.timing {
            TxTiming::Immediately => (true, None, None),
            TxTiming::Counter(c) => (false, Some(c), None),
            TxTiming::GpsEpoch(us) => (false, None, Some(us / 1000)),
        };
        TxPk {
            imme,
            tmst,
            tmms,
            freq: mhz(d.frequency),
            rfch: 0,
            powe: Some(d.power_dbm.into()),
            modu,
            datr,
            codr,
            fdev: match d.modulation {
                Modulation::Fsk { frequency_deviation, .. } => Some(frequency_deviation),
                Modulation::Lora { .. } => None,
            },
            ipol: d.invert_iq,
            prea: None,
            size: d.phy_payload.len().try_into().unwrap_or(u32::MAX),
            data: STANDARD.encode(&d.phy_payload),
            ncrc: None,
            brd: (d.board != 0).then_some(d.board.into()),
            ant: (d.antenna != 0).then_some(d.antenna.into()),
        }
    }

    /// Our downlink for this `txpk`, checked field by field. `powe` is required
    /// (no guessed transmit power); `prea` and `ncrc` are not carried.
    pub fn to_downlink(&self, downlink_id: u32) -> Result<DownlinkFrame, CodecError> {
        let timing = match (self.imme, self.tmst, self.tmms) {
            (true, _, _) => TxTiming::Immediately,
            (false, Some(counter), _) => TxTiming::Counter(counter),
            (false, None, Some(ms)) => TxTiming::GpsEpoch(
                ms.checked_mul(1000)
                    .ok_or_else(|| CodecError::field("tmms", format!("{ms} is too large")))?,
            ),
            (false, None, None) => return Err(CodecError::field("imme", "none of imme, tmst, tmms is set")),
        };
        let power = self.powe.ok_or_else(|| CodecError::field("powe", "missing"))?;
        if !POWER_RANGE.contains(&power) {
            return Err(CodecError::field("powe", format!("{power} dBm is outside -20..=40")));
        }
        Ok(DownlinkFrame {
            downlink_id,
            phy_payload: decode_data(&self.data, self.size)?,
            frequency: parse_freq(self.freq)?,
            modulation: parse_modulation(&self.modu, &self.datr, self.codr.as_deref(), Some(self.fdev))?,
            power_dbm: i8::try_from(power).unwrap_or(i8::MAX), // POWER_RANGE fits in i8
            timing,
            invert_iq: self.ipol,
            board: small("brd", self.brd.unwrap_or(0))?,
            antenna: small("ant", self.ant.unwrap_or(0))?,
        })
    }
}

/// The forwarder's answer to a PULL_RESP (`txpk_ack`).
///
/// `error` names the outcome ("NONE" or absent: scheduled). A `warn` alone
/// (SX1302 forwarders send `"warn":"TX_POWER"` when they lowered the power and
/// still transmit) means the frame goes out: it maps to [`TxStatus::Ok`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TxPkAck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<String>,
    /// Detail of a warning (the power actually used, dBm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

impl TxPkAck {
    /// The answer that reports `status`.
    pub fn from_status(status: TxStatus) -> TxPkAck {
        TxPkAck { error: Some(tx_status_name(status).to_string()), warn: None, value: None }
    }

    /// The outcome; an error name we do not know is an [`TxStatus::InternalError`].
    pub fn status(&self) -> TxStatus {
        match self.error.as_deref() {
            None | Some("") => TxStatus::Ok,
            Some(name) => tx_status_from_name(name).unwrap_or(TxStatus::InternalError),
        }
    }
}

/// TX_ACK names of our transmit outcomes: the ones PROTOCOL.TXT defines, and for the
/// others the names ChirpStack's `TxAckStatus` uses.
const TX_STATUS_NAMES: [(TxStatus, &str); 12] = [
    (TxStatus::Ok, "NONE"),
    (TxStatus::TooLate, "TOO_LATE"),
    (TxStatus::TooEarly, "TOO_EARLY"),
    (TxStatus::CollisionPacket, "COLLISION_PACKET"),
    (TxStatus::CollisionBeacon, "COLLISION_BEACON"),
    (TxStatus::TxFrequency, "TX_FREQ"),
    (TxStatus::TxPower, "TX_POWER"),
    (TxStatus::GpsUnlocked, "GPS_UNLOCKED"),
    (TxStatus::QueueFull, "QUEUE_FULL"),
    (TxStatus::InternalError, "INTERNAL_ERROR"),
    (TxStatus::DutyCycleOverflow, "DUTY_CYCLE_OVERFLOW"),
    // No standard name: a network server reads it as not transmitted, which it may be.
    (TxStatus::Unconfirmed, "UNCONFIRMED"),
];

/// The TX_ACK `error` name of a transmit outcome.
pub fn tx_status_name(status: TxStatus) -> &'static str {
    TX_STATUS_NAMES.iter().find(|(s, _)| *s == status).map_or("INTERNAL_ERROR", |(_, name)| name)
}

/// The transmit outcome of a TX_ACK `error` name, if we know it.
pub fn tx_status_from_name(name: &str) -> Option<TxStatus> {
    TX_STATUS_NAMES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
}

/// Gateway status (`stat`), sent with PUSH_DATA. Counters are per interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// UTC time of the report, "2014-01-12 08:59:28 GMT" (see [`stat_time`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lati: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long: Option<f64>,
    /// Altitude in metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alti: Option<i64>,
    /// Frames received.
    #[serde(default)]
    pub rxnb: u64,
    /// Frames received with a valid CRC.
    #[serde(default)]
    pub rxok: u64,
    /// Frames forwarded.
    #[serde(default)]
    pub rxfw: u64,
    /// Percentage of upstream datagrams acknowledged.
    #[serde(default)]
    pub ackr: f64,
    /// Downlink datagrams received.
    #[serde(default)]
    pub dwnb: u64,
    /// Frames transmitted.
    #[serde(default)]
    pub txnb: u64,
    /// Board temperature in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp: Option<f64>,
}

/// A time as `stat.time` writes it: "2014-01-12 08:59:28 GMT"; `None` outside
/// the years 1970..=9999 (see [`writable_time`]).
pub fn stat_time(t: SystemTime) -> Option<String> {
    Some(writable_time(t)?.format("%Y-%m-%d %H:%M:%S GMT").to_string())
}

/// A time as `rxpk.time` writes it: RFC 3339 UTC with microseconds; `None`
/// outside the years 1970..=9999 (see [`writable_time`]).
pub fn rfc3339_micros(t: SystemTime) -> Option<String> {
    Some(writable_time(t)?.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// First second that a four-digit year cannot write: 10000-01-01T00:00:00Z.
const YEAR_10000_SECS: u64 = 253_402_300_800;

/// `t` as a UTC date if GWMP can carry it: from 1970 (a `SystemTime` before it
/// is not portable) to the end of year 9999 (RFC 3339 has four-digit years).
/// chrono's own conversion from `SystemTime` panics beyond its range; this never does.
pub fn writable_time(t: SystemTime) -> Option<DateTime<Utc>> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    if since.as_secs() >= YEAR_10000_SECS {
        return None;
    }
    DateTime::from_timestamp(i64::try_from(since.as_secs()).ok()?, since.subsec_nanos())
}

/// An `rxpk.time`: RFC 3339, or the same without a zone (taken as UTC).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let utc = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|n| n.and_utc()))?;
    // Times before 1970 cannot be a SystemTime on every platform; they are garbage anyway.
    let micros = u64::try_from(utc.timestamp_micros()).ok()?;
    Some(UNIX_EPOCH + Duration::from_micros(micros))
}

fn within_skew(t: SystemTime, now: SystemTime) -> bool {
    let skew = match t.duration_since(now) {
        Ok(ahead) => ahead,
        Err(behind) => behind.duration(),
    };
    skew <= MAX_CLOCK_SKEW
}

fn mhz(f: Frequency) -> f64 {
    f64::from(f.0) / 1e6
}

fn parse_freq(mhz: f64) -> Result<Frequency, CodecError> {
    if !mhz.is_finite() || !FREQ_RANGE_MHZ.contains(&mhz) {
        return Err(CodecError::field("freq", format!("{mhz} MHz is outside 100..=3000 MHz")));
    }
    // In range, so the rounded Hz value fits in u32.
    Ok(Frequency((mhz * 1e6).round() as u32))
}

fn small(field: &'static str, v: u32) -> Result<u8, CodecError> {
    u8::try_from(v).map_err(|_| CodecError::field(field, format!("{v} is larger than 255")))
}

fn decode_data(data: &str, size: u32) -> Result<Vec<u8>, CodecError> {
    // PROTOCOL.TXT: rxpk data is padded, txpk padding is optional; accept both everywhere.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    // Longer text cannot hold a valid payload; refuse before allocating for it.
    if data.len() > MAX_PHY_PAYLOAD.div_ceil(3) * 4 {
        return Err(CodecError::field("data", format!("{} base64 characters is over 255 bytes", data.len())));
    }
    let bytes = LENIENT.decode(data)?;
    if bytes.len() > MAX_PHY_PAYLOAD {
        return Err(CodecError::field("data", format!("{} bytes is over 255", bytes.len())));
    }
    if usize::try_from(size).ok() != Some(bytes.len()) {
        return Err(CodecError::field("size", format!("{size} but data holds {} bytes", bytes.len())));
    }
    Ok(bytes)
}

fn code_rate_name(cr: CodeRate) -> &'static str {
    match cr {
        CodeRate::Cr4_5 => "4/5",
        CodeRate::Cr4_6 => "4/6",
        CodeRate::Cr4_7 => "4/7",
        CodeRate::Cr4_8 => "4/8",
    }
}

fn parse_code_rate(name: &str) -> Option<CodeRate> {
    // "2/3" and "1/2" are the reduced forms older servers write for 4/6 and 4/8.
    Some(match name {
        "4/5" => CodeRate::Cr4_5,
        "4/6" | "2/3" => CodeRate::Cr4_6,
        "4/7" => CodeRate::Cr4_7,
        "4/8" | "1/2" => CodeRate::Cr4_8,
        _ => return None,
    })
}

/// `modu`, `datr` and `codr` of a modulation.
fn modulation_fields(m: &Modulation) -> (String, Datr, Option<String>) {
    match *m {
        Modulation::Lora { spreading_factor, bandwidth, code_rate } => (
            "LORA".into(),
            Datr::Lora(format!("SF{spreading_factor}BW{}", bandwidth / 1000)),
            Some(code_rate_name(code_rate).into()),
        ),
        Modulation::Fsk { datarate, .. } => ("FSK".into(), Datr::Fsk(datarate), None),
    }
}

/// The modulation of `modu`/`datr`/`codr`. `fdev` is `Some` for a `txpk` (FSK needs
/// it there); an FSK `rxpk` has no deviation report and gets 0.
fn parse_modulation(
    modu: &str,
    datr: &Datr,
    codr: Option<&str>,
    fdev: Option<Option<u32>>,
) -> Result<Modulation, CodecError> {
    match (modu, datr) {
        ("LORA", Datr::Lora(name)) => {
            let bad =
                || CodecError::field("datr", format!("{name:?} is not SF5..SF12 with BW125, BW250 or BW500"));
            let (sf, bw) = name.strip_prefix("SF").and_then(|rest| rest.split_once("BW")).ok_or_else(bad)?;
            let spreading_factor =
                sf.parse::<u8>().ok().filter(|sf| (5..=12).contains(sf)).ok_or_else(bad)?;
            let bandwidth = match bw {
                "125" => 125_000,
                "250" => 250_000,
                "500" => 500_000,
                _ => return Err(bad()),
            };
            let codr = codr.ok_or_else(|| CodecError::field("codr", "missing for a LoRa frame"))?;
            let code_rate = parse_code_rate(codr)
                .ok_or_else(|| CodecError::field("codr", format!("{codr:?} is not 4/5, 4/6, 4/7 or 4/8")))?;
            Ok(Modulation::Lora { spreading_factor, bandwidth, code_rate })
        }
        ("FSK", Datr::Fsk(datarate)) => {
            if !FSK_DATARATE_RANGE.contains(datarate) {
                return Err(CodecError::field(
                    "datr",
                    format!("FSK at {datarate} bit/s is outside 500..=300000"),
                ));
            }
            let frequency_deviation = match fdev {
                None => 0,
                Some(fdev) => fdev.ok_or_else(|| CodecError::field("fdev", "missing for an FSK frame"))?,
            };
            Ok(Modulation::Fsk { datarate: *datarate, frequency_deviation })
        }
        ("LORA", Datr::Fsk(_)) => {
            Err(CodecError::field("datr", "a LoRa frame needs a name like \"SF7BW125\""))
        }
        ("FSK", Datr::Lora(_)) => Err(CodecError::field("datr", "an FSK frame needs a bit rate number")),
        (other, _) => Err(CodecError::field("modu", format!("{other:?} is not LORA or FSK"))),
    }
}

#[cfg(test)]
mod tests;
