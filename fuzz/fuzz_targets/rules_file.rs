//! The site file rules.toml over arbitrary text: parsed and checked the way berrygw
//! reads it at start and on reload. Seeds: fuzz/seeds/rules_file (the shipped examples).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let _ = berrygw::rules::RuleSet::parse(Path::new("rules.toml"), text);
});
