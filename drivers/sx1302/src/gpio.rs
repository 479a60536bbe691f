//! Power and reset of the concentrator through GPIO lines: the `Gpio` trait,
//! its implementation on the kernel GPIO character device (gpiocdev: lines by
//! chip and offset or by name, Pi 4, Pi 5 and other boards; sysfs GPIO is not
//! used), a recording fake for tests, and the reset sequence itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpiocdev::line::Value;
use gpiocdev::Request;

use crate::config::GpioLine;
use crate::setup::ResetPins;

/// How long each step of the reset sequence is held (as the HAL's `reset_lgw.sh`).
pub const RESET_STEP: Duration = Duration::from_millis(100);

/// A GPIO line could not be driven.
#[derive(Debug, thiserror::Error)]
#[error("GPIO {line}: {reason}")]
pub struct GpioError {
    pub line: String,
    pub reason: String,
}

/// Output lines the reset sequence drives, and the waits between steps.
pub trait Gpio: Send {
    /// Drives `line` high or low (requesting it as an output on first use).
    fn set(&mut self, line: &GpioLine, high: bool) -> Result<(), GpioError>;
    /// Waits between two steps.
    fn wait(&mut self, duration: Duration);
}

/// Powers the board and pulses its reset: power-enable high, then reset
/// high, then low, each held `RESET_STEP` (the SX1302 reset script's order).
pub fn reset_concentrator(gpio: &mut dyn Gpio, pins: &ResetPins) -> Result<(), GpioError> {
    if let Some(power) = &pins.power_enable {
        gpio.set(power, true)?;
        gpio.wait(RESET_STEP);
    }
    if let Some(reset) = &pins.reset {
        gpio.set(reset, true)?;
        gpio.wait(RESET_STEP);
        gpio.set(reset, false)?;
        gpio.wait(RESET_STEP);
    }
    Ok(())
}

/// Lines on the kernel GPIO character device. Each line is requested once,
/// as an output, and held (so nothing else drives it) until this is dropped.
#[derive(Default)]
pub struct CdevGpio {
    held: Vec<(GpioLine, Request, u32)>,
}

impl CdevGpio {
    /// No line requested yet.
    pub fn new() -> CdevGpio {
        CdevGpio::default()
    }

    fn request(line: &GpioLine, value: Value) -> Result<(Request, u32), GpioError> {
        let err = |reason: String| GpioError { line: line.to_string(), reason };
        let mut builder = Request::builder();
        builder.with_consumer("berrygw-sx1302");
        let offset = match line {
            GpioLine::Offset(l) => {
                let chip = if l.chip.starts_with('/') {
                    PathBuf::from(&l.chip)
                } else {
                    PathBuf::from("/dev").join(&l.chip)
                };
                builder.on_chip(chip).with_line(l.line);
                l.line
            }
            GpioLine::Named(l) => {
                let found = gpiocdev::find_named_line(&l.name)
                    .ok_or_else(|| err("no GPIO line has this name (see `gpioinfo`)".to_string()))?;
                builder.with_found_line(&found);
                found.info.offset
            }
        };
        let request = builder.as_output(value).request().map_err(|e| err(e.to_string()))?;
        Ok((request, offset))
    }
}

impl Gpio for CdevGpio {
    fn set(&mut self, line: &GpioLine, high: bool) -> Result<(), GpioError> {
        let value = if high { Value::Active } else { Value::Inactive };
        if let Some((_, request, offset)) = self.held.iter().find(|(l, _, _)| l == line) {
            return request
                .set_value(*offset, value)
                .map_err(|e| GpioError { line: line.to_string(), reason: e.to_string() });
        }
        let (request, offset) = CdevGpio::request(line, value)?;
        self.held.push((line.clone(), request, offset));
        Ok(())
    }

