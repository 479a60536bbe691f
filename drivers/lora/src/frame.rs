//! Frame types that cross the radio boundary: what a radio source hands to the
//! pipeline (`UplinkFrame`) and what the pipeline asks a radio to send
//! (`DownlinkFrame`, answered by a `TxAck`). Plain data, no I/O.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A carrier frequency in Hz.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frequency(pub u32);

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06} MHz", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// LoRa coding rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeRate {
    Cr4_5,
    Cr4_6,
    Cr4_7,
    Cr4_8,
}

/// How the frame was (or is to be) modulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Modulation {
    Lora {
        /// Spreading factor, 5..=12.
        spreading_factor: u8,
        /// Bandwidth in Hz (125_000, 250_000, 500_000).
        bandwidth: u32,
        code_rate: CodeRate,
    },
    Fsk {
        /// Bit rate in bit/s.
        datarate: u32,
        /// Frequency deviation in Hz.
        frequency_deviation: u32,
    },
}

/// Result of the concentrator's CRC check on a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrcStatus {
    Ok,
    Bad,
    /// The frame carried no CRC (never the case for LoRaWAN uplinks).
    Missing,
}

/// One frame received by a radio source, with its radio metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkFrame {
    /// The PHYPayload as received (MHDR .. MIC).
    pub phy_payload: Vec<u8>,
    pub frequency: Frequency,
    pub modulation: Modulation,
    /// Received signal strength in dBm.
    pub rssi: i16,
    /// Signal to noise ratio in dB.
    pub snr: f32,
    pub crc: CrcStatus,
    /// IF channel index on the concentrator.
    pub channel: u8,
    /// RF chain that received the frame.
    pub rf_chain: u8,
    /// Concentrator board that received the frame.
    pub board: u8,
    /// Concentrator internal counter (µs) at end of preamble; used for
    /// counter-timestamped (class A) downlinks.
    pub counter_us: u32,
    /// Wall-clock time at which the gateway received the frame. Kept through
    /// outages: a replayed uplink carries this, not its forwarding time.
    pub received_at: SystemTime,
}

/// When a downlink is to be transmitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxTiming {
    Immediately,
    /// At this value of the concentrator counter (µs).
    Counter(u32),
    /// At this GPS epoch time (µs since GPS epoch).
    GpsEpoch(u64),
}

/// Furthest ahead a counter-timed downlink may be (Class A windows are seconds away).
const MAX_ADVANCE_US: i32 = 60_000_000;
/// Furthest ahead a GPS-timed downlink may be (Class B ping slots within a beacon period or a few).
const MAX_GPS_ADVANCE_US: u64 = 600_000_000;
/// GPS epoch (1980-01-06) in Unix seconds, and GPS time's lead over UTC since 2017.
const GPS_EPOCH_UNIX_S: u64 = 315_964_800;
const GPS_LEAP_S: u64 = 18;

impl TxTiming {
    /// What a concentrator answers this timing at this moment (`counter_now`: its 32-bit
    /// microsecond counter): a time that has passed is `TooLate` (the answer to a replayed
    /// uplink, say), one too far ahead `TooEarly`. The SX1302's JIT queue refuses the same;
    /// the sim and GWMP radios check it before anything goes on air.
    pub fn status_at(self, counter_now: u32, now: SystemTime) -> TxStatus {
        match self {
            TxTiming::Immediately => TxStatus::Ok,
            TxTiming::Counter(at) => match at.wrapping_sub(counter_now) as i32 {
                ahead if ahead < 0 => TxStatus::TooLate,
                ahead if ahead > MAX_ADVANCE_US => TxStatus::TooEarly,
                _ => TxStatus::Ok,
            },
            TxTiming::GpsEpoch(at_us) => {
                let unix_us = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
                let gps_now_us = unix_us.saturating_sub((GPS_EPOCH_UNIX_S - GPS_LEAP_S) * 1_000_000);
                if at_us < gps_now_us {
                    TxStatus::TooLate
                } else if at_us - gps_now_us > MAX_GPS_ADVANCE_US {
                    TxStatus::TooEarly
                } else {
                    TxStatus::Ok
                }
            }
        }
    }
}

/// A frame the network server asks this gateway to transmit.
#[derive(Clone, Debug, PartialEq)]
pub struct DownlinkFrame {
    /// Identifier given by the network server; echoed in the `TxAck`.
    pub downlink_id: u32,
    pub phy_payload: Vec<u8>,
    pub frequency: Frequency,
    pub modulation: Modulation,
    /// Transmit power in dBm (EIRP).
    pub power_dbm: i8,
    pub timing: TxTiming,
    /// Invert the IQ polarity (true for LoRaWAN downlinks to devices).
    pub invert_iq: bool,
    pub board: u8,
    pub antenna: u8,
}

/// Outcome of one transmit request, as the ChirpStack protocol names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxStatus {
    Ok,
    TooLate,
    TooEarly,
    CollisionPacket,
    CollisionBeacon,
    TxFrequency,
    TxPower,
    GpsUnlocked,
    QueueFull,
    InternalError,
    DutyCycleOverflow,
    /// Handed to a radio that cannot confirm transmission (a GWMP v1 packet forwarder):
    /// probably sent, never known. Not `Ok`.
    Unconfirmed,
}

/// The radio's answer to a `DownlinkFrame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxAck {
    pub downlink_id: u32,
    pub status: TxStatus,
}

impl UplinkFrame {
    /// A frame as a radio reports it on 868.1 MHz, SF7/125 kHz, received now;
    /// for tests and benchmarks that need a plausible frame around a payload.
    pub fn example(phy_payload: Vec<u8>, crc: CrcStatus) -> UplinkFrame {
        UplinkFrame {
            phy_payload,
            frequency: Frequency(868_100_000),
            modulation: Modulation::Lora {
                spreading_factor: 7,
                bandwidth: 125_000,
                code_rate: CodeRate::Cr4_5,
            },
            rssi: -80,
            snr: 7.5,
            crc,
            channel: 0,
            rf_chain: 0,
            board: 0,
            counter_us: 0,
            received_at: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_transmit_time_that_has_passed_is_too_late_and_one_far_ahead_too_early() {
        let now = SystemTime::now();
        let counter = 4_000_000_000u32;
        assert_eq!(TxTiming::Immediately.status_at(counter, now), TxStatus::Ok);
        assert_eq!(TxTiming::Counter(counter.wrapping_add(1_000_000)).status_at(counter, now), TxStatus::Ok);
        // RX1 of an uplink heard through the counter's wrap is still ahead.
        assert_eq!(TxTiming::Counter(500_000).status_at(u32::MAX - 400_000, now), TxStatus::Ok);
        // The answer to an uplink received 30 minutes ago.
        let stale = counter.wrapping_sub(1_800_000_000).wrapping_add(1_000_000);
        assert_eq!(TxTiming::Counter(stale).status_at(counter, now), TxStatus::TooLate);
        assert_eq!(
            TxTiming::Counter(counter.wrapping_add(120_000_000)).status_at(counter, now),
            TxStatus::TooEarly
        );
        let gps_now = |t: SystemTime| {
            (t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64)
                - (GPS_EPOCH_UNIX_S - GPS_LEAP_S) * 1_000_000
        };
        let in_2_s = gps_now(now + Duration::from_secs(2));
        assert_eq!(TxTiming::GpsEpoch(in_2_s).status_at(0, now), TxStatus::Ok);
        assert_eq!(TxTiming::GpsEpoch(in_2_s).status_at(0, now + Duration::from_secs(3)), TxStatus::TooLate);
    }
}
