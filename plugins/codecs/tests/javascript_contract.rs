//! The JavaScript contract: codecs in the shapes vendors publish (written here for the test),
//! the input they see, what they may keep, and what they cannot reach.

mod common;

use std::time::{Duration, Instant};

use berrygw_codecs::{Codec, DecodeError, EntryPoint, Limits, LoadError, MAX_SOURCE_BYTES};
use common::{decode, decode_from, decode_with, javascript, variables};
use serde_json::json;

fn entry_point(codec: &Codec) -> EntryPoint {
    match codec {
        Codec::JavaScript(js) => js.entry_point(),
        other => panic!("expected a JavaScript codec, got {other:?}"),
    }
}

/// TTN v3, ES5, sloppy mode (an undeclared variable), helper functions, warnings.
const TTN_ES5: &str = r#"
function toSigned16(value) { return value > 0x7fff ? value - 0x10000 : value; }
function decodeUplink(input) {
  result = { data: {}, warnings: [] };   // undeclared on purpose: old codecs do this
  var b = input.bytes;
  if (input.fPort !== 10) {
    result.warnings.push("unexpected port " + input.fPort);
  }
  result.data.temperature = toSigned16((b[0] << 8) | b[1]) / 100;
  result.data.humidity = b[2] / 2;
  return result;
}
"#;

/// TTN v3, modern syntax: destructuring, spread, optional chaining, ?? and a class.
const TTN_MODERN: &str = r#"
class Reading {
  constructor(kind, value) { this.kind = kind; this.value = value; }
  toJSON() { return { [this.kind]: this.value }; }
}
const kinds = new Map([[1, "co2_ppm"], [2, "voc_index"]]);
function decodeUplink({ bytes, fPort, variables }) {
  const readings = [];
  for (let i = 0; i + 2 < bytes.length; i += 3) {
    const [kind, hi, lo] = bytes.slice(i, i + 3);
    readings.push(new Reading(kinds.get(kind) ?? `unknown_${kind}`, (hi << 8) | lo));
  }
  const site = variables?.site ?? "unset";
  return { data: { readings: [...readings], site, port: fPort } };
}
"#;

/// ChirpStack v4 with variables, warnings and errors.
const CHIRPSTACK_V4: &str = r#"
function decodeUplink(input) {
  var offset = Number(input.variables.offset_cm || "0");
  if (input.bytes.length !== 2) {
    return { errors: ["expected 2 bytes", "got " + input.bytes.length] };
  }
  var distance = ((input.bytes[0] << 8) | input.bytes[1]) + offset;
  var warnings = [];
  if (distance > 400) { warnings.push("distance beyond sensor range"); }
  return { data: { distance_cm: distance, units: input.variables.units }, warnings: warnings };
}
"#;

#[test]
fn ttn_es5_codec_decodes_and_warns() {
    let mut codec = javascript("climate.js", TTN_ES5);
    assert_eq!(entry_point(&codec), EntryPoint::DecodeUplink);
    let decoded = decode(&mut codec, &[0xfe, 0x0c, 0x5b], 10).unwrap();
    assert_eq!(decoded.data, json!({"temperature": -5, "humidity": 45.5}));
    assert!(decoded.warnings.is_empty());
    let decoded = decode(&mut codec, &[0x09, 0xc4, 0x5b], 11).unwrap();
    assert_eq!(decoded.data["temperature"], json!(25));
    assert_eq!(decoded.warnings, vec!["unexpected port 11".to_string()]);
}

#[test]
fn ttn_modern_codec_decodes() {
    let mut codec = javascript("air.js", TTN_MODERN);
    let decoded =
        decode_with(&mut codec, &[1, 0x01, 0xf4, 9, 0x00, 0x10], 5, &variables(&[("site", "school")]))
            .unwrap();
    assert_eq!(
        decoded.data,
        json!({"readings": [{"co2_ppm": 500}, {"unknown_9": 16}], "site": "school", "port": 5})
    );
}

