//! The gateway's configuration file (`/etc/berrygw/berrygw.toml`): its shape,
//! its defaults, and the checks that make the daemon refuse to start rather
//! than guess. Every error names the file, the line and the key.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere); values that need the
//! file system (certificate paths) are checked here too, so `check-config`
//! and `run` reject exactly the same files.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::decode::DecodeSection;
pub use crate::status::http::{ApiSection, HttpSection, DEFAULT_API_SOCKET};
use berrygw_core::locate;
pub use berrygw_core::{read_file, ConfigError};
use berrygw_lora::filter::FilterConfig;
use berrygw_lora::gwmp::GwmpConfig;
use berrygw_lora::phy::Eui64;
use berrygw_lora::sim::SimConfig;
use berrygw_sx1302::{ConcentratorSetup, Sx1302Config};
use serde::Deserialize;
use toml::Spanned;

use crate::journal::Backend;
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

/// `[journal]`: the durable queue in front of every sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// Upper bound of each sink's journal; the oldest records are evicted past it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Group commit window: appends within it share one durable write.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// The window while a sink's far side is disconnected (records cannot leave soon).
    #[serde(default = "default_outage_commit_interval_ms")]
    pub outage_commit_interval_ms: u64,
    /// The RAM stage (a tmpfs directory): records are there before they are accepted, so a
    /// crash of berrygw loses none. Empty: no stage.
    #[serde(default = "default_stage_dir")]
    pub stage_dir: PathBuf,
    /// Group commit size: a batch this large is written without waiting.
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: usize,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            backend: default_backend(),
            max_bytes: default_max_bytes(),
            commit_interval_ms: default_commit_interval_ms(),
            outage_commit_interval_ms: default_outage_commit_interval_ms(),
            stage_dir: default_stage_dir(),
            commit_max_records: default_commit_max_records(),
        }
    }
}

impl JournalSection {
    /// Group commit window as a duration.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// The commit window while no far side is connected.
    pub fn outage_commit_interval(&self) -> Duration {
        Duration::from_millis(self.outage_commit_interval_ms)
    }

    /// The RAM stage's directory, if there is one.
    pub fn stage_dir(&self) -> Option<PathBuf> {
        (!self.stage_dir.as_os_str().is_empty()).then(|| self.stage_dir.clone())
    }
}

/// `[sinks]`: where records go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// `[sinks.chirpstack]`: MQTT to a ChirpStack v4 network server (every uplink).
    pub chirpstack: Option<MqttSinkConfig>,
    /// `[sinks.semtech_udp]`: GWMP to any network server.
    pub semtech_udp: Option<SemtechUdpSinkConfig>,
    /// `[sinks.app]`: MQTT to the data platform (decoded readings as JSON).
    pub app: Option<MqttSinkConfig>,
}

