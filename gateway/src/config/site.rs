//! The resolved site: the configuration file and every file it names, loaded and
//! checked once: the field profiles (every device's found), the rules (every command
//! they send known to its device's profile), the command signing keys and the device
//! registry. `check-config` and `run` resolve the same way, and start-up uses what was
//! resolved as is: no file is parsed twice. Codecs are compiled where they run, on the decoder thread (a
//! JavaScript context cannot move between threads); `check-config` compiles them once
//! to check them ([`Site::compile_codecs`]). What a running gateway re-reads on reload
//! (registry, codecs, rules, keys) is read again then, by the part that uses it.

use std::path::Path;

use berrygw_core::ConfigError;
use berrygw_modbus::ProfileSet;
use tracing::info;

use super::bundles::{overlay, Store};
use super::{load, LoadedConfig};
use crate::decode::engine::{codec_limits, Codecs};
use crate::decode::registry::Registry;
use crate::rules::RuleSet;
use berrygw_proto::keys::AuthorizedKeys;

/// A configuration with the files it names, loaded and checked.
#[derive(Debug)]
pub struct Site {
    pub loaded: LoadedConfig,
    /// `[field]`: the profiles of its devices.
    pub profiles: Option<ProfileSet>,
    /// `[field] rules`.
    pub rules: Option<RuleSet>,
    /// `[field] authorized_keys`: who may sign central commands.
    pub keys: Option<AuthorizedKeys>,
    /// `[decode] devices`.
    pub registry: Option<Registry>,
}

impl Site {
    /// Read and check the configuration file, then every file it names.
    pub fn load(path: &Path) -> Result<Site, ConfigError> {
        Site::resolve(load(path)?)
    }

    /// Load and check the files a checked configuration names: with `[bundles]`, those of
    /// the version in force (`crate::bundle::store`) once there is one.
    pub fn resolve(mut loaded: LoadedConfig) -> Result<Site, ConfigError> {
        if loaded.config.bundles.is_some() {
            let store = Store::new(&loaded.config.gateway.state_dir);
            if let Ok(Some(_)) = store.in_force() {
                overlay(&mut loaded.config, &store.current());
            }
        }
        Site::resolve_as_is(loaded)
    }

    /// Load and check the files the configuration names, where it names them.
    pub fn resolve_as_is(loaded: LoadedConfig) -> Result<Site, ConfigError> {
        let c = &loaded.config;
        let (mut profiles, mut rules, mut keys) = (None, None, None);
        if let Some(field) = &c.field {
            let set = field.profiles(loaded.file())?;
            if let Some(path) = &field.rules {
                let rule_set = RuleSet::load(path.get_ref())?;
                field.check_rules(&rule_set, &set)?;
                info!(rules = rule_set.rules().len(), path = %path.get_ref().display(), "rules loaded");
                rules = Some(rule_set);
            }
            if let Some(path) = &field.authorized_keys {
                keys = Some(AuthorizedKeys::load(path.get_ref())?);
            }
            profiles = Some(set);
        }
        let registry = match &c.decode {
            Some(d) => Some(Registry::load(d.devices.get_ref(), &d.codec_dirs)?),
            None => None,
        };
        Ok(Site { loaded, profiles, rules, keys, registry })
    }

    /// Compile every codec the registry names, as the decoder will (`check-config`):
    /// the number of devices in the registry, if there is one.
    pub fn compile_codecs(&self) -> Result<Option<usize>, ConfigError> {
        let (Some(registry), Some(d)) = (&self.registry, &self.loaded.config.decode) else {
            return Ok(None);
        };
        Codecs::build(registry, &codec_limits(d.codec_time_limit_ms, d.codec_memory_limit_kib))?;
        Ok(Some(registry.devices().len()))
    }
}
