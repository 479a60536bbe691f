//! Secrets for one gateway's eyes: libsodium sealed boxes (`crypto_box_seal`: X25519
//! with a fresh key per message, XSalsa20-Poly1305) to the gateway's identity, so that
//! session keys and a bundle's device keys cross the broker readable by that gateway
//! only. The format is libsodium's, so anything built on libsodium (PyNaCl, the tests'
//! peer) makes and opens the same boxes; the implementation is RustCrypto's
//! `crypto_box`.
//!
//! A gateway's identity is an X25519 key pair: [`Identity`] the private half (kept
//! 0600 in the state directory), [`Recipient`] the public half, written as standard
//! base64 of its 32 bytes (what `berrygw identity show` prints and the gateway
//! announces).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use crypto_box::{PublicKey, SecretKey};

/// Bytes a sealed box adds to its plaintext (the ephemeral key and the tag).
pub const OVERHEAD: usize = 32 + 16;

/// Why a sealed box could not be opened, or a key read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("a key is 32 bytes, this one is {0}")]
    KeyLength(usize),
    #[error("not a sealed box for this gateway (wrong recipient, or altered)")]
    Open,
}

/// A gateway's private identity key.
#[derive(Clone)]
pub struct Identity(SecretKey);

/// A gateway's public identity key: what secrets are sealed to.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(PublicKey);

impl Identity {
    /// A new identity from the system's random source.
    pub fn generate() -> Identity {
        Identity(SecretKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Identity {
        Identity(SecretKey::from_bytes(bytes))
    }

    /// The private key's 32 bytes (for its file; never logged).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The private key from its base64 text (the identity file's content).
    pub fn from_base64(text: &str) -> Result<Identity, SealError> {
        Ok(Identity::from_bytes(key_bytes(text)?))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_bytes())
    }

    pub fn recipient(&self) -> Recipient {
        Recipient(self.0.public_key())
    }

    /// The plaintext of a box sealed to this identity.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0.unseal(sealed).map_err(|_| SealError::Open)
    }

    /// As [`open`](Self::open), from base64.
    pub fn open_base64(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        self.open(&BASE64.decode(sealed.trim()).map_err(|e| SealError::Base64(e.to_string()))?)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(public {})", self.recipient())
    }
}

impl Recipient {
    pub fn from_bytes(bytes: [u8; 32]) -> Recipient {
        Recipient(PublicKey::from(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// `plaintext` sealed to this recipient: only its identity opens it.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        // Fails only if the system's random source does; there is no way on without it.
        self.0.seal(&mut rand::rngs::OsRng, plaintext).expect("the system's random source")
    }

    /// As [`seal`](Self::seal), in base64.
    pub fn seal_base64(&self, plaintext: &[u8]) -> String {
        BASE64.encode(self.seal(plaintext))
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.as_bytes()))
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

impl FromStr for Recipient {
    type Err = SealError;

    fn from_str(text: &str) -> Result<Recipient, SealError> {
        Ok(Recipient::from_bytes(key_bytes(text)?))
    }
}

fn key_bytes(text: &str) -> Result<[u8; 32], SealError> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| SealError::Base64(e.to_string()))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| SealError::KeyLength(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_opens_with_its_recipient_s_identity_only() {
        let gateway = Identity::generate();
        let other = Identity::generate();
        let sealed = gateway.recipient().seal(b"app_s_key");
        assert_eq!(sealed.len(), b"app_s_key".len() + OVERHEAD);
        assert_eq!(gateway.open(&sealed).expect("opens"), b"app_s_key");
        assert_eq!(other.open(&sealed), Err(SealError::Open));
        let mut altered = sealed.clone();
        altered[40] ^= 1;
        assert_eq!(gateway.open(&altered), Err(SealError::Open));
        assert_eq!(gateway.open(&sealed[..OVERHEAD - 1]), Err(SealError::Open));
        assert_ne!(gateway.recipient().seal(b"x"), gateway.recipient().seal(b"x"), "a fresh key each time");
    }

    #[test]
    fn keys_round_trip_through_their_text_and_bad_text_is_refused() {
        let id = Identity::generate();
        let again = Identity::from_base64(&id.to_base64()).expect("identity text");
        assert_eq!(again.recipient(), id.recipient());
        let r: Recipient = id.recipient().to_string().parse().expect("recipient text");
        assert_eq!(r, id.recipient());
        assert!(matches!("not base64!".parse::<Recipient>(), Err(SealError::Base64(_))));
        assert_eq!("AAAA".parse::<Recipient>(), Err(SealError::KeyLength(3)));
        assert!(!format!("{id:?}").contains(&id.to_base64()), "the private key is never printed");
    }

    /// Boxes made by libsodium (through PyNaCl, Debian: python3-nacl) open here, and
    /// ours open there: the format is libsodium's, not a reading of it.
    #[test]
    fn libsodium_opens_our_boxes_and_we_open_its() {
        const SCRIPT: &str = r#"
import base64, sys
from nacl.public import PrivateKey, PublicKey, SealedBox
ours = PublicKey(base64.b64decode(sys.argv[1]))
theirs = PrivateKey(base64.b64decode(sys.argv[2]))
print(base64.b64encode(SealedBox(ours).encrypt(b"sealed by libsodium")).decode())
print(SealedBox(theirs).decrypt(base64.b64decode(sys.argv[3])).decode())
"#;
        let ours = Identity::generate();
        let theirs = Identity::generate();
        let to_them = theirs.recipient().seal_base64(b"sealed by berrygw");
        let python = std::env::var("BERRYGW_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let out = std::process::Command::new(&python)
            .args(["-c", SCRIPT, &ours.recipient().to_string(), &theirs.to_base64(), &to_them])
            .output()
            .unwrap_or_else(|e| panic!("{python}: {e} (scripts/test installs python3-nacl)"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines = text.lines();
        let from_them = lines.next().expect("their box");
        assert_eq!(ours.open_base64(from_them).expect("opens"), b"sealed by libsodium");
        assert_eq!(lines.next(), Some("sealed by berrygw"));
    }
}
