//! The files of a site that the centre may send a gateway in a configuration bundle
//! (`crate::bundle`), by kind: where each goes, and the scope a key needs to sign it
//! (`crate::keys`, `bundles = [...]`).

use serde::{Deserialize, Serialize};

use crate::MAX_NAME_BYTES;

/// What a bundle's file is: where it goes and which scope its signer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `devices.toml`: the device registry, with device keys (always sealed).
    Devices,
    /// `codecs/<name>.js`: a payload codec.
    Codecs,
    /// `rules.toml`: the local rules.
    Rules,
    /// `authorized_keys`: who may sign commands and bundles (key rotation).
    AuthorizedKeys,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Devices, Kind::Codecs, Kind::Rules, Kind::AuthorizedKeys];

    /// The snake_case label (as in the manifest and in `authorized_keys`' `bundles`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Devices => "devices",
            Kind::Codecs => "codecs",
            Kind::Rules => "rules",
            Kind::AuthorizedKeys => "authorized_keys",
        }
    }

    /// The kind called `label`.
    pub fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == label)
    }

    /// The kind of the file at `path` in a bundle (and so in a site directory), if the path
    /// is one a bundle may carry: `devices.toml`, `rules.toml`, `authorized_keys`,
    /// `codecs/<name>.js` with a name of letters, digits, `-`, `_` and `.`.
    pub fn of_path(path: &str) -> Option<Kind> {
        match path {
            "devices.toml" => Some(Kind::Devices),
            "rules.toml" => Some(Kind::Rules),
            "authorized_keys" => Some(Kind::AuthorizedKeys),
            _ => {
                let name = path.strip_prefix("codecs/")?;
                let ok = name.len() > 3
                    && name.len() <= MAX_NAME_BYTES
                    && name.ends_with(".js")
                    && !name.starts_with('.')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                ok.then_some(Kind::Codecs)
            }
        }
    }

    /// Whether files of this kind hold secrets, and so travel sealed.
    pub fn is_secret(self) -> bool {
        self == Kind::Devices
    }
}
