//! Central command envelopes over arbitrary bytes: parse, canonical bytes, and
//! the full check (key lookup, Ed25519 signature, gateway, expiry, scope)
//! against an authorized_keys with one key.
#![no_main]

use std::path::Path;

use berrygw_proto::envelope::{check, CommandEnvelope};
use berrygw_proto::keys::AuthorizedKeys;
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

const KEYS: &str = r#"
[[key]]
id = "central-2026"
public_key = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
targets = ["barrage-*"]
commands = ["move_bay*", "stop_bay*"]
"#;

fuzz_target!(|bytes: &[u8]| {
    let Ok(envelope) = CommandEnvelope::parse(bytes) else { return };
    let _ = envelope.canonical_bytes();
    let _ = envelope.to_json();
    let Ok(keys) = AuthorizedKeys::parse(Path::new("authorized_keys"), KEYS) else { return };
    let now = Utc.timestamp_opt(1_780_000_000, 0).single();
    if let Some(now) = now {
        let _ = check(&envelope, &keys, "0016c001ff10a235", now);
    }
});