    fn wait(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// One thing the reset sequence did, as `RecordingGpio` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpioEvent {
    Set { line: GpioLine, high: bool },
    Wait(Duration),
}

/// A fake `Gpio` for tests: records every step instead of driving hardware,
/// does not sleep, and can be told to fail.
#[derive(Clone, Default)]
pub struct RecordingGpio {
    events: Arc<Mutex<Vec<GpioEvent>>>,
    fail: Arc<Mutex<Option<String>>>,
}

impl RecordingGpio {
    /// A fake that succeeds and records.
    pub fn new() -> RecordingGpio {
        RecordingGpio::default()
    }

    /// Everything recorded so far (a clone shares the record).
    pub fn events(&self) -> Vec<GpioEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// From now on every `set` fails with `reason` (`None`: succeed again).
    pub fn fail_with(&self, reason: Option<&str>) {
        if let Ok(mut f) = self.fail.lock() {
            *f = reason.map(str::to_string);
        }
    }

    fn record(&self, event: GpioEvent) {
        if let Ok(mut e) = self.events.lock() {
            e.push(event);
        }
    }
}

impl Gpio for RecordingGpio {
    fn set(&mut self, line: &GpioLine, high: bool) -> Result<(), GpioError> {
        if let Some(reason) = self.fail.lock().ok().and_then(|f| f.clone()) {
            return Err(GpioError { line: line.to_string(), reason });
        }
        self.record(GpioEvent::Set { line: line.clone(), high });
        Ok(())
    }

    fn wait(&mut self, duration: Duration) {
        self.record(GpioEvent::Wait(duration));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LineName, LineOffset};

    fn offset(n: u32) -> GpioLine {
        GpioLine::Offset(LineOffset { chip: "/dev/gpiochip0".into(), line: n })
    }

    #[test]
    fn powers_then_pulses_reset_high_then_low() {
        let gpio = RecordingGpio::new();
        let pins = ResetPins { reset: Some(offset(17)), power_enable: Some(offset(18)) };
        let result = reset_concentrator(&mut gpio.clone(), &pins);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            gpio.events(),
            vec![
                GpioEvent::Set { line: offset(18), high: true },
                GpioEvent::Wait(RESET_STEP),
                GpioEvent::Set { line: offset(17), high: true },
                GpioEvent::Wait(RESET_STEP),
                GpioEvent::Set { line: offset(17), high: false },
                GpioEvent::Wait(RESET_STEP),
            ]
        );
    }

    #[test]
    fn a_board_without_power_enable_only_pulses_reset() {
        let gpio = RecordingGpio::new();
        let named = GpioLine::Named(LineName { name: "GPIO17".into() });
        let pins = ResetPins { reset: Some(named.clone()), power_enable: None };
        assert!(reset_concentrator(&mut gpio.clone(), &pins).is_ok());
        let sets: Vec<_> = gpio.events().into_iter().filter(|e| matches!(e, GpioEvent::Set { .. })).collect();
        assert_eq!(
            sets,
            vec![
                GpioEvent::Set { line: named.clone(), high: true },
                GpioEvent::Set { line: named, high: false }
            ]
        );
    }

    #[test]
    fn a_line_that_cannot_be_driven_stops_the_sequence_with_its_name() {
        let gpio = RecordingGpio::new();
        gpio.fail_with(Some("Device or resource busy"));
        let pins = ResetPins { reset: Some(offset(17)), power_enable: None };
        let err = reset_concentrator(&mut gpio.clone(), &pins).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("GPIO /dev/gpiochip0 line 17: Device or resource busy"));
        assert!(gpio.events().is_empty());
    }

    #[test]
    fn a_missing_chip_is_an_error_not_a_panic() {
        let mut gpio = CdevGpio::new();
        let line = GpioLine::Offset(LineOffset { chip: "/dev/gpiochip-berrygw-absent".into(), line: 1 });
        assert!(gpio.set(&line, true).is_err());
        let named = GpioLine::Named(LineName { name: "berrygw-no-such-line".into() });
        assert!(gpio.set(&named, true).is_err());
    }
}
