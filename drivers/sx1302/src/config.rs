//! The `[radio.sx1302]` configuration as the operator writes it: a board
//! model and a region by name, and overrides of whatever the board data or
//! the channel plan says. Every override that is present is applied
//! (`setup::ConcentratorSetup::resolve` turns this into what the HAL gets);
//! absent keys take the board's or the region's value. Parsing only: the
//! checks live in `setup.rs`.

use serde::{Deserialize, Serialize};

/// `[radio.sx1302]`: which concentrator, which channel plan, and overrides.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sx1302Config {
    /// Board model: `rak2287`, `rak5146`, `wm1302` or `corecell` (see `boards/`).
    pub board: String,
    /// Channel plan (see `regions/`); `eu868` when absent.
    #[serde(default = "default_region")]
    pub region: String,
    /// SPI device of the SX1302 instead of the board's (`/dev/spidev0.0`).
    pub spidev: Option<String>,
    /// RF chain that clocks the SX1302 instead of the board's.
    pub clock_source: Option<u8>,
    /// LoRaWAN public network sync word (0x34); `true` when absent.
    pub lorawan_public: Option<bool>,
    /// Full-duplex front end instead of the board's.
    pub full_duplex: Option<bool>,
    /// Antenna gain in dBi, subtracted from the EIRP asked for a downlink to get the
    /// power at the connector.
    #[serde(default)]
    pub antenna_gain_dbi: i8,
    /// Overrides for RF chain 0.
    #[serde(default)]
    pub radio_0: RfChainOverride,
    /// Overrides for RF chain 1.
    #[serde(default)]
    pub radio_1: RfChainOverride,
    /// Multi-SF LoRa channels (125 kHz, SF5–SF12) in Hz, at most 8, instead of the region's.
    /// Each goes to the RF chain whose centre is nearest.
    pub multi_sf_channels: Option<Vec<u32>>,
    /// The single-SF LoRa service channel instead of the region's, or `"none"`.
    pub lora_service: Option<Setting<LoraServiceChannel>>,
    /// The FSK channel instead of the region's, or `"none"`.
    pub fsk: Option<Setting<FskChannel>>,
    /// Reset and power-enable lines instead of the board's.
    #[serde(default)]
    pub gpio: GpioOverride,
    /// Refuse downlinks that would exceed a sub-band's duty cycle (ETSI); `true` when absent.
    #[serde(default = "default_true")]
    pub enforce_duty_cycle: bool,
    /// Time between two polls of the concentrator, 1..=100 ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// When the concentrator counts as wedged and is restarted.
    #[serde(default)]
    pub health: HealthConfig,
}

/// Per RF chain (`[radio.sx1302.radio_0]`): each key replaces the board's or region's value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RfChainOverride {
    pub enable: Option<bool>,
    pub radio_type: Option<RadioType>,
    /// Centre frequency in Hz.
    pub frequency: Option<u32>,
    /// RSSI correction in dB.
    pub rssi_offset: Option<f32>,
    /// RSSI temperature compensation.
    pub rssi_tcomp: Option<RssiTcomp>,
    pub tx_enable: Option<bool>,
    /// SX1250 single-input (rather than differential) RX mode.
    pub single_input_mode: Option<bool>,
    /// TX power table, 1..=16 steps in ascending `rf_power`.
    pub tx_gain_lut: Option<Vec<TxGain>>,
}

/// The radio chip behind an RF chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RadioType {
    Sx1250,
    Sx1255,
    Sx1257,
}

/// RSSI temperature compensation coefficients, as in Semtech's `rssi_tcomp`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RssiTcomp {
    pub coeff_a: f32,
    pub coeff_b: f32,
    pub coeff_c: f32,
    pub coeff_d: f32,
    pub coeff_e: f32,
}

/// One step of a TX power table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TxGain {
    /// Power at the board connector, dBm.
    pub rf_power: i8,
    /// SX1250: external PA on (1) or off (0); SX125x: 2-bit PA gain.
    #[serde(default)]
    pub pa_gain: u8,
    /// SX1250 power index (0..=22).
    #[serde(default)]
    pub pwr_idx: u8,
    /// SX125x digital gain.
    #[serde(default)]
    pub dig_gain: u8,
    /// SX125x DAC gain.
    #[serde(default = "default_dac_gain")]
    pub dac_gain: u8,
    /// SX125x mixer gain.
    #[serde(default = "default_mix_gain")]
    pub mix_gain: u8,
    /// SX125x calibrated I offset.
    #[serde(default)]
    pub offset_i: i8,
    /// SX125x calibrated Q offset.
    #[serde(default)]
    pub offset_q: i8,
}

impl TxGain {
    /// A step of an SX1250 table (the only fields an SX1250 uses).
    pub const fn sx1250(rf_power: i8, pa_gain: u8, pwr_idx: u8) -> TxGain {
        TxGain { rf_power, pa_gain, pwr_idx, dig_gain: 0, dac_gain: 3, mix_gain: 5, offset_i: 0, offset_q: 0 }
    }
}

