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
    /// `profiles/<name>.toml`: a Modbus device profile (its registers, commands, checks).
    Profiles,
    /// `berrygw.toml`: the sections of the gateway's configuration that may change remotely
    /// ([`SETTINGS_SECTIONS`]); they replace the same sections of the local file. Sealed:
    /// it may hold broker credentials.
    Settings,
}

/// The top-level sections of berrygw.toml a bundle may set: where the gateway forwards
/// (`sinks`: servers, credentials, topics) and what it forwards (`filters`). Never its
/// identity, radio, state, local access, field equipment or bundle settings.
pub const SETTINGS_SECTIONS: [&str; 2] = ["sinks", "filters"];

/// Check a bundle's `berrygw.toml`: TOML with only [`SETTINGS_SECTIONS`] at the top.
pub fn check_settings(text: &str) -> Result<toml::Table, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("berrygw.toml: {}", e.message()))?;
    if let Some(other) = table.keys().find(|k| !SETTINGS_SECTIONS.contains(&k.as_str())) {
        return Err(format!(
            "berrygw.toml: `{other}` may not change remotely; a bundle sets only [{}]",
            SETTINGS_SECTIONS.join("], [")
        ));
    }
    if table.is_empty() {
        return Err("berrygw.toml: empty; a bundle that changes no setting carries no berrygw.toml".into());
    }
    Ok(table)
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Devices, Kind::Codecs, Kind::Rules, Kind::AuthorizedKeys, Kind::Profiles, Kind::Settings];

    /// The snake_case label (as in the manifest and in `authorized_keys`' `bundles`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Devices => "devices",
            Kind::Codecs => "codecs",
            Kind::Rules => "rules",
            Kind::AuthorizedKeys => "authorized_keys",
            Kind::Profiles => "profiles",
            Kind::Settings => "settings",
        }
    }

    /// The kind called `label`.
    pub fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == label)
    }

    /// The kind of the file at `path` in a bundle (and so in a site directory), if the path
    /// is one a bundle may carry: `devices.toml`, `rules.toml`, `authorized_keys`, `berrygw.toml`,
    /// `codecs/<name>.js` and `profiles/<name>.toml` with a name of letters, digits, `-`, `_`
    /// and `.`.
    pub fn of_path(path: &str) -> Option<Kind> {
        match path {
            "devices.toml" => Some(Kind::Devices),
            "rules.toml" => Some(Kind::Rules),
            "authorized_keys" => Some(Kind::AuthorizedKeys),
            "berrygw.toml" => Some(Kind::Settings),
            _ => {
                let (kind, name, ext) = if let Some(name) = path.strip_prefix("codecs/") {
                    (Kind::Codecs, name, ".js")
                } else {
                    (Kind::Profiles, path.strip_prefix("profiles/")?, ".toml")
                };
                let ok = name.len() > ext.len()
                    && name.len() <= MAX_NAME_BYTES
                    && name.ends_with(ext)
                    && !name.starts_with('.')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                ok.then_some(kind)
            }
        }
    }

    /// Whether files of this kind hold secrets, and so travel sealed.
    pub fn is_secret(self) -> bool {
        matches!(self, Kind::Devices | Kind::Settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_remote_sections_of_berrygw_toml_pass() {
        assert!(check_settings("[sinks.app]\nserver = \"mqtts://broker:8883\"\n").is_ok());
        assert!(check_settings("[filters]\nnet_ids = [\"000013\"]\n").is_ok());
        for bad in ["[gateway]\nid = \"x\"\n", "[bundles]\nwatch_secs = 1\n", "[http]\n", "", "not toml ["] {
            assert!(check_settings(bad).is_err(), "{bad}");
        }
        assert_eq!(Kind::of_path("berrygw.toml"), Some(Kind::Settings));
        assert_eq!(Kind::of_path("profiles/pump.toml"), Some(Kind::Profiles));
        assert_eq!(Kind::of_path("profiles/../pump.toml"), None);
        assert_eq!(Kind::of_path("profiles/pump.js"), None);
        assert_eq!(Kind::of_path("codecs/pump.toml"), None);
        assert!(Kind::Settings.is_secret());
    }
}
