//! `[sinks.basic_station]`: where the LNS and CUPS are, the credentials, and their checks.
//!
//! Either the files are named one by one (`tc_uri`, `tc_trust`, `tc_crt`, `tc_key`, and
//! `cups_*` alike, `sig_keys`), or `station_dir` names a directory in LoRa Basics Station's
//! own layout (`tc.uri`, `tc.trust`, `tc.crt`, `tc.key`, `cups.*`, `sig-*.key`), so that an
//! operator's existing credentials drop in; a file named one by one wins over the
//! directory's. Files are PEM or DER. As in Station, a key file that is not a private key
//! holds HTTP header lines sent with each request (The Things Stack's
//! `Authorization: Bearer …`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berrygw_lora::Eui64;
use berrygw_proto::broker::is_loopback_host;
use serde::Deserialize;

use super::creds::Credentials;
use super::cups::{CupsUri, SigKey};
use super::ws::WsUri;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicStationSinkConfig {
    /// The LNS's router-info address (Station's `tc.uri`), e.g. `wss://lns.example.org:8887`.
    pub tc_uri: Option<String>,
    /// A directory in Station's layout (`tc.uri`, `tc.trust`, `tc.crt`, `tc.key`, `cups.uri`,
    /// `cups.trust`, `cups.crt`, `cups.key`, `sig-*.key`).
    pub station_dir: Option<PathBuf>,
    /// The CA (PEM or DER) the LNS's certificate chains to; the system's roots when absent.
    pub tc_trust: Option<PathBuf>,
    /// This gateway's certificate (PEM or DER), for client-certificate authentication.
    pub tc_crt: Option<PathBuf>,
    /// Its private key (PEM or DER), or HTTP header lines (a token).
    pub tc_key: Option<PathBuf>,
    /// A CUPS server (`https://…`): it hands over the LNS's address and credentials, its
    /// own new ones, and signed updates.
    pub cups_uri: Option<String>,
    pub cups_trust: Option<PathBuf>,
    pub cups_crt: Option<PathBuf>,
    pub cups_key: Option<PathBuf>,
    /// Station's `sig-N.key` files: the keys an update must be signed with to be kept.
    #[serde(default)]
    pub sig_keys: Vec<PathBuf>,
    /// How often CUPS is asked while all is well (it is also asked at start and after the
    /// LNS failed three times in a row).
    #[serde(default = "default_cups_interval_s")]
    pub cups_interval_s: u64,
    /// `ws://` or `http://` to a host that is not this machine (no TLS: the token and
    /// uplinks in clear).
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
    /// Whose uplink channels the radio uses: `"lns"` (the default: an SX1302 is retuned to
    /// `router_config`'s plan, as Station does) or `"radio"` (`[radio.sx1302]`'s are kept
    /// and an LNS plan that differs is refused). A sim radio is always compared, a packet
    /// forwarder's plan is its own.
    #[serde(default)]
    pub channel_plan: ChannelPlanFrom,
}

/// `channel_plan`: who sets the radio's uplink channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelPlanFrom {
    #[default]
    Lns,
    Radio,
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
fn default_cups_interval_s() -> u64 {
    86_400
}

/// A server and the credentials used with it.
#[derive(Clone, Debug)]
pub struct Endpoint<U> {
    pub uri: U,
    /// The URI as it was given (what `update-info` reports back).
    pub text: String,
    pub creds: Credentials,
    /// Built from `creds` when the URI asks for TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl<U: AsRef<WsUri> + std::fmt::Display> Endpoint<U> {
    /// Checked: TLS built when the URI asks for it, plaintext to another host refused
    /// unless allowed.
    pub fn new(uri: U, text: &str, creds: Credentials, allow_plaintext: bool) -> anyhow::Result<Endpoint<U>> {
        let ws = uri.as_ref();
        if !ws.tls && !allow_plaintext && !is_loopback_host(&ws.host) {
            bail!(
                "{uri}: no TLS to another host sends uplinks and credentials in clear; use TLS or set \
                 allow_plaintext = true"
            );
        }
        let tls =
            if ws.tls { Some(creds.tls_config().with_context(|| format!("{uri}: TLS"))?) } else { None };
        Ok(Endpoint { uri, text: text.trim().to_string(), creds, tls })
    }
}

/// Everything CUPS needs beyond its endpoint.
#[derive(Clone, Debug)]
pub struct CupsSettings {
    /// From configuration (Station's boot set): used until CUPS hands over another.
    pub boot: Endpoint<CupsUri>,
    pub sig_keys: Vec<SigKey>,
    pub interval: Duration,
}

/// The radio's LoRa uplink channels and where they are set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RadioChannels {
    /// The settings that give them (`[radio.sim] frequencies`).
    pub source: &'static str,
    /// Hz, sorted.
    pub hz: Vec<u32>,
}

