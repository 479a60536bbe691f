//! Simulated field devices as real Modbus TCP servers (tokio-modbus), for tests and
//! `berrygw demo`. Their register maps are exactly those of the shipped profiles in
//! `plugins/profiles/` (a test polls each one through its profile).
//!
//! - `SimServer`: the server, hosting one or more simulated units, with fault injection
//!   (slow answers, exceptions, garbled replies, dropped connections, stopped and restarted
//!   on the same port);
//! - `needle_dam`, `lighting_cabinet`, `energy_meter`: plausible behaviour of each device,
//!   advanced in time whenever the device is asked something.
//!
//! Not for production: nothing here is hardened against hostile clients.

mod energy_meter;
mod lighting_cabinet;
mod needle_dam;
mod server;

pub use energy_meter::EnergyMeterSim;
pub use lighting_cabinet::LightingCabinetSim;
pub use needle_dam::{NeedleDamSim, Selector};
pub use server::{SimDevice, SimServer, SimStats};

use std::any::Any;

/// The four Modbus tables of one simulated unit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bank {
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
}

impl Bank {
    pub fn new(coils: usize, discrete: usize, holding: usize, input: usize) -> Bank {
        Bank {
            coils: vec![false; coils],
            discrete: vec![false; discrete],
            holding: vec![0; holding],
            input: vec![0; input],
        }
    }

    /// Store an f32 in two input registers, high word first.
    pub fn set_input_f32(&mut self, address: usize, v: f32) {
        self.set_input_u32(address, v.to_bits());
    }

    /// Store a u32 in two input registers, high word first.
    pub fn set_input_u32(&mut self, address: usize, v: u32) {
        self.input[address] = (v >> 16) as u16;
        self.input[address + 1] = v as u16;
    }
}

/// The behaviour of one simulated device.
pub(crate) trait Plant: Send + 'static {
    /// Advance the physics by `dt` seconds and refresh the readable tables.
    fn step(&mut self, bank: &mut Bank, dt: f64);
    /// React at once to a client's write (coils, holding registers).
    fn written(&mut self, _bank: &mut Bank) {}
    /// For typed handles that reach their own plant.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// Small uniform noise in `-amplitude..=amplitude`.
pub(crate) fn noise(amplitude: f64) -> f64 {
    use rand::Rng;
    rand::thread_rng().gen_range(-amplitude..=amplitude)
}
