//! Board models as data: what differs between SX1302/SX1303 boards (SPI
//! device, radios, RSSI calibration, TX power tables, reset and power-enable
//! lines). One file per board; a model name resolves once, here, to its
//! `BoardModel` and nothing else in the crate asks which board it runs on.
//! Values are the vendors' published reference configurations (sources named
//! in each file).

use crate::config::{RadioType, RssiTcomp, TxGain};

pub mod corecell;
pub mod rak2287;
pub mod rak5146;
pub mod wm1302;

/// Everything berrygw needs to know about one concentrator board.
#[derive(Debug, PartialEq)]
pub struct BoardModel {
    /// The name used in `[radio.sx1302] board = "..."`.
    pub name: &'static str,
    /// What it is, for logs and `berrygw status`.
    pub description: &'static str,
    /// SPI device of the SX1302 on a Raspberry Pi.
    pub spidev: &'static str,
    /// RF chain that provides the SX1302 clock.
    pub clock_source: u8,
    pub full_duplex: bool,
    /// RF chains 0 and 1.
    pub radios: [RadioModel; 2],
    /// TX power tables of the board's front end, per frequency band.
    pub tx_gain_tables: &'static [BandGainTable],
    /// SX1302 reset line.
    pub reset: Option<BoardPin>,
    /// Line that powers the board (driven high before reset), if it has one.
    pub power_enable: Option<BoardPin>,
}

/// One RF chain of a board.
#[derive(Debug, PartialEq)]
pub struct RadioModel {
    pub radio_type: RadioType,
    pub rssi_offset: f32,
    pub rssi_tcomp: RssiTcomp,
    pub tx_enable: bool,
    pub single_input_mode: bool,
}

impl RadioModel {
    /// An SX1250 RF chain with the stock temperature compensation.
    pub const fn sx1250(rssi_offset: f32, tx_enable: bool, single_input_mode: bool) -> RadioModel {
        RadioModel {
            radio_type: RadioType::Sx1250,
            rssi_offset,
            rssi_tcomp: SX1250_RSSI_TCOMP,
            tx_enable,
            single_input_mode,
        }
    }
}

/// A TX power table valid for transmissions between `min_hz` and `max_hz`.
#[derive(Debug, PartialEq)]
pub struct BandGainTable {
    pub min_hz: u32,
    pub max_hz: u32,
    pub steps: &'static [TxGain],
}

/// A GPIO line by chip device and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardPin {
    pub chip: &'static str,
    pub line: u32,
}

/// The RSSI temperature compensation Semtech's reference designs use for SX1250 radios.
pub const SX1250_RSSI_TCOMP: RssiTcomp =
    RssiTcomp { coeff_a: 0.0, coeff_b: 0.0, coeff_c: 20.41, coeff_d: 2162.56, coeff_e: 0.0 };

/// Every board berrygw knows.
pub const BOARDS: &[&BoardModel] = &[&corecell::MODEL, &rak2287::MODEL, &rak5146::MODEL, &wm1302::MODEL];

/// The board called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static BoardModel> {
    BOARDS.iter().copied().find(|b| b.name.eq_ignore_ascii_case(name))
}

/// The known board names, for error messages.
pub fn names() -> String {
    BOARDS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_is_found_by_its_name_in_any_case() {
        for board in BOARDS {
            assert_eq!(find(board.name), Some(*board));
            assert_eq!(find(&board.name.to_uppercase()), Some(*board));
        }
        assert_eq!(find("rak7248"), None);
    }

    #[test]
    fn every_power_table_fits_the_hal() {
        for board in BOARDS {
            assert!(!board.tx_gain_tables.is_empty(), "{}", board.name);
            for table in board.tx_gain_tables {
                assert!((1..=16).contains(&table.steps.len()), "{}", board.name);
                assert!(
                    table.steps.windows(2).all(|w| w[0].rf_power < w[1].rf_power),
                    "{}: steps must ascend",
                    board.name
                );
            }
            assert!(board.radios.iter().any(|r| r.tx_enable), "{} transmits on some chain", board.name);
            assert!(board.reset.is_some(), "{} has a reset line", board.name);
        }
    }
}
