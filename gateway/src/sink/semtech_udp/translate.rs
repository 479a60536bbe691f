//! What journal records become on the wire: `rxpk` and `stat` objects packed
//! into one PUSH_DATA, and the records that cannot be sent.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berrygw_lora::gwmp::codec::{self, RxPk, Stat};
use berrygw_lora::{CodeRate, CrcStatus, Frequency, Modulation, UplinkFrame};
use chirpstack_api::gw;
use chirpstack_api::pbjson_types::Timestamp;
use prost::Message;
use tokio::time::Instant;

use super::{Carry, SemtechUdpSettings};
use crate::journal::{Record, Seq};
use crate::sink::chirpstack::RecordKind;
use crate::sink::pace::{Next, Pacer};
use crate::sink::read_ahead::{set_aside, BadRecord};
use crate::sink::SinkCounters;

/// What one PUSH_DATA carries, taken from the front of the prefetched records.
pub(super) struct Packed {
    /// `None` when every record taken was unsendable.
    pub(super) datagram: Option<(Vec<RxPk>, Option<Stat>)>,
    /// Lowest and highest seq taken (sent or skipped); with pacing, not every seq between.
    pub(super) seqs: (Seq, Seq),
    /// Records sent.
    pub(super) records: u64,
}

/// JSON around the objects of a PUSH_DATA body, with room to spare.
pub(super) const BODY_OVERHEAD: usize = 12 + 32;

/// Take the records the pacer lets go now (refilled from `from`) into one PUSH_DATA: as
/// many `rxpk` as fit `max_datagram_bytes` and `max_rxpk_per_datagram`, and at most one
/// `stat`. Unsendable records are set aside (counted in `bad_records`) and taken along.
pub(super) fn pack(
    s: &SemtechUdpSettings,
    pacer: &mut Pacer,
    from: &mut VecDeque<Record>,
    counters: &SinkCounters,
    carry: &mut Carry,
) -> Packed {
    let mut rxpk: Vec<RxPk> = Vec::new();
    let mut stat: Option<Stat> = None;
    let mut size = BODY_OVERHEAD;
    let mut seqs: Option<(Seq, Seq)> = None;
    let mut records = 0;
    loop {
        pacer.fill(from);
        let now = Instant::now();
        let Next::Ready(i) = pacer.next(now, berrygw_core::unix_ms(SystemTime::now())) else { break };
        let Some(r) = pacer.peek(i) else { break };
        let empty = rxpk.is_empty() && stat.is_none();
        let (sent, acked) =
            (carry.datagrams_sent - carry.at_last_stat.0, carry.datagrams_acked - carry.at_last_stat.1);
        // Semtech's forwarder reports 0 when it sent nothing in the interval.
        let ackr = if sent == 0 { 0.0 } else { (100.0 * acked as f64 / sent as f64).min(100.0) };
        match wire_object(r, ackr) {
            Err(bad) => set_aside("semtech udp", r.seq, &bad, counters, &mut carry.warn),
            Ok(WireObject::Rxpk(p)) => {
                let len = serde_json::to_vec(&p).map_or(usize::MAX / 2, |j| j.len() + 1);
                if !empty && (rxpk.len() >= s.max_rxpk_per_datagram || size + len > s.max_datagram_bytes) {
                    break;
                }
                carry.sent_uplink(p.tmst, r.received_at_ms);
                size += len;
                rxpk.push(p);
                records += 1;
            }
            Ok(WireObject::Stat(st)) => {
                let len = serde_json::to_vec(&st).map_or(usize::MAX / 2, |j| j.len() + 8);
                if stat.is_some() || (!empty && size + len > s.max_datagram_bytes) {
                    break;
                }
                size += len;
                stat = Some(st);
                carry.at_last_stat = (carry.datagrams_sent, carry.datagrams_acked);
                records += 1;
            }
        }
        let seq = r.seq;
        seqs = Some(seqs.map_or((seq, seq), |(lo, hi)| (lo.min(seq), hi.max(seq))));
        pacer.take(i, now);
    }
    let datagram = (!rxpk.is_empty() || stat.is_some()).then_some((rxpk, stat));
    Packed { datagram, seqs: seqs.unwrap_or((Seq::NONE, Seq::NONE)), records }
}

/// What one journal record becomes in a PUSH_DATA.
#[derive(Debug)]
pub enum WireObject {
    Rxpk(RxPk),
    Stat(Stat),
}

/// The GWMP object of one journal record; `ackr` goes into a `stat`.
pub fn wire_object(r: &Record, ackr: f64) -> Result<WireObject, BadRecord> {
    match RecordKind::from_u8(r.kind) {
        Some(RecordKind::Uplink) => {
            let msg = gw::UplinkFrame::decode(r.payload.as_slice())
                .map_err(|e| BadRecord::new("undecodable", format_args!("undecodable uplink: {e}")))?;
            Ok(WireObject::Rxpk(RxPk::from_uplink(&uplink_frame(msg, r.received_at_ms)?)))
        }
        Some(RecordKind::Stats) => {
            let msg = gw::GatewayStats::decode(r.payload.as_slice())
                .map_err(|e| BadRecord::new("undecodable", format_args!("undecodable stats: {e}")))?;
            Ok(WireObject::Stat(stat(&msg, r.received_at_ms, ackr)?))
        }
        None => Err(BadRecord::new("unknown kind", format_args!("unknown record kind {}", r.kind))),
    }
}

