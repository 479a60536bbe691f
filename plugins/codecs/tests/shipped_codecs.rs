//! The example codecs shipped in `examples-js/` decode the gateway's simulated devices.

mod common;

use berrygw_codecs::{DecodeError, EntryPoint};
use common::{decode, decode_with, load, variables};
use serde_json::json;

#[test]
fn water_meter_reads_index_battery_and_flags() {
    let mut codec = load("examples-js/water_meter.js");
    assert_eq!(codec.name(), "water_meter.js");
    // 0x8000_1234 litres: the top bit must not turn the index negative.
    let decoded = decode(&mut codec, &[0x80, 0x00, 0x12, 0x34, 0x0e, 0x10, 0x01], 1).unwrap();
    assert_eq!(
        decoded.data,
        json!({"index_l": 2_147_488_308_u64, "battery_v": 3.6, "leak": true, "low_battery": false})
    );
    assert!(decoded.warnings.is_empty());
}

#[test]
fn water_meter_warns_on_low_battery() {
    let mut codec = load("examples-js/water_meter.js");
    let decoded = decode(&mut codec, &[0x00, 0x00, 0x03, 0xe8, 0x0a, 0x8c, 0x02], 1).unwrap();
    assert_eq!(decoded.data["low_battery"], json!(true));
    assert_eq!(decoded.data["index_l"], json!(1000));
    assert_eq!(decoded.warnings, vec!["battery low (2.7 V): plan a replacement".to_string()]);
}

#[test]
fn water_meter_refuses_a_short_frame() {
    let mut codec = load("examples-js/water_meter.js");
    let err = decode(&mut codec, &[0x00, 0x01], 1).unwrap_err();
    assert_eq!(err, DecodeError::CodecErrors(vec!["water meter payload must be 7 bytes, got 2".into()]));
}

#[test]
fn river_level_reads_signed_level_and_temperature() {
    let mut codec = load("examples-js/river_level.js");
    // 215 cm, 12.5 °C, 3.3 V
    let decoded = decode(&mut codec, &[0x00, 0xd7, 0x00, 0x7d, 0x0c, 0xe4], 2).unwrap();
    assert_eq!(decoded.data, json!({"level_cm": 215, "water_temp_c": 12.5, "battery_v": 3.3}));
    assert!(decoded.warnings.is_empty());
    // -12 cm, -0.5 °C: the warning uses recvTime as a real Date.
    let decoded = decode(&mut codec, &[0xff, 0xf4, 0xff, 0xfb, 0x0c, 0xe4], 2).unwrap();
    assert_eq!(decoded.data, json!({"level_cm": -12, "water_temp_c": -0.5, "battery_v": 3.3}));
    assert_eq!(decoded.warnings, vec!["level below the sensor zero at 2024-05-01T12:00:00.250Z".to_string()]);
}

#[test]
fn river_level_reports_a_wrong_length() {
    let mut codec = load("examples-js/river_level.js");
    let err = decode(&mut codec, &[0x00, 0xd7, 0x00], 2).unwrap_err();
    assert_eq!(
        err,
        DecodeError::CodecErrors(vec!["river level payload must be 6 bytes, got 3 on port 2".into()])
    );
}

#[test]
fn waste_fill_uses_the_device_threshold() {
    let mut codec = load("examples-js/waste_fill.js");
    let frame = [0x4b, 0xfb, 0x0e, 0x74]; // 75 %, -5 °C, 3.7 V
    let decoded = decode(&mut codec, &frame, 3).unwrap();
    assert_eq!(decoded.data, json!({"fill_pct": 75, "temperature_c": -5, "battery_v": 3.7, "full": false}));
    let decoded = decode_with(&mut codec, &frame, 3, &variables(&[("full_threshold", "70")])).unwrap();
    assert_eq!(decoded.data["full"], json!(true));
    assert!(decoded.warnings.is_empty());
}

#[test]
fn waste_fill_warns_on_a_bad_threshold_and_refuses_impossible_fill() {
    let mut codec = load("examples-js/waste_fill.js");
    let decoded =
        decode_with(&mut codec, &[0x50, 0x10, 0x0e, 0x74], 3, &variables(&[("full_threshold", "lots")]))
            .unwrap();
    assert_eq!(decoded.data["full"], json!(true));
    assert_eq!(
        decoded.warnings,
        vec!["variable full_threshold=lots is not a percentage, using 80".to_string()]
    );
    let err = decode(&mut codec, &[0xc8, 0x10, 0x0e, 0x74], 3).unwrap_err();
    assert_eq!(err, DecodeError::CodecErrors(vec!["fill level 200 % is out of range".into()]));
}

#[test]
fn lighting_cabinet_legacy_decode_returns_the_data_itself() {
    let mut codec = load("examples-js/lighting_cabinet.js");
    match &codec {
        berrygw_codecs::Codec::JavaScript(js) => assert_eq!(js.entry_point(), EntryPoint::ChirpStackV3),
        other => panic!("expected a JavaScript codec, got {other:?}"),
    }
    // circuits 1 and 3 on, forced on, 123456 Wh, 231.4 V
    let decoded = decode(&mut codec, &[0x05, 0x01, 0x00, 0x01, 0xe2, 0x40, 0x09, 0x0a], 4).unwrap();
    assert_eq!(
        decoded.data,
        json!({
            "circuits": {"circuit_1": true, "circuit_2": false, "circuit_3": true, "circuit_4": false},
            "mode": "forced_on",
            "energy_wh": 123_456,
            "mains_v": 231.4
        })
    );
}

#[test]
fn lighting_cabinet_throws_on_unknown_mode() {
    let mut codec = load("examples-js/lighting_cabinet.js");
    let err = decode(&mut codec, &[0x05, 0x09, 0x00, 0x01, 0xe2, 0x40, 0x09, 0x0a], 4).unwrap_err();
    match err {
        DecodeError::Threw(message) => {
            assert!(message.starts_with("Error: unknown cabinet mode 9"), "{message}");
            assert!(message.contains("lighting_cabinet.js:"), "stack line expected: {message}");
        }
        other => panic!("expected Threw, got {other:?}"),
    }
}
