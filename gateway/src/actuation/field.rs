//! The `[field]` section of `berrygw.toml`: the Modbus equipment wired to this
//! gateway, where its profiles, the command signing keys and the rules live.
//! Parsed strictly; `check` needs no other file, `profiles` loads the profiles
//! (`config::site` calls both), so that `check-config` and `run` refuse exactly
//! the same files.
//!
//! ```toml
//! [field]
//! authorized_keys = "/etc/berrygw/authorized_keys"   # central commands; none without it
//! rules = "/etc/berrygw/rules.toml"                   # optional
//!
//! [[field.device]]
//! name = "barrage-cher-1"
//! profile = "needle-dam"
//! unit_id = 1
//! link = { transport = "tcp", address = "192.168.10.20:502" }
//!
//! [[field.device]]
//! name = "armoire-ep-rue-haute"
//! profile = "lighting-cabinet"
//! unit_id = 3
//! link = { transport = "rtu", path = "/dev/ttyUSB0", baud_rate = 9600, parity = "even" }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berrygw_modbus::{Bus, BusOptions, Device, DeviceConfig, Link, ProfileSet};
use serde::Deserialize;
use toml::Spanned;

use berrygw_core::{ConfigError, SourceFile};

/// `[field]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSection {
    /// Profile folders; a later folder's profile replaces an earlier one of the same name.
    #[serde(default = "default_profile_dirs")]
    pub profile_dirs: Vec<PathBuf>,
    /// Public keys allowed to sign central commands, with their scopes. Without
    /// it, commands from the central platform are not even subscribed to.
    pub authorized_keys: Option<Spanned<PathBuf>>,
    /// Local rules and schedules.
    pub rules: Option<Spanned<PathBuf>>,
    /// Refuse central commands while the kernel says the clock is not
    /// synchronized (NTP): a board without a battery clock boots hours behind
    /// after a power cut, and expired commands would look fresh.
    #[serde(default = "default_true")]
    pub require_clock_sync: bool,
    /// A device's full state is published at least this often (changes of
    /// switches, modes and online state go out at once).
    #[serde(default = "default_state_interval_secs")]
    pub state_interval_secs: u64,
    /// Bound on the audit log (`audit.sqlite`), in bytes of entry text; the oldest entries
    /// are deleted first.
    #[serde(default = "default_audit_max_bytes")]
    pub audit_max_bytes: u64,
    #[serde(default)]
    pub device: Vec<FieldDeviceConfig>,
}

/// One `[[field.device]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDeviceConfig {
    /// The name commands, rules and topics use (`barrage-cher-1`).
    pub name: Spanned<String>,
    /// A profile name from the profile folders (`needle-dam`).
    pub profile: Spanned<String>,
    /// Modbus unit id (slave address).
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Where it is wired: `{ transport = "tcp", address = "host:port" }` or
    /// `{ transport = "rtu", path, baud_rate, parity, stop_bits }`. Devices
    /// with the same link share one connection, one request at a time.
    pub link: Link,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest wait for one reply.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_profile_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/share/berrygw/profiles"), PathBuf::from("/etc/berrygw/profiles")]
}
fn default_true() -> bool {
    true
}
/// Smallest `audit_max_bytes` accepted.
const MIN_AUDIT_BYTES: u64 = 64 * 1024;

fn default_audit_max_bytes() -> u64 {
    super::audit::DEFAULT_MAX_BYTES
}
fn default_state_interval_secs() -> u64 {
    60
}
fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}

impl FieldSection {
    /// The checks that need no other file: device names, intervals, limits.
    pub fn check(&self, loaded: SourceFile<'_>) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for d in &self.device {
            let name = d.name.get_ref();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(loaded.error_at(
                    d.name.span(),
                    "a device name of 1 to 64 letters, digits, '-', '_' or '.' (it is part of MQTT topics)",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(loaded.error_at(d.name.span(), format!("two field devices are named {name:?}")));
            }
            if d.poll_interval_ms < 100 || d.timeout_ms == 0 {
                return Err(loaded.error_at(
                    d.name.span(),
                    "poll_interval_ms must be at least 100 and timeout_ms at least 1",
                ));
            }
        }
        if self.state_interval_secs == 0 {
            return Err(ConfigError {
                file: loaded.path.to_path_buf(),
                line: None,
                key: Some("field.state_interval_secs".into()),
                message: "must be at least 1".into(),
            });
        }
        if self.audit_max_bytes < MIN_AUDIT_BYTES {
            return Err(ConfigError {
                file: loaded.path.to_path_buf(),
                line: None,
                key: Some("field.audit_max_bytes".into()),
                message: format!("must be at least {MIN_AUDIT_BYTES} (a few dozen entries)"),
            });
        }
        Ok(())
    }

