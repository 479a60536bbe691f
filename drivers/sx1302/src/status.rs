//! What the concentrator reports about itself, published on a `watch`
//! channel by the owner thread for `berrygw status`, metrics and gateway
//! stats: identity, temperature, whether it runs, restarts and the last error.

use berrygw_lora::Eui64;

/// The concentrator as the owner thread last saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConcentratorStatus {
    /// The concentrator is started and polled.
    pub running: bool,
    /// Board model name.
    pub board: String,
    /// The SX1302's own EUI (`lgw_get_eui`), once started.
    pub eui: Option<Eui64>,
    /// Board temperature in °C, when the board has a sensor.
    pub temperature_c: Option<f32>,
    /// Attempts to reset and restart the concentrator after it was found wedged
    /// (an attempt that failed counts, and so does each retry).
    pub restarts: u64,
    /// The last error (HAL, GPIO, wedge), if any.
    pub last_error: Option<String>,
    /// Frames received and handed to the pipeline.
    pub uplinks: u64,
    /// Frames the HAL returned that could not be converted (unknown modulation, bad size).
    pub uplinks_dropped: u64,
    /// Downlinks handed to `lgw_send`.
    pub tx_sent: u64,
    /// Downlinks accepted but not sent: `lgw_send` failed, their time passed, or a restart voided them.
    pub tx_failed: u64,
    /// Downlinks refused at admission (any `TxAck` status but Ok).
    pub tx_refused: u64,
    /// The LoRa uplink channels it listens on, Hz, sorted (once started).
    pub channels_hz: Vec<u32>,
    /// Times the concentrator was restarted on another channel plan (`Tuner`).
    pub retunes: u64,
    /// Who set that channel plan, when it is not `[radio.sx1302]` (a Basics Station LNS).
    pub plan_from: Option<String>,
}
