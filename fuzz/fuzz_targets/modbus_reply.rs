//! Modbus replies: register words and bits as a device answers them, decoded
//! for every point of the shipped profiles, and command values encoded back.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use berrygw_modbus::value::{decode_bit, decode_registers, encode_number, encode_raw};
use berrygw_modbus::Profile;
use libfuzzer_sys::fuzz_target;

const SHIPPED: [&str; 3] = [
    include_str!("../../plugins/profiles/needle-dam.toml"),
    include_str!("../../plugins/profiles/lighting-cabinet.toml"),
    include_str!("../../plugins/profiles/energy-meter.toml"),
];

fn profiles() -> &'static [Profile] {
    static PROFILES: OnceLock<Vec<Profile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        SHIPPED.iter().filter_map(|text| Profile::parse(Path::new("profile.toml"), text).ok()).collect()
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    point: usize,
    words: Vec<u16>,
    bit: bool,
    number: f64,
    raw: i64,
}

fuzz_target!(|input: Input| {
    let points: Vec<_> = profiles().iter().flat_map(|p| p.points.iter()).collect();
    let Some(point) = points.get(input.point % points.len().max(1)) else { return };
    let _ = decode_registers(point, &input.words);
    let _ = decode_bit(point, input.bit);
    let _ = encode_number(point, input.number);
    let _ = encode_raw(point, input.raw);
});
