//! What a CUPS server (or anyone in the path of an http:// link) answers `update-info`
//! with: segments of any length, credential blobs of any shape, signatures of any bytes.
//! Never a panic; an answer that parses encodes back to the same bytes; a signature is
//! checked against a real key whatever its bytes.
#![no_main]

use std::path::Path;

use berrygw::sink::basic_station::creds::Credentials;
use berrygw::sink::basic_station::cups::{verify, SigKey, Signature, UpdateInfo};
use libfuzzer_sys::fuzz_target;

/// The generator of P-256, X then Y: a valid public point.
const G: [u8; 64] = [
    0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03,
    0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2,
    0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31,
    0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
];

fuzz_target!(|data: &[u8]| {
    // The credential parser alone, on anything.
    let _ = Credentials::from_blob(data);
    let Ok(info) = UpdateInfo::parse(data) else { return };
    assert_eq!(info.encode(), data);
    for blob in [&info.cups_cred, &info.tc_cred].into_iter().flatten() {
        let _ = Credentials::from_blob(blob);
    }
    if let Some(update) = &info.update {
        let key = SigKey::from_raw(Path::new("sig-0.key"), &G).expect("G is on the curve");
        // Whatever CRC it claims, the one key is tried: the signature's bytes are what is
        // fuzzed (its DER reading and the check), never a panic.
        let sig = info.signature.clone().map(|s| Signature { key_crc: key.crc, ..s });
        let _ = verify(update, sig.as_ref(), &[key]);
    }
});