/// The single-SF LoRa service channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoraServiceChannel {
    /// Hz.
    pub frequency: u32,
    /// Hz: 125000, 250000 or 500000.
    pub bandwidth: u32,
    /// 5..=12.
    pub spreading_factor: u8,
}

/// The FSK channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FskChannel {
    /// Hz.
    pub frequency: u32,
    /// Bit rate, bit/s.
    pub datarate: u32,
    /// Frequency deviation, Hz (the receive bandwidth is 2 × deviation + bit rate).
    pub frequency_deviation: u32,
}

/// A setting that can be switched off with the string `"none"`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged, expecting = "a table, or the string \"none\" to switch it off")]
pub enum Setting<T> {
    Off(Off),
    On(T),
}

/// The `"none"` keyword of `Setting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Off {
    #[serde(rename = "none")]
    None,
}

impl<T> Setting<T> {
    /// `Some` when on.
    pub fn on(&self) -> Option<&T> {
        match self {
            Setting::On(v) => Some(v),
            Setting::Off(_) => None,
        }
    }
}

/// `[radio.sx1302.gpio]`: each key replaces the board's line, `"none"` removes it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpioOverride {
    /// The SX1302 reset line (pulsed high then low before every start).
    pub reset: Option<Setting<GpioLine>>,
    /// The power-enable line (driven high before reset).
    pub power_enable: Option<Setting<GpioLine>>,
}

/// A GPIO line: `{ chip = "/dev/gpiochip0", line = 17 }` or `{ name = "GPIO17" }`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "a GPIO line: { chip = \"/dev/gpiochip0\", line = 17 } or { name = \"GPIO17\" }"
)]
pub enum GpioLine {
    Offset(LineOffset),
    Named(LineName),
}

/// A line by chip device and offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LineOffset {
    /// `/dev/gpiochipN` (or just `gpiochipN`).
    pub chip: String,
    pub line: u32,
}

/// A line by the name the kernel gives it (`gpioinfo` lists them; "GPIO17" on a Pi).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LineName {
    pub name: String,
}

impl std::fmt::Display for GpioLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpioLine::Offset(l) => write!(f, "{} line {}", l.chip, l.line),
            GpioLine::Named(l) => write!(f, "line \"{}\"", l.name),
        }
    }
}

/// `[radio.sx1302.health]`: when the concentrator is declared wedged and restarted.
///
/// The rule: the concentrator is reset and restarted when `max_hal_errors`
/// consecutive `lgw_receive` calls fail, or as many consecutive
/// `lgw_get_instcnt` calls; when its counter (which runs at 1 MHz) reads the
/// same value for `counter_stall_ms`; or, only if `silence_restart_s` is set,
/// when no frame at all was received for that long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Consecutive failed HAL calls (≥ 1) that mean the concentrator is wedged.
    #[serde(default = "default_max_hal_errors")]
    pub max_hal_errors: u32,
    /// How long (≥ 100 ms) a counter that stopped counting is tolerated.
    #[serde(default = "default_counter_stall_ms")]
    pub counter_stall_ms: u64,
    /// Restart after this many seconds without any received frame; off when absent
    /// (a quiet rural cell can legitimately hear nothing for hours).
    #[serde(default)]
    pub silence_restart_s: Option<u64>,
    /// Longest wait between two attempts to restart a concentrator that will not start.
    #[serde(default = "default_restart_backoff_max_s")]
    pub restart_backoff_max_s: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_hal_errors: default_max_hal_errors(),
            counter_stall_ms: default_counter_stall_ms(),
            silence_restart_s: None,
            restart_backoff_max_s: default_restart_backoff_max_s(),
        }
    }
}

impl Sx1302Config {
    /// A configuration for `board` with everything else from the board data and the EU868 plan.
    pub fn for_board(board: &str) -> Sx1302Config {
        Sx1302Config {
            board: board.to_string(),
            region: default_region(),
            spidev: None,
            clock_source: None,
            lorawan_public: None,
            full_duplex: None,
            antenna_gain_dbi: 0,
            radio_0: RfChainOverride::default(),
            radio_1: RfChainOverride::default(),
            multi_sf_channels: None,
            lora_service: None,
            fsk: None,
            gpio: GpioOverride::default(),
            enforce_duty_cycle: true,
            poll_interval_ms: default_poll_interval_ms(),
            health: HealthConfig::default(),
        }
    }
}

fn default_region() -> String {
    "eu868".to_string()
}

fn default_true() -> bool {
    true
}

fn default_poll_interval_ms() -> u64 {
    10
}

fn default_dac_gain() -> u8 {
    3
}

fn default_mix_gain() -> u8 {
    5
}

fn default_max_hal_errors() -> u32 {
    5
}

fn default_counter_stall_ms() -> u64 {
    2_000
}

