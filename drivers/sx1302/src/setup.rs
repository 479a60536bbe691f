//! Turns an `Sx1302Config` into a `ConcentratorSetup`: the board model and
//! the region plan looked up once, every override applied, every value
//! checked against what the SX1302 can do. What comes out is exactly what
//! the owner thread gives the HAL (RF chains, IF channels, TX power table,
//! GPIO lines, health rules), so tests can read the decision without a HAL.

use std::time::Duration;

use crate::boards::{self, BoardModel, BoardPin};
use crate::config::{
    FskChannel, GpioLine, HealthConfig, LineOffset, LoraServiceChannel, RadioType, RfChainOverride,
    RssiTcomp, Setting, Sx1302Config, TxGain,
};
use crate::regions::{self, RegionPlan};

/// Half the span, around an RF chain's centre, an IF channel may occupy (the HAL's limit).
pub const IF_HALF_SPAN_HZ: u32 = 800_000;
/// Bandwidth of a multi-SF channel.
pub const MULTI_SF_BANDWIDTH_HZ: u32 = 125_000;
/// The SX1302's multi-SF demodulators.
pub const MULTI_SF_CHANNELS_MAX: usize = 8;
/// Longest SPI device path the HAL stores (its `com_path[64]` with the terminating NUL).
pub const COM_PATH_MAX: usize = 63;

/// A configuration the concentrator cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown board `{name}`; berrygw knows: {known}")]
    UnknownBoard { name: String, known: String },
    #[error("unknown region `{name}`; berrygw knows: {known}")]
    UnknownRegion { name: String, known: String },
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// Everything the owner thread configures, resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ConcentratorSetup {
    pub board: &'static BoardModel,
    pub region: &'static RegionPlan,
    /// SPI device of the SX1302.
    pub com_path: String,
    pub lorawan_public: bool,
    pub clock_source: u8,
    pub full_duplex: bool,
    pub rf_chains: [RfChainSetup; 2],
    /// Multi-SF channels, IF chains 0.. in order.
    pub multi_sf: Vec<IfChannel>,
    /// The LoRa service channel (IF chain 8).
    pub lora_service: Option<(IfChannel, LoraServiceChannel)>,
    /// The FSK channel (IF chain 9).
    pub fsk: Option<(IfChannel, FskChannel)>,
    pub tx: TxSetup,
    pub reset: ResetPins,
    pub health: HealthConfig,
    pub poll_interval: Duration,
}

/// One RF chain as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct RfChainSetup {
    pub enable: bool,
    /// Centre frequency, Hz.
    pub frequency: u32,
    pub radio_type: RadioType,
    pub rssi_offset: f32,
    pub rssi_tcomp: RssiTcomp,
    pub tx_enable: bool,
    pub single_input_mode: bool,
    /// Empty unless `tx_enable`.
    pub tx_gain_lut: Vec<TxGain>,
}

/// A receive channel placed on an RF chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfChannel {
    pub rf_chain: u8,
    /// Offset from the RF chain's centre, Hz.
    pub if_offset_hz: i32,
    /// Absolute frequency, Hz.
    pub frequency: u32,
}

/// How downlinks are sent.
#[derive(Clone, Debug, PartialEq)]
pub struct TxSetup {
    /// The RF chain that transmits; `None` for a receive-only configuration.
    pub rf_chain: Option<u8>,
    /// Its power table (ascending).
    pub gain_lut: Vec<TxGain>,
    pub antenna_gain_dbi: i8,
    pub enforce_duty_cycle: bool,
}

/// The GPIO lines of the reset sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetPins {
    pub reset: Option<GpioLine>,
    pub power_enable: Option<GpioLine>,
}