#[test]
fn chirpstack_v4_codec_uses_variables_warnings_and_errors() {
    let mut codec = javascript("distance.js", CHIRPSTACK_V4);
    let vars = variables(&[("offset_cm", "15"), ("units", "cm")]);
    let decoded = decode_with(&mut codec, &[0x01, 0x90], 1, &vars).unwrap();
    assert_eq!(decoded.data, json!({"distance_cm": 415, "units": "cm"}));
    assert_eq!(decoded.warnings, vec!["distance beyond sensor range".to_string()]);
    assert!(decoded.errors.is_empty());

    let err = decode_with(&mut codec, &[0x01], 1, &vars).unwrap_err();
    assert_eq!(err, DecodeError::CodecErrors(vec!["expected 2 bytes".into(), "got 1".into()]));
    assert_eq!(
        err.to_string(),
        "codec reported decoding errors: expected 2 bytes; got 1",
        "one line a technician can read"
    );
}

#[test]
fn chirpstack_v3_decode_gets_port_bytes_and_variables() {
    let source = "function Decode(fPort, bytes, variables) {\n\
                  return { port: fPort, sum: bytes.reduce(function (a, b) { return a + b; }, 0), zone: variables.zone };\n}";
    let mut codec = javascript("legacy_v3.js", source);
    assert_eq!(entry_point(&codec), EntryPoint::ChirpStackV3);
    let decoded = decode_with(&mut codec, &[1, 2, 3], 7, &variables(&[("zone", "north")])).unwrap();
    assert_eq!(decoded.data, json!({"port": 7, "sum": 6, "zone": "north"}));
}

#[test]
fn ttn_v2_decoder_gets_bytes_and_port() {
    let source = "function Decoder(bytes, port) { var decoded = {}; decoded.port = port; decoded.first = bytes[0]; return decoded; }";
    let mut codec = javascript("legacy_v2.js", source);
    assert_eq!(entry_point(&codec), EntryPoint::TtnV2);
    let decoded = decode(&mut codec, &[42], 3).unwrap();
    assert_eq!(decoded.data, json!({"port": 3, "first": 42}));
}

#[test]
fn decode_uplink_is_preferred_over_legacy_entry_points() {
    let source = "function Decoder(bytes, port) { return { from: 'Decoder' }; }\n\
                  function Decode(fPort, bytes) { return { from: 'Decode' }; }\n\
                  function decodeUplink(input) { return { data: { from: 'decodeUplink' } }; }";
    let mut codec = javascript("all_three.js", source);
    assert_eq!(entry_point(&codec), EntryPoint::DecodeUplink);
    assert_eq!(decode(&mut codec, &[], 1).unwrap().data, json!({"from": "decodeUplink"}));
}

#[test]
fn recv_time_is_a_real_date() {
    let source = "function decodeUplink(input) { var t = input.recvTime;\n\
                  return { data: { isDate: t instanceof Date, iso: t.toISOString(), ms: t.getTime() } }; }";
    let mut codec = javascript("time.js", source);
    let decoded = decode(&mut codec, &[], 1).unwrap();
    assert_eq!(
        decoded.data,
        json!({"isDate": true, "iso": "2024-05-01T12:00:00.250Z", "ms": 1_714_564_800_250_u64})
    );
}

#[test]
fn input_mutations_do_not_leak_into_the_next_call() {
    let source = "function decodeUplink(input) {\n\
                  var seen = { length: input.bytes.length, first: input.bytes[0], mode: input.variables.mode };\n\
                  input.bytes.push(99); input.bytes[0] = 0; input.variables.mode = 'tampered';\n\
                  return { data: seen }; }";
    let mut codec = javascript("mutates.js", source);
    let vars = variables(&[("mode", "normal")]);
    for _ in 0..3 {
        let decoded = decode_with(&mut codec, &[5, 6], 1, &vars).unwrap();
        assert_eq!(decoded.data, json!({"length": 2, "first": 5, "mode": "normal"}));
    }
}

#[test]
fn globals_a_codec_keeps_persist_between_calls() {
    let source = "var frames = 0;\nconst decodeUplink = (input) => ({ data: { frames: ++frames } });";
    let mut codec = javascript("counter.js", source);
    assert_eq!(decode(&mut codec, &[], 1).unwrap().data, json!({"frames": 1}));
    assert_eq!(decode(&mut codec, &[], 1).unwrap().data, json!({"frames": 2}));
}