    /// Load the profiles from `profile_dirs` and check that every device's is among them.
    pub fn profiles(&self, loaded: SourceFile<'_>) -> Result<ProfileSet, ConfigError> {
        let dirs: Vec<&Path> = self.profile_dirs.iter().map(PathBuf::as_path).collect();
        let profiles = ProfileSet::load(&dirs)?;
        for d in &self.device {
            if profiles.get(d.profile.get_ref()).is_none() {
                let known: Vec<String> = profiles.names().map(str::to_string).collect();
                return Err(loaded.error_at(
                    d.profile.span(),
                    format!(
                        "no profile {:?} in {} (known: {})",
                        d.profile.get_ref(),
                        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(profiles)
    }

    /// Every command a rule can send names a configured device and a command of its profile
    /// (arguments are checked when it runs, like any command's).
    pub fn check_rules(
        &self,
        rules: &crate::rules::RuleSet,
        profiles: &ProfileSet,
    ) -> Result<(), ConfigError> {
        use crate::rules::Effect;
        for rule in rules.rules() {
            for effect in std::iter::once(&rule.then).chain(rule.on_clear.as_ref()) {
                let Effect::Command { target, command, .. } = effect else { continue };
                let fail = |message: String| ConfigError {
                    file: rules.path().to_path_buf(),
                    line: Some(rule.line),
                    key: Some(format!("rule {:?}", rule.name)),
                    message,
                };
                let device = self
                    .device
                    .iter()
                    .find(|d| d.name.get_ref() == target)
                    .ok_or_else(|| fail(format!("no [[field.device]] named {target:?}")))?;
                let known = profiles
                    .get(device.profile.get_ref())
                    .is_some_and(|p| p.commands.iter().any(|c| &c.name == command));
                if !known {
                    return Err(fail(format!(
                        "profile {:?} of {target:?} has no command {command:?}",
                        device.profile.get_ref()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Start a poller for every device (one bus per distinct link).
    pub fn spawn(&self, profiles: &ProfileSet) -> BTreeMap<String, Arc<FieldDevice>> {
        let mut buses: Vec<(Link, Bus)> = Vec::new();
        let mut devices = BTreeMap::new();
        for d in &self.device {
            // Checked by `check`: the profile exists.
            let Some(profile) = profiles.get(d.profile.get_ref()) else { continue };
            let bus = match buses.iter().find(|(l, _)| *l == d.link) {
                Some((_, bus)) => bus.clone(),
                None => {
                    let mut options = match &d.link {
                        Link::Rtu { baud_rate, .. } => BusOptions::for_rtu(*baud_rate),
                        Link::Tcp { .. } => BusOptions::default(),
                    };
                    options.timeout = Duration::from_millis(d.timeout_ms);
                    let bus = Bus::spawn(d.link.clone(), options);
                    buses.push((d.link.clone(), bus.clone()));
                    bus
                }
            };
            let mut config = DeviceConfig::new(d.name.get_ref().clone(), d.unit_id);
            config.poll_interval = Duration::from_millis(d.poll_interval_ms);
            let device = Device::spawn(profile, bus, config);
            devices.insert(
                d.name.get_ref().clone(),
                Arc::new(FieldDevice {
                    device,
                    link: d.link.to_string(),
                    profile: d.profile.get_ref().clone(),
                }),
            );
        }
        devices
    }
}

/// A polled field device and how it is reached.
#[derive(Debug)]
pub struct FieldDevice {
    pub device: Device,
    /// `tcp://host:port` or `rtu:///dev/ttyUSB0@9600`.
    pub link: String,
    pub profile: String,
}
