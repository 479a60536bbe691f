//! Codec replies: a `decodeUplink` answer as JSON (what a JavaScript codec
//! returns, read by the same function), and the built-in Cayenne LPP and hex
//! codecs over arbitrary payload bytes.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use berrygw_codecs::{read_decode_uplink_answer, Codec, UplinkInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = read_decode_uplink_answer(answer);
    }
    let variables = BTreeMap::new();
    let input = UplinkInput {
        bytes,
        f_port: 1,
        recv_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        variables: &variables,
        device: "fuzz",
    };
    let _ = Codec::cayenne_lpp().decode(&input);
    let _ = Codec::hex().decode(&input);
});
