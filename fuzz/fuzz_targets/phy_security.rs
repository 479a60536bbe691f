//! LoRaWAN PHYPayloads over arbitrary bytes: the parser, and every security
//! function the decoder runs on a frame (data MIC and decryption with counter
//! reconstruction, JoinRequest MIC, JoinAccept opening), with keys and the
//! last counter taken from the input too.
#![no_main]

use arbitrary::Arbitrary;
use berrygw_lora::{phy, security, AesKey, DevAddr, SessionKeys};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    phy: Vec<u8>,
    nwk_s_key: [u8; 16],
    app_s_key: [u8; 16],
    app_key: [u8; 16],
    last_fcnt: Option<u32>,
    fcnt: u32,
}

fuzz_target!(|input: Input| {
    let frame = phy::parse(&input.phy);
    let dev_addr = match &frame {
        Ok(f) => f.dev_addr().unwrap_or(DevAddr::from_u32(0)),
        Err(_) => DevAddr::from_u32(0),
    };
    let keys =
        SessionKeys { dev_addr, nwk_s_key: AesKey(input.nwk_s_key), app_s_key: AesKey(input.app_s_key) };
    let _ = security::verify_uplink(&input.phy, &keys, input.last_fcnt);
    let _ = phy::verify_and_decrypt(&input.phy, &keys.nwk_s_key, &keys.app_s_key, input.fcnt);
    let _ = security::reconstruct_fcnt(input.last_fcnt, input.fcnt as u16);
    let app_key = AesKey(input.app_key);
    let _ = security::verify_join_request(&input.phy, &app_key);
    if let Ok(accept) = security::open_join_accept(&input.phy, &app_key) {
        let _ = security::derive_session_keys(&app_key, &accept, input.fcnt as u16);
        let _ = security::build_join_accept(&accept, &app_key);
    }
});