/// Everything the sink needs, resolved from configuration.
#[derive(Clone, Debug)]
pub struct BasicStationSettings {
    /// The LNS from configuration; `None` when only CUPS gives it.
    pub tc: Option<Endpoint<WsUri>>,
    pub cups: Option<CupsSettings>,
    /// The sets CUPS handed over (`tc.set`, `cups.set`) and kept updates.
    pub dir: PathBuf,
    pub router: Eui64,
    /// The LoRa uplink channels the radio listens on, when berrygw knows them (sim,
    /// sx1302; not a packet forwarder's), and the settings they come from: a
    /// `router_config` with another plan is refused with the difference.
    pub radio_channels: Option<RadioChannels>,
    /// Set (by the pipeline) when the radio is an SX1302 and `channel_plan = "lns"`: the
    /// LNS's plan is put on it instead of compared.
    pub tuner: Option<berrygw_sx1302::Tuner>,
    pub allow_plaintext: bool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub proof_interval: Duration,
}

impl BasicStationSinkConfig {
    /// The checks that need no file read.
    pub fn check(&self) -> Result<(), String> {
        if self.tc_uri.is_none() && self.cups_uri.is_none() && self.station_dir.is_none() {
            return Err("give tc_uri or cups_uri, or station_dir holding Station's tc.uri or cups.uri".into());
        }
        if let Some(uri) = &self.tc_uri {
            WsUri::parse(uri).map_err(|e| format!("tc_uri: {e}"))?;
        }
        if let Some(uri) = &self.cups_uri {
            CupsUri::parse(uri).map_err(|e| format!("cups_uri: {e}"))?;
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
        if !(1..=30 * 86_400).contains(&self.cups_interval_s) {
            return Err("cups_interval_s must be 1 to 2592000 (30 days)".into());
        }
        Ok(())
    }

    fn in_dir(&self, name: &str) -> Option<PathBuf> {
        self.station_dir.as_ref().map(|d| d.join(name)).filter(|p| p.exists())
    }

    /// A file named one by one (`given`), else `station_dir`'s `name` if it is there.
    fn file(&self, given: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
        given.clone().or_else(|| self.in_dir(name))
    }

    /// The server at `text` with the `<prefix>.trust`, `.crt` and `.key` set.
    fn endpoint<U: AsRef<WsUri> + std::fmt::Display>(
        &self,
        text: &str,
        parse: fn(&str) -> anyhow::Result<U>,
        prefix: &str,
        given: [&Option<PathBuf>; 3],
    ) -> anyhow::Result<Endpoint<U>> {
        let uri = parse(text).with_context(|| format!("{prefix}.uri"))?;
        let [trust, crt, key] = [(given[0], "trust"), (given[1], "crt"), (given[2], "key")]
            .map(|(path, ext)| self.file(path, &format!("{prefix}.{ext}")));
        let creds = Credentials::from_files(trust.as_deref(), crt.as_deref(), key.as_deref())
            .with_context(|| format!("the {prefix}.* credentials"))?;
        Endpoint::new(uri, text, creds, self.allow_plaintext)
    }

    /// The private key or token files configured or in `station_dir`, with their keys'
    /// names: secrets, whose modes are checked.
    pub fn key_files(&self) -> Vec<(&'static str, PathBuf)> {
        let tc = self.file(&self.tc_key, "tc.key");
        let cups = self.file(&self.cups_key, "cups.key");
        [("sinks.basic_station.tc_key", tc), ("sinks.basic_station.cups_key", cups)]
            .into_iter()
            .filter_map(|(k, p)| Some((k, p?)))
            .collect()
    }

    /// Read the files and resolve the settings; an error names the file and what is wrong.
    /// `state_dir` is the gateway's: the sink keeps what CUPS sends in its `basic_station`.
    pub fn settings(&self, gateway_id: Eui64, state_dir: &Path) -> anyhow::Result<BasicStationSettings> {
        self.check().map_err(anyhow::Error::msg)?;
        let read_uri = |name: &str| -> anyhow::Result<Option<String>> {
            self.in_dir(name)
                .map(|p| std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display())))
                .transpose()
                .map(|t| t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
        };
        let tc_text = match &self.tc_uri {
            Some(uri) => Some(uri.clone()),
            None => read_uri("tc.uri")?,
        };
        let cups_text = match &self.cups_uri {
            Some(uri) => Some(uri.clone()),
            None => read_uri("cups.uri")?,
        };
        if tc_text.is_none() && cups_text.is_none() {
            bail!("neither an LNS (tc_uri, tc.uri) nor a CUPS server (cups_uri, cups.uri) is given");
        }
        let tc = match tc_text {
            Some(text) => Some(self.endpoint(
                &text,
                WsUri::parse,
                "tc",
                [&self.tc_trust, &self.tc_crt, &self.tc_key],
            )?),
            None => None,
        };
        let cups = match cups_text {
            Some(text) => {
                let boot = self.endpoint(
                    &text,
                    CupsUri::parse,
                    "cups",
                    [&self.cups_trust, &self.cups_crt, &self.cups_key],
                )?;
                let mut key_paths = self.sig_keys.clone();
                if let Some(dir) = &self.station_dir {
                    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                        .with_context(|| format!("reading {}", dir.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("sig-") && n.ends_with(".key"))
                        })
                        .collect();
                    found.sort();
                    key_paths.extend(found);
                }
                let sig_keys =
                    key_paths.iter().map(|p| SigKey::read(p)).collect::<anyhow::Result<Vec<_>>>()?;
                Some(CupsSettings { boot, sig_keys, interval: Duration::from_secs(self.cups_interval_s) })
            }
            None => None,
        };
        Ok(BasicStationSettings {
            tc,
            cups,
            dir: state_dir.join("basic_station"),
            router: self.router.unwrap_or(gateway_id),
            radio_channels: None,
            tuner: None,
            allow_plaintext: self.allow_plaintext,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            proof_interval: Duration::from_millis(self.proof_interval_ms),
        })
    }
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
        let s = c.settings(Eui64::from_u64(1), Path::new("/var/lib/berrygw")).unwrap();
        let tc = s.tc.unwrap();
        assert_eq!(tc.uri.to_string(), "ws://127.0.0.1:6090/");
        assert_eq!(tc.creds.headers(), [("Authorization".to_string(), "Bearer NNSXS.ABC".to_string())]);
        assert!(tc.tls.is_none() && s.cups.is_none());
        assert_eq!(s.router, Eui64::from_u64(1));
        assert_eq!(s.dir, Path::new("/var/lib/berrygw/basic_station"));
        assert_eq!(c.key_files(), [("sinks.basic_station.tc_key", dir.path().join("tc.key"))]);
    }

    #[test]
    fn a_cups_layout_with_signing_keys_drops_in() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cups.uri"), "http://127.0.0.1:6040\n").unwrap();
        std::fs::write(dir.path().join("cups.key"), "Authorization: Bearer C\n").unwrap();
        // A point of P-256 (the generator), X then Y.
        let g = hex::decode(
            "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
             4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
        )
        .unwrap();
        std::fs::write(dir.path().join("sig-0.key"), &g).unwrap();
        let c = config(&format!("station_dir = {:?}\ncups_interval_s = 60", dir.path()));
        let s = c.settings(Eui64::from_u64(1), Path::new("/tmp")).unwrap();
        assert!(s.tc.is_none());
        let cups = s.cups.unwrap();
        assert_eq!(cups.boot.uri.to_string(), "http://127.0.0.1:6040/");
        assert_eq!(cups.sig_keys.len(), 1);
        assert_eq!(cups.sig_keys[0].crc, super::super::creds::crc32(&g));
        assert_eq!(cups.interval, Duration::from_secs(60));
        std::fs::write(dir.path().join("sig-1.key"), [0u8; 10]).unwrap();
        let e = c.settings(Eui64::from_u64(1), Path::new("/tmp")).unwrap_err();
        assert!(format!("{e:#}").contains("64 bytes"), "{e:#}");
    }

    #[test]
    fn what_cannot_work_is_refused_with_why() {
        for (text, why) in [
            ("allow_plaintext = false", "tc_uri or cups_uri"),
            ("tc_uri = \"http://lns\"", "ws://"),
            ("cups_uri = \"wss://cups\"", "https://"),
            ("tc_uri = \"ws://lns\"\nreconnect_min_ms = 5", "reconnect_min_ms"),
            ("tc_uri = \"ws://lns\"\nproof_interval_ms = 0", "proof_interval_ms"),
            ("cups_uri = \"https://cups\"\ncups_interval_s = 0", "cups_interval_s"),
        ] {
            let e = config(text).check().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let state = Path::new("/tmp");
        for text in ["tc_uri = \"ws://lns.example.org:6090\"", "cups_uri = \"http://cups.example.org\""] {
            let e = config(text).settings(Eui64::from_u64(1), state).unwrap_err();
            assert!(e.to_string().contains("in clear"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tc.key"), "not a header\n").unwrap();
        let c = config(&format!("tc_uri = \"ws://127.0.0.1:1\"\ntc_key = {:?}", dir.path().join("tc.key")));
        let e = c.settings(Eui64::from_u64(1), state).unwrap_err();
        assert!(format!("{e:#}").contains("neither a PEM key"), "{e:#}");
    }
}
