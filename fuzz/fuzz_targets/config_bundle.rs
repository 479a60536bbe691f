//! Configuration bundles over arbitrary bytes: `open` as a gateway runs it, once on the
//! bytes as they come (nothing passes the signature) and once with the manifest re-signed
//! by a key the gateway trusts for every kind, so that everything after authentication
//! (manifest, paths, sealed and clear files, hashes, the berrygw.toml sections) is reached.
#![no_main]

use std::path::Path;

use berrygw_proto::bundle::{self, Bundle};
use berrygw_proto::keys::AuthorizedKeys;
use berrygw_proto::sealed::Identity;
use berrygw_proto::site::check_settings;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;

const GATEWAY: &str = "0016c001ff10a235";

fuzz_target!(|bytes: &[u8]| {
    let signer = SigningKey::from_bytes(&[7; 32]);
    let keys = format!(
        "[[key]]\nid = \"config\"\npublic_key = \"{}\"\nbundles = [\"devices\", \"codecs\", \"rules\", \"authorized_keys\", \"profiles\", \"settings\"]\n",
        base64_encode(&signer.verifying_key().to_bytes())
    );
    let Ok(keys) = AuthorizedKeys::parse(Path::new("authorized_keys"), &keys) else { return };
    let identity = Identity::from_bytes([9; 32]);
    let _ = bundle::open(bytes, GATEWAY, 0, &keys, &identity);
    let Ok(mut b) = serde_json::from_slice::<Bundle>(bytes) else { return };
    let mut signed = bundle::DOMAIN.to_vec();
    signed.extend_from_slice(b.manifest.as_bytes());
    b.signature = base64_encode(&signer.sign(&signed).to_bytes());
    b.key_id = "config".into();
    if let Ok(opened) = bundle::open(&b.to_json(), GATEWAY, 0, &keys, &identity) {
        for (path, content) in &opened.files {
            if path == "berrygw.toml" {
                let _ = check_settings(&String::from_utf8_lossy(content));
            }
        }
    }
});

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
