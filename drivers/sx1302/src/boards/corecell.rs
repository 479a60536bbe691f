//! Semtech CoreCell reference design (SX1302C868GW1: SX1302 + 2 × SX1250,
//! SPI) on its Pi adapter: reset on BCM GPIO23, power enable on GPIO18, as
//! the HAL's `reset_lgw.sh` drives them. Radio values from the HAL's
//! `global_conf.json.sx1250.EU868`.

use super::{BandGainTable, BoardModel, BoardPin, RadioModel};
use crate::config::TxGain;

/// The CoreCell.
pub const MODEL: BoardModel = BoardModel {
    name: "corecell",
    description: "Semtech SX1302 CoreCell reference design (SX1302C868GW1), SPI",
    spidev: "/dev/spidev0.0",
    clock_source: 0,
    full_duplex: false,
    radios: [RadioModel::sx1250(-215.4, true, true), RadioModel::sx1250(-215.4, false, false)],
    tx_gain_tables: &[BandGainTable { min_hz: 863_000_000, max_hz: 870_000_000, steps: &EU868_STEPS }],
    reset: Some(BoardPin { chip: "/dev/gpiochip0", line: 23 }),
    power_enable: Some(BoardPin { chip: "/dev/gpiochip0", line: 18 }),
};

/// 863–870 MHz power table of the reference design: PA off up to 17 dBm, on above.
pub(super) const EU868_STEPS: [TxGain; 16] = [
    TxGain::sx1250(12, 0, 15),
    TxGain::sx1250(13, 0, 16),
    TxGain::sx1250(14, 0, 17),
    TxGain::sx1250(15, 0, 19),
    TxGain::sx1250(16, 0, 20),
    TxGain::sx1250(17, 0, 22),
    TxGain::sx1250(18, 1, 1),
    TxGain::sx1250(19, 1, 2),
    TxGain::sx1250(20, 1, 3),
    TxGain::sx1250(21, 1, 4),
    TxGain::sx1250(22, 1, 5),
    TxGain::sx1250(23, 1, 6),
    TxGain::sx1250(24, 1, 7),
    TxGain::sx1250(25, 1, 9),
    TxGain::sx1250(26, 1, 11),
    TxGain::sx1250(27, 1, 14),
];