fn default_restart_backoff_max_s() -> u64 {
    60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_section_names_only_the_board() {
        let c: Sx1302Config = toml::from_str("board = \"rak2287\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, Sx1302Config::for_board("rak2287"));
    }

    #[test]
    fn reads_every_override() {
        let text = r#"
            board = "wm1302"
            region = "eu868"
            spidev = "/dev/spidev1.0"
            clock_source = 1
            lorawan_public = false
            full_duplex = true
            antenna_gain_dbi = 3
            multi_sf_channels = [868100000, 868300000]
            lora_service = "none"
            fsk = { frequency = 868800000, datarate = 50000, frequency_deviation = 25000 }
            enforce_duty_cycle = false
            poll_interval_ms = 5

            [radio_0]
            enable = true
            radio_type = "sx1257"
            frequency = 868500000
            rssi_offset = -200.5
            rssi_tcomp = { coeff_a = 0, coeff_b = 0, coeff_c = 20.41, coeff_d = 2162.56, coeff_e = 0 }
            tx_enable = true
            single_input_mode = false
            tx_gain_lut = [{ rf_power = 14, pa_gain = 1, pwr_idx = 6 }]

            [radio_1]
            enable = false

            [gpio]
            reset = { name = "GPIO23" }
            power_enable = "none"

            [health]
            max_hal_errors = 3
            counter_stall_ms = 500
            silence_restart_s = 3600
        "#;
        let c: Sx1302Config = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.lora_service, Some(Setting::Off(Off::None)));
        assert_eq!(c.gpio.reset, Some(Setting::On(GpioLine::Named(LineName { name: "GPIO23".into() }))));
        assert_eq!(c.gpio.power_enable, Some(Setting::Off(Off::None)));
        assert_eq!(c.radio_0.radio_type, Some(RadioType::Sx1257));
        assert_eq!(c.radio_0.tx_gain_lut, Some(vec![TxGain::sx1250(14, 1, 6)]));
        assert_eq!(c.radio_1.enable, Some(false));
        assert_eq!(c.health.silence_restart_s, Some(3600));
        assert_eq!(c.health.restart_backoff_max_s, 60);
    }

    #[test]
    fn refuses_unknown_keys_everywhere() {
        for text in [
            "board = \"rak2287\"\nfrobnicate = 1",
            "board = \"rak2287\"\n[radio_0]\nfrequenzy = 1",
            "board = \"rak2287\"\n[health]\nmax_errors = 1",
            "board = \"rak2287\"\n[gpio]\nreset = { chip = \"/dev/gpiochip0\", line = 17, name = \"x\" }",
            "board = \"rak2287\"\nfsk = { frequency = 1, datarate = 2, frequency_deviation = 3, bw = 4 }",
            "board = \"rak2287\"\nlora_service = \"off\"",
        ] {
            assert!(toml::from_str::<Sx1302Config>(text).is_err(), "accepted: {text}");
        }
    }

    /// An operator's section, nested as in berrygw.toml.
    const EXAMPLE: &str = r#"
        [radio.sx1302]
        board = "rak2287"
        region = "eu868"
        spidev = "/dev/spidev0.0"
        antenna_gain_dbi = 0
        enforce_duty_cycle = true
        multi_sf_channels = [867100000, 867300000, 867500000, 867700000, 867900000, 868100000, 868300000, 868500000]
        lora_service = { frequency = 868300000, bandwidth = 250000, spreading_factor = 7 }
        fsk = "none"

        [radio.sx1302.radio_0]
        rssi_offset = -215.4
        tx_gain_lut = [{ rf_power = 12, pa_gain = 1, pwr_idx = 4 }, { rf_power = 14, pa_gain = 1, pwr_idx = 6 }]

        [radio.sx1302.gpio]
        reset = { name = "GPIO17" }
        power_enable = "none"

        [radio.sx1302.health]
        max_hal_errors = 5
        counter_stall_ms = 2000
        silence_restart_s = 3600
    "#;

    #[test]
    fn the_documented_example_parses() {
        #[derive(Deserialize)]
        struct File {
            radio: Radio,
        }
        #[derive(Deserialize)]
        struct Radio {
            sx1302: Sx1302Config,
        }
        let f: File = toml::from_str(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.radio.sx1302.board, "rak2287");
        assert_eq!(f.radio.sx1302.fsk, Some(Setting::Off(Off::None)));
        assert_eq!(f.radio.sx1302.health.silence_restart_s, Some(3600));
    }

    #[test]
    fn a_gpio_line_by_chip_and_offset() {
        let c: GpioOverride = toml::from_str("reset = { chip = \"/dev/gpiochip4\", line = 17 }")
            .unwrap_or_else(|e| panic!("{e}"));
        let line = GpioLine::Offset(LineOffset { chip: "/dev/gpiochip4".into(), line: 17 });
        assert_eq!(c.reset, Some(Setting::On(line)));
    }
}
