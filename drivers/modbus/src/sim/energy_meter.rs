//! A three-phase-style energy meter reporting IEEE 754 floats, as most DIN-rail meters do.
//!
//! Register map (unit id 1), the one `plugins/profiles/energy-meter.toml` describes; every
//! value is an input register pair, f32, high word first:
//!
//! | address | meaning |
//! |---|---|
//! | 0 | voltage, V |
//! | 6 | current, A |
//! | 12 | active power, W |
//! | 30 | power factor |
//! | 70 | frequency, Hz |
//! | 342 | total active energy, kWh |

use std::any::Any;
use std::f64::consts::TAU;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;

use super::{noise, Bank, Plant, SimDevice, SimServer};

pub(crate) struct EnergyMeter {
    energy_kwh: f64,
    clock: f64,
}

pub(super) fn new() -> (Bank, Box<dyn Plant>) {
    (Bank::new(0, 0, 0, 344), Box::new(EnergyMeter { energy_kwh: 8_421.5, clock: 0.0 }))
}

impl Plant for EnergyMeter {
    fn step(&mut self, bank: &mut Bank, dt: f64) {
        self.clock += dt;
        // A load that swings slowly between about 1.5 and 3 kW.
        let power = 2250.0 + 750.0 * (self.clock * TAU / 900.0).sin() + noise(20.0);
        let voltage = 230.0 + noise(1.5);
        let pf = 0.95 + noise(0.01);
        self.energy_kwh += power * dt / 3_600_000.0;
        bank.set_input_f32(0, voltage as f32);
        bank.set_input_f32(6, (power / (voltage * pf)) as f32);
        bank.set_input_f32(12, power as f32);
        bank.set_input_f32(30, pf as f32);
        bank.set_input_f32(70, (50.0 + noise(0.02)) as f32);
        bank.set_input_f32(342, self.energy_kwh as f32);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// A simulated energy meter on its own Modbus TCP server (unit id 1).
#[derive(Debug)]
pub struct EnergyMeterSim {
    server: SimServer,
}

impl EnergyMeterSim {
    /// Start on `addr` (port 0 for any free port).
    pub async fn start(addr: SocketAddr) -> io::Result<EnergyMeterSim> {
        Ok(EnergyMeterSim { server: SimServer::start(addr, &[(1, SimDevice::EnergyMeter)]).await? })
    }
}

impl Deref for EnergyMeterSim {
    type Target = SimServer;

    fn deref(&self) -> &SimServer {
        &self.server
    }
}
