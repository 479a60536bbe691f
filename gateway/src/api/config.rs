//! `[http]` and `[api]`: where the status page and metrics are served, and where
//! the local API socket is and who may act through it.

use std::path::PathBuf;

use serde::Deserialize;
use std::net::SocketAddr;

/// `[http]`: the listener serving `/metrics`, the status page `/` and `/api/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address and port; loopback by default (the page and metrics carry no secrets,
    /// but expose them beyond the gateway only on purpose, e.g. `0.0.0.0:9101`).
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Host names (besides IP literals and localhost) requests may name in `Host`;
    /// others get 421, so a web page cannot read the gateway by rebinding its DNS.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection { listen: default_http_listen(), allowed_hosts: Vec::new() }
    }
}

/// `[api]`: the local API on a unix socket, used by `berrygw status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Socket path, created mode 0660 (owner and group may read status).
    #[serde(default = "default_api_socket")]
    pub socket: PathBuf,
    /// Who may act (actuate, reload) besides root and the daemon's own user.
    #[serde(default)]
    pub operators: Vec<super::operators::Operator>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection { socket: default_api_socket(), operators: Vec::new() }
    }
}

/// Where `berrygw status` looks when no configuration names the socket.
pub const DEFAULT_API_SOCKET: &str = "/run/berrygw/api.sock";

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9101))
}

fn default_api_socket() -> PathBuf {
    PathBuf::from(DEFAULT_API_SOCKET)
}
