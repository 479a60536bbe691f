//! A needle dam (barrage à aiguilles) controller with four bays (passes).
//!
//! Register map (unit id 1), the one `plugins/profiles/needle-dam.toml` describes:
//!
//! | table | address | meaning |
//! |---|---|---|
//! | coil | 0..=3 | bay N stop order (self-clearing) |
//! | discrete input | 0..=3 | bay N moving |
//! | discrete input | 8 | motor fault |
//! | holding register | 0..=3 | bay N target opening, 0.1 % (u16) |
//! | input register | 0..=3 | bay N opening, 0.1 % (u16) |
//! | input register | 10..=11 | upstream level, m (f32, high word first) |
//! | input register | 12..=13 | downstream level, m (f32, high word first) |
//! | input register | 20 | selector: 0 local, 1 remote |
//!
//! Bays move towards their target at a finite speed, stop while the motor fault is active,
//! and the upstream level drifts and falls a little as bays open.

use std::any::Any;
use std::f64::consts::TAU;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;

use super::{noise, Bank, Plant, SimDevice, SimServer};

const BAYS: usize = 4;
const MOTOR_FAULT: usize = 8;
const UPSTREAM: usize = 10;
const DOWNSTREAM: usize = 12;
const SELECTOR: usize = 20;

/// The local/remote selector on the controller's front panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// Operated on site: remote moves must be refused.
    Local,
    /// Operated by the gateway.
    Remote,
}

pub(crate) struct NeedleDam {
    /// Opening of each bay, % (0 = needles all in, 100 = bay fully open).
    positions: [f64; BAYS],
    /// Travel speed, % per second.
    speed: f64,
    upstream: f64,
    clock: f64,
}

pub(super) fn new() -> (Bank, Box<dyn Plant>) {
    let mut bank = Bank::new(BAYS, 16, BAYS, 32);
    let positions = [20.0; BAYS];
    for (bay, p) in positions.iter().enumerate() {
        bank.holding[bay] = (p * 10.0) as u16;
    }
    bank.input[SELECTOR] = 1;
    (bank, Box::new(NeedleDam { positions, speed: 2.0, upstream: 2.45, clock: 0.0 }))
}

impl Plant for NeedleDam {
    fn step(&mut self, bank: &mut Bank, dt: f64) {
        let fault = bank.discrete[MOTOR_FAULT];
        for bay in 0..BAYS {
            let target = (f64::from(bank.holding[bay]) / 10.0).clamp(0.0, 100.0);
            let gap = target - self.positions[bay];
            let moving = !fault && gap.abs() > 0.05;
            if moving {
                self.positions[bay] += gap.signum() * (self.speed * dt).min(gap.abs());
            } else if !fault {
                // Within the drive's dead band it settles on the target rather than stopping
                // short by whatever the last step left.
                self.positions[bay] = target;
            }
            bank.discrete[bay] = moving && (target - self.positions[bay]).abs() > 0.05;
            bank.input[bay] = (self.positions[bay] * 10.0).round() as u16;
        }
        let opening = self.positions.iter().sum::<f64>() / (100.0 * BAYS as f64);
        self.clock += dt;
        // The river drifts slowly; opening bays draws the reservoir down (first-order lag).
        let equilibrium = 2.60 - 0.50 * opening + 0.03 * (self.clock * TAU / 600.0).sin();
        self.upstream += (equilibrium - self.upstream) * (dt / 30.0).min(1.0);
        bank.set_input_f32(UPSTREAM, (self.upstream + noise(0.002)) as f32);
        bank.set_input_f32(DOWNSTREAM, (1.10 + 0.35 * opening + noise(0.002)) as f32);
    }

    fn written(&mut self, bank: &mut Bank) {
        for bay in 0..BAYS {
            if bank.coils[bay] {
                // Stop: hold the bay where it is now.
                bank.holding[bay] = (self.positions[bay] * 10.0).round() as u16;
                bank.coils[bay] = false;
            }
        }
        self.step(bank, 0.0);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// A simulated needle dam on its own Modbus TCP server (unit id 1).
#[derive(Debug)]
pub struct NeedleDamSim {
    server: SimServer,
}

impl NeedleDamSim {
    /// Start on `addr` (port 0 for any free port).
    pub async fn start(addr: SocketAddr) -> io::Result<NeedleDamSim> {
        Ok(NeedleDamSim { server: SimServer::start(addr, &[(1, SimDevice::NeedleDam)]).await? })
    }

    fn with<R>(&self, f: impl FnOnce(&mut NeedleDam, &mut Bank) -> R) -> Option<R> {
        self.server.with_plant::<NeedleDam, R>(1, f)
    }

    /// Raise or clear the motor fault.
    pub fn set_motor_fault(&self, on: bool) {
        self.with(|_, bank| bank.discrete[MOTOR_FAULT] = on);
    }

    /// Turn the local/remote selector.
    pub fn set_selector(&self, selector: Selector) {
        self.with(|_, bank| bank.input[SELECTOR] = u16::from(selector == Selector::Remote));
    }

    /// Bay travel speed in % per second (default 2).
    pub fn set_speed(&self, percent_per_s: f64) {
        self.with(|dam, _| dam.speed = percent_per_s.max(0.0));
    }

    /// Opening of `bay` (1..=4) in %.
    pub fn bay_position(&self, bay: usize) -> Option<f64> {
        self.with(|dam, _| dam.positions.get(bay.checked_sub(1)?).copied()).flatten()
    }
}

impl Deref for NeedleDamSim {
    type Target = SimServer;

    fn deref(&self) -> &SimServer {
        &self.server
    }
}
