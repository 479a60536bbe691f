//! Hostile codecs: each failure is a decode error for that frame only. The very next frame on
//! the same codec decodes, and so does a well-behaved codec next to it.

mod common;

use std::time::{Duration, Instant};

use berrygw_codecs::{Codec, DecodeError, Limits};
use common::{decode, load, load_with};
use serde_json::json;

const HOSTILE: &[u8] = &[0xee, 0x01];
const HOSTILE_TOO: &[u8] = &[0xef, 0x01];
const FRIENDLY: &[u8] = &[0x07, 0x01];

/// The frame after a failure decodes, on the hostile codec itself and on a good one.
fn assert_recovers(hostile: &mut Codec) {
    let decoded = decode(hostile, FRIENDLY, 1).unwrap_or_else(|e| panic!("next frame failed: {e}"));
    assert_eq!(decoded.data, json!({"first": 7}));
    let mut good = load("examples-js/river_level.js");
    let decoded = decode(&mut good, &[0x00, 0xd7, 0x00, 0x7d, 0x0c, 0xe4], 2).unwrap();
    assert_eq!(decoded.data["level_cm"], json!(215));
}

#[test]
fn endless_loop_times_out_even_when_it_catches() {
    let limits = Limits { time: Duration::from_millis(30), ..Limits::default() };
    let mut codec = load_with("tests/hostile/infinite_loop.js", limits);
    let started = Instant::now();
    let err = decode(&mut codec, HOSTILE, 1).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, DecodeError::Timeout { limit: Duration::from_millis(30) });
    assert_eq!(err.label(), "timeout");
    // Generous: qemu and debug builds are slow, but an unbounded loop never returns at all.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_recovers(&mut codec);
    // And again: the deadline is re-armed for every call.
    assert!(matches!(decode(&mut codec, HOSTILE, 1), Err(DecodeError::Timeout { .. })));
    assert_recovers(&mut codec);
}

#[test]
fn hoarding_memory_is_stopped_and_the_codec_restarts() {
    let limits = Limits { memory_bytes: 4 << 20, ..Limits::default() };
    let mut codec = load_with("tests/hostile/huge_allocation.js", limits);
    let err = decode(&mut codec, HOSTILE, 1).unwrap_err();
    assert_eq!(err, DecodeError::OutOfMemory { limit: 4 << 20 });
    assert_eq!(err.label(), "out_of_memory");
    assert_recovers(&mut codec);
    // A second exhaustion after the rebuild is caught the same way.
    let err = decode(&mut codec, HOSTILE, 1).unwrap_err();
    assert_eq!(err, DecodeError::OutOfMemory { limit: 4 << 20 });
    assert_recovers(&mut codec);
}

#[test]
fn one_codec_running_out_of_memory_leaves_its_neighbour_alone() {
    let mut neighbour = load("examples-js/water_meter.js");
    let frame = [0x00, 0x00, 0x03, 0xe8, 0x0e, 0x10, 0x00];
    let before = decode(&mut neighbour, &frame, 1).unwrap();
    let limits = Limits { memory_bytes: 2 << 20, ..Limits::default() };
    let source = "var frames = 0;\n\
                  function decodeUplink(input) {\n\
                    frames++;\n\
                    if (input.bytes[0] === 0xee) { var buffer = new Uint8Array(64 * 1024 * 1024); }\n\
                    return { data: { frames: frames } }; }";
    let mut hostile = Codec::javascript("big_buffer.js", source, limits).unwrap();
    assert_eq!(decode(&mut hostile, FRIENDLY, 1).unwrap().data, json!({"frames": 1}));
    let err = decode(&mut hostile, HOSTILE, 1).unwrap_err();
    assert_eq!(err, DecodeError::OutOfMemory { limit: 2 << 20 });
    // Rebuilt from source after running out of memory: its globals start over, as documented.
    assert_eq!(decode(&mut hostile, FRIENDLY, 1).unwrap().data, json!({"frames": 1}));
    assert_eq!(decode(&mut neighbour, &frame, 1).unwrap(), before);
}

#[test]
fn doubling_a_string_is_stopped() {
    let mut codec = load("tests/hostile/huge_allocation.js");
    let err = decode(&mut codec, HOSTILE_TOO, 1).unwrap_err();
    // QuickJS builds long concatenations as ropes and caps string length (2^30), so this
    // ends as "string too long" rather than out of memory; either way the frame fails alone.
    assert!(
        matches!(&err, DecodeError::OutOfMemory { .. })
            || matches!(&err, DecodeError::Threw(m) if m.contains("string too long")),
        "{err:?}"
    );
    assert_recovers(&mut codec);
}

