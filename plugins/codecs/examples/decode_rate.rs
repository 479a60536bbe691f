//! Single-thread decode rate of the shipped codecs and the built-ins.
//!
//!     CARGO_TARGET_DIR=/work/target-codecs cargo run --release -p berrygw-codecs --example decode_rate
//!
//! Prints decodes per second for each codec on one typical frame. A rough figure for one
//! core; targets are ≥ 20,000/s for a typical JS codec and ≥ 1,000,000/s for Cayenne LPP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use berrygw_codecs::{Codec, Limits, UplinkInput};

fn main() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-js");
    let load = |file: &str| match Codec::load_file(&examples.join(file), Limits::default()) {
        Ok(codec) => codec,
        Err(e) => panic!("{file}: {e}"),
    };
    let no_variables = BTreeMap::new();
    let threshold = BTreeMap::from([("full_threshold".to_string(), "70".to_string())]);
    let cases: Vec<(Codec, Vec<u8>, &BTreeMap<String, String>)> = vec![
        (load("river_level.js"), vec![0x00, 0xd7, 0x00, 0x7d, 0x0c, 0xe4], &no_variables),
        (load("water_meter.js"), vec![0x00, 0x00, 0x03, 0xe8, 0x0a, 0x8c, 0x02], &no_variables),
        (load("waste_fill.js"), vec![0x4b, 0xfb, 0x0e, 0x74], &threshold),
        (load("lighting_cabinet.js"), vec![0x05, 0x01, 0x00, 0x01, 0xe2, 0x40, 0x09, 0x0a], &no_variables),
        // temperature_3, humidity_5, barometer_7: a typical 3-sensor LPP frame.
        (
            Codec::cayenne_lpp(),
            vec![0x03, 0x67, 0x01, 0x10, 0x05, 0x68, 0x29, 0x07, 0x73, 0x27, 0x6f],
            &no_variables,
        ),
        (Codec::hex(), vec![0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f], &no_variables),
    ];
    for (mut codec, bytes, variables) in cases {
        let input =
            UplinkInput { bytes: &bytes, f_port: 1, recv_time: SystemTime::now(), variables, device: "d" };
        if let Err(e) = codec.decode(&input) {
            panic!("{}: {e}", codec.name());
        }
        let rate = measure(|| {
            let _ = std::hint::black_box(codec.decode(std::hint::black_box(&input)));
        });
        println!("{:<22} {:>12.0} decodes/s", codec.name(), rate);
    }
}

/// Runs `f` for about a second (after a short warm-up) and returns calls per second.
fn measure(mut f: impl FnMut()) -> f64 {
    let warm_up = Instant::now();
    while warm_up.elapsed() < Duration::from_millis(100) {
        f();
    }
    let mut calls: u64 = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..100 {
            f();
        }
        calls += 100;
    }
    calls as f64 / started.elapsed().as_secs_f64()
}
