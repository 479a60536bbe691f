//! `[sinks.basic_station]`: where the LNS is, the credentials, and their checks.
//!
//! Either the files are named one by one (`tc_uri`, `tc_trust`, `tc_crt`, `tc_key`), or
//! `station_dir` names a directory in LoRa Basics Station's own layout (`tc.uri`,
//! `tc.trust`, `tc.crt`, `tc.key`), so that an operator's existing credentials drop in; a
//! key named one by one wins over the directory's. As in Station, a `tc.key` that is not a
//! PEM private key holds HTTP header lines sent with the upgrade (The Things Stack's
//! `Authorization: Bearer …`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berrygw_lora::Eui64;
use berrygw_proto::broker::is_loopback_host;
use berrygw_proto::tls::{self, TlsFiles};
use serde::Deserialize;

use super::ws::WsUri;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicStationSinkConfig {
    /// The LNS's router-info address (Station's `tc.uri`), e.g. `wss://lns.example.org:8887`.
    pub tc_uri: Option<String>,
    /// A directory in Station's layout (`tc.uri`, `tc.trust`, `tc.crt`, `tc.key`).
    pub station_dir: Option<PathBuf>,
    /// The CA (PEM) the LNS's certificate chains to; the system's roots when absent.
    pub tc_trust: Option<PathBuf>,
    /// This gateway's certificate (PEM), for client-certificate authentication.
    pub tc_crt: Option<PathBuf>,
    /// Its private key (PEM), or HTTP header lines (a token).
    pub tc_key: Option<PathBuf>,
    /// A CUPS server: not built yet, refused with a clear error.
    pub cups_uri: Option<String>,
    /// `ws://` to a host that is not this machine (no TLS: the token and uplinks in clear).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The router's EUI the LNS knows this gateway by; the gateway's id when absent.
    pub router: Option<Eui64>,
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// A `timesync` round trip proves what was sent before it was read (`proof`): at most
    /// one request in flight is started per this interval while records wait for proof.
    #[serde(default = "default_proof_interval_ms")]
    pub proof_interval_ms: u64,
}

fn default_reconnect_min_ms() -> u64 {
    1_000
}
fn default_reconnect_max_ms() -> u64 {
    60_000
}
fn default_proof_interval_ms() -> u64 {
    200
}

/// Everything the sink needs, resolved from configuration.
#[derive(Clone, Debug)]
pub struct BasicStationSettings {
    /// Where router-info is asked (`<tc_uri>/router-info`).
    pub tc_uri: WsUri,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Sent with every upgrade (a token from `tc.key`).
    pub headers: Vec<(String, String)>,
    pub router: Eui64,
    pub allow_plaintext: bool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub proof_interval: Duration,
}

impl BasicStationSinkConfig {
    /// The checks that need no file read.
    pub fn check(&self) -> Result<(), String> {
        if self.cups_uri.is_some() {
            return Err("cups_uri: CUPS is not supported yet; give the LNS directly (tc_uri, or \
                        station_dir with tc.uri)"
                .into());
        }
        if self.tc_uri.is_none() && self.station_dir.is_none() {
            return Err("give tc_uri, or station_dir holding Station's tc.uri".into());
        }
        if let Some(uri) = &self.tc_uri {
            WsUri::parse(uri).map_err(|e| format!("tc_uri: {e}"))?;
        }
        if !(100..=600_000).contains(&self.reconnect_min_ms) || self.reconnect_max_ms < self.reconnect_min_ms
        {
            return Err("reconnect_min_ms must be 100 to 600000 and at most reconnect_max_ms".into());
        }
        if self.reconnect_max_ms > 3_600_000 {
            return Err("reconnect_max_ms must be at most 3600000 (an hour)".into());
        }
        if !(10..=60_000).contains(&self.proof_interval_ms) {
            return Err("proof_interval_ms must be 10 to 60000".into());
        }
        Ok(())
    }

    /// The private key or token file, if one is configured or in `station_dir`.
    pub fn key_file(&self) -> Option<PathBuf> {
        self.tc_key
            .clone()
            .or_else(|| self.station_dir.as_ref().map(|d| d.join("tc.key")).filter(|p| p.exists()))
    }

