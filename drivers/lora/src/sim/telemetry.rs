//! What a virtual device measures: the readings of each kind, how they drift from one
//! uplink to the next on the device's random stream (a battery draining, a river
//! rising, a container filled then emptied, a cabinet lit at dusk), and their encoding
//! in the payload layouts documented on `DeviceKind`.

use rand::rngs::StdRng;
use rand::Rng;

use super::config::DeviceKind;

/// The evolving readings of one device, per kind.
#[derive(Clone, Debug)]
pub(super) enum Telemetry {
    WaterMeter { index_l: u32, battery_mv: u16, flowing_for: u32 },
    RiverLevel { level_cm: i16, trend_cm: i16, temp_dc: i16, battery_mv: u16 },
    WasteFill { fill: u8, temp_c: i8, battery_mv: u16 },
    LightingCabinet { lit: bool, circuits: u8, energy_wh: u32, mains_dv: u16, battery_mv: u16 },
}

/// A battery that loses a millivolt now and then, down to 2800 mV.
fn drain(battery_mv: &mut u16, rng: &mut StdRng) {
    if *battery_mv > 2800 && rng.gen_bool(0.05) {
        *battery_mv -= 1;
    }
}

impl Telemetry {
    pub(super) fn new(kind: DeviceKind, rng: &mut StdRng) -> Self {
        let battery_mv = rng.gen_range(3300..=3650);
        match kind {
            DeviceKind::WaterMeter => {
                Telemetry::WaterMeter { index_l: rng.gen_range(50_000..=900_000), battery_mv, flowing_for: 0 }
            }
            DeviceKind::RiverLevel => Telemetry::RiverLevel {
                level_cm: rng.gen_range(80..=250),
                trend_cm: 0,
                temp_dc: rng.gen_range(60..=180),
                battery_mv,
            },
            DeviceKind::WasteFill => Telemetry::WasteFill {
                fill: rng.gen_range(0..=60),
                temp_c: rng.gen_range(5..=25),
                battery_mv,
            },
            DeviceKind::LightingCabinet => Telemetry::LightingCabinet {
                lit: rng.gen_bool(0.5),
                circuits: 0,
                energy_wh: rng.gen_range(1_000_000..=9_000_000),
                mains_dv: 2300,
                battery_mv,
            },
        }
    }

    /// Advances the readings by one uplink and encodes them (layouts on `DeviceKind`).
    pub(super) fn next_payload(&mut self, rng: &mut StdRng) -> Vec<u8> {
        match self {
            Telemetry::WaterMeter { index_l, battery_mv, flowing_for } => {
                let used: u32 = if rng.gen_bool(0.4) { 0 } else { rng.gen_range(1..=40) };
                *index_l = index_l.wrapping_add(used);
                *flowing_for = if used > 0 { *flowing_for + 1 } else { 0 };
                drain(battery_mv, rng);
                let flags = u8::from(*flowing_for >= 24) | (u8::from(*battery_mv < 3000) << 1);
                let mut p = index_l.to_be_bytes().to_vec();
                p.extend_from_slice(&battery_mv.to_be_bytes());
                p.push(flags);
                p
            }
            Telemetry::RiverLevel { level_cm, trend_cm, temp_dc, battery_mv } => {
                if rng.gen_bool(0.1) {
                    *trend_cm = rng.gen_range(-1..=1);
                }
                *level_cm = (*level_cm + *trend_cm + rng.gen_range(-2..=2)).clamp(0, 800);
                *temp_dc = (*temp_dc + rng.gen_range(-2..=2)).clamp(-20, 300);
                drain(battery_mv, rng);
                let mut p = level_cm.to_be_bytes().to_vec();
                p.extend_from_slice(&temp_dc.to_be_bytes());
                p.extend_from_slice(&battery_mv.to_be_bytes());
                p
            }
            Telemetry::WasteFill { fill, temp_c, battery_mv } => {
                *fill = if *fill >= 90 && rng.gen_bool(0.3) {
                    rng.gen_range(0..=5) // emptied by the collection round
                } else {
                    (*fill + rng.gen_range(0..=3)).min(100)
                };
                *temp_c = (*temp_c + rng.gen_range(-1..=1)).clamp(-15, 50);
                drain(battery_mv, rng);
                let mut p = vec![*fill, temp_c.to_be_bytes()[0]];
                p.extend_from_slice(&battery_mv.to_be_bytes());
                p
            }
            Telemetry::LightingCabinet { lit, circuits, energy_wh, mains_dv, battery_mv } => {
                if rng.gen_bool(0.05) {
                    *lit = !*lit; // dusk or dawn
                }
                *circuits = if *lit { 0x0f } else { 0x00 };
                if *lit && rng.gen_bool(0.02) {
                    *circuits &= !(1 << rng.gen_range(0..4)); // a tripped breaker
                }
                let on = circuits.count_ones();
                *energy_wh = energy_wh.wrapping_add(on * rng.gen_range(15..=35));
                *mains_dv = (2300 + rng.gen_range(-60..=60)) as u16;
                drain(battery_mv, rng);
                let mode = 0; // astronomical clock
                let mut p = vec![*circuits, mode];
                p.extend_from_slice(&energy_wh.to_be_bytes());
                p.extend_from_slice(&mains_dv.to_be_bytes());
                p
            }
        }
    }
}
