//! Safe Rust controls of the C test double of libloragw (feature
//! `hal-double`; `hal-double/loragw_double.c`): script received packets,
//! read back what the wrapper configured and sent, inject HAL failures, set
//! the counter, EUI and temperature. The double's state is global to the
//! process, like the HAL's: a test takes `exclusive()` first.

use std::ffi::CString;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::TxGain;
use crate::hal::{ffi, Hal};

/// The HAL's codes, as the double's header defines them (same values as Semtech's).
pub mod codes {
    use crate::hal::ffi;

    pub const MOD_LORA: u8 = ffi::MOD_LORA as u8;
    pub const MOD_FSK: u8 = ffi::MOD_FSK as u8;
    pub const BW_125KHZ: u8 = ffi::BW_125KHZ as u8;
    pub const BW_250KHZ: u8 = ffi::BW_250KHZ as u8;
    pub const BW_500KHZ: u8 = ffi::BW_500KHZ as u8;
    pub const CR_LORA_4_5: u8 = ffi::CR_LORA_4_5 as u8;
    pub const CR_LORA_4_8: u8 = ffi::CR_LORA_4_8 as u8;
    pub const STAT_CRC_OK: u8 = ffi::STAT_CRC_OK as u8;
    pub const STAT_CRC_BAD: u8 = ffi::STAT_CRC_BAD as u8;
    pub const STAT_NO_CRC: u8 = ffi::STAT_NO_CRC as u8;
    pub const IMMEDIATE: u8 = ffi::IMMEDIATE as u8;
    pub const TIMESTAMPED: u8 = ffi::TIMESTAMPED as u8;
    pub const TX_FREE: u8 = ffi::TX_FREE as u8;
    pub const TX_EMITTING: u8 = ffi::TX_EMITTING as u8;
    pub const RADIO_SX1250: u32 = ffi::LGW_RADIO_TYPE_SX1250;
    pub const RADIO_SX1257: u32 = ffi::LGW_RADIO_TYPE_SX1257;
}

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Exclusive use of the double (and of the HAL handle) for one test.
pub struct DoubleGuard {
    _lock: MutexGuard<'static, ()>,
}

/// Waits for the double to be free (no other test holds it, no radio of an earlier
/// test still owns the HAL), then resets it.
pub fn exclusive() -> DoubleGuard {
    let lock = EXCLUSIVE.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Hal::in_use() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    reset();
    DoubleGuard { _lock: lock }
}

/// Back to a freshly loaded library.
pub fn reset() {
    // SAFETY: no arguments; the double guards its state with a mutex.
    unsafe { ffi::double_reset() }
}

/// A packet for the double to hand out from `lgw_receive`.
#[derive(Clone, Copy)]
pub struct RxPacket(ffi::lgw_pkt_rx_s);

impl RxPacket {
    /// A LoRa packet with a good CRC, CR 4/5, -80 dBm, 7.5 dB SNR, IF chain 0, RF chain 0.
    pub fn lora(frequency: u32, spreading_factor: u8, bandwidth_code: u8, payload: &[u8]) -> RxPacket {
        let mut p = ffi::lgw_pkt_rx_s {
            freq_hz: frequency,
            status: codes::STAT_CRC_OK,
            modulation: codes::MOD_LORA,
            bandwidth: bandwidth_code,
            datarate: u32::from(spreading_factor),
            coderate: codes::CR_LORA_4_5,
            rssic: -80.0,
            rssis: -81.0,
            snr: 7.5,
            ..Default::default()
        };
        let n = payload.len().min(p.payload.len());
        p.payload[..n].copy_from_slice(&payload[..n]);
        p.size = u16::try_from(n).unwrap_or(0);
        RxPacket(p)
    }

    /// An FSK packet with a good CRC.
    pub fn fsk(frequency: u32, datarate: u32, payload: &[u8]) -> RxPacket {
        let mut p = RxPacket::lora(frequency, 0, 0, payload);
        p.0.modulation = codes::MOD_FSK;
        p.0.datarate = datarate;
        p.0.coderate = 0;
        p
    }

    /// Sets the CRC status code.
    pub fn status(mut self, code: u8) -> RxPacket {
        self.0.status = code;
        self
    }

    /// Sets the modulation code (to script a packet the wrapper cannot read).
    pub fn modulation(mut self, code: u8) -> RxPacket {
        self.0.modulation = code;
        self
    }

    /// Sets the coding rate code.
    pub fn coderate(mut self, code: u8) -> RxPacket {
        self.0.coderate = code;
        self
    }

    /// Sets channel RSSI and SNR.
    pub fn signal(mut self, rssic: f32, snr: f32) -> RxPacket {
        self.0.rssic = rssic;
        self.0.snr = snr;
        self
    }

