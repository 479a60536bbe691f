//! RAKwireless RAK2287 (SX1302 + 2 × SX1250, SPI) on a RAK Pi HAT: reset on
//! BCM GPIO17, no power-enable line. Values from RAK's reference
//! configuration for the board (rak_common_for_gateway, lora/rak2287), as
//! ChirpStack Concentratord carries them.

use super::{BandGainTable, BoardModel, BoardPin, RadioModel};
use crate::config::TxGain;

/// The RAK2287.
pub const MODEL: BoardModel = BoardModel {
    name: "rak2287",
    description: "RAKwireless RAK2287 (SX1302, SPI) on a Raspberry Pi HAT",
    spidev: "/dev/spidev0.0",
    clock_source: 0,
    full_duplex: false,
    radios: [RadioModel::sx1250(-215.4, true, true), RadioModel::sx1250(-215.4, false, false)],
    tx_gain_tables: &[BandGainTable { min_hz: 863_000_000, max_hz: 870_000_000, steps: &EU868_STEPS }],
    reset: Some(BoardPin { chip: "/dev/gpiochip0", line: 17 }),
    power_enable: None,
};

/// 863–870 MHz power table (external PA always on); the RAK5146 uses the same.
pub(super) const EU868_STEPS: [TxGain; 16] = [
    TxGain::sx1250(12, 1, 4),
    TxGain::sx1250(13, 1, 5),
    TxGain::sx1250(14, 1, 6),
    TxGain::sx1250(15, 1, 7),
    TxGain::sx1250(16, 1, 8),
    TxGain::sx1250(17, 1, 9),
    TxGain::sx1250(18, 1, 10),
    TxGain::sx1250(19, 1, 11),
    TxGain::sx1250(20, 1, 12),
    TxGain::sx1250(21, 1, 13),
    TxGain::sx1250(22, 1, 14),
    TxGain::sx1250(23, 1, 16),
    TxGain::sx1250(24, 1, 17),
    TxGain::sx1250(25, 1, 18),
    TxGain::sx1250(26, 1, 19),
    TxGain::sx1250(27, 1, 22),
];
