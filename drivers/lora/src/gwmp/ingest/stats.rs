//! What the ingest has seen and done: plain atomic counters for metrics and tests,
//! the latest datagram refused for its source, and the pinned forwarder as the
//! status page shows it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::phy::Eui64;

/// What the ingest has seen and done since it started; plain counters for metrics and tests.
#[derive(Debug, Default)]
pub struct GwmpStats {
    /// Datagrams received, good or bad.
    pub datagrams: AtomicU64,
    /// Datagrams dropped whole: bad version or identifier, truncated, bad JSON, or a
    /// server-to-forwarder type sent to us.
    pub malformed: AtomicU64,
    /// Datagrams dropped because their gateway EUI is not `gateway_id` (or the pinned one).
    pub foreign_gateway: AtomicU64,
    /// Datagrams dropped because they came from an IP address other than the pinned forwarder's.
    pub foreign_source: AtomicU64,
    /// PULL_DATA from a new port of the pinned forwarder while its current one is alive.
    pub pull_data_refused: AtomicU64,
    /// TX_ACKs dropped because they came from another address than the PULL_RESP went to.
    pub tx_ack_refused: AtomicU64,
    /// Times the downlink address moved to a new port after the old one went silent.
    pub forwarder_moves: AtomicU64,
    /// The latest datagram refused for its source (any of the four counters above).
    pub last_refused: Mutex<Option<RefusedSource>>,
    /// The pinned forwarder, once one was heard.
    pub forwarder: Mutex<Option<ForwarderView>>,
    /// PUSH_DATA accepted (and acknowledged).
    pub push_data: AtomicU64,
    /// PULL_DATA accepted (and acknowledged).
    pub pull_data: AtomicU64,
    /// `rxpk`s handed to the pipeline as uplinks.
    pub uplinks: AtomicU64,
    /// `rxpk`s refused (bad base64, missing or implausible field); the rest of their datagram is kept.
    pub rxpk_rejected: AtomicU64,
    /// Uplinks whose forwarder `time` was unusable and replaced by ours.
    pub time_replaced: AtomicU64,
    /// PULL_RESPs sent.
    pub downlinks_sent: AtomicU64,
    /// Downlinks refused because no forwarder had sent PULL_DATA yet.
    pub downlinks_without_forwarder: AtomicU64,
    /// Downlinks refused `TooLate` before the forwarder saw them: their counter time had passed.
    pub downlinks_too_late: AtomicU64,
    /// TX_ACKs matched to a downlink.
    pub tx_acks: AtomicU64,
    /// Downlinks with no TX_ACK in time (answered InternalError).
    pub tx_ack_timeouts: AtomicU64,
    /// TX_ACKs whose token matches no waiting downlink (late, or duplicated).
    pub unknown_tx_acks: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A datagram refused for where it came from, for the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedSource {
    pub from: SocketAddr,
    pub gateway_id: Eui64,
    /// `foreign_source`, `foreign_gateway`, `pull_data_refused` or `tx_ack_refused`.
    pub reason: &'static str,
    pub at: SystemTime,
}

/// The pinned packet forwarder as the status page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderView {
    pub ip: IpAddr,
    pub gateway_id: Option<Eui64>,
    /// Where downlinks go (its latest accepted PULL_DATA), once it pulled.
    pub downlink_addr: Option<SocketAddr>,
    /// Its GWMP version (1 has no TX_ACK).
    pub version: Option<u8>,
}

impl GwmpStats {
    /// The latest refused source, if any.
    pub fn last_refused(&self) -> Option<RefusedSource> {
        self.last_refused.lock().ok().and_then(|g| g.clone())
    }

    /// The pinned forwarder, if one was heard.
    pub fn forwarder(&self) -> Option<ForwarderView> {
        self.forwarder.lock().ok().and_then(|g| g.clone())
    }
}