#[test]
fn one_device_cannot_pollute_what_another_device_reads() {
    // Device A's frame (first byte 1) pollutes the shared built-ins and globals.
    let source = "var lastDevice;\n\
                  function decodeUplink(input) {\n\
                    if (input.bytes[0] === 1) {\n\
                      Object.prototype.alarm = 'forged';\n\
                      Array.prototype.toJSON = function () { return 'forged'; };\n\
                      globalThis.leak = 'forged';\n\
                      lastDevice = 'A';\n\
                    }\n\
                    var data = { level: input.bytes[1], list: [input.bytes[1]] };\n\
                    if (({}).alarm) data.alarm = ({}).alarm;\n\
                    if (typeof leak !== 'undefined') data.leak = leak;\n\
                    if (lastDevice) data.last = lastDevice;\n\
                    return { data: data };\n\
                  }";
    let mut codec = javascript("shared.js", source);
    decode_from(&mut codec, "device-a", &[1, 10], 1).unwrap();
    let b = decode_from(&mut codec, "device-b", &[0, 20], 1).unwrap();
    assert_eq!(b.data, json!({"level": 20, "list": [20]}), "device B sees nothing of device A");
    // A's own context keeps what A did (a codec's state is per device).
    let a = decode_from(&mut codec, "device-a", &[0, 30], 1).unwrap();
    assert_eq!(
        a.data,
        json!({"level": 30, "list": "forged", "alarm": "forged", "leak": "forged", "last": "A"})
    );
    let b = decode_from(&mut codec, "device-b", &[0, 40], 1).unwrap();
    assert_eq!(b.data, json!({"level": 40, "list": [40]}));
}

#[test]
fn device_contexts_beyond_the_bound_are_rebuilt_on_their_next_frame() {
    let source = "var frames = 0;\nfunction decodeUplink(input) { return { data: { frames: ++frames } }; }";
    let mut codec = javascript("counter.js", source);
    let bound = berrygw_codecs::MAX_DEVICE_CONTEXTS;
    for i in 0..=bound {
        let decoded = decode_from(&mut codec, &format!("d{i}"), &[], 1).unwrap();
        assert_eq!(decoded.data, json!({"frames": 1}), "each device counts its own frames");
    }
    // d0 was the least recently heard: its context went, and starts afresh.
    assert_eq!(decode_from(&mut codec, "d0", &[], 1).unwrap().data, json!({"frames": 1}));
    assert_eq!(decode_from(&mut codec, &format!("d{bound}"), &[], 1).unwrap().data, json!({"frames": 2}));
}

#[test]
fn undefined_values_are_kept_as_null_as_ttn_does() {
    let source = "function decodeUplink(input) {\n\
                  return { data: { temperature: undefined, nested: { a: undefined, b: 1 }, list: [undefined] } }; }";
    let mut codec = javascript("undefined.js", source);
    let decoded = decode(&mut codec, &[], 1).unwrap();
    assert_eq!(decoded.data, json!({"temperature": null, "nested": {"a": null, "b": 1}, "list": [null]}));
    let legacy = "function Decoder(bytes, port) { return { temperature: undefined, ok: true }; }";
    let mut codec = javascript("legacy.js", legacy);
    assert_eq!(decode(&mut codec, &[], 1).unwrap().data, json!({"temperature": null, "ok": true}));
    // No data at all is still an error, not a null reading.
    let mut codec = javascript("nodata.js", "function decodeUplink(input) { return { data: undefined }; }");
    assert!(decode(&mut codec, &[], 1).is_err());
}

#[test]
fn non_finite_numbers_become_null_and_console_is_silent() {
    let source = "function decodeUplink(input) { console.log('debug', input.bytes);\n\
                  return { data: { nan: 0 / 0, inf: 1 / 0, ok: 1.5 } }; }";
    let mut codec = javascript("numbers.js", source);
    assert_eq!(decode(&mut codec, &[], 1).unwrap().data, json!({"nan": null, "inf": null, "ok": 1.5}));
}