#[test]
fn a_throw_is_reported_with_where_it_happened() {
    let mut codec = load("tests/hostile/throws.js");
    let err = decode(&mut codec, HOSTILE, 1).unwrap_err();
    let DecodeError::Threw(message) = &err else { panic!("expected Threw, got {err:?}") };
    assert!(message.starts_with("RangeError: frame type 0xee is not supported"), "{message}");
    assert!(message.contains("at checkFrame (throws.js:"), "{message}");
    assert_eq!(err.label(), "threw");
    assert_recovers(&mut codec);

    let err = decode(&mut codec, HOSTILE_TOO, 1).unwrap_err();
    let DecodeError::Threw(message) = &err else { panic!("expected Threw, got {err:?}") };
    assert!(message.starts_with("TypeError:"), "{message}");
    assert_recovers(&mut codec);
}

#[test]
fn non_json_returns_are_bad_returns() {
    let mut codec = load("tests/hostile/non_json.js");
    for (port, why) in
        [(1, "no data"), (2, "circular"), (3, "got undefined"), (4, "BigInt"), (5, "got a string")]
    {
        let err = decode(&mut codec, HOSTILE, port).unwrap_err();
        let DecodeError::BadReturn(message) = &err else {
            panic!("port {port}: expected BadReturn, got {err:?}")
        };
        assert!(message.contains(why), "port {port}: {message}");
        assert_eq!(err.label(), "bad_return");
        assert_recovers(&mut codec);
    }
}

#[test]
fn a_looping_to_json_is_a_timeout() {
    let limits = Limits { time: Duration::from_millis(20), ..Limits::default() };
    let mut codec = load_with("tests/hostile/non_json.js", limits);
    let err = decode(&mut codec, HOSTILE, 9).unwrap_err();
    assert_eq!(err, DecodeError::Timeout { limit: Duration::from_millis(20) });
    assert_recovers(&mut codec);
}

#[test]
fn reported_errors_fail_the_frame() {
    let mut codec = load("tests/hostile/returns_errors.js");
    let err = decode(&mut codec, HOSTILE, 1).unwrap_err();
    assert_eq!(err, DecodeError::CodecErrors(vec!["unknown frame type 0xee".into(), "42".into()]));
    assert_eq!(err.label(), "codec_errors");
    assert_recovers(&mut codec);
}

#[test]
fn oversized_output_is_refused() {
    let source =
        "function decodeUplink(input) { return { data: { blob: 'x'.repeat(input.bytes[0] * 1000) } }; }";
    let limits = Limits { max_output_bytes: 10_000, ..Limits::default() };
    let mut codec = Codec::javascript("blob.js", source, limits).unwrap();
    let err = decode(&mut codec, &[20], 1).unwrap_err();
    assert_eq!(err, DecodeError::OutputTooLarge { limit: 10_000 });
    assert_eq!(err.label(), "output_too_large");
    assert!(decode(&mut codec, &[5], 1).is_ok());
}

#[test]
fn deep_recursion_is_a_throw_not_a_crash() {
    let source = "function dive(n) { return dive(n + 1) + 1; }\n\
                  function decodeUplink(input) { if (input.bytes[0] === 0xee) dive(0); return { data: { first: input.bytes[0] } }; }";
    let mut codec = Codec::javascript("dive.js", source, Limits::default()).unwrap();
    let err = decode(&mut codec, HOSTILE, 1).unwrap_err();
    assert!(matches!(&err, DecodeError::Threw(m) if m.contains("stack")), "{err:?}");
    assert_recovers(&mut codec);
}

#[test]
fn thrown_non_errors_are_described() {
    let source = "function decodeUplink(input) {\n\
                  if (input.bytes[0] !== 0xee) return { data: { first: input.bytes[0] } };\n\
                  if (input.fPort === 1) throw 'plain string';\n\
                  if (input.fPort === 2) throw { toString: function () { throw new Error('again'); } };\n\
                  throw undefined; }";
    let mut codec = Codec::javascript("odd_throws.js", source, Limits::default()).unwrap();
    assert_eq!(decode(&mut codec, HOSTILE, 1).unwrap_err(), DecodeError::Threw("plain string".into()));
    assert_eq!(
        decode(&mut codec, HOSTILE, 2).unwrap_err(),
        DecodeError::Threw("an object that could not be turned into text".into())
    );
    assert_eq!(decode(&mut codec, HOSTILE, 3).unwrap_err(), DecodeError::Threw("undefined".into()));
    assert_recovers(&mut codec);
}

#[test]
fn promise_jobs_left_behind_run_under_the_deadline() {
    let source = "var spins = 0;\n\
                  function spin() { spins++; for (;;) {} }\n\
                  function decodeUplink(input) {\n\
                    if (input.bytes[0] === 0xee) Promise.resolve().then(spin);\n\
                    return { data: { first: input.bytes[0], spins: spins } }; }";
    let limits = Limits { time: Duration::from_millis(20), ..Limits::default() };
    let mut codec = Codec::javascript("promise.js", source, limits).unwrap();
    // The answer was complete before the job ran; the job is then stopped by the deadline
    // instead of lingering until some later call.
    let started = Instant::now();
    let decoded = decode(&mut codec, HOSTILE, 1).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(decoded.data, json!({"first": 238, "spins": 0}));
    let decoded = decode(&mut codec, FRIENDLY, 1).unwrap();
    assert_eq!(decoded.data, json!({"first": 7, "spins": 1}));
}
