//! The `[radio.gwmp]` configuration of the ingest: where it listens, which forwarder
//! (IP address, gateway EUI) it pins, and its two timeouts, with the errors of a
//! configuration `GwmpIngest::new` refuses.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::phy::Eui64;

/// The `[radio.gwmp]` configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GwmpConfig {
    /// UDP address the packet forwarder sends to (its `server_address`/`serv_port_up`/`serv_port_down`).
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Accept only this gateway EUI; datagrams from others are counted and dropped.
    /// Unset: the first EUI heard is pinned until restart.
    #[serde(default)]
    pub gateway_id: Option<Eui64>,
    /// Accept datagrams only from this IP address (the packet forwarder's host).
    /// Unset: the first address heard is pinned until restart.
    #[serde(default)]
    pub forwarder: Option<IpAddr>,
    /// A PULL_DATA from a new port of the pinned forwarder takes the downlinks only after
    /// the current port has sent none for this long (a forwarder restarting).
    #[serde(default = "default_forwarder_timeout_ms")]
    pub forwarder_timeout_ms: u64,
    /// How long a downlink waits for the forwarder's TX_ACK before it counts as failed.
    #[serde(default = "default_tx_ack_timeout_ms")]
    pub tx_ack_timeout_ms: u64,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1700))
}

fn default_tx_ack_timeout_ms() -> u64 {
    2000
}

/// Three of `lora_pkt_fwd`'s default 10 s keepalives.
fn default_forwarder_timeout_ms() -> u64 {
    30_000
}

impl Default for GwmpConfig {
    fn default() -> GwmpConfig {
        GwmpConfig {
            bind: default_bind(),
            gateway_id: None,
            forwarder: None,
            forwarder_timeout_ms: default_forwarder_timeout_ms(),
            tx_ack_timeout_ms: default_tx_ack_timeout_ms(),
        }
    }
}

/// Why a GWMP ingest configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GwmpError {
    #[error(
        "radio.gwmp: tx_ack_timeout_ms = {0} is outside 1..=60000; a forwarder answers within milliseconds, 2000 is safe"
    )]
    TxAckTimeout(u64),
    #[error(
        "radio.gwmp: forwarder_timeout_ms = {0} is outside 1000..=600000; lora_pkt_fwd sends PULL_DATA every 10 s, 30000 is safe"
    )]
    ForwarderTimeout(u64),
}
