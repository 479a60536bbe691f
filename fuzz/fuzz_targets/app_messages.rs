//! Every MQTT payload the app sink takes in besides command envelopes (those
//! have `command_envelope`): pushed session keys (`session/set`), and the app
//! journal's stored records (`topic\nbody`).
#![no_main]

use berrygw::events::{open_record, parse_session_push, RECORD_KIND};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = parse_session_push(bytes);
    let _ = open_record(RECORD_KIND, bytes);
});
