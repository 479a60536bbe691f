//! Helpers shared by the codec tests: inputs and loading codecs from this crate's folders.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use berrygw_codecs::{Codec, DecodeError, Decoded, Limits, UplinkInput};

/// 2024-05-01T12:00:00.250Z, a fixed receive time so outputs are predictable.
pub fn recv_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_800_250)
}

/// Decodes `bytes` on `f_port` with the given device variables.
pub fn decode_with(
    codec: &mut Codec,
    bytes: &[u8],
    f_port: u8,
    variables: &BTreeMap<String, String>,
) -> Result<Decoded, DecodeError> {
    codec.decode(&UplinkInput { bytes, f_port, recv_time: recv_time(), variables, device: "device-a" })
}

/// Decodes `bytes` on `f_port` as sent by `device`.
pub fn decode_from(
    codec: &mut Codec,
    device: &str,
    bytes: &[u8],
    f_port: u8,
) -> Result<Decoded, DecodeError> {
    codec.decode(&UplinkInput { bytes, f_port, recv_time: recv_time(), variables: &BTreeMap::new(), device })
}

/// Decodes `bytes` on `f_port` with no device variables.
pub fn decode(codec: &mut Codec, bytes: &[u8], f_port: u8) -> Result<Decoded, DecodeError> {
    decode_with(codec, bytes, f_port, &BTreeMap::new())
}

/// Device variables from pairs.
pub fn variables(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn crate_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Loads a codec file from this crate with default limits, failing the test if it doesn't load.
pub fn load(relative: &str) -> Codec {
    load_with(relative, Limits::default())
}

pub fn load_with(relative: &str, limits: Limits) -> Codec {
    match Codec::load_file(&crate_path(relative), limits) {
        Ok(codec) => codec,
        Err(e) => panic!("{relative} should load: {e}"),
    }
}

/// Compiles inline JavaScript with default limits, failing the test if it doesn't load.
pub fn javascript(name: &str, source: &str) -> Codec {
    match Codec::javascript(name, source, Limits::default()) {
        Ok(codec) => codec,
        Err(e) => panic!("{name} should load: {e}"),
    }
}
