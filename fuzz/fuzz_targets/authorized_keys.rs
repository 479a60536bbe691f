//! The site file authorized_keys over arbitrary text: parsed and checked the way berrygw
//! reads it at start and on reload. Seeds: fuzz/seeds/authorized_keys (the shipped examples).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let _ = berrygw_proto::keys::AuthorizedKeys::parse(Path::new("authorized_keys"), text);
});