/// A loaded, checked configuration and where it came from.
#[derive(Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub source: String,
    pub config: Config,
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
/// password) must not be readable by others, nor may a TLS private key it names.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let loaded = parse(path, read_file(path, 0, |_| String::new())?)?;
    let c = &loaded.config;
    let sinks = [&c.sinks.chirpstack, &c.sinks.app];
    if sinks.iter().copied().flatten().any(|s| s.password.is_some()) {
        read_file(path, SECRET_FORBIDDEN_MODE, |mode| {
            secret_mode_message(path, "holds an MQTT password", mode)
        })?;
    }
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
    let loaded = LoadedConfig { path: path.to_path_buf(), source, config };
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
    if c.journal.max_bytes < 4096 {
        return Err(whole("journal.max_bytes must be at least 4096".into()));
    }
    if c.journal.outage_commit_interval_ms > 60_000 {
        return Err(whole(
            "journal.outage_commit_interval_ms must be at most 60000: a power cut during an outage loses up to this window".into(),
        ));
    }
    if c.journal.commit_max_records == 0 || c.journal.commit_interval_ms == 0 {
        return Err(whole(
            "journal.commit_interval_ms and journal.commit_max_records must be at least 1".into(),
        ));
    }
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
    if c.sinks.chirpstack.is_none() && c.sinks.semtech_udp.is_none() {
        return Err(whole(
            "no network server sink configured: add [sinks.chirpstack] and/or [sinks.semtech_udp]".into(),
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
fn default_backend() -> Backend {
    Backend::Log
}
fn default_outage_commit_interval_ms() -> u64 {
    // At 10 uplinks/s a 1 s window writes ~615 bytes per uplink (each commit re-dirties
    // the segment's last 4 KiB page); 1.5 s keeps it under 500 (BENCHMARKS.md "Field rates").
    1500
}
fn default_stage_dir() -> PathBuf {
    // systemd's RuntimeDirectory=berrygw (kept across restarts by RuntimeDirectoryPreserve=).
    PathBuf::from("/run/berrygw/journal")
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_commit_interval_ms() -> u64 {
    100
}
fn default_commit_max_records() -> usize {
    1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
id = "0016c001ff10a235"

[radio]
kind = "sim"
[radio.sim]
devices = []

[sinks.chirpstack]
server = "mqtt://127.0.0.1:1883"
"#;

    fn parse_str(text: &str) -> Result<LoadedConfig, ConfigError> {
        parse(Path::new("berrygw.toml"), text.to_string())
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse_str(MINIMAL).expect("minimal config parses").config;
        assert_eq!(c.journal.backend, Backend::Log);
        assert_eq!(c.journal.max_bytes, 256 * 1024 * 1024);
        let cs = c.sinks.chirpstack.expect("sink");
        assert_eq!(cs.topic_prefix(MqttSinkKind::Chirpstack), "eu868");
        assert_eq!(cs.format(), PayloadFormat::Protobuf);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9101", "loopback unless asked");
        assert_eq!(c.api.socket, Path::new("/run/berrygw/api.sock"));
    }

    #[test]
    fn a_retired_backend_and_an_outage_window_past_a_minute_are_refused() {
        let sled =
            MINIMAL.replace("[sinks.chirpstack]", "[journal]\nbackend = \"sled\"\n\n[sinks.chirpstack]");
        let err = parse_str(&sled).expect_err("sled was retired");
        assert!(err.message.contains("sled") && err.message.contains("`log`"), "{err}");
        let long = MINIMAL.replace(
            "[sinks.chirpstack]",
            "[journal]\noutage_commit_interval_ms = 60001\n\n[sinks.chirpstack]",
        );
        let err = parse_str(&long).expect_err("window too long");
        assert!(err.message.contains("outage_commit_interval_ms must be at most 60000"), "{err}");
        let off = MINIMAL.replace("[sinks.chirpstack]", "[journal]\nstage_dir = \"\"\n\n[sinks.chirpstack]");
        assert_eq!(parse_str(&off).expect("no stage").config.journal.stage_dir(), None);
    }

    /// MINIMAL with a `[field]` section over the shipped profiles, then `extra`.
    fn with_field(devices: &str, extra: &str) -> String {
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/profiles");
        format!("{MINIMAL}\n[field]\nprofile_dirs = [\"{}\"]\n{extra}\n{devices}", profiles.display())
    }

    const DAM: &str = "[[field.device]]\nname = \"barrage-cher-1\"\nprofile = \"needle-dam\"\n\
                       link = { transport = \"tcp\", address = \"127.0.0.1:502\" }\n";

    fn write_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_config_holding_a_password_must_not_be_readable_by_others() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("berrygw.toml");
        let with_password = MINIMAL.replace("server = ", "password = \"s3cret\"\nserver = ");
        write_mode(&path, &with_password, 0o644);
        let err = load(&path).expect_err("world-readable password");
        assert!(err.message.contains("holds an MQTT password"), "{err}");
        assert!(err.message.contains(&format!("chmod 0640 {}", path.display())), "{err}");
        for mode in [0o640, 0o600] {
            write_mode(&path, &with_password, mode);
            load(&path).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
        write_mode(&path, MINIMAL, 0o644);
        load(&path).expect("no secret, any mode");
    }

    #[test]
    fn a_tls_private_key_must_not_be_readable_by_others() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        write_mode(&cert, "cert", 0o644);
        write_mode(&key, "key", 0o644);
        let path = dir.path().join("berrygw.toml");
        let text = MINIMAL.replace(
            "server = \"mqtt://127.0.0.1:1883\"",
            &format!(
                "server = \"mqtts://127.0.0.1:8883\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                cert.display(),
                key.display()
            ),
        );
        write_mode(&path, &text, 0o644);
        let err = load(&path).expect_err("world-readable key");
        assert_eq!(err.key.as_deref(), Some("sinks.chirpstack.client_key_file"), "{err}");
        assert!(err.message.contains(&format!("chmod 0640 {}", key.display())), "{err}");
        write_mode(&key, "key", 0o600);
        load(&path).expect("a private key");
    }

    #[test]
    fn field_devices_are_checked_against_their_profiles() {
        parse_str(&with_field(DAM, "")).expect("a dam on the shipped profile");
        let cases = [
            (DAM.replace("needle-dam", "nedle-dam"), "field.device.profile", "no profile"),
            (DAM.replace("barrage-cher-1", "barrage/1"), "field.device.name", "letters, digits"),
            (format!("{DAM}\n{DAM}"), "field.device.name", "two field devices"),
            (
                DAM.replace("transport = \"tcp\"", "transport = \"carrier-pigeon\""),
                "field.device.link",
                "unknown variant",
            ),
        ];
        for (devices, key, says) in cases {
            let err = parse_str(&with_field(&devices, "")).expect_err(key);
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert!(err.message.contains(says), "{err}");
        }
        let err = parse_str(&with_field(&DAM.replace("link", "poll_interval_ms = 10\nlink"), ""))
            .expect_err("poll");
        assert!(err.message.contains("poll_interval_ms"), "{err}");
        let err = parse_str(&with_field(DAM, "state_interval_secs = 0")).expect_err("interval");
        assert_eq!(err.key.as_deref(), Some("field.state_interval_secs"), "{err}");
        let keys = tempfile::NamedTempFile::new().expect("tmp");
        let err = parse_str(&with_field(DAM, &format!("authorized_keys = \"{}\"", keys.path().display())))
            .expect_err("commands need the app sink");
        assert!(err.message.contains("[sinks.app]"), "{err}");
    }

    #[test]
    fn rule_commands_must_name_a_device_and_a_command_of_its_profile() {
        let rules = tempfile::NamedTempFile::new().expect("tmp");
        let text = |target: &str, command: &str| {
            format!(
                "[[rule]]\nname = \"r\"\nwhen = {{ target = \"barrage-cher-1\", point = \"motor_fault\", equals = true }}\n\
                 then = {{ command = \"{command}\", target = \"{target}\" }}\n"
            )
        };
        let config = with_field(DAM, &format!("rules = \"{}\"", rules.path().display()));
        std::fs::write(rules.path(), text("barrage-cher-1", "stop_bay1")).expect("rules");
        parse_str(&config).expect("a known command");
        for (target, command, says) in [
            ("barrage-cher-2", "stop_bay1", "no [[field.device]]"),
            ("barrage-cher-1", "open_sesame", "has no command"),
        ] {
            std::fs::write(rules.path(), text(target, command)).expect("rules");
            let err = parse_str(&config).expect_err(command);
            assert_eq!((err.file.as_path(), err.line), (rules.path(), Some(2)), "{err}");
            assert!(err.message.contains(says), "{err}");
        }
    }

    #[test]
    fn decode_limits_must_leave_codecs_room_to_run() {
        for limits in ["codec_time_limit_ms = 0", "codec_memory_limit_kib = 16"] {
            let text = format!("{MINIMAL}\n[decode]\ndevices = \"/etc/berrygw/devices.toml\"\n{limits}\n");
            let err = parse_str(&text).expect_err(limits);
            assert!(err.message.contains("decode.codec_time_limit_ms"), "{err}");
        }
    }

    #[test]
    fn app_sink_refuses_chirpstack_keys_and_unauthenticated_session_push() {
        let text = format!("{MINIMAL}\n[sinks.app]\nserver = \"mqtt://127.0.0.1:1884\"\nformat = \"json\"\n");
        let err = parse_str(&text).expect_err("format is a ChirpStack key");
        assert_eq!(err.key.as_deref(), Some("sinks.app.format"), "{err}");
        for value in ["true", "false"] {
            let text = format!(
                "{MINIMAL}\n[sinks.app]\nserver = \"mqtts://127.0.0.1:1884\"\nclient_cert_file = \"/c.pem\"\n\
                 client_key_file = \"/c.key\"\naccept_session_push = {value}\n"
            );
            let err = parse_str(&text).expect_err("unsigned session push, even over mutual TLS");
            assert_eq!(err.key.as_deref(), Some("sinks.app.accept_session_push"), "{err}");
            assert!(err.message.contains("removed") && err.message.contains("set_session"), "{err}");
        }
        let text = format!("{MINIMAL}\n[sinks.app]\nserver = \"mqtt://127.0.0.1:1884\"\n");
        let c = parse_str(&text).expect("plain app sink on loopback").config;
        assert_eq!(c.sinks.app.expect("app").topic_prefix(MqttSinkKind::App), "berrygw");
    }

    #[test]
    fn bad_http_listen_address_names_the_key() {
        let text = format!("{MINIMAL}\n[http]\nlisten = \"localhost\"\n");
        let err = parse_str(&text).expect_err("address without port refused");
        assert_eq!(err.key.as_deref(), Some("http.listen"), "{err}");
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_key() {
        let text = MINIMAL.replace("[radio]", "[radio]\nfrobnicate = 3");
        let err = parse_str(&text).expect_err("unknown key refused");
        assert_eq!(err.line, Some(6), "{err}");
        assert_eq!(err.key.as_deref(), Some("radio.frobnicate"), "{err}");
        assert!(err.message.contains("frobnicate"), "{err}");
        assert!(err.to_string().starts_with("berrygw.toml:6: key `radio.frobnicate`"), "{err}");
    }

    #[test]
    fn bad_gateway_id_names_the_key() {
        let text = MINIMAL.replace("0016c001ff10a235", "00zz");
        let err = parse_str(&text).expect_err("bad id refused");
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("gateway.id"));
    }

    #[test]
    fn plaintext_to_remote_host_is_refused_unless_allowed() {
        let text = MINIMAL.replace("127.0.0.1", "broker.example.org");
        let err = parse_str(&text).expect_err("plaintext refused");
        assert_eq!(err.key.as_deref(), Some("sinks.chirpstack.server"));
        assert!(err.message.contains("allow_plaintext"), "{err}");
        let allowed = format!("{text}allow_plaintext = true\n");
        parse_str(&allowed).expect("explicitly allowed");
    }

    #[test]
    fn missing_certificate_file_is_reported_with_its_line() {
        let text = MINIMAL.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
            + "ca_file = \"/nonexistent/ca.pem\"\n";
        let err = parse_str(&text).expect_err("missing CA refused");
        assert_eq!(err.key.as_deref(), Some("sinks.chirpstack.ca_file"));
        assert!(err.message.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn client_cert_without_key_is_refused() {
        let text = MINIMAL.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
            + "client_cert_file = \"/etc/hostname\"\n";
        let err = parse_str(&text).expect_err("cert without key");
        assert!(err.message.contains("client_key_file"), "{err}");
    }

    #[test]
    fn broker_urls_parse() {
        let u: BrokerUrl = "mqtts://gw.example.org".parse().expect("url");
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "gw.example.org", 8883));
        let u: BrokerUrl = "tcp://[::1]:1884".parse().expect("url");
        assert!(u.is_loopback() && !u.tls && u.port == 1884);
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtt://x:99999".parse::<BrokerUrl>().is_err());
        assert!("broker:1883".parse::<BrokerUrl>().is_err());
    }

    #[test]
    fn missing_sink_is_refused() {
        let text = MINIMAL.replace("[sinks.chirpstack]\nserver = \"mqtt://127.0.0.1:1883\"", "[sinks]");
        let err = parse_str(&text).expect_err("no sink");
        assert!(err.message.contains("no network server sink"), "{err}");
    }
}
