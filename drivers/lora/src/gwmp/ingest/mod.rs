//! The GWMP ingest radio source: berrygw plays the network server for a packet
//! forwarder on this gateway (vendor firmware running Semtech's `lora_pkt_fwd`,
//! pointed at `127.0.0.1:1700`). PUSH_DATA `rxpk`s become `UplinkFrame`s,
//! downlinks go out as PULL_RESP to the forwarder's PULL_DATA address, and the
//! forwarder's TX_ACK becomes the `TxAck`. It owns no radio and keeps no
//! uplink: a datagram lost before it reaches us is lost, as with any UDP
//! forwarder.
//!
//! One forwarder, pinned: its IP address (`forwarder`, or the first one heard)
//! and its gateway EUI (`gateway_id`, or the first one heard). Its ports are not
//! pinned: `lora_pkt_fwd` pushes and pulls from two sockets, and both get new
//! ports when it restarts. Downlinks go to the port of its PULL_DATA; a PULL_DATA
//! from another port moves them only once the current one has been silent for
//! `forwarder_timeout_ms` (a restart), so a second process on the same host
//! cannot take the downlinks of a live forwarder. TX_ACK is taken only from the
//! address the PULL_RESP went to. Everything else is dropped, counted by reason
//! and remembered for the status page.
//!
//! Transmit outcomes: a GWMP v2 forwarder answers every PULL_RESP with a TX_ACK
//! within milliseconds, so silence for `tx_ack_timeout_ms` means the PULL_RESP or
//! the forwarder was lost and is answered
//! [`TxStatus::InternalError`](crate::frame::TxStatus::InternalError). A GWMP v1
//! forwarder (its PULL_DATA says version 1) has no TX_ACK: its downlinks are
//! answered [`TxStatus::Unconfirmed`](crate::frame::TxStatus::Unconfirmed) once the
//! PULL_RESP is sent, never `Ok`.
//! With no forwarder yet (no PULL_DATA) a downlink is refused at once.
//!
//! Files: `config.rs` (the `[radio.gwmp]` table and its checks), `stats.rs` (the
//! counters and the status page's view of the pinned forwarder), `server.rs` (the
//! running ingest's state and its bookkeeping, one datagram or downlink at a time:
//! pinning, PUSH_DATA to frames, PULL_DATA, PULL_RESP out and TX_ACK back, TX_ACK
//! timeouts), `socket.rs` (the UDP socket, registered for reading only). This file holds the ingest, its handle and the socket loop: receive a
//! datagram, hand its frames to the pipeline, PUSH_ACK once they are stored; send
//! downlinks; expire TX_ACK waits.

mod config;
mod server;
mod socket;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berrygw_core::LogLimiter;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::codec::MAX_DATAGRAM_BYTES;
use crate::radio::{RadioError, RadioIo, RadioSource, RadioTask};
use server::Server;
use stats::bump;

pub use config::{GwmpConfig, GwmpError};
pub use stats::{ForwarderView, GwmpStats, RefusedSource};

/// A view of a (running) ingest: its counters and the address it listens on.
#[derive(Clone, Debug)]
pub struct GwmpHandle {
    stats: Arc<GwmpStats>,
    bound: watch::Receiver<Option<SocketAddr>>,
}

impl GwmpHandle {
    /// The ingest's counters.
    pub fn stats(&self) -> &GwmpStats {
        &self.stats
    }

    /// The bound UDP address, once the ingest listens; `None` if it stopped before binding.
    pub async fn local_addr(&mut self) -> Option<SocketAddr> {
        self.bound.wait_for(Option::is_some).await.ok().and_then(|a| *a)
    }
}

/// The GWMP ingest radio source; `start` binds the socket and serves the forwarder.
#[derive(Debug)]
pub struct GwmpIngest {
    config: GwmpConfig,
    stats: Arc<GwmpStats>,
    bound: watch::Sender<Option<SocketAddr>>,
}

