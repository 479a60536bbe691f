//! EU863-870: ChirpStack's and Semtech's default 8-channel plan for an
//! SX1302 (867.1–868.5 MHz multi-SF, radios centred on 867.5 and 868.5 MHz,
//! LoRa service channel 868.3 MHz SF7/250 kHz, FSK 868.8 MHz 50 kbit/s) and
//! the ETSI EN 300 220 sub-bands a gateway transmits under, as ChirpStack
//! applies them: g 863–868 MHz 1 %, g1 868–868.6 MHz 1 %, g2 868.7–869.2 MHz
//! 0.1 %, g3 869.4–869.65 MHz 10 % (the RX2 / 27 dBm band), g4 869.7–870 MHz
//! 1 %; 16 dBm EIRP except 27 dBm in g3.

use super::{RegionPlan, SubBand};
use crate::config::{FskChannel, LoraServiceChannel};

/// The EU868 plan.
pub const PLAN: RegionPlan = RegionPlan {
    name: "eu868",
    rf_chain_frequencies: [867_500_000, 868_500_000],
    multi_sf_channels: &[
        867_100_000,
        867_300_000,
        867_500_000,
        867_700_000,
        867_900_000,
        868_100_000,
        868_300_000,
        868_500_000,
    ],
    lora_service: Some(LoraServiceChannel {
        frequency: 868_300_000,
        bandwidth: 250_000,
        spreading_factor: 7,
    }),
    fsk: Some(FskChannel { frequency: 868_800_000, datarate: 50_000, frequency_deviation: 25_000 }),
    tx_frequency_min: 863_000_000,
    tx_frequency_max: 870_000_000,
    sub_bands: &[
        SubBand {
            name: "g",
            min_hz: 863_000_000,
            max_hz: 868_000_000,
            duty_cycle_permille: Some(10),
            max_eirp_dbm: 16,
        },
        SubBand {
            name: "g1",
            min_hz: 868_000_000,
            max_hz: 868_600_000,
            duty_cycle_permille: Some(10),
            max_eirp_dbm: 16,
        },
        SubBand {
            name: "g2",
            min_hz: 868_700_000,
            max_hz: 869_200_000,
            duty_cycle_permille: Some(1),
            max_eirp_dbm: 16,
        },
        SubBand {
            name: "g3",
            min_hz: 869_400_000,
            max_hz: 869_650_000,
            duty_cycle_permille: Some(100),
            max_eirp_dbm: 27,
        },
        SubBand {
            name: "g4",
            min_hz: 869_700_000,
            max_hz: 870_000_000,
            duty_cycle_permille: Some(10),
            max_eirp_dbm: 16,
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn band(frequency: u32, bandwidth: u32) -> Option<&'static str> {
        PLAN.sub_band(frequency, bandwidth).map(|(_, b)| b.name)
    }

    #[test]
    fn lorawan_downlink_channels_fall_in_their_sub_bands() {
        assert_eq!(band(868_100_000, 125_000), Some("g1"));
        assert_eq!(band(868_500_000, 125_000), Some("g1"));
        assert_eq!(band(867_100_000, 125_000), Some("g"));
        assert_eq!(band(869_525_000, 125_000), Some("g3"), "RX2");
        assert_eq!(band(868_800_000, 125_000), Some("g2"), "FSK");
    }

    #[test]
    fn a_frame_straddling_a_sub_band_edge_or_in_a_gap_has_no_sub_band() {
        assert_eq!(band(868_600_000, 125_000), None, "868.6 MHz sits on the g1 edge");
        assert_eq!(band(869_300_000, 125_000), None, "869.2–869.4 MHz is no sub-band of ours");
        assert_eq!(band(869_525_000, 500_000), None, "too wide for g3");
        assert_eq!(band(862_900_000, 125_000), None);
        assert_eq!(band(870_000_000, 125_000), None);
    }

    #[test]
    fn rx2_may_use_27_dbm_and_ten_percent() {
        let (_, g3) = PLAN.sub_band(869_525_000, 125_000).unwrap_or_else(|| panic!("no g3"));
        assert_eq!((g3.max_eirp_dbm, g3.duty_cycle_permille), (27, Some(100)));
    }
}
