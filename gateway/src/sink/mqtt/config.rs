//! `[sinks.chirpstack]` and `[sinks.app]`: the broker address, the keys, their
//! defaults and checks, and the settings a running sink is given.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::events::AppTopics;
use crate::sink::chirpstack::{PayloadFormat, Topics};
use crate::sink::pace::PaceSettings;
use serde::Deserialize;

use std::path::{Path, PathBuf};

use berrygw_core::{ConfigError, SourceFile};
use toml::Spanned;

use super::Protocol;
use crate::sink::pace::{DEFAULT_REPLAY_GAP_MS, DEFAULT_REPLAY_RATE};
pub use berrygw_proto::broker::BrokerUrl;
use berrygw_proto::tls::{self, TlsFiles};

/// Everything a sink needs, resolved from configuration.
pub struct MqttSinkSettings {
    /// `chirpstack` or `app`, in logs.
    pub name: &'static str,
    pub protocol: Protocol,
    pub server: BrokerUrl,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub allow_plaintext: bool,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub gateway_id: String,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How fast a backlog leaves (ChirpStack: per device, so that the server takes all of it).
    pub pace: PaceSettings,
}

/// Which MQTT sink a `MqttSinkConfig` configures; decides defaults and which keys apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttSinkKind {
    Chirpstack,
    App,
}

impl MqttSinkKind {
    /// The sink's name in configuration, logs, metrics and journal files.
    pub fn name(self) -> &'static str {
        match self {
            MqttSinkKind::Chirpstack => "chirpstack",
            MqttSinkKind::App => "app",
        }
    }
}

/// `[sinks.chirpstack]` and `[sinks.app]`: one MQTT connection each.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// `mqtts://host:port` (TLS) or `mqtt://host:port` (plaintext).
    pub server: Spanned<BrokerUrl>,
    /// Topic prefix: the region name for ChirpStack (`eu868`), `berrygw` for the app sink.
    pub topic_prefix: Option<String>,
    /// ChirpStack only: message encoding (`protobuf` or `json`).
    pub format: Option<Spanned<PayloadFormat>>,
    /// MQTT client id; defaults to `berrygw-<gateway id>` (`berrygw-<gateway id>-app` for the app sink).
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA bundle (PEM) the server certificate must chain to; system roots when absent.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub client_cert_file: Option<Spanned<PathBuf>>,
    /// Client private key (PEM) for mutual TLS.
    pub client_key_file: Option<Spanned<PathBuf>>,
    /// Allow `mqtt://` to a non-loopback host. Credentials and data then cross the network in clear.
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Publishes awaiting PUBACK at once.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// First reconnect delay; doubles up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Removed (it accepted unsigned session keys): read only to refuse it with a message
    /// that says what to do instead.
    pub accept_session_push: Option<Spanned<bool>>,
    /// ChirpStack only: least time between two uplinks of one device when a backlog leaves
    /// (0: no per-device pacing). See `sink::pace`.
    pub replay_gap_ms: Option<Spanned<u64>>,
    /// ChirpStack only: most uplinks per second when a backlog leaves (0: no limit).
    pub replay_rate: Option<Spanned<u32>>,
}

impl MqttSinkConfig {
    /// The topic prefix, with the sink's default.
    pub fn topic_prefix(&self, kind: MqttSinkKind) -> &str {
        match (&self.topic_prefix, kind) {
            (Some(p), _) => p,
            (None, MqttSinkKind::Chirpstack) => "eu868",
            (None, MqttSinkKind::App) => "berrygw",
        }
    }

    /// How a backlog leaves: ChirpStack's defaults let a network server take every
    /// replayed uplink (BENCHMARKS.md, "Replay"); the app sink is not paced.
    pub fn pace(&self, kind: MqttSinkKind) -> PaceSettings {
        match kind {
            MqttSinkKind::Chirpstack => PaceSettings {
                device_gap: Duration::from_millis(
                    self.replay_gap_ms.as_ref().map_or(DEFAULT_REPLAY_GAP_MS, |g| *g.get_ref()),
                ),
                rate: self.replay_rate.as_ref().map_or(DEFAULT_REPLAY_RATE, |r| *r.get_ref()),
            },
            MqttSinkKind::App => PaceSettings::OFF,
        }
    }

    /// ChirpStack message encoding (protobuf unless configured).
    pub fn format(&self) -> PayloadFormat {
        self.format.as_ref().map(|f| *f.get_ref()).unwrap_or_default()
    }