impl GwmpIngest {
    /// An ingest for a configuration that passes its checks (it binds nothing yet).
    pub fn new(config: GwmpConfig) -> Result<GwmpIngest, GwmpError> {
        if !(1..=60_000).contains(&config.tx_ack_timeout_ms) {
            return Err(GwmpError::TxAckTimeout(config.tx_ack_timeout_ms));
        }
        if !(1_000..=600_000).contains(&config.forwarder_timeout_ms) {
            return Err(GwmpError::ForwarderTimeout(config.forwarder_timeout_ms));
        }
        let (bound, _) = watch::channel(None);
        Ok(GwmpIngest { config, stats: Arc::default(), bound })
    }

    /// Counters and bound address, readable while the ingest runs.
    pub fn handle(&self) -> GwmpHandle {
        GwmpHandle { stats: self.stats.clone(), bound: self.bound.subscribe() }
    }

    async fn run(self, io: RadioIo) -> Result<(), RadioError> {
        let GwmpIngest { config, stats, bound } = self;
        let socket = socket::IngestSocket::bind(config.bind).map_err(|e| {
            RadioError::Start(format!(
                "gwmp ingest: cannot listen on udp {}: {e}; is another packet-forwarder server bound to it?",
                config.bind
            ))
        })?;
        let local = socket
            .local_addr()
            .map_err(|e| RadioError::Start(format!("gwmp ingest: no local address: {e}")))?;
        bound.send_replace(Some(local));
        info!(%local, "gwmp ingest: listening for a packet forwarder");

        let RadioIo { uplinks, mut downlinks, tx_acks, mut taken } = io;
        // Frames handed to the pipeline so far (compared with `taken`).
        let mut handed: u64 = 0;
        let mut server = Server {
            socket,
            tx_ack_timeout: Duration::from_millis(config.tx_ack_timeout_ms),
            forwarder_timeout: Duration::from_millis(config.forwarder_timeout_ms),
            pinned_ip: config.forwarder,
            pinned_gateway: config.gateway_id,
            stats,
            forwarder: None,
            pending: HashMap::new(),
            counter: None,
            warn: LogLimiter::default(),
            tx_acks,
        };
        // One byte more than the largest datagram, so that nothing valid is cut short.
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        let mut downlinks_open = true;
        loop {
            let next_timeout = server.pending.values().map(|p| p.deadline).min();
            tokio::select! {
                biased;
                () = uplinks.closed() => return Ok(()),
                received = server.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let datagram = server.on_datagram(&buf[..len], from).await;
                        let first = handed + 1;
                        for frame in datagram.frames {
                            if uplinks.send(frame).await.is_err() {
                                return Ok(());
                            }
                            handed += 1;
                            bump(&server.stats.uplinks);
                        }
                        // Acknowledged only once every frame of it is stored (in the journals'
                        // RAM stage at least): a crash after the PUSH_ACK loses none of them.
                        if let Some(ack) = datagram.push_ack {
                            if server.wait_taken(taken.as_mut(), first, handed).await {
                                server.reply(ack, from).await;
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(held) = server.warn.allow("recv") {
                            warn!(held_back = held, "gwmp ingest: receive failed: {e}");
                        }
                        // Do not spin on a persistent socket error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                downlink = downlinks.recv(), if downlinks_open => match downlink {
                    Some(d) => server.on_downlink(d).await,
                    None => downlinks_open = false,
                },
                () = tokio::time::sleep_until(next_timeout.unwrap_or_else(Instant::now)), if next_timeout.is_some() => {
                    server.expire_tx_acks().await;
                }
            }
        }
    }
}

impl RadioSource for GwmpIngest {
    fn kind(&self) -> &'static str {
        "gwmp"
    }

    fn start(self: Box<Self>, io: RadioIo) -> RadioTask {
        Box::pin(self.run(io))
    }
}