impl ConcentratorSetup {
    /// Resolves `config`: board and region by name, then every override.
    pub fn resolve(config: &Sx1302Config) -> Result<ConcentratorSetup, ConfigError> {
        let board = boards::find(&config.board).ok_or_else(|| ConfigError::UnknownBoard {
            name: config.board.clone(),
            known: boards::names(),
        })?;
        let region = regions::find(&config.region).ok_or_else(|| ConfigError::UnknownRegion {
            name: config.region.clone(),
            known: regions::names(),
        })?;

        let com_path = config.spidev.clone().unwrap_or_else(|| board.spidev.to_string());
        if com_path.is_empty() || com_path.len() > COM_PATH_MAX || com_path.contains('\0') {
            return Err(invalid("spidev", format!("must be a device path of 1..={COM_PATH_MAX} bytes")));
        }
        let clock_source = config.clock_source.unwrap_or(board.clock_source);
        if clock_source > 1 {
            return Err(invalid("clock_source", "must be RF chain 0 or 1"));
        }

        let rf_chains =
            [rf_chain(board, region, 0, &config.radio_0)?, rf_chain(board, region, 1, &config.radio_1)?];
        if !rf_chains[usize::from(clock_source)].enable {
            return Err(invalid(
                "clock_source",
                format!("RF chain {clock_source} clocks the SX1302: enable it"),
            ));
        }

        let multi_sf_freqs = config.multi_sf_channels.as_deref().unwrap_or(region.multi_sf_channels);
        if multi_sf_freqs.len() > MULTI_SF_CHANNELS_MAX {
            return Err(invalid(
                "multi_sf_channels",
                format!("{} channels given, the SX1302 has {MULTI_SF_CHANNELS_MAX}", multi_sf_freqs.len()),
            ));
        }
        let multi_sf = multi_sf_freqs
            .iter()
            .map(|&f| place(&rf_chains, f, MULTI_SF_BANDWIDTH_HZ, "multi_sf_channels"))
            .collect::<Result<Vec<_>, _>>()?;

        let lora_service = match &config.lora_service {
            None => region.lora_service,
            Some(s) => s.on().copied(),
        };
        let lora_service = match lora_service {
            None => None,
            Some(c) => {
                if !matches!(c.bandwidth, 125_000 | 250_000 | 500_000) {
                    return Err(invalid("lora_service.bandwidth", "must be 125000, 250000 or 500000"));
                }
                if !(5..=12).contains(&c.spreading_factor) {
                    return Err(invalid("lora_service.spreading_factor", "must be 5..=12"));
                }
                Some((place(&rf_chains, c.frequency, c.bandwidth, "lora_service.frequency")?, c))
            }
        };

        let fsk = match &config.fsk {
            None => region.fsk,
            Some(s) => s.on().copied(),
        };
        let fsk = match fsk {
            None => None,
            Some(c) => {
                if !(500..=250_000).contains(&c.datarate) {
                    return Err(invalid("fsk.datarate", "must be 500..=250000 bit/s"));
                }
                let bandwidth = fsk_bandwidth_hz(&c);
                if bandwidth > 500_000 {
                    return Err(invalid("fsk", "2 × frequency_deviation + datarate must be at most 500 kHz"));
                }
                Some((place(&rf_chains, c.frequency, bandwidth, "fsk.frequency")?, c))
            }
        };

        let tx_chain = rf_chains.iter().position(|c| c.enable && c.tx_enable);
        let tx = TxSetup {
            rf_chain: tx_chain.and_then(|i| u8::try_from(i).ok()),
            gain_lut: tx_chain.map(|i| rf_chains[i].tx_gain_lut.clone()).unwrap_or_default(),
            antenna_gain_dbi: config.antenna_gain_dbi,
            enforce_duty_cycle: config.enforce_duty_cycle,
        };

        let reset = ResetPins {
            reset: pin(&config.gpio.reset, board.reset),
            power_enable: pin(&config.gpio.power_enable, board.power_enable),
        };

        let health = config.health;
        if health.max_hal_errors == 0 {
            return Err(invalid("health.max_hal_errors", "must be at least 1"));
        }
        if health.counter_stall_ms < 100 {
            return Err(invalid("health.counter_stall_ms", "must be at least 100"));
        }
        if health.silence_restart_s == Some(0) {
            return Err(invalid(
                "health.silence_restart_s",
                "must be at least 1 (leave it out to switch it off)",
            ));
        }
        if health.restart_backoff_max_s == 0 {
            return Err(invalid("health.restart_backoff_max_s", "must be at least 1"));
        }
        if !(1..=100).contains(&config.poll_interval_ms) {
            return Err(invalid("poll_interval_ms", "must be 1..=100"));
        }

        Ok(ConcentratorSetup {
            board,
            region,
            com_path,
            lorawan_public: config.lorawan_public.unwrap_or(true),
            clock_source,
            full_duplex: config.full_duplex.unwrap_or(board.full_duplex),
            rf_chains,
            multi_sf,
            lora_service,
            fsk,
            tx,
            reset,
            health,
            poll_interval: Duration::from_millis(config.poll_interval_ms),
        })
    }
}

