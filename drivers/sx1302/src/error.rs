//! The errors of opening and running the concentrator, each saying what
//! went wrong and, where the operator can act, what to do.

use crate::gpio::GpioError;
use crate::setup::ConfigError;

/// Why the concentrator could not be opened or started.
#[derive(Debug, thiserror::Error)]
pub enum Sx1302Error {
    #[error("[radio.sx1302] {0}")]
    Config(#[from] ConfigError),
    #[error(
        "this berrygw was built without the sx1302 feature; rebuild with --features sx1302 and \
         SX1302_HAL_DIR=<path to Semtech's sx1302_hal V2.1.0 source tree>"
    )]
    NotBuilt,
    #[error(
        "the concentrator is already open in this process (libloragw drives one concentrator per process)"
    )]
    AlreadyOpen,
    #[error("concentrator reset failed: {0}")]
    Gpio(#[from] GpioError),
    #[error("concentrator start failed: {0}")]
    Hal(#[from] HalError),
    #[error("could not start the concentrator thread: {0}")]
    Thread(String),
}

/// A libloragw call returned an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed{detail}")]
pub struct HalError {
    /// The HAL function, e.g. `lgw_start`.
    pub call: &'static str,
    /// More about it (starts with a separator), or empty.
    pub detail: String,
}

impl HalError {
    /// `call` failed, nothing more known (libloragw prints its reasons on stdout).
    pub fn of(call: &'static str) -> HalError {
        HalError { call, detail: String::new() }
    }
}
