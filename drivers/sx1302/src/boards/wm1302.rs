//! Seeed Studio WM1302 (SX1302 + 2 × SX1250, SPI) on Seeed's Pi HAT: reset on
//! BCM GPIO17, power enable on GPIO18. Seeed points at Semtech's reference
//! design for its configuration, so the TX power table is the CoreCell one.

use super::{BandGainTable, BoardModel, BoardPin, RadioModel};

/// The WM1302.
pub const MODEL: BoardModel = BoardModel {
    name: "wm1302",
    description: "Seeed Studio WM1302 (SX1302, SPI) on a Raspberry Pi HAT",
    spidev: "/dev/spidev0.0",
    clock_source: 0,
    full_duplex: false,
    radios: [RadioModel::sx1250(-215.4, true, true), RadioModel::sx1250(-215.4, false, false)],
    tx_gain_tables: &[BandGainTable {
        min_hz: 863_000_000,
        max_hz: 870_000_000,
        steps: &super::corecell::EU868_STEPS,
    }],
    reset: Some(BoardPin { chip: "/dev/gpiochip0", line: 17 }),
    power_enable: Some(BoardPin { chip: "/dev/gpiochip0", line: 18 }),
};
