//! Where a broker is: `mqtts://host:port` (TLS) or `mqtt://host:port`, as the gateway's
//! configuration and the central tool's `--broker` write it. How to reach it over TLS
//! is `crate::tls`.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

/// An MQTT broker address with its transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    /// Whether the host is this machine (plaintext is acceptable there).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

/// Whether `host` (a name, an address, an IPv6 address with or without brackets) is this
/// machine: the one place a connection may go without TLS unless the operator allows it.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("`{s}` has no scheme; write mqtts://host:port or mqtt://host:port"))?;
        let (tls, default_port) = match scheme {
            "mqtts" | "ssl" | "tls" => (true, 8883),
            "mqtt" | "tcp" => (false, 1883),
            other => return Err(format!("unknown scheme `{other}`; use mqtts:// or mqtt://")),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
                let port = p.parse::<u16>().map_err(|_| format!("bad port `{p}` in `{s}`"))?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("bad host in `{s}`"));
        }
        Ok(BrokerUrl { tls, host: host.to_string(), port })
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
