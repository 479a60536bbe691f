//! `Sx1302Radio`, the `RadioSource` for an SX1302/SX1303 concentrator:
//! `open` resolves the configuration, takes the process's one HAL handle,
//! resets and starts the concentrator on its own thread and returns once it
//! runs (or with the reason it does not); `start` hands that thread the
//! pipeline's channels. Built without a HAL (no `sx1302` / `hal-double`
//! feature), `open` says how to rebuild.

use berrygw_lora::radio::RadioTask;
use berrygw_lora::{RadioIo, RadioSource};
use tokio::sync::watch;

use crate::config::Sx1302Config;
use crate::error::Sx1302Error;
use crate::gpio::Gpio;
use crate::plan::{ChannelPlan, Tuner};
use crate::setup::ConcentratorSetup;
use crate::status::ConcentratorStatus;

/// A started SX1302 concentrator, ready to be run by the pipeline.
pub struct Sx1302Radio {
    inner: imp::Inner,
    status: watch::Receiver<ConcentratorStatus>,
    tuner: Tuner,
}

impl Sx1302Radio {
    /// Resets (through the kernel GPIO character device), configures and starts the
    /// concentrator described by `config`. Blocks for the reset and `lgw_start`
    /// (about a second): call it before the pipeline, or from `spawn_blocking`, and
    /// `start` the radio soon after (until then the concentrator is not polled).
    pub fn open(config: &Sx1302Config) -> Result<Sx1302Radio, Sx1302Error> {
        Sx1302Radio::open_with_gpio(config, Box::new(crate::gpio::CdevGpio::new()))
    }

    /// As `open`, driving the reset and power lines through `gpio` (tests pass a
    /// `RecordingGpio`).
    pub fn open_with_gpio(config: &Sx1302Config, gpio: Box<dyn Gpio>) -> Result<Sx1302Radio, Sx1302Error> {
        Sx1302Radio::open_on_plan(config, None, gpio)
    }

    /// As `open_with_gpio`, started on `plan` (set by the second member, for the
    /// status) instead of the configuration's channels: a plan a network server gave
    /// before a restart. `Tuner`s still put their plans over `config`.
    pub fn open_on_plan(
        config: &Sx1302Config,
        plan: Option<(&ChannelPlan, &str)>,
        gpio: Box<dyn Gpio>,
    ) -> Result<Sx1302Radio, Sx1302Error> {
        let setup = match plan {
            Some((plan, _)) => plan.setup(config)?,
            None => ConcentratorSetup::resolve(config)?,
        };
        let from = plan.map(|(_, from)| from.to_string());
        let (status_tx, status) = watch::channel(ConcentratorStatus::default());
        let (tune_tx, tune_rx) = std::sync::mpsc::channel();
        let inner = imp::open(setup, from, tune_rx, gpio, status_tx)?;
        Ok(Sx1302Radio { inner, status, tuner: Tuner::new(config.clone(), tune_tx) })
    }

    /// What puts another channel plan on this concentrator while it runs.
    pub fn tuner(&self) -> Tuner {
        self.tuner.clone()
    }

    /// The concentrator's status (EUI, temperature, running, restarts, last error,
    /// counters), updated by its thread; keeps working after `start`.
    pub fn status(&self) -> watch::Receiver<ConcentratorStatus> {
        self.status.clone()
    }
}

impl RadioSource for Sx1302Radio {
    fn kind(&self) -> &'static str {
        "sx1302"
    }

    fn start(self: Box<Self>, io: RadioIo) -> RadioTask {
        imp::start(self.inner, io)
    }
}

#[cfg(any(feature = "sx1302", feature = "hal-double"))]
mod imp {
    use std::sync::mpsc;

    use berrygw_lora::radio::RadioTask;
    use berrygw_lora::{RadioError, RadioIo};
    use tokio::sync::{oneshot, watch};

    use crate::concentrator::{Owner, Start};
    use crate::error::Sx1302Error;
    use crate::gpio::Gpio;
    use crate::hal::Hal;
    use crate::plan::Retune;
    use crate::setup::ConcentratorSetup;
    use crate::status::ConcentratorStatus;

    pub(super) struct Inner {
        start: mpsc::SyncSender<Start>,
    }

    pub(super) fn open(
        setup: ConcentratorSetup,
        plan_from: Option<String>,
        retunes: mpsc::Receiver<Retune>,
        gpio: Box<dyn Gpio>,
        status: watch::Sender<ConcentratorStatus>,
    ) -> Result<Inner, Sx1302Error> {
        let hal = Hal::claim()?;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), Sx1302Error>>(1);
        let (start_tx, start_rx) = mpsc::sync_channel::<Start>(1);
        std::thread::Builder::new()
            .name("sx1302-hal".into())
            .spawn(move || {
                let mut owner = Owner::new(hal, setup, gpio, status, retunes, plan_from);
                match owner.bring_up() {
                    Ok(()) => {
                        let _ = ready_tx.send(Ok(()));
                        owner.serve(start_rx);
                    }
                    Err(e) => {
                        owner.shut_down();
                        // Release the HAL before the caller hears of the failure.
                        drop(owner);
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Sx1302Error::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Inner { start: start_tx }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Sx1302Error::Thread("the concentrator thread ended while starting".into())),
        }
    }

    pub(super) fn start(inner: Inner, io: RadioIo) -> RadioTask {
        let (done, finished) = oneshot::channel();
        let handed = inner.start.send(Start { io, done }).is_ok();
        Box::pin(async move {
            if !handed {
                return Err(RadioError::Failed("the concentrator thread has stopped".into()));
            }
            finished.await.unwrap_or_else(|_| {
                Err(RadioError::Failed("the concentrator thread ended without a word".into()))
            })
        })
    }
}

#[cfg(not(any(feature = "sx1302", feature = "hal-double")))]
mod imp {
    use berrygw_lora::radio::RadioTask;
    use berrygw_lora::RadioIo;
    use tokio::sync::watch;

    use crate::error::Sx1302Error;
    use crate::gpio::Gpio;
    use crate::plan::Retune;
    use crate::setup::ConcentratorSetup;
    use crate::status::ConcentratorStatus;

    /// Never built: without a HAL, `open` always fails.
    pub(super) enum Inner {}

    pub(super) fn open(
        _setup: ConcentratorSetup,
        _plan_from: Option<String>,
        _retunes: std::sync::mpsc::Receiver<Retune>,
        _gpio: Box<dyn Gpio>,
        _status: watch::Sender<ConcentratorStatus>,
    ) -> Result<Inner, Sx1302Error> {
        Err(Sx1302Error::NotBuilt)
    }

    pub(super) fn start(inner: Inner, _io: RadioIo) -> RadioTask {
        match inner {}
    }
}

#[cfg(all(test, not(any(feature = "sx1302", feature = "hal-double"))))]
mod tests {
    use super::*;

    #[test]
    fn without_a_hal_open_says_how_to_rebuild() {
        let err = Sx1302Radio::open(&Sx1302Config::for_board("rak2287")).err().map(|e| e.to_string());
        let text = err.unwrap_or_default();
        assert!(text.contains("built without the sx1302 feature"), "{text}");
        assert!(text.contains("--features sx1302") && text.contains("SX1302_HAL_DIR="), "{text}");
    }

    #[test]
    fn without_a_hal_a_bad_configuration_is_still_reported_first() {
        let err = Sx1302Radio::open(&Sx1302Config::for_board("nope")).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("unknown board `nope`"));
    }
}
