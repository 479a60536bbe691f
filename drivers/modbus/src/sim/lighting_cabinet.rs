//! A public-lighting cabinet (armoire d'éclairage public): four circuits on contactors, an
//! operating mode, a door contact and an energy meter.
//!
//! Register map (unit id 1), the one `plugins/profiles/lighting-cabinet.toml` describes:
//!
//! | table | address | meaning |
//! |---|---|---|
//! | coil | 0..=3 | circuit N remote order (on/off), obeyed in auto mode |
//! | discrete input | 0..=3 | circuit N contactor closed (auxiliary contact) |
//! | discrete input | 8 | door open |
//! | holding register | 0 | mode: 0 auto, 1 forced on, 2 forced off |
//! | input register | 0..=1 | energy, Wh (u32, high word first) |
//! | input register | 2 | voltage, 0.1 V (u16) |
//! | input register | 3 | current, 0.01 A (u16) |
//! | input register | 4..=5 | active power, W (i32, LOW word first) |

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;

use super::{noise, Bank, Plant, SimDevice, SimServer};

const CIRCUITS: usize = 4;
const DOOR_OPEN: usize = 8;
const MODE: usize = 0;
/// Load of each circuit when lit, W (LED street lights).
const LOAD_W: [f64; CIRCUITS] = [1200.0, 900.0, 1500.0, 600.0];

pub(crate) struct LightingCabinet {
    energy_wh: f64,
}

pub(super) fn new() -> (Bank, Box<dyn Plant>) {
    (Bank::new(CIRCUITS, 16, 8, 8), Box::new(LightingCabinet { energy_wh: 1_234_567.0 }))
}

impl Plant for LightingCabinet {
    fn step(&mut self, bank: &mut Bank, dt: f64) {
        let mode = bank.holding[MODE];
        let mut power = 0.0;
        for (c, load) in LOAD_W.iter().enumerate() {
            let closed = match mode {
                1 => true,
                2 => false,
                _ => bank.coils[c],
            };
            bank.discrete[c] = closed;
            if closed {
                power += load * (1.0 + noise(0.02));
            }
        }
        let voltage = 230.0 + noise(1.5);
        self.energy_wh += power * dt / 3600.0;
        bank.set_input_u32(0, self.energy_wh as u32);
        bank.input[2] = (voltage * 10.0).round() as u16;
        bank.input[3] = (power / voltage * 100.0).round() as u16;
        let p = power.round() as i32 as u32;
        bank.input[4] = p as u16;
        bank.input[5] = (p >> 16) as u16;
    }

    fn written(&mut self, bank: &mut Bank) {
        self.step(bank, 0.0);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// A simulated lighting cabinet on its own Modbus TCP server (unit id 1).
#[derive(Debug)]
pub struct LightingCabinetSim {
    server: SimServer,
}

impl LightingCabinetSim {
    /// Start on `addr` (port 0 for any free port).
    pub async fn start(addr: SocketAddr) -> io::Result<LightingCabinetSim> {
        Ok(LightingCabinetSim { server: SimServer::start(addr, &[(1, SimDevice::LightingCabinet)]).await? })
    }

    /// Open or close the cabinet door.
    pub fn set_door_open(&self, open: bool) {
        self.server.with_plant::<LightingCabinet, _>(1, |_, bank| bank.discrete[DOOR_OPEN] = open);
    }

    /// Energy counted so far, Wh.
    pub fn energy_wh(&self) -> Option<f64> {
        self.server.with_plant::<LightingCabinet, _>(1, |c, _| c.energy_wh)
    }
}

impl Deref for LightingCabinetSim {
    type Target = SimServer;

    fn deref(&self) -> &SimServer {
        &self.server
    }
}
