//! The gateway's configuration file (`/etc/berrygw/berrygw.toml`): its shape,
//! its defaults, and the checks that make the daemon refuse to start rather
//! than guess. Every error names the file, the line and the key.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere); values that need the
//! file system (certificate paths) are checked here too, so `check-config`
//! and `run` reject exactly the same files. Each part owns its section (the
//! journal's, the sinks', `decode`'s, `actuation::field`'s, `api`'s); this module
//! assembles them, and [`site`] loads the files they name into a resolved [`Site`].

pub mod bundles;
mod site;
#[cfg(test)]
mod tests;

pub use site::Site;

use std::ops::Range;
use std::path::{Path, PathBuf};

pub use crate::api::{ApiSection, HttpSection, DEFAULT_API_SOCKET};
pub use crate::decode::DecodeSection;
use berrygw_core::locate;
pub use berrygw_core::{read_file, ConfigError};
use berrygw_lora::filter::FilterConfig;
use berrygw_lora::gwmp::GwmpConfig;
use berrygw_lora::phy::Eui64;
use berrygw_lora::sim::SimConfig;
use berrygw_sx1302::{ConcentratorSetup, Sx1302Config};
use serde::Deserialize;
use toml::Spanned;

use crate::journal::{Backend, JournalSection};
use crate::sink::basic_station::BasicStationSinkConfig;
pub use crate::sink::chirpstack::PayloadFormat;
pub use crate::sink::mqtt::{BrokerUrl, MqttSinkConfig, MqttSinkKind};
use crate::sink::semtech_udp::SemtechUdpSinkConfig;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub radio: RadioConfig,
    #[serde(default)]
    pub filters: FilterConfig,
    #[serde(default)]
    pub journal: JournalSection,
    pub sinks: SinksConfig,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub api: ApiSection,
    /// `[decode]`: local decoding; off when absent.
    pub decode: Option<DecodeSection>,
    /// `[field]`: Modbus field equipment, central commands, rules; off when absent.
    pub field: Option<crate::actuation::field::FieldSection>,
    /// `[bundles]`: signed configuration bundles from the centre; off when absent.
    pub bundles: Option<bundles::BundleSection>,
    /// `[ledger]`: the availability ledger; on unless `enabled = false`.
    #[serde(default)]
    pub ledger: crate::ledger::LedgerSection,
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway EUI, 16 hex digits; names the MQTT topics.
    pub id: Eui64,
    /// Journal, sequence counter and other durable state live here.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often gateway statistics are sent to the network server.
    #[serde(default = "default_stats_interval_secs")]
    pub stats_interval_secs: u64,
    /// How often the daemon logs a one-line summary (received, queued, forwarded).
    #[serde(default = "default_report_interval_secs")]
    pub report_interval_secs: u64,
}

/// `[radio]`: which radio source feeds the pipeline, and its settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadioConfig {
    pub kind: Spanned<RadioKind>,
    /// `[radio.sim]`, used when `kind = "sim"`.
    pub sim: Option<SimConfig>,
    /// `[radio.gwmp]`, used when `kind = "gwmp"` (defaults apply when absent).
    pub gwmp: Option<GwmpConfig>,
    /// `[radio.sx1302]`, used when `kind = "sx1302"`.
    pub sx1302: Option<Sx1302Config>,
}

/// The radio sources berrygw can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RadioKind {
    /// Simulated radio playing virtual devices (no hardware).
    Sim,
    /// A local packet forwarder sending Semtech UDP (GWMP) to berrygw.
    Gwmp,
    /// An SX1302/SX1303 concentrator on SPI, driven through libloragw.
    Sx1302,
}

/// `[sinks]`: where records go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// `[sinks.chirpstack]`: MQTT to a ChirpStack v4 network server (every uplink).
    pub chirpstack: Option<MqttSinkConfig>,
    /// `[sinks.semtech_udp]`: GWMP to any network server.
    pub semtech_udp: Option<SemtechUdpSinkConfig>,
    /// `[sinks.basic_station]`: LoRa Basics Station's LNS protocol (TTS, AWS, ThingPark…).
    pub basic_station: Option<BasicStationSinkConfig>,
    /// `[sinks.app]`: MQTT to the data platform (decoded readings as JSON).
    pub app: Option<MqttSinkConfig>,
}

/// A loaded, checked configuration and where it came from.
#[derive(Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub source: String,
    pub config: Config,
    /// The file's own text when `source` is it merged with a bundle's settings.
    pub base_source: Option<String>,
}

