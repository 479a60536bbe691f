//! Time on air of a frame, in microseconds, for LoRa (Semtech AN1200.13 and
//! the SX126x/SX1302 formula for SF5/SF6) and FSK. The JIT queue uses it to
//! find overlapping transmissions, the duty-cycle ledger to count airtime.
//! Pure arithmetic: no HAL, no clock.

use berrygw_lora::{CodeRate, Modulation};

/// Preamble symbols of a LoRaWAN LoRa frame.
pub const LORA_PREAMBLE_SYMBOLS: u16 = 8;
/// Preamble bytes of a LoRaWAN FSK frame.
pub const FSK_PREAMBLE_BYTES: u16 = 5;

/// How a frame is put on the air, beyond its modulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFormat {
    /// LoRa: preamble symbols; FSK: preamble bytes.
    pub preamble: u16,
    /// A payload CRC is sent (LoRaWAN uplinks and FSK frames; not LoRa downlinks).
    pub crc: bool,
    /// LoRa implicit header (never used by LoRaWAN).
    pub implicit_header: bool,
}

impl FrameFormat {
    /// A LoRaWAN downlink: LoRa without payload CRC, FSK with it.
    pub fn downlink(modulation: &Modulation) -> FrameFormat {
        match modulation {
            Modulation::Lora { .. } => {
                FrameFormat { preamble: LORA_PREAMBLE_SYMBOLS, crc: false, implicit_header: false }
            }
            Modulation::Fsk { .. } => {
                FrameFormat { preamble: FSK_PREAMBLE_BYTES, crc: true, implicit_header: false }
            }
        }
    }
}

/// Why no airtime can be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AirtimeError {
    #[error("spreading factor {0} is not 5..=12")]
    SpreadingFactor(u8),
    #[error("bandwidth {0} Hz is not 125, 250 or 500 kHz")]
    Bandwidth(u32),
    #[error("FSK bit rate {0} bit/s is not 500..=250000")]
    BitRate(u32),
}

/// Time on air of `payload_len` bytes sent with `modulation` and `format`, in µs (rounded up).
pub fn time_on_air_us(
    modulation: &Modulation,
    payload_len: usize,
    format: FrameFormat,
) -> Result<u32, AirtimeError> {
    match *modulation {
        Modulation::Lora { spreading_factor, bandwidth, code_rate } => {
            lora_us(spreading_factor, bandwidth, code_rate, payload_len, format)
        }
        Modulation::Fsk { datarate, .. } => fsk_us(datarate, payload_len, format),
    }
}

fn lora_us(
    sf: u8,
    bandwidth: u32,
    cr: CodeRate,
    payload_len: usize,
    format: FrameFormat,
) -> Result<u32, AirtimeError> {
    if !(5..=12).contains(&sf) {
        return Err(AirtimeError::SpreadingFactor(sf));
    }
    if !matches!(bandwidth, 125_000 | 250_000 | 500_000) {
        return Err(AirtimeError::Bandwidth(bandwidth));
    }
    let sf_i = i64::from(sf);
    let cr_i: i64 = match cr {
        CodeRate::Cr4_5 => 1,
        CodeRate::Cr4_6 => 2,
        CodeRate::Cr4_7 => 3,
        CodeRate::Cr4_8 => 4,
    };
    // Symbol time in µs is 2^SF / BW; work in "symbol quarters" to stay exact.
    let symbol_ns = (1_000_000_000u64 << sf) / u64::from(bandwidth);
    // Low data rate optimisation: on whenever a symbol lasts 16 ms or more.
    let ldro = symbol_ns >= 16_000_000;
    let payload_bits = 8 * payload_len as i64;
    let crc_bits = if format.crc { 16 } else { 0 };
    let header_bits = if format.implicit_header { 0 } else { 20 };
    // Payload symbols beyond the first 8, and the preamble in quarter symbols.
    let (numerator, denominator, preamble_quarters) = if sf <= 6 {
        // SF5/SF6: 6.25 extra preamble symbols and no 8-bit header allowance.
        (payload_bits + crc_bits - 4 * sf_i + header_bits, 4 * sf_i, 4 * i64::from(format.preamble) + 25)
    } else {
        let de = if ldro { 2 } else { 0 };
        (
            payload_bits + crc_bits - 4 * sf_i + 8 + header_bits,
            4 * (sf_i - de),
            4 * i64::from(format.preamble) + 17,
        )
    };
    let blocks = if numerator > 0 { (numerator + denominator - 1) / denominator } else { 0 };
    let payload_symbols = 8 + blocks * (cr_i + 4);
    let quarters = preamble_quarters + 4 * payload_symbols;
    let total_ns = (quarters as u64) * symbol_ns / 4;
    Ok(u32::try_from(total_ns.div_ceil(1000)).unwrap_or(u32::MAX))
}

