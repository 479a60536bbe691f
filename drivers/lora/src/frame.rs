//! Frame types that cross the radio boundary: what a radio source hands to the
//! pipeline (`UplinkFrame`) and what the pipeline asks a radio to send
//! (`DownlinkFrame`, answered by a `TxAck`). Plain data, no I/O.

use std::fmt;
use std::time::SystemTime;

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