impl ConcentratorSetup {
    /// The LoRa uplink channels it listens on (multi-SF and service), Hz, sorted.
    pub fn lora_channels(&self) -> Vec<u32> {
        let mut hz: Vec<u32> = self
            .multi_sf
            .iter()
            .map(|c| c.frequency)
            .chain(self.lora_service.map(|(c, _)| c.frequency))
            .collect();
        hz.sort_unstable();
        hz.dedup();
        hz
    }
}

/// The receive bandwidth of an FSK channel, as Semtech's packet forwarder derives it.
pub fn fsk_bandwidth_hz(c: &FskChannel) -> u32 {
    c.frequency_deviation.saturating_mul(2).saturating_add(c.datarate)
}

fn rf_chain(
    board: &'static BoardModel,
    region: &'static RegionPlan,
    index: usize,
    o: &RfChainOverride,
) -> Result<RfChainSetup, ConfigError> {
    let model = &board.radios[index];
    let key = |field: &str| format!("radio_{index}.{field}");
    let enable = o.enable.unwrap_or(true);
    let tx_enable = enable && o.tx_enable.unwrap_or(model.tx_enable);
    let tx_gain_lut = if !tx_enable {
        Vec::new()
    } else if let Some(lut) = &o.tx_gain_lut {
        lut.clone()
    } else {
        let table = board
            .tx_gain_tables
            .iter()
            .find(|t| t.min_hz <= region.tx_frequency_min && region.tx_frequency_max <= t.max_hz)
            .ok_or_else(|| {
                invalid(
                    key("tx_gain_lut"),
                    format!(
                        "board `{}` has no TX power table for region `{}`: give one",
                        board.name, region.name
                    ),
                )
            })?;
        table.steps.to_vec()
    };
    if tx_enable {
        if !(1..=16).contains(&tx_gain_lut.len()) {
            return Err(invalid(key("tx_gain_lut"), "must have 1..=16 steps"));
        }
        if !tx_gain_lut.windows(2).all(|w| w[0].rf_power < w[1].rf_power) {
            return Err(invalid(key("tx_gain_lut"), "steps must be in strictly ascending rf_power"));
        }
    }
    Ok(RfChainSetup {
        enable,
        frequency: o.frequency.unwrap_or(region.rf_chain_frequencies[index]),
        radio_type: o.radio_type.unwrap_or(model.radio_type),
        rssi_offset: o.rssi_offset.unwrap_or(model.rssi_offset),
        rssi_tcomp: o.rssi_tcomp.unwrap_or(model.rssi_tcomp),
        tx_enable,
        single_input_mode: o.single_input_mode.unwrap_or(model.single_input_mode),
        tx_gain_lut,
    })
}

/// Places a channel on the enabled RF chain whose centre is nearest.
fn place(
    rf_chains: &[RfChainSetup; 2],
    frequency: u32,
    bandwidth: u32,
    key: &str,
) -> Result<IfChannel, ConfigError> {
    let (rf_chain, chain) = rf_chains
        .iter()
        .enumerate()
        .filter(|(_, c)| c.enable)
        .min_by_key(|(_, c)| c.frequency.abs_diff(frequency))
        .ok_or_else(|| invalid(key, "no RF chain is enabled"))?;
    let offset = i64::from(frequency) - i64::from(chain.frequency);
    if offset.unsigned_abs() + u64::from(bandwidth / 2) > u64::from(IF_HALF_SPAN_HZ) {
        return Err(invalid(
            key,
            format!(
                "{frequency} Hz is out of reach of both radios (centred on {} and {} Hz, ±{} kHz each)",
                rf_chains[0].frequency,
                rf_chains[1].frequency,
                IF_HALF_SPAN_HZ / 1000
            ),
        ));
    }
    Ok(IfChannel {
        rf_chain: u8::try_from(rf_chain).unwrap_or(0),
        // |offset| ≤ 800 kHz (checked just above): fits an i32.
        if_offset_hz: i32::try_from(offset).unwrap_or(0),
        frequency,
    })
}

