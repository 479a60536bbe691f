//! OTAA session keys pushed to one gateway, so that it can decode a device that joined
//! through another: a signed `set_session` envelope on `<prefix>/<gateway_id>/session/set`
//! whose `target` is the DevEUI and whose `args` are `dev_addr`, `f_cnt_up` and
//! [`SEALED_KEYS`], the two session keys sealed to that gateway's identity
//! (`crate::sealed`). The broker, and anyone subscribed to it, sees no key; a gateway
//! refuses keys sent in clear.

use serde::{Deserialize, Serialize};

use crate::sealed::{Identity, Recipient};

/// The `args` member holding the sealed keys (base64 of a sealed box of
/// [`SessionKeys`]' JSON).
pub const SEALED_KEYS: &str = "sealed_keys";

/// The secret half of a session, as sealed (hex, as in devices.toml).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKeys {
    pub nwk_s_key: String,
    pub app_s_key: String,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(…)")
    }
}

impl SessionKeys {
    /// Sealed to `gateway`: the value of [`SEALED_KEYS`].
    pub fn seal(&self, gateway: &Recipient) -> String {
        gateway.seal_base64(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// The keys in a [`SEALED_KEYS`] value, opened with this gateway's identity.
    pub fn open(sealed: &str, identity: &Identity) -> Result<SessionKeys, String> {
        let plain = identity.open_base64(sealed).map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| format!("sealed keys: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sealed_to_a_gateway_open_there_only() {
        let gateway = Identity::generate();
        let keys = SessionKeys { nwk_s_key: "00".repeat(16), app_s_key: "11".repeat(16) };
        let sealed = keys.seal(&gateway.recipient());
        assert!(!sealed.contains(&keys.app_s_key));
        assert_eq!(SessionKeys::open(&sealed, &gateway), Ok(keys.clone()));
        assert!(SessionKeys::open(&sealed, &Identity::generate()).is_err());
        assert!(SessionKeys::open("not base64!", &gateway).is_err());
        let not_keys = gateway.recipient().seal_base64(b"{\"nwk_s_key\":\"00\"}");
        assert!(SessionKeys::open(&not_keys, &gateway).is_err());
        assert!(!format!("{keys:?}").contains("00"), "never printed");
    }
}
