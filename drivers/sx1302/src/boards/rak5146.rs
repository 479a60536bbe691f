//! RAKwireless RAK5146 (SX1303 + 2 × SX1250, SPI variant) on a RAK Pi HAT:
//! reset on BCM GPIO17, no power-enable line; unlike the RAK2287 its first
//! radio runs in differential input mode. Values from RAK's reference
//! configuration (rak_common_for_gateway, lora/rak5146), as ChirpStack
//! Concentratord carries them; its EU868 power table is the RAK2287's.

use super::{BandGainTable, BoardModel, BoardPin, RadioModel};

/// The RAK5146.
pub const MODEL: BoardModel = BoardModel {
    name: "rak5146",
    description: "RAKwireless RAK5146 (SX1303, SPI) on a Raspberry Pi HAT",
    spidev: "/dev/spidev0.0",
    clock_source: 0,
    full_duplex: false,
    radios: [RadioModel::sx1250(-215.4, true, false), RadioModel::sx1250(-215.4, false, false)],
    tx_gain_tables: &[BandGainTable {
        min_hz: 863_000_000,
        max_hz: 870_000_000,
        steps: &super::rak2287::EU868_STEPS,
    }],
    reset: Some(BoardPin { chip: "/dev/gpiochip0", line: 17 }),
    power_enable: None,
};