    /// Sets the IF and RF chains.
    pub fn chains(mut self, if_chain: u8, rf_chain: u8) -> RxPacket {
        self.0.if_chain = if_chain;
        self.0.rf_chain = rf_chain;
        self
    }

    /// Sets the counter timestamp.
    pub fn count_us(mut self, count_us: u32) -> RxPacket {
        self.0.count_us = count_us;
        self
    }

    /// Sets a size beyond the payload buffer (to script a corrupt packet).
    pub fn size(mut self, size: u16) -> RxPacket {
        self.0.size = size;
        self
    }
}

/// Queues `packet` for `lgw_receive`; false when the double's queue is full.
pub fn push_rx(packet: RxPacket) -> bool {
    // SAFETY: a valid struct the double copies during the call.
    unsafe { ffi::double_push_rx(&packet.0) == 0 }
}

/// Packets queued and not yet received.
pub fn rx_pending() -> u32 {
    // SAFETY: no arguments.
    unsafe { ffi::double_rx_pending() }
}

/// A packet `lgw_send` accepted, as the HAL got it.
#[derive(Clone, Debug, PartialEq)]
pub struct SentPacket {
    pub freq_hz: u32,
    pub tx_mode: u8,
    pub count_us: u32,
    pub rf_chain: u8,
    pub rf_power: i8,
    pub modulation: u8,
    pub bandwidth: u8,
    pub datarate: u32,
    pub coderate: u8,
    pub invert_pol: bool,
    pub f_dev: u8,
    pub preamble: u16,
    pub no_crc: bool,
    pub no_header: bool,
    pub payload: Vec<u8>,
}

/// Every packet `lgw_send` accepted since the last reset (the last 64).
pub fn sent() -> Vec<SentPacket> {
    // SAFETY: no arguments.
    let count = unsafe { ffi::double_tx_count() };
    (0..count)
        .filter_map(|i| {
            let mut p = ffi::lgw_pkt_tx_s::default();
            // SAFETY: `p` is a valid struct the double writes when it returns true.
            if !unsafe { ffi::double_tx_get(i, &mut p) } {
                return None;
            }
            let size = usize::from(p.size).min(p.payload.len());
            Some(SentPacket {
                freq_hz: p.freq_hz,
                tx_mode: p.tx_mode,
                count_us: p.count_us,
                rf_chain: p.rf_chain,
                rf_power: p.rf_power,
                modulation: p.modulation,
                bandwidth: p.bandwidth,
                datarate: p.datarate,
                coderate: p.coderate,
                invert_pol: p.invert_pol,
                f_dev: p.f_dev,
                preamble: p.preamble,
                no_crc: p.no_crc,
                no_header: p.no_header,
                payload: p.payload[..size].to_vec(),
            })
        })
        .collect()
}

/// The next `count` calls of the HAL function `function` (e.g. "lgw_receive") fail.
/// Panics on a name the double does not know: a typo in a test.
pub fn fail_next(function: &str, count: u32) {
    let name = CString::new(function).unwrap_or_default();
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { ffi::double_fail_next(name.as_ptr(), count) };
    assert_eq!(rc, 0, "the HAL double has no function {function}");
}

/// Calls of the HAL function `function` since the last reset.
pub fn call_count(function: &str) -> u64 {
    let name = CString::new(function).unwrap_or_default();
    // SAFETY: as in fail_next.
    let n = unsafe { ffi::double_call_count(name.as_ptr()) };
    u64::try_from(n).unwrap_or_else(|_| panic!("the HAL double has no function {function}"))
}

/// `lgw_board_setconf` as last accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct BoardConf {
    pub lorawan_public: bool,
    pub clksrc: u8,
    pub full_duplex: bool,
    pub com_spi: bool,
    pub com_path: String,
}

/// The board configuration, if set.
pub fn board_conf() -> Option<BoardConf> {
    let mut c = ffi::lgw_conf_board_s::default();
    // SAFETY: `c` is a valid struct the double writes when it returns true.
    if !unsafe { ffi::double_board_conf(&mut c) } {
        return None;
    }
    let path: Vec<u8> = c.com_path.iter().take_while(|&&b| b != 0).map(|&b| b as u8).collect();
    Some(BoardConf {
        lorawan_public: c.lorawan_public,
        clksrc: c.clksrc,
        full_duplex: c.full_duplex,
        com_spi: c.com_type == ffi::LGW_COM_SPI,
        com_path: String::from_utf8_lossy(&path).into_owned(),
    })
}

