//! A gateway's identity as the centre sees it: the announcement each gateway keeps
//! retained on `<prefix>/<gateway_id>/identity`, from which the central tool learns the
//! public key to seal secrets to (see `sealed`). It is published by the gateway over
//! its authenticated broker connection; the centre pins it the first time it sees it
//! (`berryctl` keeps the keys it has seen) and says so when one changes.

use serde::{Deserialize, Serialize};

use crate::sealed::Recipient;

/// What secrets sealed to a gateway are: libsodium's `crypto_box_seal` to its X25519 key.
pub const SEALED_BOX: &str = "x25519-libsodium-sealed-box";

/// The retained identity announcement of one gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    pub gateway_id: String,
    /// Standard base64 of the 32-byte X25519 public key.
    pub public_key: String,
    /// Always [`SEALED_BOX`] today.
    pub sealed_box: String,
}

impl Announcement {
    pub fn new(gateway_id: &str, key: &Recipient) -> Announcement {
        Announcement {
            gateway_id: gateway_id.to_string(),
            public_key: key.to_string(),
            sealed_box: SEALED_BOX.to_string(),
        }
    }

    /// The announcement's JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An announcement read from the broker, its key checked.
    pub fn parse(payload: &[u8]) -> Result<(Announcement, Recipient), String> {
        let a: Announcement =
            serde_json::from_slice(payload).map_err(|e| format!("not an announcement: {e}"))?;
        if a.sealed_box != SEALED_BOX {
            return Err(format!("unknown sealed box {:?}", a.sealed_box));
        }
        let key = a.public_key.parse().map_err(|e| format!("public_key: {e}"))?;
        Ok((a, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed::Identity;

    #[test]
    fn an_announcement_round_trips_and_a_bad_one_is_refused() {
        let key = Identity::generate().recipient();
        let a = Announcement::new("0016c001ff10a235", &key);
        assert_eq!(Announcement::parse(&a.to_json()), Ok((a.clone(), key)));
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"{"gateway_id":"x","public_key":"AAAA","sealed_box":"x25519-libsodium-sealed-box"}"#,
            br#"{"gateway_id":"x","public_key":"AAAA","sealed_box":"rot13"}"#,
        ] {
            assert!(Announcement::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