/// A stored time GWMP can write (see `codec::writable_time`), else `None`.
pub(super) fn system_time(t: &Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos)).filter(|t| codec::writable_time(*t).is_some())
}

/// The record's receive time in unix ms, if GWMP can write it.
pub(super) fn unix_ms_time(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms)).filter(|t| codec::writable_time(*t).is_some())
}

/// The time a record carries (`stored`), else its journal receive time; a
/// record with neither in range cannot be sent.
pub(super) fn record_time(stored: Option<&Timestamp>, received_at_ms: i64) -> Result<SystemTime, BadRecord> {
    stored.and_then(system_time).or_else(|| unix_ms_time(received_at_ms)).ok_or_else(|| {
        BadRecord::new(
            "time out of range",
            format_args!("time {stored:?} and receive time {received_at_ms} ms are both out of range"),
        )
    })
}

/// Our uplink back from the stored ChirpStack message (the inverse of
/// `chirpstack::uplink_message`); `received_at_ms` stands in for a missing `gw_time`.
pub(super) fn uplink_frame(msg: gw::UplinkFrame, received_at_ms: i64) -> Result<UplinkFrame, BadRecord> {
    let tx = msg.tx_info.unwrap_or_default();
    let rx = msg.rx_info.unwrap_or_default();
    let modulation = match tx.modulation.and_then(|m| m.parameters) {
        Some(gw::modulation::Parameters::Lora(l)) => Modulation::Lora {
            spreading_factor: u8::try_from(l.spreading_factor)
                .ok()
                .filter(|sf| (5..=12).contains(sf))
                .ok_or_else(|| {
                    BadRecord::new(
                        "no GWMP form",
                        format_args!("spreading factor {} out of range", l.spreading_factor),
                    )
                })?,
            bandwidth: l.bandwidth,
            code_rate: match gw::CodeRate::try_from(l.code_rate).unwrap_or(gw::CodeRate::CrUndefined) {
                gw::CodeRate::Cr45 => CodeRate::Cr4_5,
                gw::CodeRate::Cr46 => CodeRate::Cr4_6,
                gw::CodeRate::Cr47 => CodeRate::Cr4_7,
                gw::CodeRate::Cr48 => CodeRate::Cr4_8,
                other => {
                    return Err(BadRecord::new(
                        "no GWMP form",
                        format_args!("code rate {other:?} has no GWMP name"),
                    ))
                }
            },
        },
        Some(gw::modulation::Parameters::Fsk(f)) => {
            Modulation::Fsk { datarate: f.datarate, frequency_deviation: f.frequency_deviation }
        }
        Some(gw::modulation::Parameters::LrFhss(_)) => {
            return Err(BadRecord::new("no GWMP form", "LR-FHSS uplinks have no GWMP form"))
        }
        None => return Err(BadRecord::new("no GWMP form", "uplink without modulation")),
    };
    let received_at = record_time(rx.gw_time.as_ref(), received_at_ms)?;
    let counter_us =
        rx.context.get(..4).and_then(|c| <[u8; 4]>::try_from(c).ok()).map(u32::from_be_bytes).unwrap_or(0);
    let crc = match gw::CrcStatus::try_from(rx.crc_status).unwrap_or(gw::CrcStatus::NoCrc) {
        gw::CrcStatus::CrcOk => CrcStatus::Ok,
        gw::CrcStatus::BadCrc => CrcStatus::Bad,
        gw::CrcStatus::NoCrc => CrcStatus::Missing,
    };
    Ok(UplinkFrame {
        phy_payload: msg.phy_payload,
        frequency: Frequency(tx.frequency),
        modulation,
        rssi: i16::try_from(rx.rssi.clamp(i16::MIN.into(), i16::MAX.into())).unwrap_or(i16::MIN),
        snr: rx.snr,
        crc,
        channel: u8::try_from(rx.channel).unwrap_or(u8::MAX),
        rf_chain: u8::try_from(rx.rf_chain).unwrap_or(u8::MAX),
        board: u8::try_from(rx.board).unwrap_or(u8::MAX),
        counter_us,
        received_at,
    })
}

/// The `stat` of a stored `GatewayStats`. GWMP has no field for rejected frames, so
/// `rxfw` (forwarded) is the CRC-ok count, which is what berrygw forwards at most.
pub(super) fn stat(msg: &gw::GatewayStats, received_at_ms: i64, ackr: f64) -> Result<Stat, BadRecord> {
    let at = record_time(msg.time.as_ref(), received_at_ms)?;
    let location = msg.location.as_ref().filter(|l| l.latitude != 0.0 || l.longitude != 0.0);
    Ok(Stat {
        time: codec::stat_time(at),
        lati: location.map(|l| l.latitude),
        long: location.map(|l| l.longitude),
        alti: location.map(|l| l.altitude.round() as i64),
        rxnb: msg.rx_packets_received.into(),
        rxok: msg.rx_packets_received_ok.into(),
        rxfw: msg.rx_packets_received_ok.into(),
        ackr,
        dwnb: msg.tx_packets_received.into(),
        txnb: msg.tx_packets_emitted.into(),
        temp: None,
    })
}
