//! `[sinks.semtech_udp]`: the network server's address, the sink's settings and
//! their defaults and checks.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::time::Duration;

use berrygw_lora::gwmp::codec::{self};
use berrygw_lora::Eui64;
use serde::{Deserialize, Deserializer};

use crate::sink::pace::PaceSettings;

/// A network server's UDP address as configured, `host:port`; the name is resolved
/// again at every reconnection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LnsAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for LnsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for LnsAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<LnsAddress, String> {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            format!("`{s}` has no port; write host:port, e.g. eu1.cloud.thethings.network:1700")
        })?;
        let port =
            port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("bad port in `{s}`"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(format!("`{s}`: bad IPv6 address in brackets")),
            None if host.contains(':') => {
                return Err(format!("`{s}`: an IPv6 address goes in brackets, e.g. [2001:db8::1]:1700"))
            }
            None => host,
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '[' || c == ']') {
            return Err(format!("bad host in `{s}`"));
        }
        Ok(LnsAddress { host: host.to_string(), port })
    }
}

impl<'de> Deserialize<'de> for LnsAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[sinks.semtech_udp]`: GWMP to a network server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemtechUdpSinkConfig {
    /// Network server, `host:port` (usually port 1700).
    pub server: LnsAddress,
    /// Seconds between PULL_DATA keepalives (the downlink path through NAT).
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// Wait for a PUSH_ACK before the first retransmission; doubles per retry.
    #[serde(default = "default_push_timeout_ms")]
    pub push_timeout_ms: u64,
    /// Longest wait between two retransmissions of a datagram.
    #[serde(default = "default_push_timeout_max_ms")]
    pub push_timeout_max_ms: u64,
    /// With no PUSH_ACK or PULL_ACK for this long, drop the socket, resolve the name again, start over.
    #[serde(default = "default_dead_after_secs")]
    pub dead_after_secs: u64,
    /// PUSH_DATA datagrams awaiting their PUSH_ACK at once. 1 keeps the network server's
    /// view in journal order even under loss (a server may drop a device's older frame
    /// that arrives after a newer one); more drains a backlog faster over a slow link.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Upper bound of a PUSH_DATA datagram (a lone record may exceed it); keeps clear of IP fragmentation.
    #[serde(default = "default_max_datagram_bytes")]
    pub max_datagram_bytes: usize,
    /// Upper bound of `rxpk` objects in one PUSH_DATA.
    #[serde(default = "default_max_rxpk_per_datagram")]
    pub max_rxpk_per_datagram: usize,
    /// First delay before reconnecting after a failure; doubles up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Least time between two uplinks of one device when a backlog leaves (0: none); see `sink::pace`.
    #[serde(default = "default_replay_gap_ms")]
    pub replay_gap_ms: u64,
    /// Most uplinks per second when a backlog leaves (0: no limit).
    #[serde(default = "default_replay_rate")]
    pub replay_rate: u32,
}

fn default_replay_gap_ms() -> u64 {
    crate::sink::pace::DEFAULT_REPLAY_GAP_MS
}
fn default_replay_rate() -> u32 {
    crate::sink::pace::DEFAULT_REPLAY_RATE
}
fn default_keepalive_secs() -> u64 {
    10
}
fn default_push_timeout_ms() -> u64 {
    1000
}
fn default_push_timeout_max_ms() -> u64 {
    30_000
}
fn default_dead_after_secs() -> u64 {
    60
}
fn default_max_inflight() -> u16 {
    1
}
fn default_max_datagram_bytes() -> usize {
    1400
}
fn default_max_rxpk_per_datagram() -> usize {
    8
}
fn default_reconnect_min_ms() -> u64 {
    1000
}
fn default_reconnect_max_ms() -> u64 {
    60_000
}

impl SemtechUdpSinkConfig {
    /// A configuration with every default, sending to `server`.
    pub fn new(server: LnsAddress) -> SemtechUdpSinkConfig {
        SemtechUdpSinkConfig {
            server,
            keepalive_secs: default_keepalive_secs(),
            push_timeout_ms: default_push_timeout_ms(),
            push_timeout_max_ms: default_push_timeout_max_ms(),
            dead_after_secs: default_dead_after_secs(),
            max_inflight: default_max_inflight(),
            max_datagram_bytes: default_max_datagram_bytes(),
            max_rxpk_per_datagram: default_max_rxpk_per_datagram(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            replay_gap_ms: default_replay_gap_ms(),
            replay_rate: default_replay_rate(),
        }
    }

    /// The checks serde cannot express; the message names the key under `sinks.semtech_udp`.
    pub fn check(&self) -> Result<(), String> {
        let key = "sinks.semtech_udp";
        if self.keepalive_secs == 0 {
            return Err(format!("{key}.keepalive_secs must be at least 1"));
        }
        if self.push_timeout_ms == 0 || self.push_timeout_max_ms < self.push_timeout_ms {
            return Err(format!("{key}.push_timeout_ms must be ≥ 1 and ≤ push_timeout_max_ms"));
        }
        if self.dead_after_secs <= self.keepalive_secs {
            return Err(format!(
                "{key}.dead_after_secs must be longer than keepalive_secs, or a quiet server looks dead"
            ));
        }
        if self.max_inflight == 0 || self.max_rxpk_per_datagram == 0 {
            return Err(format!("{key}.max_inflight and max_rxpk_per_datagram must be at least 1"));
        }
        if !(512..=codec::MAX_DATAGRAM_BYTES).contains(&self.max_datagram_bytes) {
            return Err(format!(
                "{key}.max_datagram_bytes must be between 512 and {}",
                codec::MAX_DATAGRAM_BYTES
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(format!("{key}.reconnect_min_ms must be ≥ 1 and ≤ reconnect_max_ms"));
        }
        if self.replay_gap_ms > 60_000 {
            return Err(format!("{key}.replay_gap_ms is at most 60000 (one minute per device)"));
        }
        Ok(())
    }

    /// Settings for the sink of gateway `gateway_id` (the EUI in every datagram header).
    pub fn settings(&self, gateway_id: Eui64) -> SemtechUdpSettings {
        SemtechUdpSettings {
            server: self.server.clone(),
            gateway_id,
            keepalive: Duration::from_secs(self.keepalive_secs),
            push_timeout: Duration::from_millis(self.push_timeout_ms),
            push_timeout_max: Duration::from_millis(self.push_timeout_max_ms),
            dead_after: Duration::from_secs(self.dead_after_secs),
            max_inflight: usize::from(self.max_inflight),
            max_datagram_bytes: self.max_datagram_bytes,
            max_rxpk_per_datagram: self.max_rxpk_per_datagram,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            pace: PaceSettings {
                device_gap: Duration::from_millis(self.replay_gap_ms),
                rate: self.replay_rate,
            },
        }
    }
}

/// Everything the sink needs, resolved from configuration (see [`SemtechUdpSinkConfig`]).
#[derive(Clone, Debug)]
pub struct SemtechUdpSettings {
    pub server: LnsAddress,
    pub gateway_id: Eui64,
    pub keepalive: Duration,
    pub push_timeout: Duration,
    pub push_timeout_max: Duration,
    pub dead_after: Duration,
    pub max_inflight: usize,
    pub max_datagram_bytes: usize,
    pub max_rxpk_per_datagram: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub pace: PaceSettings,
}