    /// Read the files and resolve the settings; an error names the file and what is wrong.
    pub fn settings(&self, gateway_id: Eui64) -> anyhow::Result<BasicStationSettings> {
        self.check().map_err(anyhow::Error::msg)?;
        let in_dir = |name: &str| self.station_dir.as_ref().map(|d| d.join(name)).filter(|p| p.exists());
        let uri_text = match (&self.tc_uri, &self.station_dir) {
            (Some(uri), _) => uri.clone(),
            (None, Some(dir)) => {
                let path = dir.join("tc.uri");
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
            }
            (None, None) => bail!("no tc_uri"),
        };
        let tc_uri = WsUri::parse(&uri_text).context("tc.uri")?;
        if !tc_uri.tls && !self.allow_plaintext && !is_loopback_host(&tc_uri.host) {
            bail!(
                "{tc_uri}: ws:// to another host sends uplinks and credentials in clear; use wss:// or set \
                 allow_plaintext = true"
            );
        }
        let trust = self.tc_trust.clone().or_else(|| in_dir("tc.trust"));
        let crt = self.tc_crt.clone().or_else(|| in_dir("tc.crt"));
        let key = self.tc_key.clone().or_else(|| in_dir("tc.key"));
        let (key_file, headers) = match &key {
            Some(path) if !is_pem_key(path)? => (None, token_headers(path)?),
            other => (other.clone(), Vec::new()),
        };
        if crt.is_some() != key_file.is_some() {
            bail!("tc.crt and a PEM tc.key go together (client-certificate authentication needs both)");
        }
        let tls = if tc_uri.tls {
            let files = TlsFiles {
                ca_file: trust.as_deref(),
                client_cert_file: crt.as_deref(),
                client_key_file: key_file.as_deref(),
            };
            Some(tls::client_config(&files).context("the LNS's TLS files")?)
        } else {
            None
        };
        Ok(BasicStationSettings {
            tc_uri,
            tls,
            headers,
            router: self.router.unwrap_or(gateway_id),
            allow_plaintext: self.allow_plaintext,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            proof_interval: Duration::from_millis(self.proof_interval_ms),
        })
    }
}

fn is_pem_key(path: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.windows(11).any(|w| w == b"-----BEGIN "))
}

/// The header lines of a token `tc.key` (`Name: value`, CRLF or LF).
fn token_headers(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut headers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("{}: neither a PEM key nor `Header: value` lines", path.display());
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("{}: bad header name {name:?}", path.display());
        }
        headers.push((name.to_string(), value.to_string()));
    }
    if headers.is_empty() {
        bail!("{}: empty", path.display());
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> BasicStationSinkConfig {
        toml::from_str(toml_text).expect("parses")
    }

    #[test]
    fn stations_own_layout_drops_in_with_a_token_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tc.uri"), "ws://127.0.0.1:6090\n").unwrap();
        std::fs::write(dir.path().join("tc.key"), "Authorization: Bearer NNSXS.ABC\r\n").unwrap();
        let c = config(&format!("station_dir = {:?}", dir.path()));
        let s = c.settings(Eui64::from_u64(1)).unwrap();
        assert_eq!(s.tc_uri.to_string(), "ws://127.0.0.1:6090/");
        assert_eq!(s.headers, [("Authorization".to_string(), "Bearer NNSXS.ABC".to_string())]);
        assert!(s.tls.is_none());
        assert_eq!(s.router, Eui64::from_u64(1));
    }

    #[test]
    fn what_cannot_work_is_refused_with_why() {
        for (text, why) in [
            ("tc_uri = \"wss://lns.example\"\ncups_uri = \"https://cups\"", "CUPS"),
            ("allow_plaintext = false", "tc_uri"),
            ("tc_uri = \"http://lns\"", "ws://"),
            ("tc_uri = \"ws://lns\"\nreconnect_min_ms = 5", "reconnect_min_ms"),
            ("tc_uri = \"ws://lns\"\nproof_interval_ms = 0", "proof_interval_ms"),
        ] {
            let e = config(text).check().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let e = config("tc_uri = \"ws://lns.example.org:6090\"").settings(Eui64::from_u64(1)).unwrap_err();
        assert!(e.to_string().contains("in clear"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tc.key"), "not a header\n").unwrap();
        let c = config(&format!("tc_uri = \"ws://127.0.0.1:1\"\ntc_key = {:?}", dir.path().join("tc.key")));
        let e = c.settings(Eui64::from_u64(1)).unwrap_err();
        assert!(e.to_string().contains("neither a PEM key"), "{e}");
    }
}