fn fsk_us(bit_rate: u32, payload_len: usize, format: FrameFormat) -> Result<u32, AirtimeError> {
    if !(500..=250_000).contains(&bit_rate) {
        return Err(AirtimeError::BitRate(bit_rate));
    }
    // Preamble, 3-byte sync word, length byte, payload, CRC.
    let bytes = u64::from(format.preamble) + 3 + 1 + payload_len as u64 + if format.crc { 2 } else { 0 };
    let us = (bytes * 8 * 1_000_000).div_ceil(u64::from(bit_rate));
    Ok(u32::try_from(us).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(sf: u8, bw: u32) -> Modulation {
        Modulation::Lora { spreading_factor: sf, bandwidth: bw, code_rate: CodeRate::Cr4_5 }
    }

    const UPLINK: FrameFormat = FrameFormat { preamble: 8, crc: true, implicit_header: false };
    const DOWNLINK: FrameFormat = FrameFormat { preamble: 8, crc: false, implicit_header: false };

    #[test]
    fn sf7_uplink_matches_the_semtech_calculator() {
        // 13-byte LoRaWAN frame (empty FRMPayload), SF7/125 kHz, CR 4/5, CRC on: 46.336 ms.
        assert_eq!(time_on_air_us(&lora(7, 125_000), 13, UPLINK), Ok(46_336));
    }

    #[test]
    fn sf12_uses_low_data_rate_optimisation() {
        // 13 bytes at SF12/125 kHz with LDRO and CRC: 8 + ceil(100 / 40) * 5 = 23 payload
        // symbols + 12.25 preamble symbols of 32.768 ms = 1155.072 ms.
        assert_eq!(time_on_air_us(&lora(12, 125_000), 13, UPLINK), Ok(1_155_072));
        // A join accept (33 bytes) at SF12 without CRC: 8 + ceil(244 / 40) * 5 = 43 payload
        // symbols + 12.25 = 55.25 symbols = 1810.432 ms.
        assert_eq!(time_on_air_us(&lora(12, 125_000), 33, DOWNLINK), Ok(1_810_432));
    }

    #[test]
    fn sf11_at_125_khz_needs_ldro_but_not_at_250_khz() {
        // SF11/125: 16.384 ms symbols (LDRO on); SF11/250: 8.192 ms (off).
        let narrow = time_on_air_us(&lora(11, 125_000), 20, DOWNLINK).unwrap_or(0);
        let wide = time_on_air_us(&lora(11, 250_000), 20, DOWNLINK).unwrap_or(0);
        // 20 bytes, no CRC: ceil((160-44+28)/(4*9))=4 blocks -> 28 symbols with LDRO,
        // ceil(144/44)=4 -> 28 symbols without; so exactly half the time.
        assert_eq!(narrow, 2 * wide);
        assert_eq!(narrow, 659_456);
    }

    #[test]
    fn sf5_and_sf6_follow_the_sx1302_formula() {
        // SF5/125 kHz, 10 bytes, CRC on: preamble 8 + 6.25, payload
        // 8 + ceil((80 + 16 - 20 + 20) / 20) * 5 = 33 symbols; 47.25 * 256 µs = 12.096 ms.
        assert_eq!(time_on_air_us(&lora(5, 125_000), 10, UPLINK), Ok(12_096));
    }

    #[test]
    fn a_dropped_crc_shortens_the_frame() {
        // 50 bytes at SF9: 12 coding blocks with the 16 CRC bits, 11 without.
        let with = time_on_air_us(&lora(9, 125_000), 50, UPLINK).unwrap_or(0);
        let without = time_on_air_us(&lora(9, 125_000), 50, DOWNLINK).unwrap_or(0);
        assert_eq!(with - without, 5 * 4_096, "one block of 5 symbols of 4.096 ms");
        assert!(without < with, "{without} < {with}");
    }

    #[test]
    fn fsk_counts_preamble_sync_length_payload_and_crc() {
        let fsk = Modulation::Fsk { datarate: 50_000, frequency_deviation: 25_000 };
        // (5 + 3 + 1 + 20 + 2) bytes * 8 / 50 kbit/s = 4.96 ms.
        assert_eq!(time_on_air_us(&fsk, 20, FrameFormat::downlink(&fsk)), Ok(4_960));
    }

    #[test]
    fn refuses_what_no_radio_can_send() {
        assert_eq!(time_on_air_us(&lora(13, 125_000), 1, UPLINK), Err(AirtimeError::SpreadingFactor(13)));
        assert_eq!(time_on_air_us(&lora(7, 62_500), 1, UPLINK), Err(AirtimeError::Bandwidth(62_500)));
        let slow = Modulation::Fsk { datarate: 100, frequency_deviation: 50 };
        assert_eq!(time_on_air_us(&slow, 1, UPLINK), Err(AirtimeError::BitRate(100)));
    }
}