fn pin(over: &Option<Setting<GpioLine>>, default: Option<BoardPin>) -> Option<GpioLine> {
    match over {
        None => default.map(|p| GpioLine::Offset(LineOffset { chip: p.chip.to_string(), line: p.line })),
        Some(s) => s.on().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LineName, Off};

    fn resolve(config: &Sx1302Config) -> ConcentratorSetup {
        ConcentratorSetup::resolve(config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn chan(rf_chain: u8, if_offset_hz: i32, frequency: u32) -> IfChannel {
        IfChannel { rf_chain, if_offset_hz, frequency }
    }

    #[test]
    fn eu868_on_a_rak2287_is_semtechs_reference_layout() {
        let s = resolve(&Sx1302Config::for_board("rak2287"));
        assert_eq!(s.com_path, "/dev/spidev0.0");
        assert!(s.lorawan_public);
        assert_eq!((s.rf_chains[0].frequency, s.rf_chains[1].frequency), (867_500_000, 868_500_000));
        assert_eq!(
            s.multi_sf,
            vec![
                chan(0, -400_000, 867_100_000),
                chan(0, -200_000, 867_300_000),
                chan(0, 0, 867_500_000),
                chan(0, 200_000, 867_700_000),
                chan(0, 400_000, 867_900_000),
                chan(1, -400_000, 868_100_000),
                chan(1, -200_000, 868_300_000),
                chan(1, 0, 868_500_000),
            ]
        );
        let (service_chan, service) = s.lora_service.unwrap_or_else(|| panic!("no service channel"));
        assert_eq!(service_chan, chan(1, -200_000, 868_300_000));
        assert_eq!((service.bandwidth, service.spreading_factor), (250_000, 7));
        let (fsk_chan, fsk) = s.fsk.unwrap_or_else(|| panic!("no FSK channel"));
        assert_eq!(fsk_chan, chan(1, 300_000, 868_800_000));
        assert_eq!(fsk.datarate, 50_000);
        assert_eq!(s.tx.rf_chain, Some(0));
        assert_eq!(s.tx.gain_lut.len(), 16);
        assert!(s.rf_chains[1].tx_gain_lut.is_empty());
        assert_eq!(
            s.reset.reset,
            Some(GpioLine::Offset(LineOffset { chip: "/dev/gpiochip0".into(), line: 17 }))
        );
        assert_eq!(s.reset.power_enable, None);
    }

    #[test]
    fn each_board_brings_its_own_pins_and_power_table() {
        let wm = resolve(&Sx1302Config::for_board("wm1302"));
        let line = |n| Some(GpioLine::Offset(LineOffset { chip: "/dev/gpiochip0".into(), line: n }));
        assert_eq!((wm.reset.reset, wm.reset.power_enable), (line(17), line(18)));
        let cc = resolve(&Sx1302Config::for_board("corecell"));
        assert_eq!((cc.reset.reset, cc.reset.power_enable), (line(23), line(18)));
        assert_eq!(cc.tx.gain_lut[0], TxGain::sx1250(12, 0, 15));
        let rak = resolve(&Sx1302Config::for_board("rak5146"));
        assert_eq!(rak.tx.gain_lut[0], TxGain::sx1250(12, 1, 4));
        assert!(!rak.rf_chains[0].single_input_mode);
    }

    #[test]
    fn every_override_is_honoured() {
        let mut c = Sx1302Config::for_board("rak2287");
        c.spidev = Some("/dev/spidev1.1".into());
        c.clock_source = Some(1);
        c.lorawan_public = Some(false);
        c.full_duplex = Some(true);
        c.antenna_gain_dbi = 2;
        c.enforce_duty_cycle = false;
        c.poll_interval_ms = 20;
        let tcomp = RssiTcomp { coeff_a: 1.0, coeff_b: 2.0, coeff_c: 3.0, coeff_d: 4.0, coeff_e: 5.0 };
        let lut = vec![TxGain::sx1250(10, 0, 1), TxGain::sx1250(14, 1, 7)];
        c.radio_0 = RfChainOverride {
            enable: Some(true),
            radio_type: Some(RadioType::Sx1257),
            frequency: Some(868_000_000),
            rssi_offset: Some(-200.0),
            rssi_tcomp: Some(tcomp),
            tx_enable: Some(true),
            single_input_mode: Some(false),
            tx_gain_lut: Some(lut.clone()),
        };
        c.radio_1 = RfChainOverride { frequency: Some(869_000_000), ..RfChainOverride::default() };
        c.multi_sf_channels = Some(vec![868_100_000, 869_100_000]);
        c.lora_service = Some(Setting::On(LoraServiceChannel {
            frequency: 868_500_000,
            bandwidth: 500_000,
            spreading_factor: 8,
        }));
        c.fsk = Some(Setting::Off(Off::None));
        c.gpio.reset = Some(Setting::On(GpioLine::Named(LineName { name: "GPIO5".into() })));
        c.gpio.power_enable =
            Some(Setting::On(GpioLine::Offset(LineOffset { chip: "/dev/gpiochip4".into(), line: 6 })));
        c.health = HealthConfig {
            max_hal_errors: 2,
            counter_stall_ms: 300,
            silence_restart_s: Some(60),
            restart_backoff_max_s: 5,
        };

        let s = resolve(&c);
        assert_eq!(s.com_path, "/dev/spidev1.1");
        assert_eq!(s.clock_source, 1);
        assert!(!s.lorawan_public);
        assert!(s.full_duplex);
        assert_eq!(s.tx.antenna_gain_dbi, 2);
        assert!(!s.tx.enforce_duty_cycle);
        assert_eq!(s.poll_interval, Duration::from_millis(20));
        let r0 = &s.rf_chains[0];
        assert_eq!(
            (r0.radio_type, r0.frequency, r0.rssi_offset, r0.rssi_tcomp, r0.single_input_mode),
            (RadioType::Sx1257, 868_000_000, -200.0, tcomp, false)
        );
        assert_eq!(r0.tx_gain_lut, lut);
        assert_eq!(s.tx.gain_lut, lut);
        assert_eq!(s.rf_chains[1].frequency, 869_000_000);
        assert_eq!(s.multi_sf, vec![chan(0, 100_000, 868_100_000), chan(1, 100_000, 869_100_000)]);
        assert_eq!(
            s.lora_service.map(|(ch, c)| (ch, c.spreading_factor)),
            Some((chan(0, 500_000, 868_500_000), 8))
        );
        assert_eq!(s.fsk, None);
        assert_eq!(s.reset.reset, Some(GpioLine::Named(LineName { name: "GPIO5".into() })));
        assert_eq!(
            s.reset.power_enable,
            Some(GpioLine::Offset(LineOffset { chip: "/dev/gpiochip4".into(), line: 6 }))
        );
        assert_eq!(s.health, c.health);
    }

    #[test]
    fn a_board_pin_can_be_switched_off() {
        let mut c = Sx1302Config::for_board("wm1302");
        c.gpio.power_enable = Some(Setting::Off(Off::None));
        assert_eq!(resolve(&c).reset.power_enable, None);
    }

    #[test]
    fn moving_tx_to_the_other_chain_takes_the_board_power_table_there() {
        let mut c = Sx1302Config::for_board("rak2287");
        c.radio_0.tx_enable = Some(false);
        c.radio_1.tx_enable = Some(true);
        let s = resolve(&c);
        assert_eq!(s.tx.rf_chain, Some(1));
        assert_eq!(s.tx.gain_lut.len(), 16);
        assert!(s.rf_chains[0].tx_gain_lut.is_empty());
    }

    #[test]
    fn explains_what_is_wrong() {
        type Change = Box<dyn Fn(&mut Sx1302Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.board = "rak9999".into()), "unknown board `rak9999`; berrygw knows: corecell"),
            (Box::new(|c| c.region = "us915".into()), "unknown region `us915`"),
            (
                Box::new(|c| c.multi_sf_channels = Some(vec![866_000_000])),
                "`multi_sf_channels`: 866000000 Hz is out",
            ),
            (Box::new(|c| c.multi_sf_channels = Some(vec![868_100_000; 9])), "9 channels given"),
            (Box::new(|c| c.clock_source = Some(2)), "`clock_source`"),
            (Box::new(|c| c.radio_0.enable = Some(false)), "RF chain 0 clocks the SX1302"),
            (Box::new(|c| c.radio_0.tx_gain_lut = Some(vec![])), "`radio_0.tx_gain_lut`: must have 1..=16"),
            (
                Box::new(|c| {
                    c.radio_0.tx_gain_lut = Some(vec![TxGain::sx1250(14, 1, 1), TxGain::sx1250(12, 1, 1)])
                }),
                "ascending",
            ),
            (Box::new(|c| c.spidev = Some(String::new())), "`spidev`"),
            (Box::new(|c| c.health.max_hal_errors = 0), "`health.max_hal_errors`"),
            (Box::new(|c| c.poll_interval_ms = 0), "`poll_interval_ms`"),
            (
                Box::new(|c| {
                    c.fsk = Some(Setting::On(FskChannel {
                        frequency: 868_800_000,
                        datarate: 50_000,
                        frequency_deviation: 300_000,
                    }))
                }),
                "500 kHz",
            ),
        ];
        for (change, expected) in cases {
            let mut c = Sx1302Config::for_board("rak2287");
            change(&mut c);
            match ConcentratorSetup::resolve(&c) {
                Ok(_) => panic!("accepted; expected: {expected}"),
                Err(e) => assert!(e.to_string().contains(expected), "{e} does not say {expected}"),
            }
        }
    }
}
