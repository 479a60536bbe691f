//! berrygw's driver for SX1302/SX1303 LoRa concentrators (RAK2287, RAK5146,
//! Seeed WM1302, Semtech CoreCell) through Semtech's libloragw: an
//! `Sx1302Radio` that the pipeline runs as its `RadioSource`.
//!
//! Where things live: `config` (the `[radio.sx1302]` TOML), `boards/` and
//! `regions/` (data: one file per board model and per channel plan), `setup`
//! (config + board + region → exactly what the HAL gets), `plan` (a network
//! server's channel plan over the configuration's, and the `Tuner` that applies it), `gpio` (reset and
//! power lines), `airtime`, `jit`, `duty_cycle` and `downlink` (downlink
//! admission and timing, pure Rust), `health` (when the concentrator is
//! wedged), `hal` (the only FFI), `concentrator` (the one thread that owns the
//! HAL), `radio` (`Sx1302Radio`), `status`. Not here: frame parsing and
//! filtering (`berrygw-lora`), anything about sinks or the journal.
//!
//! Features: `sx1302` builds Semtech's sx1302_hal V2.1.0 from `SX1302_HAL_DIR`;
//! `hal-double` builds our C double of its API instead (tests, with the
//! controls in `double`). With neither, the crate is pure Rust and
//! `Sx1302Radio::open` explains how to rebuild.

pub mod airtime;
pub mod boards;
#[cfg(any(feature = "sx1302", feature = "hal-double"))]
mod concentrator;
pub mod config;
pub mod downlink;
pub mod duty_cycle;
pub mod error;
pub mod gpio;
pub mod health;
pub mod jit;
pub mod plan;
pub mod radio;
pub mod regions;
pub mod setup;
pub mod status;

#[cfg(any(feature = "sx1302", feature = "hal-double"))]
mod hal;

#[cfg(feature = "hal-double")]
pub mod double;

pub use config::{GpioLine, HealthConfig, Sx1302Config};
pub use error::{HalError, Sx1302Error};
pub use gpio::{CdevGpio, Gpio, GpioError, GpioEvent, RecordingGpio};
pub use plan::{Applied, ChannelPlan, Tuner};
pub use radio::Sx1302Radio;
pub use setup::{ConcentratorSetup, ConfigError};
pub use status::ConcentratorStatus;