impl LoadedConfig {
    /// This file's path and text, for locating errors in it.
    pub fn file(&self) -> berrygw_core::SourceFile<'_> {
        berrygw_core::SourceFile { path: &self.path, text: &self.source }
    }

    /// Build a `ConfigError` pointing at `span` in this file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        locate(&self.path, &self.source, Some(span), message.into())
    }

    /// Path of the directory holding the journal of sink `name`.
    pub fn journal_path(&self, sink: &str) -> PathBuf {
        let ext = match self.config.journal.backend {
            Backend::Log => "log",
            Backend::Sqlite => "sqlite",
        };
        self.config.gateway.state_dir.join("journal").join(format!("{sink}.{ext}"))
    }
}

/// Mode bits a file holding a secret must not have: readable, writable or executable
/// by others. Its group may read it (0640), as the package installs it `root:berrygw`.
pub const SECRET_FORBIDDEN_MODE: u32 = 0o007;

/// Read, parse and check a configuration file. A file holding a secret (an MQTT
/// password) must not be readable by others, nor may a TLS private key it names. With
/// `[bundles]`, the sections a bundle in force sets (its `berrygw.toml`) replace the
/// file's own ([`merged`]).
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let base = parse(path, read_file(path, 0, |_| String::new())?)?;
    let c = &base.config;
    let sinks = [&c.sinks.chirpstack, &c.sinks.app];
    if sinks.iter().copied().flatten().any(|s| s.password.is_some()) {
        read_file(path, SECRET_FORBIDDEN_MODE, |mode| {
            secret_mode_message(path, "holds an MQTT password", mode)
        })?;
    }
    let loaded = match bundles::settings_in_force(&base.config) {
        Some(settings) => {
            let text = std::fs::read_to_string(&settings)
                .map_err(|e| ConfigError::whole(&settings, format!("cannot read: {e}")))?;
            merged(path, base.source, &settings, &text)?
        }
        None => base,
    };
    let c = &loaded.config;
    let sinks = [&c.sinks.chirpstack, &c.sinks.app];
    for key in sinks.iter().copied().flatten().filter_map(|s| s.client_key_file.as_ref()) {
        let key_path = key.get_ref();
        let mode = file_mode(key_path)
            .map_err(|e| loaded.error_at(key.span(), format!("cannot read {}: {e}", key_path.display())))?;
        if mode & SECRET_FORBIDDEN_MODE != 0 {
            return Err(
                loaded.error_at(key.span(), secret_mode_message(key_path, "is a TLS private key", mode))
            );
        }
    }
    for (name, key) in c.sinks.basic_station.as_ref().map(|s| s.key_files()).unwrap_or_default() {
        let mode = file_mode(&key).map_err(|e| ConfigError::whole(&key, format!("cannot read: {e}")))?;
        if mode & SECRET_FORBIDDEN_MODE != 0 {
            return Err(ConfigError {
                file: loaded.path.clone(),
                line: None,
                key: Some(name.into()),
                message: secret_mode_message(&key, "is a private key or token (tc.key, cups.key)", mode),
            });
        }
    }
    Ok(loaded)
}

/// The configuration `base` (the text of `path`) with the sections `settings` (a bundle's
/// `berrygw.toml`, at `settings_path`) sets put in place of its own (`[filters]` whole,
/// each `[sinks.<name>]` it names), parsed and checked.
/// Errors name the bundle's file and the merged text's lines.
pub fn merged(
    path: &Path,
    base: String,
    settings_path: &Path,
    settings: &str,
) -> Result<LoadedConfig, ConfigError> {
    let over =
        berrygw_proto::site::check_settings(settings).map_err(|m| ConfigError::whole(settings_path, m))?;
    let mut table: toml::Table =
        toml::from_str(&base).map_err(|e| locate(path, &base, e.span(), e.message().to_string()))?;
    for (section, value) in over {
        // Each sink a bundle names replaces the local one; the others stay.
        match (section.as_str(), value, table.get_mut("sinks")) {
            ("sinks", toml::Value::Table(sinks), Some(toml::Value::Table(local))) => local.extend(sinks),
            (_, value, _) => {
                table.insert(section, value);
            }
        }
    }
    let text = toml::to_string(&table).map_err(|e| ConfigError::whole(settings_path, e.to_string()))?;
    let label = PathBuf::from(format!("{} with {}", path.display(), settings_path.display()));
    let mut loaded = parse(&label, text)?;
    loaded.path = path.to_path_buf();
    loaded.base_source = Some(base);
    Ok(loaded)
}