/// `lgw_rxrf_setconf` for one RF chain as last accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct RfConf {
    pub enable: bool,
    pub freq_hz: u32,
    pub rssi_offset: f32,
    /// coeff_a..coeff_e.
    pub rssi_tcomp: [f32; 5],
    pub radio_type: u32,
    pub tx_enable: bool,
    pub single_input_mode: bool,
}

/// RF chain `rf_chain`'s configuration, if set.
pub fn rf_conf(rf_chain: u8) -> Option<RfConf> {
    let mut c = ffi::lgw_conf_rxrf_s::default();
    // SAFETY: `c` is a valid struct the double writes when it returns true.
    if !unsafe { ffi::double_rxrf_conf(rf_chain, &mut c) } {
        return None;
    }
    let t = c.rssi_tcomp;
    Some(RfConf {
        enable: c.enable,
        freq_hz: c.freq_hz,
        rssi_offset: c.rssi_offset,
        rssi_tcomp: [t.coeff_a, t.coeff_b, t.coeff_c, t.coeff_d, t.coeff_e],
        radio_type: c.type_,
        tx_enable: c.tx_enable,
        single_input_mode: c.single_input_mode,
    })
}

/// `lgw_rxif_setconf` for one IF chain as last accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfConf {
    pub enable: bool,
    pub rf_chain: u8,
    pub freq_hz: i32,
    pub bandwidth: u8,
    pub datarate: u32,
    pub implicit_hdr: bool,
}

/// IF chain `if_chain`'s configuration, if set.
pub fn if_conf(if_chain: u8) -> Option<IfConf> {
    let mut c = ffi::lgw_conf_rxif_s::default();
    // SAFETY: `c` is a valid struct the double writes when it returns true.
    if !unsafe { ffi::double_rxif_conf(if_chain, &mut c) } {
        return None;
    }
    Some(IfConf {
        enable: c.enable,
        rf_chain: c.rf_chain,
        freq_hz: c.freq_hz,
        bandwidth: c.bandwidth,
        datarate: c.datarate,
        implicit_hdr: c.implicit_hdr,
    })
}

/// The multi-SF spreading-factor mask given to `lgw_demod_setconf`, if set.
pub fn demod_conf() -> Option<u8> {
    let mut c = ffi::lgw_conf_demod_s::default();
    // SAFETY: `c` is a valid struct the double writes when it returns true.
    unsafe { ffi::double_demod_conf(&mut c) }.then_some(c.multisf_datarate)
}

/// The TX power table given to `lgw_txgain_setconf` for `rf_chain`, if set.
pub fn tx_gain_conf(rf_chain: u8) -> Option<Vec<TxGain>> {
    let mut c = ffi::lgw_tx_gain_lut_s::default();
    // SAFETY: `c` is a valid struct the double writes when it returns true.
    if !unsafe { ffi::double_txgain_conf(rf_chain, &mut c) } {
        return None;
    }
    Some(
        c.lut
            .iter()
            .take(usize::from(c.size))
            .map(|g| TxGain {
                rf_power: g.rf_power,
                pa_gain: g.pa_gain,
                pwr_idx: g.pwr_idx,
                dig_gain: g.dig_gain,
                dac_gain: g.dac_gain,
                mix_gain: g.mix_gain,
                offset_i: g.offset_i,
                offset_q: g.offset_q,
            })
            .collect(),
    )
}

/// Sets the counter (it keeps running at 1 MHz from there unless frozen).
pub fn set_instcnt(value: u32) {
    // SAFETY: plain value argument.
    unsafe { ffi::double_set_instcnt(value) }
}

/// Freezes (a wedged chip) or releases the counter; `lgw_start` releases it too.
pub fn freeze_instcnt(frozen: bool) {
    // SAFETY: plain value argument.
    unsafe { ffi::double_freeze_instcnt(frozen) }
}

/// The counter now, without counting an `lgw_get_instcnt` call.
pub fn peek_instcnt() -> u32 {
    // SAFETY: no arguments.
    unsafe { ffi::double_peek_instcnt() }
}

/// The EUI `lgw_get_eui` answers.
pub fn set_eui(eui: u64) {
    // SAFETY: plain value argument.
    unsafe { ffi::double_set_eui(eui) }
}

/// The temperature `lgw_get_temperature` answers.
pub fn set_temperature(celsius: f32) {
    // SAFETY: plain value argument.
    unsafe { ffi::double_set_temperature(celsius) }
}

/// What `lgw_status(TX_STATUS)` answers.
pub fn set_tx_status(code: u8) {
    // SAFETY: plain value argument.
    unsafe { ffi::double_set_tx_status(code) }
}

/// Whether the double is started.
pub fn is_started() -> bool {
    // SAFETY: no arguments.
    unsafe { ffi::double_is_started() }
}