    /// The checks every MQTT sink passes: transport, windows, certificate files, keys of the other kind.
    pub fn check(&self, kind: MqttSinkKind, loaded: SourceFile<'_>) -> Result<(), ConfigError> {
        let cs = self;
        let name = kind.name();
        let whole = |message: String| ConfigError::whole(loaded.path, message);
        let server = cs.server.get_ref();
        if !server.tls && !server.is_loopback() && !cs.allow_plaintext {
            return Err(loaded.error_at(
                cs.server.span(),
                format!(
                    "plaintext MQTT to {} would send data and credentials in clear; use mqtts:// or set allow_plaintext = true",
                    server.host
                ),
            ));
        }
        match kind {
            MqttSinkKind::App => {
                if let Some(f) = &cs.format {
                    return Err(
                        loaded.error_at(f.span(), "the app sink always publishes JSON; remove `format`")
                    );
                }
                let pace_span = cs
                    .replay_gap_ms
                    .as_ref()
                    .map(Spanned::span)
                    .or(cs.replay_rate.as_ref().map(Spanned::span));
                if let Some(span) = pace_span {
                    return Err(loaded.error_at(
                        span,
                        "replay_gap_ms and replay_rate pace uplinks to a network server: they belong in [sinks.chirpstack]",
                    ));
                }
                if let Some(push) = &cs.accept_session_push {
                    return Err(loaded.error_at(
                        push.span(),
                        "accept_session_push was removed: unsigned session keys could be installed by \
                         anyone able to publish on the broker. Delete this line and have the network \
                         server send signed `set_session` envelopes instead (a key in [field] \
                         authorized_keys whose scope allows set_session on those DevEUIs)",
                    ));
                }
            }
            MqttSinkKind::Chirpstack => {
                if let Some(gap) = cs.replay_gap_ms.as_ref().filter(|g| *g.get_ref() > 60_000) {
                    return Err(
                        loaded.error_at(gap.span(), "replay_gap_ms is at most 60000 (one minute per device)")
                    );
                }
                if let Some(push) = &cs.accept_session_push {
                    return Err(loaded.error_at(
                        push.span(),
                        "accept_session_push belongs in [sinks.app]; the network server does not push keys",
                    ));
                }
            }
        }
        if cs.max_inflight == 0 {
            return Err(whole(format!("sinks.{name}.max_inflight must be at least 1")));
        }
        if cs.reconnect_min_ms == 0 || cs.reconnect_max_ms < cs.reconnect_min_ms {
            return Err(whole(format!("sinks.{name}.reconnect_min_ms must be ≥ 1 and ≤ reconnect_max_ms")));
        }
        if cs.client_cert_file.is_some() != cs.client_key_file.is_some() {
            return Err(whole(format!(
                "sinks.{name}: client_cert_file and client_key_file go together (mutual TLS needs both)"
            )));
        }
        for file in [&cs.ca_file, &cs.client_cert_file, &cs.client_key_file].into_iter().flatten() {
            if let Err(e) = std::fs::metadata(file.get_ref()) {
                return Err(
                    loaded.error_at(file.span(), format!("cannot read {}: {e}", file.get_ref().display()))
                );
            }
            if !server.tls {
                return Err(loaded.error_at(file.span(), "certificate files need an mqtts:// server"));
            }
        }
        Ok(())
    }

    /// The settings of a running sink of gateway `gateway_id`, with its TLS set up
    /// (`file` names the configuration in errors).
    pub fn settings(
        &self,
        kind: MqttSinkKind,
        file: &Path,
        gateway_id: &str,
        accept_commands: bool,
        accept_sessions: bool,
    ) -> anyhow::Result<MqttSinkSettings> {
        let name = kind.name();
        let tls = if self.server.get_ref().tls {
            let files = TlsFiles {
                ca_file: self.ca_file.as_ref().map(|f| f.get_ref().as_path()),
                client_cert_file: self.client_cert_file.as_ref().map(|f| f.get_ref().as_path()),
                client_key_file: self.client_key_file.as_ref().map(|f| f.get_ref().as_path()),
            };
            Some(tls::client_config(&files).with_context(|| format!("{}: sinks.{name}", file.display()))?)
        } else {
            None
        };
        let prefix = self.topic_prefix(kind);
        let protocol = match kind {
            MqttSinkKind::Chirpstack => {
                Protocol::Chirpstack { topics: Topics::new(prefix, gateway_id), format: self.format() }
            }
            MqttSinkKind::App => Protocol::App {
                topics: AppTopics::new(prefix, gateway_id),
                accept_sessions,
                accept_commands,
                accept_bundles: false,
                identity: None,
            },
        };
        let default_client_id = match kind {
            MqttSinkKind::Chirpstack => format!("berrygw-{gateway_id}"),
            MqttSinkKind::App => format!("berrygw-{gateway_id}-app"),
        };
        Ok(MqttSinkSettings {
            name,
            protocol,
            server: self.server.get_ref().clone(),
            tls,
            allow_plaintext: self.allow_plaintext,
            client_id: self.client_id.clone().unwrap_or(default_client_id),
            credentials: self.username.clone().map(|u| (u, self.password.clone().unwrap_or_default())),
            gateway_id: gateway_id.to_string(),
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            max_inflight: self.max_inflight,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            pace: self.pace(kind),
        })
    }
}

fn default_keep_alive_secs() -> u64 {
    30
}
fn default_max_inflight() -> u16 {
    100
}
fn default_reconnect_min_ms() -> u64 {
    1000
}
fn default_reconnect_max_ms() -> u64 {
    60_000
}