fn file_mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Why a file of secrets is refused, and the command that fixes it.
fn secret_mode_message(path: &Path, what: &str, mode: u32) -> String {
    format!(
        "{} {what} and is readable by every user on this machine (mode {mode:04o}); \
         run: chmod 0640 {} (or 0600), owned by root:berrygw",
        path.display(),
        path.display()
    )
}

/// Parse and check configuration text; `path` is only used in messages.
pub fn parse(path: &Path, source: String) -> Result<LoadedConfig, ConfigError> {
    let config: Config =
        toml::from_str(&source).map_err(|e| locate(path, &source, e.span(), e.message().to_string()))?;
    let loaded = LoadedConfig { path: path.to_path_buf(), source, config, base_source: None };
    check(&loaded)?;
    Ok(loaded)
}

/// Checks that serde cannot express: ranges, combinations, files that must exist.
fn check(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let c = &loaded.config;
    let whole = |message: String| ConfigError::whole(&loaded.path, message);
    if c.gateway.stats_interval_secs == 0 || c.gateway.report_interval_secs == 0 {
        return Err(whole(
            "gateway.stats_interval_secs and gateway.report_interval_secs must be at least 1".into(),
        ));
    }
    c.journal.check().map_err(whole)?;
    c.ledger.check().map_err(whole)?;
    match c.radio.kind.get_ref() {
        RadioKind::Sim if c.radio.sim.is_none() => {
            return Err(loaded.error_at(
                c.radio.kind.span(),
                "kind = \"sim\" needs a [radio.sim] section with its devices",
            ))
        }
        RadioKind::Sx1302 => match &c.radio.sx1302 {
            None => {
                return Err(loaded.error_at(
                    c.radio.kind.span(),
                    "kind = \"sx1302\" needs a [radio.sx1302] section (at least `board`)",
                ))
            }
            Some(_) if !cfg!(any(feature = "sx1302", feature = "hal-double")) => {
                return Err(loaded.error_at(
                    c.radio.kind.span(),
                    "this berrygw was built without the sx1302 feature; install a build with it \
                     (cargo build --features sx1302 with SX1302_HAL_DIR set) or use kind = \"gwmp\"",
                ))
            }
            Some(sx) => {
                ConcentratorSetup::resolve(sx).map_err(|e| ConfigError {
                    file: loaded.path.clone(),
                    line: None,
                    key: Some("radio.sx1302".into()),
                    message: e.to_string(),
                })?;
            }
        },
        RadioKind::Sim | RadioKind::Gwmp => {}
    }
    if let Some(udp) = &c.sinks.semtech_udp {
        udp.check().map_err(|message| ConfigError {
            file: loaded.path.clone(),
            line: None,
            key: Some("sinks.semtech_udp".into()),
            message,
        })?;
    }
    if let Some(station) = &c.sinks.basic_station {
        station.check().map_err(|message| ConfigError {
            file: loaded.path.clone(),
            line: None,
            key: Some("sinks.basic_station".into()),
            message,
        })?;
    }
    if c.sinks.chirpstack.is_none() && c.sinks.semtech_udp.is_none() && c.sinks.basic_station.is_none() {
        return Err(whole(
            "no network server sink configured: add [sinks.chirpstack], [sinks.semtech_udp] or \
             [sinks.basic_station]"
                .into(),
        ));
    }
    for (kind, sink) in [(MqttSinkKind::Chirpstack, &c.sinks.chirpstack), (MqttSinkKind::App, &c.sinks.app)] {
        if let Some(sink) = sink {
            sink.check(kind, loaded.file())?;
        }
    }
    if let Some(field) = &c.field {
        field.check(loaded.file())?;
        if field.authorized_keys.is_some() && c.sinks.app.is_none() {
            return Err(whole(
                "field.authorized_keys: central commands come over the app sink; add [sinks.app]".into(),
            ));
        }
    }
    if let Some(bundles) = &c.bundles {
        bundles.check(c).map_err(whole)?;
    }
    for operator in &c.api.operators {
        operator.check().map_err(whole)?;
    }
    if let Some(decode) = &c.decode {
        if decode.codec_time_limit_ms == 0 || decode.codec_memory_limit_kib < 256 {
            return Err(whole(
                "decode.codec_time_limit_ms must be at least 1 and decode.codec_memory_limit_kib at least 256"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/berrygw")
}
fn default_stats_interval_secs() -> u64 {
    30
}
fn default_report_interval_secs() -> u64 {
    60
}