#[test]
fn codec_cannot_reach_files_network_or_modules() {
    let source = "var imported = 'not yet';\n\
                  function decodeUplink(input) {\n\
                    if (input.fPort === 1) {\n\
                      import('os').then(function () { imported = 'loaded'; }, function (e) { imported = 'refused'; });\n\
                    }\n\
                    return { data: { require: typeof require, std: typeof std, os: typeof os, fetch: typeof fetch,\n\
                      xhr: typeof XMLHttpRequest, print: typeof print, scriptArgs: typeof scriptArgs, imported: imported } }; }";
    let mut codec = javascript("escape.js", source);
    decode(&mut codec, &[], 1).unwrap();
    let decoded = decode(&mut codec, &[], 2).unwrap();
    assert_eq!(
        decoded.data,
        json!({"require": "undefined", "std": "undefined", "os": "undefined", "fetch": "undefined",
               "xhr": "undefined", "print": "undefined", "scriptArgs": "undefined", "imported": "refused"})
    );
}

#[test]
fn syntax_errors_are_refused_at_load_with_the_line() {
    let err = Codec::javascript(
        "broken.js",
        "function decodeUplink(input) {\n  return { data: ;\n}",
        Limits::default(),
    )
    .unwrap_err();
    let LoadError::Syntax { name, message } = &err else { panic!("expected Syntax, got {err:?}") };
    assert_eq!(name, "broken.js");
    assert!(message.contains("broken.js:2"), "{message}");
}

#[test]
fn scripts_without_a_decoder_are_refused() {
    let err = Codec::javascript(
        "encoder_only.js",
        "function encodeDownlink(input) { return {}; }",
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(&err, LoadError::NoEntryPoint { name } if name == "encoder_only.js"), "{err:?}");
    // A non-function decodeUplink is not an entry point either.
    let err = Codec::javascript("not_function.js", "var decodeUplink = 3;", Limits::default()).unwrap_err();
    assert!(matches!(err, LoadError::NoEntryPoint { .. }));
}

#[test]
fn top_level_failures_are_refused_at_load() {
    let err = Codec::javascript("throws_at_load.js", "throw new Error('no config');", Limits::default())
        .unwrap_err();
    assert!(matches!(&err, LoadError::Startup { message, .. } if message.contains("no config")), "{err:?}");
    let started = Instant::now();
    let err = Codec::javascript("loops_at_load.js", "while (true) {}", Limits::default()).unwrap_err();
    assert!(matches!(&err, LoadError::Startup { message, .. } if message.contains("time limit")), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn load_file_names_the_codec_after_the_file_and_refuses_big_files() {
    let dir = std::env::temp_dir().join(format!("berrygw-codecs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = dir.join("tiny.js");
    std::fs::write(&small, "function Decoder(bytes) { return { n: bytes.length }; }").unwrap();
    let mut codec = Codec::load_file(&small, Limits::default()).unwrap();
    assert_eq!(codec.name(), "tiny.js");
    assert_eq!(decode(&mut codec, &[1, 2], 1).unwrap().data, json!({"n": 2}));

    let big = dir.join("big.js");
    let padding = " ".repeat(MAX_SOURCE_BYTES as usize + 1);
    std::fs::write(&big, format!("function Decoder(b) {{ return {{}}; }}{padding}")).unwrap();
    let err = Codec::load_file(&big, Limits::default()).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { size, .. } if size > MAX_SOURCE_BYTES), "{err:?}");

    let err = Codec::load_file(&dir.join("missing.js"), Limits::default()).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.js"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn built_ins_have_names_and_decode() {
    let mut hex = Codec::hex();
    assert_eq!(hex.name(), "hex");
    assert_eq!(decode(&mut hex, &[0x0a, 0x1b, 0xff], 1).unwrap().data, json!({"hex": "0a1bff"}));
    assert_eq!(decode(&mut hex, &[], 1).unwrap().data, json!({"hex": ""}));

    let mut lpp = Codec::cayenne_lpp();
    assert_eq!(lpp.name(), "cayenne_lpp");
    let decoded = decode(&mut lpp, &[0x03, 0x67, 0x01, 0x10, 0x05, 0x68, 0x29], 1).unwrap();
    assert_eq!(decoded.data, json!({"temperature_3": 27.2, "humidity_5": 20.5}));
    let err = decode(&mut lpp, &[0x03, 0x67, 0x01], 1).unwrap_err();
    assert_eq!(err.label(), "malformed");
}

#[test]
fn default_limits_are_the_documented_ones() {
    let limits = Limits::default();
    assert_eq!(limits.time, Duration::from_millis(50));
    assert_eq!(limits.memory_bytes, 8 * 1024 * 1024);
    assert_eq!(limits.max_output_bytes, 64 * 1024);
}
